#!/usr/bin/env bash
# Run bench.profile_step over several variants, each in a fresh process with COLD compile caches
# (so time to first step is honest), writing logs and JSON lines under $OUT (or ./bench-out).
#   bash bench/profile_matrix.sh "LABEL|PYTHONPATH-prefix|profile_step args" ...
# A PYTHONPATH prefix (e.g. .bench_base, an exported older checkout) measures the code before a change.
# PM_TIMEOUT: seconds per variant (default 400; max-autotune compiles take longer). PM_CACHE=DIR (an
# empty dir): use and keep it as the compile cache, so warm runs can follow (one variant per DIR).
set -u
out=${OUT:-bench-out}; mkdir -p "$out"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
for spec in "$@"; do
  IFS='|' read -r label pp rest <<<"$spec"
  cache=${PM_CACHE:-$(mktemp -d)}
  echo "=== $label: $rest"
  TORCHINDUCTOR_CACHE_DIR=$cache/inductor TRITON_CACHE_DIR=$cache/triton PYTHONPATH="${pp:+$pp:}$PWD" \
    timeout "${PM_TIMEOUT:-400}" python3 -P -m bench.profile_step $rest --json "$out/profile.jsonl" >"$out/$label.log" 2>&1
  echo "rc=$? $(grep -h '^RESULT' "$out/$label.log" | cut -c1-400)"
  grep -A40 '^CUDA time of one step' "$out/$label.log" | head -20
  tail -3 "$out/$label.log" | grep -i error
  [ -n "${PM_CACHE:-}" ] || rm -rf "$cache"
done
