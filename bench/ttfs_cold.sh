#!/usr/bin/env bash
# Issue 17 target 3, cold half: where does a cold-compile-cache first step go once Python's bytecode
# is cached (as `make` keeps it where the image forbids writing it)? One run fills the bytecode cache, then N cold runs
# (each on an empty inductor/Triton cache) of `bench.profile_step --startup`, the last under cProfile.
set -uo pipefail
out=${OUT:-bench-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-$(mktemp -d)}
# the bytecode cache `make` sets up where the image forbids writing .pyc (mk/setup.mk, PYCACHE)
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ]; then unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=${NANOCHAT_BASE_DIR:-$HOME/.cache/nanochat}/pycache; fi
n=${COLD_RUNS:-3}
J=$out/cold.jsonl; : >"$J"
one() {  # label, then extra python args before -m
  local label=$1; shift
  local c; c=$(mktemp -d)
  echo "=== $label (t=${SECONDS}s)"
  TORCHINDUCTOR_CACHE_DIR=$c TRITON_CACHE_DIR=$c/triton python3 "$@" -m bench.profile_step --depth 20 \
    --window SSSL --batch 32 --startup --steps 2 --json "$J" >"$out/$label.log" 2>&1
  echo "rc=$?"; grep -vE '^step |Warning|warn' "$out/$label.log" | head -30 | cut -c1-250
  rm -rf "$c"
}
one fill_pyc
for i in $(seq "$n"); do one "cold_pyc_$i"; done
one cold_pyc_cprofile -m cProfile -o "$out/cold.prof"
python3 - "$out/cold.prof" >"$out/cold_pstats.txt" <<'PY'
import pstats, sys
s = pstats.Stats(sys.argv[1], stream=sys.stdout)
s.sort_stats("tottime").print_stats(50)
s.sort_stats("cumulative").print_stats(120)
PY
head -c 5000 "$out/cold_pstats.txt"
python3 -c "
import json
for l in open('$J'):
    r = json.loads(l); print(r['time_to_first_step_s'], r['setup_s'], r.get('first_step_phases_s'))"
