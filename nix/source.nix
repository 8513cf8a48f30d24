# A filtered copy of this repository: only the named top-level entries (and never caches or
# bytecode), so that editing anything else does not rebuild what depends on it. Builtins only.
#
#   import ./source.nix { name = "nanochat-source"; keep = [ "pyproject.toml" "nanochat" ]; }
#
# Two callers, two lists: the Python package (nix/nanochat.nix) keeps what pip needs; the test
# check (nix/checks.nix) keeps what the suite reads, listed in nix/check-source.nix.
{ name, keep }:

let
  root = toString ../.;
  relative = path: builtins.substring (builtins.stringLength root + 1) (builtins.stringLength (toString path)) (toString path);
  topOf = rel: builtins.head (builtins.match "([^/]*).*" rel);
  junk = [ "__pycache__" ".pytest_cache" ".venv" ".git" "result" ];
in
builtins.path {
  path = ../.;
  inherit name;
  filter = path: type:
    let
      rel = relative path;
      base = baseNameOf rel;
    in
    builtins.elem (topOf rel) keep
    && !(builtins.elem base junk)
    && builtins.match ".*\\.pyc" base == null;
}
