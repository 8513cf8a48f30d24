# The top-level entries of this repository that the test suite reads: the source of
# checks.<system>.tests (nix/checks.nix). tests/test_nix.py derives the entries the suite needs
# from the test files themselves (paths, `-m` modules, imports, `make`) and fails when one is
# missing here. README.md is here because pyproject.toml names it as the package's readme.
[
  "Makefile"
  "mk"
  "README.md"
  "bench"
  "docs"
  "flake.lock"
  "flake.nix"
  "nanochat"
  "nix"
  "pyproject.toml"
  "scripts"
  "tests"
]
