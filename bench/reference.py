"""Run the reference (karpathy/nanochat at a given commit) beside ours, in the same device call, on the
same data, so that every speed claim is a ratio measured side by side.

The reference's code is never part of this repository: export a checkout into an ignored folder
and carry it to the GPU box with the bench data (bench_pretrain.py's docstring says how to make
`.bench-data`):

    git -C <nanochat clone> archive 348fbb3 --prefix=nanochat-ref/ | tar -x -C .ref   # .ref/ is ignored
    # device: carry [".bench-data", ".ref"], then
    NANOCHAT_BASE_DIR=$PWD/.bench-data python3 -m bench.reference --ref .ref/nanochat-ref \
        pretrain --depth 20 --window SSSL --device-batch-size 32 --steps 30 --json $OUT/ref.jsonl
    python3 -m bench.reference --ref .ref/nanochat-ref decode --depth 12 --json $OUT/ref.jsonl

`pretrain` converts our tokenizer into the reference's format (a pickled tiktoken Encoding) in a
separate base dir whose base_data/ links to ours, then runs the reference's own
`python -m scripts.base_train` and reads its step lines (median tok/s and MFU of the last
`--median-of` steps, as bench_pretrain does for ours). `decode` times the reference's own
`Engine.generate` on a freshly initialised model, batch 1 and 8, like bench/bench_decode.py.

The reference imports wandb at module level even when logging is off; a stand-in module that
refuses real use is put first on its PYTHONPATH (the GPU image has no wandb).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP_RE = re.compile(r"step (\d+)/(\d+) .*\| dt: ([\d.]+)ms \| tok/sec: ([\d,]+) \| mfu: ([\d.]+)")
WANDB_STANDIN = '''"""Stand-in for wandb (not installed on the GPU image): the reference imports it at module level."""
def init(*args, **kwargs):
    raise RuntimeError("wandb is not available here: run the reference with --run=dummy")
'''


def our_base_dir() -> Path:
    base = os.environ.get("NANOCHAT_BASE_DIR")
    if not base:
        sys.exit("error: set NANOCHAT_BASE_DIR to a base dir holding base_data/ and tokenizer/ (see the docstring)")
    return Path(base)


def reference_base_dir(ours: Path, work: Path) -> Path:
    """A base dir in the reference's layout: base_data/ is ours (linked), tokenizer/ converted."""
    import tiktoken
    import torch
    ref = work / "ref-base"
    (ref / "tokenizer").mkdir(parents=True, exist_ok=True)
    link = ref / "base_data"
    if not link.exists():
        link.symlink_to((ours / "base_data").resolve())
    with open(ours / "tokenizer" / "tokenizer.pkl", "rb") as f:
        spec = pickle.load(f)  # ours: {"pattern", "mergeable_ranks", "special_tokens"}
    enc = tiktoken.Encoding(name="rustbpe", pat_str=spec["pattern"], mergeable_ranks=spec["mergeable_ranks"],
                            special_tokens=spec["special_tokens"])
    with open(ref / "tokenizer" / "tokenizer.pkl", "wb") as f:
        pickle.dump(enc, f)
    token_bytes = torch.load(ours / "tokenizer" / "token_bytes.pt", weights_only=True)
    torch.save(token_bytes, ref / "tokenizer" / "token_bytes.pt")
    return ref


def reference_env(ref_code: Path, ref_base: Path, work: Path) -> dict:
    stub = work / "stubs"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "wandb.py").write_text(WANDB_STANDIN)
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(ref_base), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(stub), str(ref_code.resolve()), env.get("PYTHONPATH", "")])
    return env


