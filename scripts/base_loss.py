"""Bits per byte of a base checkpoint on the train and val splits, plus a few greedy samples.

    python -m scripts.base_loss --model-tag=d20 --step=21400
    torchrun --standalone --nproc_per_node=8 -m scripts.base_loss -- --model-tag=d20

--step=-1 (default) takes the newest complete checkpoint (the pipeline always passes the step).
Each split is evaluated on --split-tokens tokens (all processes together) from the start of the
split, packed exactly as in training. Writes the report section "Base model loss".
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from nanochat.common import UserError, compute_cleanup, compute_init, print0, run_main
from nanochat import training as tr

PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then tomorrow will be",
           "The opposite of hot is", "The planets of the solar system are:", "My favorite color is",
           "If 5*x + 3 = 13, then x is"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, description="Evaluate a base checkpoint's bits per byte and show samples")
    p.add_argument("--model-tag", default="", help="base model tag (default: the only one)")
    p.add_argument("--step", type=int, default=-1, help="checkpoint step (-1 = newest complete)")
    p.add_argument("--device-batch-size", type=int, default=32, help="rows per forward pass per process")
    p.add_argument("--split-tokens", type=int, default=20 * 524288, help="tokens evaluated per split")
    p.add_argument("--device-type", default="", help="cuda|cpu|mps (empty = autodetect)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens per greedy sample")
    return p


def main(argv=None) -> None:
    args = tr.parse_args(build_parser(), argv)
    tr.check_positive(args, "device_batch_size", "split_tokens", "max_new_tokens")
    if args.step < -1:
        raise UserError(f"--step={args.step} must be a checkpoint step >= 0 (or -1 = newest)")
    is_ddp, rank, _, world, device = compute_init(args.device_type, 42)
    try:
        run(args, rank, world, device)
    finally:
        compute_cleanup()


def run(args, rank, world, device) -> None:
    from nanochat import checkpoint_manager as ckm
    from nanochat.dataloader import pretrain_loader
    from nanochat.loss_eval import evaluate_loss_bpb
    from nanochat.report import Report
    from nanochat.tokenizer import get_token_bytes

    tag = args.model_tag or ckm.find_model_tag("base")
    ckpt_dir = ckm.checkpoint_dir("base", tag)
    step = ckm.resolve_step(ckpt_dir, args.step if args.step >= 0 else None)
    model, tokenizer, meta = ckm.build_model(ckpt_dir, step, device, phase="eval")
    token_bytes = get_token_bytes(device)
    use_bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    B = args.device_batch_size
    T = int(meta.get("max_seq_len") or model.config.sequence_len)
    steps = max(1, args.split_tokens // (B * T * world))
    print0(f"base model {tag} step {step}: evaluating {steps * B * T * world:,} tokens per split ({B} x {T} x {world} x {steps})")
    results = {}
    for split in ("train", "val"):
        loader = pretrain_loader(tokenizer, B, T, split, device, rank, world, prefetch=2)
        try:
            m = evaluate_loss_bpb(model, loader, steps, token_bytes, autocast(), progress=f"{split} bpb")
        finally:
            loader.close()
        results[split] = m
        print0(f"{split} bpb: {m['bpb']:.6f} (loss {m['loss']:.6f} over {m['tokens']:,} tokens)")

    samples = []
    if rank == 0:
        bos = tokenizer.get_bos_token_id()
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt, prepend=bos)
            with autocast():
                out = list(model.generate(ids, max_tokens=args.max_new_tokens, temperature=0.0))
            text = prompt + tokenizer.decode(out)
            samples.append(text)
            print0(f"sample: {text!r}")
        Report().log("Base model loss", [
            {"Model": f"{tag} step {step}", "train bpb": results["train"]["bpb"], "val bpb": results["val"]["bpb"],
             "train loss": results["train"]["loss"], "val loss": results["val"]["loss"],
             "Tokens per split": results["val"]["tokens"]},
            "Greedy samples:", "```", *[s.replace("```", "'''") for s in samples], "```",
        ])


if __name__ == "__main__":
    run_main(main)
