# allowUnfreePredicate for nanochat, decided by LICENCE (never by package name), the way the CUDA
# section of the nixpkgs manual shows: a package is allowed when every one of its licences is free
# or is one of NVIDIA's CUDA licences below. Any other unfree licence (an unrelated proprietary
# tool, a stray dependency) is still refused with Nix's usual "has an unfree license" error.
#
# Why not names: NVIDIA renames packages between CUDA releases (from CUDA 13.3 on `cuda_cccl` is
# `cccl`), and a name prefix would also wave through any unfree package that happens to start
# with "cuda". The licence is what nixpkgs' CUDA builders set:
#   * every CUDA redistributable without a licence of its own gets lib.licenses.nvidiaCudaRedist
#     (or nvidiaCuda): shortName "CUDA EULA" (pkgs/development/cuda-modules, the redist builder);
#   * cuDNN sets shortName "cuDNN EULA", cuSPARSELt "cuSPARSELt EULA", cuTENSOR "cuTENSOR EULA";
#   * NCCL is BSD-3 (free), so it needs no exception.
#
# `torchWheel`: the `.#bin` shell's torch is PyTorch's own CUDA wheel (nixpkgs' torch-bin). nixpkgs
# licenses it [ bsd3 issl unfreeRedistributable ]: the wheel bundles Intel MKL (ISSL) and links
# the CUDA libraries. That one package (pname "torch", binary provenance) may carry exactly those;
# nothing else gains anything from it.
#
# Builtins only, so it can be evaluated and tested on its own:
#   nix-instantiate --eval -E '(import ./nix/unfree.nix).cuda { pname = "cccl";
#     meta.license = { shortName = "CUDA EULA"; free = false; }; }'                 # => true
let
  nvidiaShortNames = [ "CUDA EULA" "cuDNN EULA" "cuSPARSELt EULA" "cuTENSOR EULA" ];
  torchWheelShortNames = [ "issl" "unfreeRedistributable" ];

  toList = x: if builtins.isList x then x else [ x ];
  licencesOf = pkg: toList (pkg.meta.license or [ ]);
  # a licence is an attrset (lib.licenses.*); a bare string is treated as its own short name
  shortName = l: if builtins.isString l then l else l.shortName or "";
  isFree = l: if builtins.isString l then false else l.free or true;
  allLicences = ok: pkg: licencesOf pkg != [ ] && builtins.all (l: isFree l || ok (shortName l)) (licencesOf pkg);

  cuda = allLicences (n: builtins.elem n nvidiaShortNames);
  isTorchWheel = pkg:
    (pkg.pname or "") == "torch"
    && builtins.elem "binaryNativeCode" (map (s: s.shortName or s) (pkg.meta.sourceProvenance or [ ]));
in
{
  inherit cuda nvidiaShortNames;
  torchWheel = pkg:
    cuda pkg
    || (isTorchWheel pkg && allLicences (n: builtins.elem n (nvidiaShortNames ++ torchWheelShortNames)) pkg);
}