def pretrain(args, work: Path) -> dict:
    ref_base = reference_base_dir(our_base_dir(), work)
    cmd = [sys.executable, "-m", "scripts.base_train", "--run=dummy", f"--depth={args.depth}",
           f"--window-pattern={args.window}", f"--device-batch-size={args.device_batch_size}",
           f"--total-batch-size={args.total_batch_size}", f"--max-seq-len={args.seq_len}",
           f"--num-iterations={args.steps}", "--eval-every=-1", "--core-metric-every=-1", "--sample-every=-1",
           f"--model-tag=ref_d{args.depth}"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=args.ref, env=reference_env(args.ref, ref_base, work),
                          capture_output=True, text=True)
    wall = time.time() - t0
    out = proc.stdout + proc.stderr
    steps = [m for m in map(STEP_RE.search, out.splitlines()) if m]
    tail = steps[-args.median_of:]
    mem = re.search(r"Peak memory usage: ([\d.]+)MiB", out)
    first = steps[0] if steps else None
    res = {"who": "reference", "what": "pretrain", "depth": args.depth, "window": args.window,
           "device_batch": args.device_batch_size, "rc": proc.returncode, "steps": len(steps),
           "wall_s": round(wall, 1),
           "tok_per_s": statistics.median(float(m.group(4).replace(",", "")) for m in tail) if tail else None,
           "mfu_pct": statistics.median(float(m.group(5)) for m in tail) if tail else None,
           "dt_ms": statistics.median(float(m.group(3)) for m in tail) if tail else None,
           "first_step_dt_s": round(float(first.group(3)) / 1000, 1) if first else None,
           "peak_mem_gib": round(float(mem.group(1)) / 1024, 1) if mem else None}
    if proc.returncode != 0 or not tail:
        res["log_tail"] = out[-3000:]
    return res


def decode(args, work: Path) -> list[dict]:
    """The reference's Engine.generate on a fresh model: ms per generated token, batch 1 and 8."""
    sys.path[:0] = [str(work / "stubs"), str(Path(args.ref).resolve())]
    reference_env(args.ref, work, work)  # writes the wandb stand-in
    import torch
    from nanochat.engine import Engine  # the reference's, from --ref
    from nanochat.gpt import GPT, GPTConfig

    class Specials:
        """The part of the reference's tokenizer its Engine uses (ids past the model's vocab are
        never sampled, so generation runs to max_tokens, as a timing needs)."""
        def encode_special(self, s):
            return {"<|python_start|>": 10**9, "<|python_end|>": 10**9 + 1, "<|output_start|>": 10**9 + 2,
                    "<|output_end|>": 10**9 + 3, "<|assistant_end|>": 10**9 + 4}[s]

        def get_bos_token_id(self):
            return 10**9 + 5

        def encode(self, s, prepend=None):
            return [1, 2, 3]

    dim = args.depth * 64
    cfg = GPTConfig(sequence_len=args.seq_len, vocab_size=args.vocab_size, n_layer=args.depth,
                    n_head=max(1, dim // 128), n_kv_head=max(1, dim // 128), n_embd=dim, window_pattern=args.window)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device="cuda")
    model.init_weights()
    model.eval()
    engine = Engine(model, Specials())
    prompt = list(range(1, 17))
    results = []
    for batch in (1, 8):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in engine.generate(prompt, num_samples=batch, max_tokens=16, temperature=1.0, seed=0):
                pass  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            n = 0
            for _ in engine.generate(prompt, num_samples=batch, max_tokens=args.new_tokens, temperature=1.0, seed=0):
                n += 1
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        results.append({"who": "reference", "what": "decode", "depth": args.depth, "batch": batch,
                        "new_tokens": n, "ms_per_step": round(1000 * dt / max(n, 1), 2),
                        "tok_per_s": round(batch * n / dt, 1)})
    return results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", type=Path, required=True, help="the reference checkout (exported tree)")
    ap.add_argument("--json", default="", help="append results as JSON lines to this file")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pretrain")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--window", default="SSSL")
    p.add_argument("--device-batch-size", type=int, default=32)
    p.add_argument("--total-batch-size", type=int, default=524288)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--median-of", type=int, default=10)
    d = sub.add_parser("decode")
    d.add_argument("--depth", type=int, default=12)
    d.add_argument("--window", default="SSSL")
    d.add_argument("--vocab-size", type=int, default=32768)
    d.add_argument("--seq-len", type=int, default=2048)
    d.add_argument("--new-tokens", type=int, default=256)
    args = ap.parse_args(argv)
    if not (args.ref / "nanochat" / "gpt.py").is_file():
        sys.exit(f"error: --ref {args.ref} is not a nanochat checkout (no nanochat/gpt.py)")
    work = Path(tempfile.mkdtemp(prefix="nanochat-ref-"))
    try:
        rows = [pretrain(args, work)] if args.cmd == "pretrain" else decode(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        print(json.dumps(r))
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
