# A copy of this repository holding only the named top-level entries (an entry that does not
# exist is skipped) and no Python bytecode, so that editing anything else does not rebuild what
# depends on it. nixpkgs' lib.fileset does the filtering.
#
#   import ./source.nix { inherit lib; keep = [ "pyproject.toml" "nanochat" ]; }
#
# Two callers, two lists: the Python package (nix/nanochat.nix) keeps what pip needs; the test
# check (nix/checks.nix) keeps what the suite reads, listed in nix/check-source.nix.
{ lib, keep }:

let
  root = ../.;
  inherit (lib) fileset;
in
fileset.toSource {
  inherit root;
  fileset = fileset.difference
    (fileset.unions (map (entry: fileset.maybeMissing (root + "/${entry}")) keep))
    # bytecode (and with it the __pycache__ directories, which hold nothing else)
    (fileset.fileFilter (file: file.hasExt "pyc") root);
}
