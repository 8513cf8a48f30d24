"""Evaluate the trained tokenizer: compression (bytes per token) on train and validation text.

    python -m scripts.tok_eval [--sample-chars 2000000] [--reference-encoders DIR]

Also compares with the GPT-2 and GPT-4 (cl100k_base) tokenizers where they can be loaded:
tiktoken.get_encoding() downloads their files from the internet unless they are in its cache;
`--reference-encoders DIR` (or NANOCHAT_REFERENCE_ENCODERS) names a directory holding
gpt2.json / cl100k_base.json in the format of the `tiktoken` npm package's encoders/ folder
(a registry package, so it can be had offline). Without either, it prints and reports
"GPT-2/GPT-4 comparison unavailable offline" instead of failing. Also checks that
decode(encode(x)) gives back the text. Writes the "Tokenizer evaluation" report section.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import threading
import time
from pathlib import Path

from nanochat.common import dist_env, run_main
from nanochat.shards import parquets_iter_batched
from nanochat.report import get_report
from nanochat.tokenizer import get_tokenizer

UNAVAILABLE = "GPT-2/GPT-4 comparison unavailable offline"
REFERENCES = (("gpt2", "gpt2"), ("gpt4", "cl100k_base"))


def sample_text(split: str, max_chars: int) -> list[str]:
    """The first documents of the split, up to max_chars characters."""
    out, n = [], 0
    for texts, _ in parquets_iter_batched(split):
        for t in texts:
            out.append(t)
            n += len(t)
            if n >= max_chars:
                return out
    return out


def load_encoder_json(path: Path, name: str):
    """A tiktoken.Encoding from an npm-tiktoken encoder file {pat_str, special_tokens, bpe_ranks}.

    bpe_ranks is text: lines of "<label> <first rank> <base64 token> <base64 token> ...", the tokens
    on a line having consecutive ranks.
    """
    import tiktoken
    data = json.loads(Path(path).read_text())
    ranks: dict[bytes, int] = {}
    for line in data["bpe_ranks"].splitlines():
        parts = line.split(" ")
        if len(parts) < 3:
            continue
        first = int(parts[1])
        for i, b64 in enumerate(parts[2:]):
            if b64:
                ranks[base64.b64decode(b64)] = first + i
    return tiktoken.Encoding(name=name, pat_str=data["pat_str"], mergeable_ranks=ranks,
                             special_tokens={k: int(v) for k, v in data.get("special_tokens", {}).items()},
                             explicit_n_vocab=data.get("explicit_n_vocab"))


def load_reference(name: str, timeout: float = 20.0, encoders_dir: str | None = None):
    """(encoding, None) or (None, why). tiktoken's loader runs in a daemon thread so a hung host cannot hang us."""
    if encoders_dir:
        path = Path(encoders_dir) / f"{name}.json"
        if path.is_file():
            try:
                return load_encoder_json(path, name), None
            except Exception as exc:
                return None, f"cannot read {path}: {type(exc).__name__}"
    box: dict = {}

    def work():
        try:
            import tiktoken
            box["enc"] = tiktoken.get_encoding(name)
        except Exception as exc:  # no network and not in tiktoken's cache
            box["err"] = f"not cached and not downloadable ({type(exc).__name__})"

    th = threading.Thread(target=work, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        return None, f"download timed out after {timeout:.0f}s"
    return box.get("enc"), box.get("err")


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Tokenizer compression on train/val text")
    parser.add_argument("--sample-chars", type=int, default=2_000_000, help="characters sampled per split")
    parser.add_argument("--ref-timeout", type=float, default=20.0, help="seconds allowed to fetch GPT-2/GPT-4")
    parser.add_argument("--reference-encoders", default=os.environ.get("NANOCHAT_REFERENCE_ENCODERS"),
                        help="directory with gpt2.json / cl100k_base.json (npm tiktoken encoders/ format)")
    parser.add_argument("--skip-reference", action="store_true", help="do not try to load GPT-2/GPT-4 at all")
    args = parser.parse_args()
    if dist_env()[1] != 0:
        return
    tok = get_tokenizer()
    samples = {split: sample_text(split, args.sample_chars) for split in ("train", "val")}

    refs, notes = {}, []
    for label, name in ([] if args.skip_reference else REFERENCES):
        enc, err = load_reference(name, args.ref_timeout, args.reference_encoders)
        if enc is not None:
            refs[label] = enc
        else:
            notes.append(f"{label} ({name}): {err}")
    if args.skip_reference:
        notes.append("skipped (--skip-reference)")
    if notes:
        print(f"{UNAVAILABLE}: " + "; ".join(notes), flush=True)

    metrics: dict = {"vocab_size": tok.get_vocab_size(), "sample_chars_per_split": args.sample_chars}
    rows = ["| split | bytes | ours: tokens | ours: bytes/token |"
            + "".join(f" {r}: tokens | {r}: bytes/token | ours vs {r} |" for r in refs),
            "|---|---|---|---|" + "---|---|---|" * len(refs)]
    for split, docs in samples.items():
        nbytes = sum(len(d.encode("utf-8")) for d in docs)
        t0 = time.time()
        ids = tok.encode(docs, num_threads=4)
        dt = time.time() - t0
        ntok = sum(len(x) for x in ids)
        roundtrip = all(tok.decode(x) == d for x, d in zip(ids, docs))
        ratio = nbytes / max(ntok, 1)
        metrics[f"{split}_bytes"] = nbytes
        metrics[f"{split}_tokens"] = ntok
        metrics[f"{split}_bytes_per_token"] = round(ratio, 4)
        metrics[f"{split}_encode_MBps"] = round(nbytes / max(dt, 1e-9) / 1e6, 2)
        metrics[f"{split}_roundtrip_ok"] = roundtrip
        row = f"| {split} | {nbytes:,} | {ntok:,} | {ratio:.3f} |"
        line = (f"{split}: {nbytes:,} bytes -> {ntok:,} tokens, {ratio:.3f} bytes/token, "
                f"round trip {'ok' if roundtrip else 'FAILED'}")
        for r, enc in refs.items():
            rt = sum(len(x) for x in enc.encode_ordinary_batch(docs, num_threads=4))
            rr = nbytes / max(rt, 1)
            rel = (rt - ntok) / max(rt, 1) * 100   # % fewer tokens than the reference
            metrics[f"{split}_{r}_bytes_per_token"] = round(rr, 4)
            metrics[f"{split}_ours_vs_{r}_pct_fewer_tokens"] = round(rel, 2)
            row += f" {rt:,} | {rr:.3f} | {rel:+.1f}% |"
            line += f"; {r}: {rr:.3f} bytes/token (ours: {rel:+.1f}% fewer tokens)"
        rows.append(row)
        print(line, flush=True)
        if not roundtrip:
            print(f"warning: decode(encode(text)) differs from the text on the {split} sample", flush=True)
    data: list = [metrics, "", *rows, ""]
    if notes:
        metrics["reference_comparison"] = UNAVAILABLE
        data.append(f"{UNAVAILABLE} ({'; '.join(notes)}).")
    get_report().log(section="Tokenizer evaluation", data=data)


if __name__ == "__main__":
    run_main(main)
