#!/usr/bin/env bash
# Issue 17, second device call. (1) Warm time to first step with and without a writable bytecode
# cache: the 2026-12-03e cProfile showed ~9.6 s of a warm start in builtins.compile, i.e. Python
# compiling ~2,300 modules (torch's) from source on every start: the image's site-packages holds no
# usable .pyc and none get written. PYTHONPYCACHEPREFIX points Python's bytecode cache at a writable
# dir; the image also sets PYTHONDONTWRITEBYTECODE=1, which must be unset for any .pyc to be written
# (the 2026-12-03e run missed that: it wrote none, so its "pyc" runs are plain warm runs; this version,
# with `env -u`, has not been run yet). One cold run fills the compile cache; then warm runs alternate without/with the prefix (the
# first with it writes the .pyc files), then one warm run with it under cProfile. (2) The MLP alone,
# default vs inductor's GEMM autotuning vs Triton templates forced (relu² fused), bench.mlp_epilogue.
set -uo pipefail
out=${OUT:-bench-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
sp=${PYTHONPATH:-}
export PYTHONPATH="${sp:+$sp:}$PWD"
site=$(python3 -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")
echo "=== diagnosis: bytecode cache"
env | grep '^PYTHON' | sort
python3 -c "import sys; print('dont_write_bytecode', sys.flags.dont_write_bytecode, 'pycache_prefix', sys.pycache_prefix)"
ls -ld "$site" "$site/torch" "$site/torch/__pycache__" 2>&1
echo "pyc files under torch/: $(find "$site/torch" -name '*.pyc' | wc -l), .py files: $(find "$site/torch" -name '*.py' | wc -l)"
touch "$site/torch/.w" 2>&1 && echo "site-packages writable" && rm -f "$site/torch/.w"
mount | grep -E " / | /opt" | head -3
base="--depth 20 --window SSSL --batch 32 --startup --json $out/ttfs.jsonl"
cache=$(mktemp -d); pyc=$(mktemp -d)
export TORCHINDUCTOR_CACHE_DIR=$cache/inductor TRITON_CACHE_DIR=$cache/triton
w() {  # label, then env assignments for the run
  local label=$1; shift
  echo "=== $label"
  env "$@" python3 -P -m bench.profile_step $base --steps 2 2>&1 | tee -a "$out/ttfs.log" | grep -E '^set-up|^first step|^RESULT' | cut -c1-330
}
w cold
w warm_plain
w warm_pyc_first -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$pyc
w warm_pyc -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$pyc
w warm_plain
w warm_pyc -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$pyc
echo "pyc files written: $(find "$pyc" -name '*.pyc' | wc -l), $(du -sh "$pyc" | cut -f1)"
echo "=== warm_pyc under cProfile"
env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$pyc python3 -P -m cProfile -o "$out/warm_pyc.prof" -m bench.profile_step --depth 20 --window SSSL \
  --batch 32 --startup --steps 2 2>&1 | tee -a "$out/ttfs.log" | grep -E '^set-up|^first step|^RESULT' | cut -c1-330
python3 - "$out/warm_pyc.prof" >"$out/warm_pyc_pstats.txt" <<'PY'
import pstats, sys
s = pstats.Stats(sys.argv[1], stream=sys.stdout)
s.sort_stats("tottime").print_stats(60)
s.sort_stats("cumulative").print_stats(150)
PY
head -c 2500 "$out/warm_pyc_pstats.txt"
unset TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR
export PYTHONPYCACHEPREFIX=$pyc; unset PYTHONDONTWRITEBYTECODE
for v in "default|" "autotune|--inductor max_autotune_gemm=True --inductor max_autotune_gemm_backends=TRITON,ATEN" \
         "forced_triton|--inductor max_autotune_gemm=True --inductor max_autotune_gemm_backends=TRITON"; do
  IFS='|' read -r label rest <<<"$v"
  c=$(mktemp -d)
  echo "=== mlp $label"
  TORCHINDUCTOR_CACHE_DIR=$c/inductor TRITON_CACHE_DIR=$c/triton timeout "${MLP_TIMEOUT:-150}" \
    python3 -P -m bench.mlp_epilogue --label "$label" $rest --json "$out/mlp.jsonl" >>"$out/mlp.log" 2>&1
  echo "rc=$?"; grep -A14 "^$label: fwd+bwd" "$out/mlp.log"
  rm -rf "$c"
done
rm -rf "$cache" "$pyc"
