#!/usr/bin/env bash
# Cold-compile-cache first step (bytecode cached), A/B: does turning off inductor's runtime autotuning
# of pointwise kernels (`triton.autotune_pointwise=False`: one config compiled per pointwise kernel
# instead of several, none benchmarked) shorten it, and what does it cost in step time?
# Rounds of A (defaults) / B interleaved on fresh compile caches, then --steps 8 --profile of each.
set -uo pipefail
out=${OUT:-bench-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$(mktemp -d)}
# the bytecode cache `make` sets up where the image forbids writing .pyc (mk/setup.mk, PYCACHE)
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ]; then unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}/pycache; fi
rounds=${ROUNDS:-3}
J=$out/cold_ab.jsonl; : >"$J"
B_ARGS=(--inductor triton.autotune_pointwise=False)
one() {  # label, cache dir, steps, extra profile_step args...
  local label=$1 c=$2 steps=$3; shift 3
  echo "=== $label (t=${SECONDS}s)"
  TORCHINDUCTOR_CACHE_DIR=$c TRITON_CACHE_DIR=$c/triton python3 -m bench.profile_step --depth 20 \
    --window SSSL --batch 32 --startup --steps "$steps" --json "$J" "$@" >"$out/$label.log" 2>&1
  echo "rc=$?"; grep -E '^set-up|^first step|^RESULT|^CUDA time|ms .*%' "$out/$label.log" | cut -c1-260
}
root=$(mktemp -d)
one fill_pyc "$root/fill" 1
for r in $(seq "$rounds"); do
  one "A_cold_$r" "$root/A$r" 2
  one "B_cold_$r" "$root/B$r" 2 "${B_ARGS[@]}"
done
one A_profile "$root/A1" 8 --profile
one B_profile "$root/B1" 8 --profile "${B_ARGS[@]}"
python3 - "$J" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(r.get("inductor", {}), "ttfs", r["time_to_first_step_s"], "dt_ms", r["dt_ms"], "tok/s", r["tok_per_s"],
          "phases", r.get("first_step_phases_s"))
PY
rm -rf "$root"
