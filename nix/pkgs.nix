# mkPkgs: the nixpkgs package set nanochat is built from.
#
#   mkPkgs { system = "x86_64-linux"; }                              # CUDA 13, sm_120 (RTX 5090)
#   mkPkgs { system = "x86_64-linux"; cudaCapabilities = [ "9.0" ]; } # CUDA 13, sm_90 (H100)
#   mkPkgs { system = "x86_64-linux"; cuda = false; }               # CPU only (laptops, CI)
#
# Every CUDA package comes from ONE CUDA package set: an overlay makes `cudaPackages` point at
# `cudaPackages_13` globally (the way the nixpkgs manual recommends), so torch, MAGMA, Triton and
# NCCL cannot disagree about the CUDA version. `cudaForwardCompat = false` and a single capability
# keep the build to one GPU architecture (much faster to build, smaller closure); the price is
# that the result runs only on that architecture, and no public cache holds it (docs/nix.md).
{ nixpkgs, torchSrc ? null }:

{ system
, cuda ? true
, cudaCapabilities ? [ "12.0" ]
, cudaPackageSet ? "cudaPackages_13"
}:

import nixpkgs {
  inherit system;
  config =
    {
      allowUnfreePredicate = import ./unfree.nix;
      cudaSupport = cuda;
    }
    // (if cuda then {
      inherit cudaCapabilities;
      cudaForwardCompat = false;
    } else { });
  overlays = [ (import ./overlay.nix { inherit cuda torchSrc cudaPackageSet; }) ];
}
