"""Pretraining throughput benchmark: runs the real `scripts.base_train` for a few steps per config
and reports median tok/s, MFU, peak memory and time to first step (compile included).

    python -m bench.bench_pretrain --configs d12:SSSL d20:SSSL d20:L --steps 30 [--device-batch-size 32]
    python -m bench.bench_pretrain --configs d20:SSSL:bs32 --extra=--fp8=on

Each config is depth:window[:bsN]. The base dir must already hold data shards and a tokenizer
(vocab size is taken from it). The GPU box cannot build the embedded corpus (no network), so prepare
the base dir on a machine that can (7 s here) and carry it (about 8 MB without offline_packages/):

    NANOCHAT_BASE_DIR=$PWD/.bench-data make tokenizer VOCAB_SIZE=32768 && rm -rf .bench-data/offline_packages
    # device: carry [".bench-data"], then NANOCHAT_BASE_DIR=$PWD/.bench-data python3 -m bench.bench_pretrain ...

Medians are over the last `--median-of` steps, as the reference numbers in bench/RESULTS.md are.
Output: a markdown table on stdout, JSON lines with --json FILE.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

STEP_RE = re.compile(r"^step (\d+)/(\d+) .*\| loss ([\d.]+) .*\| dt ([\d.]+)ms \| tok/s ([\d,]+) \| mfu ([\d.]+%|n/a)")


def run_config(spec: str, args) -> dict:
    parts = spec.split(":")
    depth, window = int(parts[0].lstrip("d")), parts[1] if len(parts) > 1 else "L"
    bs = args.device_batch_size
    for p in parts[2:]:
        if p.startswith("bs"):
            bs = int(p[2:])
    cmd = [sys.executable, "-m", "scripts.base_train", f"--depth={depth}", f"--window-pattern={window}",
           f"--device-batch-size={bs}", f"--total-batch-size={args.total_batch_size}",
           f"--max-seq-len={args.seq_len}", f"--num-iterations={args.steps}", "--eval-every=-1",
           f"--eval-tokens={args.eval_tokens}", "--sample-every=-1", "--core-metric-every=-1",
           f"--model-tag=bench_d{depth}_{window}_bs{bs}", "--resume=fresh", "--save-every=-1",
           "--dry-run", *args.extra]
    cmd = [c for c in cmd if c]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    wall = time.time() - t0
    out = proc.stdout + proc.stderr
    steps = [STEP_RE.match(line) for line in out.splitlines()]
    steps = [m for m in steps if m]
    tail = steps[-args.median_of:]
    first = re.search(r"time to first step: ([\d.]+)s", out)
    mem = re.search(r"peak memory: ([\d.]+) GiB", out)
    res = {
        "config": spec, "depth": depth, "window": window, "device_batch": bs, "rc": proc.returncode,
        "steps": len(steps), "wall_s": round(wall, 1),
        "tok_per_s": statistics.median(float(m.group(5).replace(",", "")) for m in tail) if tail else None,
        "mfu_pct": (statistics.median(float(m.group(6)[:-1]) for m in tail)
                    if tail and tail[-1].group(6) != "n/a" else None),  # n/a: no bf16 peak known (CPU)
        "dt_ms": statistics.median(float(m.group(4)) for m in tail) if tail else None,
        "first_losses": [float(m.group(3)) for m in steps[:50]],
        "time_to_first_step_s": float(first.group(1)) if first else None,
        "peak_mem_gib": float(mem.group(1)) if mem else None,
        "cmd": " ".join(cmd[1:]),
    }
    if proc.returncode != 0:
        res["error_tail"] = out[-3000:]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["d12:SSSL", "d12:L", "d20:SSSL", "d20:L"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--median-of", type=int, default=15)
    ap.add_argument("--device-batch-size", type=int, default=32)
    ap.add_argument("--total-batch-size", type=int, default=524288)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--eval-tokens", type=int, default=524288)
    ap.add_argument("--json", default="", help="append one JSON line per config to this file")
    ap.add_argument("--extra", action="append", default=[], help="extra base_train flag (repeatable)")
    args = ap.parse_args()
    rows = []
    for spec in args.configs:
        r = run_config(spec, args)
        rows.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "first_losses"}), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
        if r["rc"] != 0:
            print(r.get("error_tail", ""), file=sys.stderr)
    print("\n| config | device batch | tok/s | MFU | dt ms | peak mem GiB | time to first step s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        tps = f"{r['tok_per_s']:,.0f}" if r["tok_per_s"] else "FAILED"
        mfu = f"{r['mfu_pct']:.2f}%" if r["mfu_pct"] is not None else "-"
        dt = f"{r['dt_ms']:.1f}" if r["dt_ms"] is not None else "-"
        print(f"| {r['config']} | {r['device_batch']} | {tps} | {mfu} | {dt} | "
              f"{r['peak_mem_gib']} | {r['time_to_first_step_s']} |")


if __name__ == "__main__":
    main()
