# checks.<system>.tests: the CPU test suite (pytest) on the CPU shell's Python, inside the Nix
# sandbox. What truly needs what the sandbox lacks skips itself and says why in the summary
# (`-rs`): the network (PyPI archives of the offline data, the rustbpe sdist), a GPU, or a `nix`
# command (the flake tests). Loopback networking works, so the download tests run against their
# local HTTP servers.
{ pkgs, python }:

pkgs.runCommand "nanochat-tests"
{
  # make + flock: the Makefile tests; git: tests that look at a checkout
  nativeBuildInputs = [ python pkgs.gnumake pkgs.git ]
    ++ (if pkgs.stdenv.hostPlatform.isLinux then [ pkgs.util-linux ] else [ ]);
  # wider than the package's source: the suite also reads the Makefile, bench/, nix/, flake.*
  src = import ./source.nix { inherit (pkgs) lib; keep = import ./check-source.nix; };
}
  ''
    cp -r "$src" source
    chmod -R u+w source
    cd source
    # the sandbox has no /usr/bin/env: point test fixtures' #! lines at the store
    patchShebangs --build . > /dev/null
    export HOME="$TMPDIR" NANOCHAT_BASE_DIR="$TMPDIR/nanochat-base" OMP_NUM_THREADS=1 USE_LIBUV=0
    export PYTHONDONTWRITEBYTECODE=1
    # the Makefile uses the Python on PATH instead of bootstrapping .venv with pip
    export IN_NIX_SHELL=pure
    python -m pytest -q -rs -p no:cacheprovider tests
    touch "$out"
  ''
