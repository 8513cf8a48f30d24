#!/usr/bin/env bash
# Run bench.profile_step over several variants, each in a fresh process with COLD compile caches
# (so time to first step is honest), writing logs and JSON lines under $OUT (or ./bench-out).
#   bash bench/profile_matrix.sh "LABEL|PYTHONPATH-prefix|profile_step args" ...
# A PYTHONPATH prefix (e.g. .bench_base, an exported older checkout) measures the code before a change.
set -u
out=${OUT:-bench-out}; mkdir -p "$out"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
for spec in "$@"; do
  IFS='|' read -r label pp rest <<<"$spec"
  cache=$(mktemp -d)
  echo "=== $label: $rest"
  TORCHINDUCTOR_CACHE_DIR=$cache/inductor TRITON_CACHE_DIR=$cache/triton PYTHONPATH="${pp:+$pp:}$PWD" \
    timeout 400 python3 -P -m bench.profile_step $rest --json "$out/profile.jsonl" >"$out/$label.log" 2>&1
  echo "rc=$? $(grep -h '^RESULT' "$out/$label.log" | cut -c1-400)"
  grep -A40 '^CUDA time of one step' "$out/$label.log" | head -20
  tail -3 "$out/$label.log" | grep -i error
  rm -rf "$cache"
done
