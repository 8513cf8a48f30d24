# checks.<system>.tests: the CPU test suite (pytest) on the CPU shell's Python, inside the Nix
# sandbox (no network, no GPU: such tests skip themselves; loopback networking works).
{ pkgs, python }:

pkgs.runCommand "nanochat-tests"
{
  nativeBuildInputs = [ python pkgs.git ];
  src = import ./source.nix;
}
  ''
    cp -r "$src" source
    chmod -R u+w source
    cd source
    export HOME="$TMPDIR" NANOCHAT_BASE_DIR="$TMPDIR/nanochat-base" OMP_NUM_THREADS=1 USE_LIBUV=0
    export PYTHONDONTWRITEBYTECODE=1
    python -m pytest -q -p no:cacheprovider tests
    touch "$out"
  ''
