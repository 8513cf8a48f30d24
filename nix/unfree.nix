# allowUnfreePredicate for nanochat: allow NVIDIA's unfree CUDA redistributables, nothing else.
#
# Why a name check: with config.cudaSupport the only unfree packages in our closure are NVIDIA's
# binary redistributables (cuda_nvcc, cuda_cudart, libcublas, libcufft, libcusparse_lt, cudnn,
# libnvjitlink, libnvshmem, nccl's and TensorRT's families, the driver's nvidia-* pieces). torch,
# MAGMA and Triton themselves are free software. Every NVIDIA package name starts with one of the
# prefixes below, so anything else that is unfree (a stray dependency, an unrelated proprietary
# tool) is still refused by Nix with the usual "has an unfree license" error instead of being
# silently accepted as it would be with allowUnfree = true.
#
# The argument is the package (an attrset with pname or name); written with builtins only so that
# it can be evaluated and tested on its own:
#   nix-instantiate --eval -E '(import ./nix/unfree.nix) { pname = "cudnn"; }'   # => true
let
  prefixes = [
    "cuda" # cuda_nvcc, cuda_cudart, cuda_cccl, cuda_nvrtc, cuda_cupti, cuda_nvml_dev, cudatoolkit
    "libcu" # libcublas, libcufft, libcurand, libcusolver, libcusparse, libcusparse_lt, libcufile
    "libnv" # libnvjitlink, libnvshmem, libnvjpeg, libnvfatbin
    "libnpp"
    "nvidia" # nvidia-x11 / nvidia-settings style driver pieces
    "cudnn"
    "cusparselt"
    "cutensor"
    "nccl"
    "tensorrt"
  ];
  nameOf = pkg: pkg.pname or (builtins.parseDrvName (pkg.name or "")).name;
  startsWith = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
in
pkg: builtins.any (prefix: startsWith prefix (nameOf pkg)) prefixes
