# rustbpe: the Rust BPE tokenizer trainer nanochat uses (not packaged in nixpkgs).
# Built from its PyPI sdist with maturin; the sdist ships Cargo.lock (crates.io crates only).
{ lib
, buildPythonPackage
, fetchPypi
, rustPlatform
, cargo
, rustc
  # ######################################################################################
  # ## cargoHash is NOT KNOWN YET. It is the hash of the vendored crates (fetchCargoVendor),
  # ## which can only be computed by downloading them from crates.io; the machine these
  # ## files were written on had no access to crates.io. lib.fakeHash makes the first build
  # ## fail with a hash mismatch that prints the real value. One-command fix:
  # ##     nix build .#rustbpe 2>&1 | grep 'got:'
  # ## then paste that sha256-... string here (replacing lib.fakeHash) and `git add` it.
  # ######################################################################################
, cargoHash ? lib.fakeHash
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

  cargoDeps = rustPlatform.fetchCargoVendor {
    inherit pname version src;
    hash = cargoHash;
  };

  nativeBuildInputs = [
    rustPlatform.cargoSetupHook
    rustPlatform.maturinBuildHook
    cargo
    rustc
  ];

  pythonImportsCheck = [ "rustbpe" ];

  meta = {
    description = "BPE tokenizer trainer written in Rust with Python bindings (used by nanochat)";
    homepage = "https://pypi.org/project/rustbpe/";
    license = lib.licenses.mit;
  };
}
