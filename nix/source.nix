# The part of this repository that the Python package and the test suite need (no nix/, docs/,
# bench/, flake files), so that editing docs or Nix files does not rebuild the package or rerun
# the tests. Builtins only.
let
  root = toString ../.;
  keepTop = [ "pyproject.toml" "README.md" "LICENSE" "nanochat" "scripts" "tests" ];
  relative = path: builtins.substring (builtins.stringLength root + 1) (builtins.stringLength (toString path)) (toString path);
  topOf = rel: builtins.head (builtins.match "([^/]*).*" rel);
in
builtins.path {
  path = ../.;
  name = "nanochat-source";
  filter = path: type:
    let
      rel = relative path;
      base = baseNameOf rel;
    in
    builtins.elem (topOf rel) keepTop
    && base != "__pycache__"
    && base != ".pytest_cache"
    && builtins.match ".*\\.pyc" base == null;
}
