# rustbpe: the Rust BPE tokenizer trainer nanochat uses (not packaged in nixpkgs).
# Built from its PyPI sdist with maturin.
#
# No hash here is unknown. The sdist is pinned by the sha256 PyPI publishes for it, and its Rust
# dependencies come from the Cargo.lock it ships (lockfile v4: 93 crates.io packages, each with its
# own checksum, no git sources). ./rustbpe-Cargo.lock is a byte-identical copy of that file
# (tests/test_nix.py checks it against the sdist), so importCargoLock can vendor every crate as a
# fixed-output download from those checksums, with no extra hash to compute.
{ lib
, buildPythonPackage
, fetchPypi
, rustPlatform
}:

buildPythonPackage rec {
  pname = "rustbpe";
  version = "0.1.0";
  pyproject = true;

  # sha256 of rustbpe-0.1.0.tar.gz as published on PyPI
  # (18765f62ac579a9ff9e89c611f9c9b9e46bd1adde9be3f59c00b6eb4e1f28b3a), written as SRI.
  src = fetchPypi {
    inherit pname version;
    hash = "sha256-GHZfYqxXmp/56JxhH5ybnka9Gt3pvj9ZwAtutOHyizo=";
  };

  cargoDeps = rustPlatform.importCargoLock { lockFile = ./rustbpe-Cargo.lock; };

  # cargoSetupHook points cargo at the vendored crates (and checks that the sdist's Cargo.lock is
  # the one they were vendored from); maturinBuildHook builds the wheel and brings cargo and rustc.
  nativeBuildInputs = [
    rustPlatform.cargoSetupHook
    rustPlatform.maturinBuildHook
  ];

  pythonImportsCheck = [ "rustbpe" ];

  meta = {
    description = "BPE tokenizer trainer written in Rust with Python bindings (used by nanochat)";
    homepage = "https://pypi.org/project/rustbpe/";
    license = lib.licenses.mit;
  };
}
