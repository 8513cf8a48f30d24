"""Tokenizer benchmark: training wall time and encoding throughput on the same text.

    python -m bench.bench_tokenizer [--max-chars 20000000] [--vocab-size 4096 32768]
                                    [--reference-encoders DIR] [--out FILE]

Text: the training split in $NANOCHAT_BASE_DIR/base_data (run `python -m nanochat.dataset` first),
documents capped at 10,000 chars as scripts/tok_train does.

Training (per vocab size, best of --repeats):
  - ours:     nanochat.tokenizer.Tokenizer.train_from_iterator (rustbpe + building the tiktoken Encoding)
  - rustbpe:  rustbpe.Tokenizer().train_from_iterator alone, same pattern
  - hf:       HF `tokenizers` BpeTrainer with the same split regex + byte-level (only if importable)
Encoding (MB of UTF-8 per second, best of --repeats, with the largest vocab trained):
  - ours encode(str) doc by doc; ours encode(list, num_threads=k);
  - tiktoken's own encode_ordinary_batch(num_threads=k) on the same Encoding (our baseline);
  - rustbpe batch_encode; GPT-2 (tiktoken) if it can be loaded (see scripts/tok_eval.py).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from nanochat.shards import parquets_iter_batched
from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "?"


def load_docs(max_chars: int, doc_cap: int = 10_000) -> list[str]:
    docs, n = [], 0
    for texts, _ in parquets_iter_batched("train"):
        for t in texts:
            d = t[:doc_cap]
            docs.append(d)
            n += len(d)
            if n >= max_chars:
                return docs
    return docs


def interleaved(cands: dict, repeats: int) -> dict:
    """Time each candidate `repeats` times, round-robin (so background load hits all alike).

    Returns {label: (best_s, median_s, last_result)}.
    """
    times: dict = {k: [] for k in cands}
    out: dict = {}
    for _ in range(repeats):
        for label, fn in cands.items():
            t0 = time.perf_counter()
            out[label] = fn()
            times[label].append(time.perf_counter() - t0)
    res = {}
    for label, ts in times.items():
        ts = sorted(ts)
        res[label] = (ts[0], ts[len(ts) // 2], out[label])
    return res


def train_hf(docs: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    tok = HFTokenizer(models.BPE(byte_fallback=True, unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, min_frequency=0,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=SPECIAL_TOKENS)
    tok.train_from_iterator(docs, trainer)
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-chars", type=int, default=20_000_000)
    parser.add_argument("--vocab-size", type=int, nargs="+", default=[4096, 32768])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-encoders", default=os.environ.get("NANOCHAT_REFERENCE_ENCODERS"))
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args()

    import rustbpe
    import tiktoken
    docs = load_docs(args.max_chars)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    mb = nbytes / 1e6
    lines = [f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
             f"- python {sys.version.split()[0]}, rustbpe {_version('rustbpe')}, "
             f"tiktoken {tiktoken.__version__}",
             f"- text: {len(docs):,} docs, {sum(map(len, docs)):,} chars, {mb:.2f} MB UTF-8 "
             f"(train split of {os.environ.get('NANOCHAT_BASE_DIR', '~/.cache/nanochat')}/base_data)",
             f"- {args.repeats} runs of each candidate, interleaved; load average at start "
             f"{os.getloadavg()[0]:.1f}", ""]
    try:
        import tokenizers  # noqa: F401
        have_hf = True
        lines.insert(2, f"- HF tokenizers {tokenizers.__version__}")
    except ImportError:
        have_hf = False

    lines += ["### Training (wall time, best / median; candidates interleaved)", "",
              "| vocab | ours (rustbpe + tiktoken Encoding) | raw rustbpe | HF tokenizers |", "|---|---|---|---|"]
    ours = None
    for v in args.vocab_size:
        def raw(v=v):
            t = rustbpe.Tokenizer()
            t.train_from_iterator(iter(docs), v - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
            return t
        cands = {"ours": lambda v=v: Tokenizer.train_from_iterator(iter(docs), v), "raw": raw}
        if have_hf:
            cands["hf"] = lambda v=v: train_hf(docs, v)
        res = interleaved(cands, args.repeats)
        (b_o, m_o, ours), (b_r, m_r, _) = res["ours"], res["raw"]
        hf_s = "not installed"
        if have_hf:
            b_h, m_h, _ = res["hf"]
            hf_s = f"{b_h:.2f} / {m_h:.2f} s ({m_h / m_o:.2f}x ours)"
        lines.append(f"| {ours.get_vocab_size():,} | {b_o:.2f} / {m_o:.2f} s ({mb / m_o:.1f} MB/s) "
                     f"| {b_r:.2f} / {m_r:.2f} s | {hf_s} |")
        print(lines[-1], flush=True)

    tok = ours
    reference = [tok.encode(d) for d in docs]
    raw_tok = rustbpe.Tokenizer()
    raw_tok.train_from_iterator(iter(docs), tok.get_vocab_size() - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    cands = {"ours: encode(str) per doc": lambda: [tok.encode(d) for d in docs]}
    for k in args.threads:
        cands[f"ours: encode(list, num_threads={k})"] = lambda k=k: tok.encode(docs, num_threads=k)
    for k in args.threads:
        cands[f"tiktoken encode_ordinary_batch(num_threads={k}), same Encoding"] = \
            lambda k=k: tok.enc.encode_ordinary_batch(docs, num_threads=k)
    cands["rustbpe batch_encode (same merges)"] = lambda: raw_tok.batch_encode(docs)
    from scripts.tok_eval import load_reference
    gpt2, err = load_reference("gpt2", 20.0, args.reference_encoders)
    unchecked = set()
    if gpt2 is not None:
        cands["GPT-2 (tiktoken) per doc"] = lambda: [gpt2.encode_ordinary(d) for d in docs]
        for k in args.threads:
            cands[f"GPT-2 (tiktoken) encode_ordinary_batch(num_threads={k})"] = \
                lambda k=k: gpt2.encode_ordinary_batch(docs, num_threads=k)
        unchecked = {k for k in cands if k.startswith("GPT-2")}
    res = interleaved(cands, args.repeats)
    lines += ["", f"### Encoding (vocab {tok.get_vocab_size():,}; MB/s of UTF-8 text, higher is better; interleaved)",
              "", "| encoder | MB/s best | MB/s median | tokens | bytes/token |", "|---|---|---|---|---|"]
    for label, (best, med, out) in res.items():
        ntok = sum(len(x) for x in out)
        if label not in unchecked and out != reference:
            label += " (MISMATCH vs ours)"
        lines.append(f"| {label} | {mb / best:.1f} | {mb / med:.1f} | {ntok:,} | {nbytes / ntok:.3f} |")
    if gpt2 is None:
        lines.append(f"| GPT-2 (tiktoken) | unavailable offline: {err} | | | |")
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    from nanochat.common import run_main
    run_main(main)
