# One nanochat development shell on a package set made by mkPkgs (nix/pkgs.nix).
#
# torchFromSource = false: the shell's torch is PyTorch's prebuilt CUDA wheel (`.#bin`): it still
# needs the host's driver, but it was built for every recent architecture by PyTorch, and no CUDA
# toolkit comes with the shell (extensions are not built there).
{ pkgs
, name
, cuda ? true
, torchFromSource ? true
, cudaCapabilities ? [ "12.0" ]
}:

let
  python = pkgs.python3.withPackages (ps: [
    ps.torch
    ps.tiktoken
    ps.rustbpe
    ps.pyarrow
    ps.numpy
    ps.regex
    ps.datasets
    ps.pytest
    ps.pip # nanochat.offline fetches archives with `python -m pip download`
    ps.setuptools
  ]);
  cudaEnv =
    if cuda && torchFromSource then {
      # what torch was built for (the same list went into config.cudaCapabilities); read by
      # torch.utils.cpp_extension when building extensions inside the shell
      TORCH_CUDA_ARCH_LIST = builtins.concatStringsSep ";" cudaCapabilities;
      CUDA_HOME = "${pkgs.cudaPackages.cudatoolkit}";
    } else { };
in
pkgs.mkShell ({
  inherit name;
  packages = [ python pkgs.gnumake pkgs.git ];

  # a torch built by Nix may lack the libuv TCPStore backend: always use the legacy store
  # (torch.distributed reads this at runtime; see nanochat/torchrun_no_libuv.py)
  USE_LIBUV = "0";
  NANOCHAT_IN_NIX = "1";
  NANOCHAT_NIX_SHELL = name;

  shellHook =
    (if cuda then builtins.readFile ./host-driver.sh else "")
    + ''
      if [ -z "''${NANOCHAT_NO_DOCTOR:-}" ] && [ -f nanochat/doctor.py ]; then
        ${python}/bin/python -m nanochat.doctor --brief || true
      fi
    '';

  passthru = { inherit python cuda torchFromSource cudaCapabilities; };
} // cudaEnv)
