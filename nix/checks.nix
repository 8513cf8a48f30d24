# checks.<system>.tests: the CPU test suite (pytest) on the CPU shell's Python, inside the Nix
# sandbox (no network, no GPU: such tests skip themselves; loopback networking works).
{ pkgs, python }:

pkgs.runCommand "nanochat-tests"
{
  # make + flock: the Makefile tests; git: tests that look at the checkout
  nativeBuildInputs = [ python pkgs.gnumake pkgs.git ]
    ++ (if pkgs.stdenv.hostPlatform.isLinux then [ pkgs.util-linux ] else [ ]);
  src = import ./source.nix;
}
  ''
    cp -r "$src" source
    chmod -R u+w source
    cd source
    # the sandbox has no /usr/bin/env: point test fixtures' #! lines at the store
    patchShebangs --build . > /dev/null
    export HOME="$TMPDIR" NANOCHAT_BASE_DIR="$TMPDIR/nanochat-base" OMP_NUM_THREADS=1 USE_LIBUV=0
    export PYTHONDONTWRITEBYTECODE=1
    python -m pytest -q -p no:cacheprovider tests
    touch "$out"
  ''
