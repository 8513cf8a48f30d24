#!/usr/bin/env bash
# Issue 17 target 3 on the real script: time to first step of `scripts.base_train` (d20 SSSL, device
# batch 32, through bench.bench_pretrain), cold and warm compile cache, with and without the bytecode
# cache under the base dir that the Makefile's PYCACHE rule sets up where the image forbids writing .pyc
# (the _pyc runs set the same environment; the _plain runs leave the image as it is). "Time to first step" counts from
# the first import of nanochat, before torch (nanochat.common.PROCESS_START).
#
# Runs, each a fresh process on its own or a shared compile cache:
#   cold_plain       no bytecode cache, empty compile cache
#   cold_pyc_first   bytecode cache empty (this run writes it), empty compile cache
#   cold_pyc         bytecode cache present, empty compile cache       <- the cold number
#   then, if time allows, rounds of warm_plain / warm_pyc on cold_pyc's compile cache.
# Then `bench.gemm_shapes` (the step's GEMMs under cuBLAS and cuBLASLt) and, if time allows,
# `bench.profile_step --profile` with each BLAS back end. Needs the base dir of bench_pretrain.py's
# docstring in NANOCHAT_BASE_DIR.
set -uo pipefail
out=${OUT:-bench-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
budget=${TTFS_BUDGET_S:-420}
base=${NANOCHAT_BASE_DIR:?set NANOCHAT_BASE_DIR to the bench base dir}
rm -rf "$base/pycache"
env | grep '^PYTHON' | sort
python3 -c "import sys; print('dont_write_bytecode', sys.flags.dont_write_bytecode)"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw --format=csv,noheader
caches=$(mktemp -d)
J=$out/ttfs.jsonl; : >"$J"
PYC=(-u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX="$base/pycache")  # what `make` exports there
run() {  # label, compile-cache name, then env assignments
  local label=$1 cache=$2; shift 2
  echo "=== $label (t=${SECONDS}s)"
  env "$@" TORCHINDUCTOR_CACHE_DIR="$caches/$cache" TRITON_CACHE_DIR="$caches/$cache/triton" \
    python3 -m bench.bench_pretrain --configs d20:SSSL:bs32 --steps 3 --median-of 2 --json "$out/run.jsonl" \
    | grep '^{' | python3 -c "import json,sys; r=json.loads(sys.stdin.readline()); r['label']='$label'; print(json.dumps(r))" \
    | tee -a "$J" | cut -c1-400
  echo "pyc files in the bytecode cache: $(find "$base/pycache" -name '*.pyc' 2>/dev/null | wc -l)"
}
run cold_plain c1
run cold_pyc_first c2 "${PYC[@]}"
run cold_pyc c3 "${PYC[@]}"
echo "=== gemm_shapes (t=${SECONDS}s)"
python3 -m bench.gemm_shapes --depth 20 --json "$out/gemm.jsonl"
for r in 1 2 3; do
  if [ "$SECONDS" -gt "$budget" ]; then echo "(no warm round $r: t=${SECONDS}s)"; break; fi
  run warm_plain c3
  run warm_pyc c3 "${PYC[@]}"
done
for blas in cublas cublaslt; do
  if [ "$SECONDS" -gt "$((budget + 60))" ]; then echo "(no profile_step $blas: t=${SECONDS}s)"; break; fi
  echo "=== profile_step --blas $blas (t=${SECONDS}s)"
  TORCHINDUCTOR_CACHE_DIR="$caches/c3" TRITON_CACHE_DIR="$caches/c3/triton" python3 -m bench.profile_step \
    --depth 20 --window SSSL --batch 32 --steps 6 --profile --blas $blas --json "$out/profile.jsonl" \
    >"$out/profile_$blas.log" 2>&1
  grep -E '^CUDA time|matmul|^RESULT' "$out/profile_$blas.log" | head -4 | cut -c1-300
done
python3 - "$J" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r["time_to_first_step_s"])
    print(f"{r['label']:<16} ttfs {r['time_to_first_step_s']} s  process {r['wall_s']} s  tok/s {r['tok_per_s']}  rc {r['rc']}")
for k, v in by.items():
    print(f"median {k:<16} {statistics.median(v)} s of {len(v)}: {v}")
PY
rm -rf "$caches"
