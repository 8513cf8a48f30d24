# The nanochat overlay.
#
# * cuda = true: `cudaPackages` is `cudaPackages_13` for the whole package set (not per package),
#   so every CUDA consumer (torch, magma, triton, nccl, ...) is built against the same CUDA.
# * Adds python3Packages.rustbpe (not in nixpkgs) and python3Packages.nanochat (this repository).
# * torchSrc != null: python3Packages.torch is built from that source tree instead of the
#   release nixpkgs pins (flake input `torch-src`, see docs/nix.md "Building torch from a local
#   checkout"). nixpkgs' patches and build recipe are kept; they fit a checkout close to the
#   pinned torch version.
{ cuda ? true
, torchSrc ? null
, cudaPackageSet ? "cudaPackages_13"
}:

final: prev:
(if cuda then { cudaPackages = final.${cudaPackageSet}; } else { })
// {
  pythonPackagesExtensions = (prev.pythonPackagesExtensions or [ ]) ++ [
    (pyFinal: pyPrev:
      {
        rustbpe = pyFinal.callPackage ./rustbpe.nix { };
        nanochat = pyFinal.callPackage ./nanochat.nix { };
      }
      // (if torchSrc == null then { } else {
        torch = pyPrev.torch.overridePythonAttrs (old: { src = torchSrc; });
      }))
  ];
}
