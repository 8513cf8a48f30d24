# nanochat itself, as a Python package built from this repository (pyproject.toml, setuptools).
# The test suite is not run here: it is checks.<system>.tests (nix/checks.nix), on CPU.
{ lib
, buildPythonPackage
, setuptools
, torch
, tiktoken
, rustbpe
, pyarrow
, numpy
, regex
, datasets
}:

let
  project = (builtins.fromTOML (builtins.readFile ../pyproject.toml)).project;
in
buildPythonPackage {
  pname = project.name;
  inherit (project) version;
  pyproject = true;

  # only what pip needs, so that editing tests, docs or Nix files does not rebuild the package
  src = import ./source.nix {
    inherit lib;
    keep = [ "pyproject.toml" "README.md" "LICENSE" "nanochat" "scripts" ];
  };

  build-system = [ setuptools ];
  dependencies = [ torch tiktoken rustbpe pyarrow numpy regex datasets ];

  doCheck = false;
  pythonImportsCheck = [ "nanochat" ];

  meta = {
    inherit (project) description;
    license = lib.licenses.mit;
  };
}
