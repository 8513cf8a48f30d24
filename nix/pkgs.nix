# mkPkgs: the nixpkgs package set nanochat is built from.
#
#   mkPkgs { system = "x86_64-linux"; }                              # CUDA 13, torch from source, sm_120
#   mkPkgs { system = "x86_64-linux"; cudaCapabilities = [ "9.0" ]; } # CUDA 13, torch from source, sm_90
#   mkPkgs { system = "x86_64-linux"; cuda = false; }               # CPU only (laptops, CI)
#   mkPkgs { system = "x86_64-linux"; torch = "bin"; }              # PyTorch's prebuilt CUDA wheel
#
# In both CUDA modes an overlay makes `cudaPackages` point at `cudaPackageSet` (cudaPackages_13)
# for the WHOLE package set, the way the nixpkgs manual recommends: every package that takes
# `cudaPackages` gets the same CUDA (nixpkgs' default set is CUDA 12.9).
#
# torch = "source" (default with CUDA): `cudaSupport = true`, so torch, MAGMA, Triton and NCCL are
# built against that CUDA. `cudaForwardCompat = false` and a single capability keep the build to
# one GPU architecture (much faster to build, smaller closure); the price is that the result runs
# only on that architecture, and no public cache holds it (docs/nix.md).
#
# torch = "bin": nixpkgs' torch-bin (the CUDA wheel PyTorch publishes, for every recent GPU
# architecture). `cudaSupport` stays OFF (nothing is compiled against CUDA; every other package is
# the stock, cached one), but cudaPackages is CUDA 13 all the same: torch-bin 2.13 is refused by
# nixpkgs while the cuda-bindings it depends on (which follows the global cudaPackages, not
# torch-bin's own) is older than 13.0.3 (nixpkgs PR #564686).
#
# torchSrc (flake input torch-src) reaches only the source-built CUDA sets: the CPU set and the
# wheel keep nixpkgs' torch, so overriding it rebuilds nothing the CPU shell or the check uses.
{ nixpkgs, torchSrc ? null }:

{ system
, cuda ? true
, torch ? "source"
, cudaCapabilities ? [ "12.0" ]
, cudaPackageSet ? "cudaPackages_13"
}:

assert builtins.elem torch [ "source" "bin" ]
  || throw "mkPkgs: torch must be \"source\" or \"bin\", got \"${torch}\"";

let
  unfree = import ./unfree.nix { inherit (nixpkgs) lib; };
  fromSource = cuda && torch == "source";
  wheel = cuda && torch == "bin";
in
import nixpkgs {
  inherit system;
  config =
    {
      allowUnfreePredicate = if wheel then unfree.bin else unfree.cuda;
      cudaSupport = fromSource;
    }
    // (if fromSource then {
      inherit cudaCapabilities;
      cudaForwardCompat = false;
    } else { });
  overlays = [
    (import ./overlay.nix {
      inherit cudaPackageSet;
      cuda = fromSource;
      torchBin = wheel;
      torchSrc = if fromSource then torchSrc else null;
    })
  ];
}
