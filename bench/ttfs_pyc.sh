#!/usr/bin/env bash
# Issue 17 target 3 (warm time to first step < 10 s, d20 SSSL): does a bytecode cache get there?
# The 2026-12-03e cProfile showed ~9.3 s of a warm start in builtins.compile: Python compiling ~2,400
# modules (torch's, sympy's, ...) from source in every process, because the device image sets
# PYTHONDONTWRITEBYTECODE=1 and ships no .pyc. PYTHONPYCACHEPREFIX points the bytecode cache at a
# writable dir, and PYTHONDONTWRITEBYTECODE must be unset (`env -u`) or nothing is written (the
# 2026-12-03e call missed that). An ordinary pip/Nix install writes the .pyc at install time, so the
# "pyc" runs are the normal case; the "plain" runs are this image's.
#
# One machine, one compile cache: one cold run fills it; one warm run with the prefix writes the .pyc
# (count reported); then rounds of plain / pyc / pyc + TORCHINDUCTOR_COMPILE_THREADS=1 (no inductor
# compile-worker pool: does skipping it help once the cache is warm?), interleaved so machine drift
# hits all three alike, 3 rounds always, a 4th if time allows; last one warm+pyc run under cProfile
# (pstats text kept). Each run: `bench.profile_step --steps 2 --startup`. Summary table at the end.
# (The MLP epilogue part of the earlier version is gone: measured in 2026-12-03e.)
set -uo pipefail
out=${OUT:-bench-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
sp=${PYTHONPATH:-}
export PYTHONPATH="${sp:+$sp:}$PWD"
budget=${TTFS_BUDGET_S:-300}   # start a 4th round only if this many seconds have not yet passed
site=$(python3 -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")
echo "=== diagnosis: bytecode cache"
env | grep '^PYTHON' | sort
python3 -c "import sys; print('dont_write_bytecode', sys.flags.dont_write_bytecode, 'pycache_prefix', sys.pycache_prefix)"
echo "pyc files under site-packages: $(find "$site" -name '*.pyc' | wc -l), .py files: $(find "$site" -name '*.py' | wc -l)"
nproc; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv,noheader
cache=$(mktemp -d); pyc=$(mktemp -d)
export TORCHINDUCTOR_CACHE_DIR=$cache/inductor TRITON_CACHE_DIR=$cache/triton
J=$out/ttfs.jsonl; L=$out/labels.tsv; : >"$J"; : >"$L"
PYC=(-u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$pyc)
w() {  # label, then env arguments for the run; extra python args in $PRE (e.g. cProfile)
  local label=$1; shift
  local n0 t0 t1 rc
  n0=$(wc -l <"$J"); t0=$(date +%s.%N)
  echo "=== $label (t=${SECONDS}s)"
  env "$@" python3 -P ${PRE:-} -m bench.profile_step --depth 20 --window SSSL --batch 32 --startup \
    --steps 2 --json "$J" >"$out/run.tmp" 2>&1
  rc=$?; t1=$(date +%s.%N)
  cat "$out/run.tmp" >>"$out/ttfs.log"
  grep -E '^set-up|^first step|^RESULT' "$out/run.tmp" | cut -c1-330
  local wall; wall=$(python3 -c "print(f'{$t1-$t0:.1f}')")
  echo "rc=$rc process wall ${wall}s"
  if [ "$(wc -l <"$J")" -gt "$n0" ]; then printf '%s\t%s\n' "$label" "$wall" >>"$L"
  else echo "!! $label produced no result"; tail -20 "$out/run.tmp"; fi
}
w cold
w warm_pyc_first "${PYC[@]}"
echo "pyc files written by the first pyc run: $(find "$pyc" -name '*.pyc' | wc -l), $(du -sh "$pyc" | cut -f1)"
for r in 1 2 3 4; do
  if [ "$r" = 4 ] && [ "$SECONDS" -gt "$budget" ]; then echo "(no round 4: t=${SECONDS}s)"; break; fi
  w warm_plain
  w warm_pyc "${PYC[@]}"
  w warm_pyc_threads1 "${PYC[@]}" TORCHINDUCTOR_COMPILE_THREADS=1
done
echo "pyc files after all pyc runs: $(find "$pyc" -name '*.pyc' | wc -l), $(du -sh "$pyc" | cut -f1)"
PRE="-m cProfile -o $out/warm_pyc.prof" w warm_pyc_cprofile "${PYC[@]}"
python3 - "$out/warm_pyc.prof" >"$out/warm_pyc_pstats.txt" <<'PY'
import pstats, sys
s = pstats.Stats(sys.argv[1], stream=sys.stdout)
s.sort_stats("tottime").print_stats(60)
s.sort_stats("cumulative").print_stats(150)
s.sort_stats("tottime").print_callers("builtins.compile")
s.sort_stats("cumulative").print_callees("_find_and_load_unlocked", 5)
PY
head -c 3000 "$out/warm_pyc_pstats.txt"
echo "=== summary (ttfs = in-process time to first step; wall = whole process incl. interpreter start, 2 steps, exit)"
python3 - "$J" "$L" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
labels = [l.rstrip("\n").split("\t") for l in open(sys.argv[2])]
by = {}
print(f"{'run':<22}{'ttfs':>6}{'wall':>6}  set-up (imports / inductor import / CUDA+model / opt / wrappers+data)  first step (fwd / bwd / rest / opt)")
for (lab, wall), r in zip(labels, rows):
    s, p = r["setup_s"], r.get("first_step_phases_s", {})
    by.setdefault(lab, []).append(r["time_to_first_step_s"])
    print(f"{lab:<22}{r['time_to_first_step_s']:>6.1f}{float(wall):>6.1f}  " + " / ".join(f"{v:.2f}" for v in s.values())
          + "  " + " / ".join(f"{v:.2f}" for v in p.values()) + f"  dt {r['dt_ms']} ms")
for lab, v in by.items():
    print(f"median {lab:<22} {statistics.median(v):5.1f} s of {len(v)}: {v}")
PY
rm -rf "$cache" "$pyc" "$out/run.tmp"
