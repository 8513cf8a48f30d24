# The nanochat overlay.
#
# * cuda = true (torch built from source against CUDA) or torchBin = true (PyTorch's wheel):
#   `cudaPackages` is `cudaPackageSet` (cudaPackages_13) for the whole package set (not per
#   package), so every CUDA consumer (torch, magma, triton, nccl; for the wheel: torch-bin's
#   libraries and cuda-bindings) gets the same CUDA. With cuda = true torch is built without
#   NVSHMEM (`withNvshmem = false`): nanochat never uses it, and it would pull libnvshmem and CUDA
#   builds of openmpi, ucx, pmix, libfabric and gdrcopy into the build (docs/nix.md).
# * torchBin = true: python3Packages.torch is nixpkgs' torch-bin, PyTorch's own CUDA wheel, with
#   the prebuilt Triton wheel beside it (the `.#bin` shell). nixpkgs' triton-bin points Triton's
#   NVIDIA driver module at /run/opengl-driver/lib, which only NixOS fills; here that directory
#   gives way to $TRITON_LIBCUDA_PATH when it is set (nix/host-driver.sh sets it on other hosts).
# * Adds python3Packages.rustbpe (not in nixpkgs) and python3Packages.nanochat (this repository).
# * torchSrc != null (with cuda = true only): torch is built from that PyTorch checkout instead of
#   the release nixpkgs pins (flake input `torch-src`, docs/nix.md "Building torch from a local
#   checkout"). Its version comes from the checkout's version.txt (so PYTORCH_BUILD_VERSION and
#   torch.__version__ tell the truth); nixpkgs' own patches to the build (local .patch files) are
#   kept, its backports of upstream commits (fetchpatch) are dropped, and its `substituteInPlace
#   --replace-fail` edits become `--replace-warn`, so an edit whose text moved in the checkout
#   warns instead of failing. The CPU torch never takes the checkout.
{ cuda ? true
, torchBin ? false
, torchSrc ? null
, cudaPackageSet ? "cudaPackages_13"
}:

final: prev:
let
  lib = prev.lib;

  # the checkout's own version ("2.14.0a0"), read from the file PyTorch's setup.py reads
  checkoutVersion = src:
    let file = "${src}/version.txt";
    in
    if builtins.pathExists file
    then lib.removeSuffix "\n" (builtins.readFile file)
    else throw "torch-src ${toString src} has no version.txt: is it a PyTorch checkout?";

  fromCheckout = torch: torch.overridePythonAttrs (old: rec {
    src = torchSrc;
    version = checkoutVersion torchSrc;
    # nixpkgs derives it from the version too; spelled out so that no pin can leave the old one
    env = (old.env or { }) // { PYTORCH_BUILD_VERSION = version; };
    patches = builtins.filter builtins.isPath (old.patches or [ ]);
    postPatch = builtins.replaceStrings [ "--replace-fail" ] [ "--replace-warn" ] (old.postPatch or "");
  });

  # withNvshmem is an argument of nixpkgs' source torch (pkgs/development/python-modules/torch/
  # source); asked only where the expression has it, so an older or newer pin still evaluates
  withoutNvshmem = torch:
    if (lib.functionArgs torch.override) ? withNvshmem then torch.override { withNvshmem = false; } else torch;

  # nixpkgs' triton-bin writes addDriverRunpath.driverLink + "/lib" into Triton's NVIDIA driver
  # module as the directory of libcuda; the variable wins when set. --replace-warn: where that
  # text is absent (another triton-bin), the build log says so and Triton is left as nixpkgs has it.
  driverLib = "${final.addDriverRunpath.driverLink}/lib";
  honourLibcudaPath = pyFinal: triton: triton.overridePythonAttrs (old: {
    postFixup = (old.postFixup or "") + ''
      substituteInPlace "$out/${pyFinal.python.sitePackages}/triton/backends/nvidia/driver.py" \
        --replace-warn '"${driverLib}"' '__import__("os").environ.get("TRITON_LIBCUDA_PATH") or "${driverLib}"'
    '';
  });

  wheel = pyFinal: pyPrev:
    if (lib.functionArgs pyPrev.torch-bin.override) ? triton && pyPrev ? triton-bin
    then pyPrev.torch-bin.override { triton = pyFinal.triton-bin; }
    else pyPrev.torch-bin;

  fromSource = cuda && torchSrc != null;
in
(if cuda || torchBin then { cudaPackages = final.${cudaPackageSet}; } else { })
// {
  pythonPackagesExtensions = (prev.pythonPackagesExtensions or [ ]) ++ [
    (pyFinal: pyPrev:
      {
        rustbpe = pyFinal.callPackage ./rustbpe.nix { };
        nanochat = pyFinal.callPackage ./nanochat.nix { };
      }
      // (if torchBin then {
        torch = wheel pyFinal pyPrev;
      } // (if pyPrev ? triton-bin then { triton-bin = honourLibcudaPath pyFinal pyPrev.triton-bin; } else { })
      else {
        torch =
          let base = if cuda then withoutNvshmem pyPrev.torch else pyPrev.torch;
          in if fromSource then fromCheckout base else base;
      }))
  ];
}
