"""One quality measure for any codebase: bits per byte of a base checkpoint on the same held-out documents.

Two steps, so that two codebases are scored on exactly the same token ids:

    # 1. with OUR tokenizer (the one both models were trained with): the held-out set, once
    NANOCHAT_BASE_DIR=... python -m bench.bpb_eval prepare --parquet base_data/shard_01822.parquet \
        --docs 256 --seq-len 2048 --out heldout.json
    # 2. each checkpoint, with the codebase that wrote it (--ref: a checkout of karpathy/nanochat)
    python -m bench.bpb_eval score --heldout heldout.json --checkpoint base_checkpoints/d12 --step 400
    python -m bench.bpb_eval score --heldout heldout.json --checkpoint <ref base dir>/base_checkpoints/d12 \
        --step 400 --ref .ref/nanochat-ref

Each document is scored whole from BOS (BOS + its tokens, cut at seq_len + 1 so it fits the context):
every target token counts, and the bytes are those of the target ids (`token_bytes`, stored with the set).
bpb = total nats / (ln 2 * total bytes). Both codebases expose
`nanochat.checkpoint_manager.build_model(dir, step, device, phase)` and `model(x, y, loss_reduction="none")`,
which is all this needs; with --ref the reference's package is imported instead of ours (one process,
one codebase: both are called `nanochat`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def prepare(parquet: Path, n_docs: int, seq_len: int, out: Path) -> dict:
    import pyarrow.parquet as pq
    from nanochat.tokenizer import get_token_bytes, get_tokenizer
    tokenizer = get_tokenizer()
    texts = pq.read_table(parquet, columns=["text"]).column("text").to_pylist()[:n_docs]
    bos = tokenizer.get_bos_token_id()
    docs = [([bos] + ids)[: seq_len + 1] for ids in tokenizer.encode(texts)]
    heldout = {"seq_len": seq_len, "source": str(parquet), "docs": [d for d in docs if len(d) >= 2],
               "token_bytes": get_token_bytes().tolist()}
    out.write_text(json.dumps(heldout))
    return heldout


def score(heldout: dict, checkpoint: Path, step: int | None, device: str, ref: Path | None = None) -> dict:
    if ref is not None:  # the reference's package shadows ours for this process
        sys.path.insert(0, str(ref.resolve()))
        for name in [m for m in sys.modules if m == "nanochat" or m.startswith("nanochat.")]:
            del sys.modules[name]
    import torch
    from nanochat.checkpoint_manager import build_model
    dev = torch.device(device)
    model, _, _ = build_model(str(checkpoint), step, dev, "eval")
    token_bytes = torch.tensor(heldout["token_bytes"], dtype=torch.int64)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    nats, n_bytes, n_tokens = 0.0, 0, 0
    with torch.no_grad(), autocast:
        for doc in heldout["docs"]:
            ids = torch.tensor(doc, dtype=torch.long, device=dev)
            x, y = ids[:-1].unsqueeze(0), ids[1:].unsqueeze(0)
            nats += model(x, y, loss_reduction="none").double().sum().item()
            n_bytes += int(token_bytes[y.cpu()].sum())
            n_tokens += y.numel()
    return {"bpb": nats / (math.log(2) * n_bytes), "nats_per_token": nats / n_tokens, "tokens": n_tokens,
            "bytes": n_bytes, "docs": len(heldout["docs"]), "checkpoint": str(checkpoint), "step": step,
            "codebase": str(ref) if ref else "ours"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="tokenize held-out documents with our tokenizer")
    p.add_argument("--parquet", type=Path, required=True)
    p.add_argument("--docs", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("score", help="bits per byte of one checkpoint on a prepared held-out set")
    s.add_argument("--heldout", type=Path, required=True)
    s.add_argument("--checkpoint", type=Path, required=True, help="a model directory (…/base_checkpoints/d12)")
    s.add_argument("--step", type=int, default=None, help="default: the newest")
    s.add_argument("--device", default="cuda")
    s.add_argument("--ref", type=Path, default=None, help="checkout of the codebase that wrote the checkpoint")
    s.add_argument("--json", type=Path, default=None, help="append the result as one JSON line")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        h = prepare(args.parquet, args.docs, args.seq_len, args.out)
        print(f"{len(h['docs'])} documents, {sum(len(d) - 1 for d in h['docs'])} target tokens -> {args.out}")
        return
    result = score(json.loads(args.heldout.read_text()), args.checkpoint, args.step, args.device, args.ref)
    print(json.dumps(result))
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
