# mkPkgs: the nixpkgs package set nanochat is built from.
#
#   mkPkgs { system = "x86_64-linux"; }                              # CUDA 13, torch from source, sm_120
#   mkPkgs { system = "x86_64-linux"; cudaCapabilities = [ "9.0" ]; } # CUDA 13, torch from source, sm_90
#   mkPkgs { system = "x86_64-linux"; cuda = false; }               # CPU only (laptops, CI)
#   mkPkgs { system = "x86_64-linux"; torch = "bin"; }              # PyTorch's prebuilt CUDA wheel
#
# torch = "source" (default with CUDA): every CUDA package comes from ONE CUDA package set; an
# overlay makes `cudaPackages` point at `cudaPackageSet` (cudaPackages_13) globally, the way the
# nixpkgs manual recommends, so torch, MAGMA, Triton and NCCL cannot disagree about the CUDA
# version. `cudaForwardCompat = false` and a single capability keep the build to one GPU
# architecture (much faster to build, smaller closure); the price is that the result runs only on
# that architecture, and no public cache holds it (docs/nix.md).
#
# torch = "bin": nixpkgs' torch-bin (the CUDA wheel PyTorch publishes, for every recent GPU
# architecture) and nixpkgs' own choice of CUDA libraries for it; nothing is compiled against
# CUDA, and `cudaSupport` stays off so every other package is the stock, cached one.
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
  unfree = import ./unfree.nix;
  fromSource = cuda && torch == "source";
in
import nixpkgs {
  inherit system;
  config =
    {
      allowUnfreePredicate = if torch == "bin" then unfree.torchWheel else unfree.cuda;
      cudaSupport = fromSource;
    }
    // (if fromSource then {
      inherit cudaCapabilities;
      cudaForwardCompat = false;
    } else { });
  overlays = [
    (import ./overlay.nix {
      inherit torchSrc cudaPackageSet;
      cuda = fromSource;
      torchBin = cuda && torch == "bin";
    })
  ];
}
