"""KV-cache decoding benchmark: ms per decoded token through `Engine.generate`, CUDA graph vs eager step.

    python -m bench.bench_decode --depth 12 --out decode.jsonl            # H200: both, batch 1 and 8
    python -m bench.bench_decode --depth 2 --vocab 512 --new-tokens 8     # CPU smoke run

Builds a freshly initialised GPT (`--depth`, vocab `--vocab`, window pattern `--window-pattern`) on
the device, bf16 autocast on CUDA (as chat_eval and chat_cli run it), and for each path
(`--path graph|eager|both`: graph = Engine's default, the decode step replayed as a CUDA graph on
CUDA; eager = Engine(cuda_graph=False), the same step run eagerly; on a CPU both are eager) and batch
size (`--batches`, default 1 and 8) times `--repeats` whole generations of `--new-tokens` columns
from a `--decode-prompt-len`-token prompt (after one untimed warmup generation, which also captures
the graph), sampling at temperature 1. ms/token = wall time of one generation / columns (the short
prompt's prefill included); tokens/s = batch * columns / wall time. Prefill: the median time of a
`--prompt-len`-token prompt's forward into a KV cache plus its copy into the static cache.
(The dynamic KV-cache decoder this path replaced is measured in bench/RESULTS.md.)

The tokenizer is synthetic: its special tokens lie outside the vocabulary, so no row ever stops or
calls the tool and every generation is exactly --new-tokens columns. `same_tokens` says whether the
batch-1 columns of the two paths agreed (a freshly initialised model's blocks are the identity, so
this checks the embedding, head and sampling path only; tests/test_decode.py checks the rest).

Output: one JSON line per (path, batch) on stdout and in `--out` (overwritten), then a markdown table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

from nanochat.common import UserError, run_main

SPECIAL_NAMES = ("<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
                 "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")


class SyntheticTokenizer:
    """Just what Engine needs: bytes are ids 0..255; the special tokens get ids from `first_special` on
    (>= the model's vocab: never sampled, so nothing stops or calls the tool; inside it, a model can
    produce them: tests use that)."""

    def __init__(self, first_special: int):
        self.special = {name: first_special + i for i, name in enumerate(SPECIAL_NAMES)}

    def encode_special(self, name: str) -> int:
        return self.special[name]

    def get_bos_token_id(self) -> int:
        return self.special["<|bos|>"]

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_prefill(model, engine, prompt_len: int, device, repeats: int) -> float:
    """Median ms of one prompt's forward into a KV cache and its copy into a static cache."""
    import torch
    prompt = torch.randint(0, 256, (1, prompt_len), device=device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):  # the first is warmup
            _sync(device)
            t0 = time.perf_counter()
            cache = model.make_kv_cache(1, prompt_len)
            model(prompt, kv_cache=cache)
            engine._pool.get(1, prompt_len + 256, cache.k.dtype, device).load_prefill(cache)
            _sync(device)
            if i:
                times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def time_decode(engine, prompt: list[int], batch: int, new_tokens: int, device, repeats: int, seed: int):
    """-> (median seconds of one whole generation, columns per generation, batch-1 token stream)."""
    list(engine.generate(prompt, batch, new_tokens, temperature=1.0, seed=seed))  # warmup (+ capture)
    walls, first = [], None
    for r in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        cols = list(engine.generate(prompt, batch, new_tokens, temperature=1.0, seed=seed))
        _sync(device)
        walls.append(time.perf_counter() - t0)
        if first is None:
            first = cols
    return statistics.median(walls), len(first), [c[0] for c, _ in first]


def build_model(depth: int, vocab: int, window_pattern: str, device):
    import torch
    from nanochat.gpt import GPT, GPTConfig
    cfg = GPTConfig.from_depth(depth, vocab_size=vocab, sequence_len=2048, window_pattern=window_pattern)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device=device)
    model.init_weights()
    return model.eval()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--window-pattern", default="L")
    ap.add_argument("--path", choices=["graph", "eager", "both"], default="both")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--decode-prompt-len", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=512, help="prompt length of the prefill measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device-type", default="", help="cuda|cpu (default: cuda if available)")
    ap.add_argument("--out", default="", help="write the JSON lines here (overwritten)")
    args = ap.parse_args(argv)
    for name in ("depth", "vocab", "new_tokens", "decode_prompt_len", "prompt_len", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.vocab <= 256:
        raise UserError(f"--vocab must be > 256 (the synthetic tokenizer's bytes), got {args.vocab}")
    if any(b < 1 for b in args.batches):
        raise UserError(f"--batches must all be >= 1, got {args.batches}")
    if args.decode_prompt_len + args.new_tokens > 20480 or args.prompt_len + 256 > 20480:
        raise UserError("--decode-prompt-len + --new-tokens and --prompt-len + 256 must fit 20480 positions")
    return args


def main(argv=None) -> None:
    import torch
    from nanochat.common import device_name
    from nanochat.engine import Engine
    args = parse_args(argv)
    dev_type = args.device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev_type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device-type cuda: no CUDA GPU is visible (use --device-type cpu)")
    if dev_type not in ("cuda", "cpu"):
        raise UserError(f"--device-type must be cuda or cpu, got {dev_type!r}")
    device = torch.device(dev_type)
    torch.manual_seed(args.seed)
    model = build_model(args.depth, args.vocab, args.window_pattern, device)
    tok = SyntheticTokenizer(first_special=args.vocab)
    prompt = [(7 * i + 3) % 256 for i in range(args.decode_prompt_len)]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    paths = ["graph", "eager"] if args.path == "both" else [args.path]
    rows, streams = [], {}
    out = open(args.out, "w") if args.out else None
    print(f"bench_decode: d{args.depth} vocab {args.vocab} window {args.window_pattern} on {device_name(device)}, "
          f"{args.new_tokens} new tokens", flush=True)
    with autocast:
        for path in paths:
            engine = Engine(model, tok, cuda_graph=path == "graph")
            prefill_ms = time_prefill(model, engine, args.prompt_len, device, args.repeats)
            for batch in args.batches:
                wall, cols, stream = time_decode(engine, prompt, batch, args.new_tokens, device, args.repeats,
                                                 args.seed)
                if batch == 1:
                    streams[path] = stream
                graphs = sum(d.graph is not None for d in engine._pool.decoders.values())
                row = {"path": path, "batch": batch, "depth": args.depth, "vocab": args.vocab,
                       "window_pattern": args.window_pattern, "device": device_name(device),
                       "new_tokens": args.new_tokens, "tokens": cols, "wall_s": round(wall, 4),
                       "ms_per_token": round(wall * 1000 / cols, 3),
                       "tokens_per_s": round(batch * cols / wall, 1),
                       "prefill_prompt_len": args.prompt_len, "prefill_ms": round(prefill_ms, 3),
                       "cuda_graph": graphs > 0}
                rows.append(row)
    same = streams["graph"] == streams["eager"] if len(streams) == 2 else None
    for row in rows:
        row["same_tokens"] = same
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
    if out:
        out.close()
    print("\n| path | batch | ms/token | tokens/s | prefill ms (512 tok) | CUDA graph |".replace("512", str(args.prompt_len)))
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['batch']} | {r['ms_per_token']:.2f} | {r['tokens_per_s']:,.0f} | "
              f"{r['prefill_ms']:.1f} | {'yes' if r['cuda_graph'] else 'no'} |")
    if same is not None:
        print(f"\nbatch-1 tokens of the two paths {'agree' if same else 'DIFFER'}")


if __name__ == "__main__":
    run_main(main)
