"""Train the BPE tokenizer on the training split of the pretraining shards.

    python -m scripts.tok_train [--max-chars 2000000000] [--doc-cap 10000] [--vocab-size 32768]

Reads the TRAIN split (never validation) in order, caps each document at --doc-cap characters,
stops after --max-chars characters, trains with rustbpe (nanochat.tokenizer) and saves
base_dir/tokenizer/{tokenizer.pkl, token_bytes.pt}. Writes the "Tokenizer training" report section.
Single process: under torchrun only rank 0 does the work.
"""
from __future__ import annotations

import argparse
import time

from nanochat.common import UserError, base_dir_path, dist_env, ensure_base_dir, run_main
from nanochat.shards import parquets_iter_batched
from nanochat.report import get_report
from nanochat.tokenizer import MIN_VOCAB_SIZE, SPECIAL_TOKENS, Tokenizer


def text_iterator(max_chars: int, doc_cap: int, stats: dict, progress_every: int = 100_000_000):
    """Training documents (capped at doc_cap chars) until max_chars characters have been produced."""
    next_report = progress_every
    t0 = time.time()
    for texts, _pos in parquets_iter_batched("train"):
        for text in texts:
            doc = text[:doc_cap]
            if not doc:
                continue
            stats["docs"] += 1
            stats["chars"] += len(doc)
            yield doc
            if stats["chars"] >= max_chars:
                return
            if stats["chars"] >= next_report:
                rate = stats["chars"] / max(time.time() - t0, 1e-9) / 1e6
                print(f"  read {stats['chars'] / 1e6:,.0f}M chars ({stats['docs']:,} docs, {rate:.1f}M chars/s)",
                      flush=True)
                next_report += progress_every


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Train the BPE tokenizer on the pretraining train split")
    parser.add_argument("--max-chars", type=int, default=2_000_000_000, help="characters of text to train on")
    parser.add_argument("--doc-cap", type=int, default=10_000, help="characters kept from each document")
    parser.add_argument("--vocab-size", type=int, default=32768, help="vocabulary size incl. special tokens")
    args = parser.parse_args()
    if dist_env()[1] != 0:
        return
    if args.vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"--vocab-size {args.vocab_size} is too small: it must be at least {MIN_VOCAB_SIZE} "
                        f"(256 byte tokens + {len(SPECIAL_TOKENS)} special tokens)")
    if args.max_chars < 1 or args.doc_cap < 1:
        raise UserError("--max-chars and --doc-cap must be positive")
    out_dir = ensure_base_dir(base_dir_path()) / "tokenizer"  # an unwritable base dir fails here, not after training
    print(f"training tokenizer: vocab {args.vocab_size:,}, up to {args.max_chars:,} chars, doc cap {args.doc_cap:,}",
          flush=True)
    stats = {"docs": 0, "chars": 0}
    t0 = time.time()
    tokenizer = Tokenizer.train_from_iterator(text_iterator(args.max_chars, args.doc_cap, stats), args.vocab_size)
    train_time = time.time() - t0
    if stats["chars"] == 0:
        raise UserError("the train split holds no text: rebuild the data with `make data`")
    vocab = tokenizer.get_vocab_size()
    print(f"trained on {stats['chars']:,} chars ({stats['docs']:,} docs) in {train_time:.2f}s; vocab {vocab:,}",
          flush=True)
    if vocab < args.vocab_size:
        print(f"warning: the text only supported {vocab:,} tokens (asked for {args.vocab_size:,}); "
              f"use more data or a smaller --vocab-size", flush=True)
    out = tokenizer.save(out_dir)
    print(f"saved {out}", flush=True)

    tb = tokenizer.token_bytes()
    normal = tb[tb > 0].float()
    get_report().log(section="Tokenizer training", data=[
        {"max_chars": args.max_chars, "doc_cap": args.doc_cap, "vocab_size_requested": args.vocab_size},
        {"train_time_s": round(train_time, 3), "num_docs": stats["docs"], "num_chars": stats["chars"],
         "vocab_size": vocab, "num_special_tokens": len(SPECIAL_TOKENS),
         "token_bytes_min": int(normal.min().item()), "token_bytes_max": int(normal.max().item()),
         "token_bytes_mean": round(float(normal.mean().item()), 3),
         "chars_per_second": round(stats["chars"] / max(train_time, 1e-9))},
    ])


if __name__ == "__main__":
    run_main(main)
