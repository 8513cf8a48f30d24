# allowUnfreePredicate for nanochat's package sets, decided by LICENCE. nixpkgs calls it for every
# package of a closure whose licence it finds unfree (pkgs/stdenv/generic/check-meta.nix), with
# the package's attributes (pname, meta, ...).
#
# `cuda` (the source-built shells): every licence of the package is free or one of NVIDIA's CUDA
# licences: "CUDA EULA" (lib.licenses.nvidiaCuda / nvidiaCudaRedist: every CUDA redistributable
# without a licence of its own), "cuDNN EULA", "cuSPARSELt EULA", "cuTENSOR EULA" (nixpkgs'
# pkgs/development/cuda-modules/_cuda/lib/licenses.nix). NCCL is BSD-3. Names are not looked at:
# NVIDIA renames packages (`cuda_cccl` is `cccl` from CUDA 13.3 on), and a name rule would wave
# through any unfree package called "cuda...".
#
# `bin` (the `.#bin` shell, nixpkgs' torch-bin): the same, plus the three packages of torch-bin's
# closure that nixpkgs licenses unfreeRedistributable, each with exactly its licences:
#   torch          PyTorch's wheel (binary): [ bsd3 issl unfreeRedistributable ] (bundles MKL)
#   triton         Triton's wheel, triton-bin (binary): [ unfreeRedistributable mit ] (bundles ptxas)
#   cuda-bindings  NVIDIA's CUDA Python bindings (built from source): unfreeRedistributable
# unfreeRedistributable is a catch-all licence, so these are named: any other package with it
# (or the same names built from source where a binary is expected) is still refused.
#
# Licence shapes, as nixpkgs' lib has them (lib/licenses): a licence attrset, a list of them (all
# must pass), or a compound expression (lib.licenses.AND / OR / WITH / PLUS, no `free` attribute
# of its own), decided with lib.licenses.evaluateProperty the way lib.licenses.isFree does (OR:
# one branch suffices; AND: every branch). A licence without `free = true`, or a bare string,
# counts as unfree.
#
#   nix-instantiate --eval -E '(import ./nix/unfree.nix { lib = import <nixpkgs/lib>; }).cuda
#     { pname = "cccl"; meta.license = (import <nixpkgs/lib>).licenses.nvidiaCudaRedist; }'  # => true
{ lib }:

let
  inherit (builtins) all elem isAttrs isList;

  nvidiaShortNames = [ "CUDA EULA" "cuDNN EULA" "cuSPARSELt EULA" "cuTENSOR EULA" ];

  # the .#bin shell's extra licences per package name, and whether that package must be a binary
  wheelShell = {
    torch = { licences = [ "issl" "unfreeRedistributable" ]; binary = true; };
    triton = { licences = [ "unfreeRedistributable" ]; binary = true; };
    cuda-bindings = { licences = [ "unfreeRedistributable" ]; binary = false; };
  };

  # one licence expression: a simple licence is accepted by `ok`; compounds as lib.licenses does
  accepts = ok: licence:
    if isList licence then licence != [ ] && all (accepts ok) licence
    else if isAttrs licence && licence ? licenseType && licence.licenseType != "simple" then
      lib.licenses.evaluateProperty ok true licence
    else isAttrs licence && ok licence;

  freeOr = shortNames: l: (l.free or false) || elem (l.shortName or null) shortNames;

  isBinary = pkg: builtins.any (s: (s.shortName or s) == "binaryNativeCode") (pkg.meta.sourceProvenance or [ ]);

  cuda = pkg: pkg ? meta.license && accepts (freeOr nvidiaShortNames) pkg.meta.license;

  bin = pkg:
    cuda pkg
    || (
      let extra = wheelShell.${pkg.pname or ""} or null; in
      extra != null
      && (!extra.binary || isBinary pkg)
      && pkg ? meta.license
      && accepts (freeOr (nvidiaShortNames ++ extra.licences)) pkg.meta.license
    );
in
{
  inherit cuda bin nvidiaShortNames wheelShell;
}
