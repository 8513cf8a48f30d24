#!/usr/bin/env bash
# Issue 17, one device call: (a) the d20 SSSL baseline, cold cache, with the kernel profile; (c) two warm
# starts on (a)'s cache, the second under cProfile, to see where the warm time to first step goes; (b)
# inductor GEMM autotuning with Triton templates, so pointwise epilogues (relu^2 and its backward) can
# fuse into the matmuls, cold cache. (b) goes last: its compile time is unknown and may hit PM_TIMEOUT.
# Everything lands under $OUT (7 files). Needs PYTHONPATH=/tmp/site (cudnn-frontend) set by the caller.
#   bash bench/epilogue_ttfs.sh [extra args for (b), e.g. "--inductor max_autotune_gemm_search_space=DEFAULT"]
set -uo pipefail
out=${OUT:-bench-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
base="--depth 20 --window SSSL --batch 32"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.limit --format=csv
python3 -c "import torch, triton, torch._inductor.config as c; print('torch', torch.__version__, 'triton', triton.__version__,
  'benchmark_epilogue_fusion', c.benchmark_epilogue_fusion, 'epilogue_fusion', c.epilogue_fusion,
  'backends', c.max_autotune_gemm_backends, 'search space', c.max_autotune_gemm_search_space)"
sp=${PYTHONPATH:-}
cache=$(mktemp -d)
PM_CACHE=$cache bash bench/profile_matrix.sh "a_base|$sp|$base --steps 8 --profile"
echo "=== c: warm starts on a_base's cache"
export TORCHINDUCTOR_CACHE_DIR=$cache/inductor TRITON_CACHE_DIR=$cache/triton PYTHONPATH="${sp:+$sp:}$PWD"
python3 -P -m bench.profile_step $base --steps 3 --startup --json "$out/profile.jsonl" 2>&1 | tee "$out/warm.log" | grep -v '^step '
echo "=== c: warm start under cProfile"
python3 -P -m cProfile -o "$out/warm.prof" -m bench.profile_step $base --steps 3 --startup 2>&1 | tee -a "$out/warm.log" | grep -v '^step '
python3 - "$out/warm.prof" >"$out/warm_pstats.txt" <<'EOF'
import pstats, sys
s = pstats.Stats(sys.argv[1], stream=sys.stdout)
s.sort_stats("cumulative").print_stats(120)
s.sort_stats("tottime").print_stats(50)
EOF
head -c 3000 "$out/warm_pstats.txt"
unset TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR
export PYTHONPATH=$sp
PM_TIMEOUT=${PM_TIMEOUT:-380} bash bench/profile_matrix.sh \
  "b_autotune|$sp|$base --steps 8 --profile --inductor max_autotune_gemm=True --inductor max_autotune_gemm_backends=TRITON,ATEN $*"
grep -h -A3 "AUTOTUNE" "$out/b_autotune.log" | head -80
rm -rf "$cache"
