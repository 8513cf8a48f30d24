"""Reinforcement learning on GSM8K from the SFT model (GRPO-style: group-mean baseline, no KL, no critic).

    python -m scripts.chat_rl --model-tag=d20 --model-step=650
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_rl -- --model-tag=d20 --model-step=650

Starts from chatsft_checkpoints/<tag>/ (or mid with --source=mid) and writes chatrl_checkpoints/<tag>/.
Each step samples --num-samples completions for each of --examples-per-step GSM8K train problems
(shared out over the processes), rewards a correct final answer with 1, and follows the policy
gradient of (reward - group mean) on the sampled tokens. --num-iterations=-1: --num-epochs passes
over the train problems. Every --eval-every steps: greedy pass@1 and sampled pass@k on the first
--eval-examples GSM8K test problems. The maths and the data sources: nanochat/rl.py.
"""
from __future__ import annotations

import argparse

from nanochat.common import UserError, dist_env, run_main
from nanochat import training as tr


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, description="Reinforcement learning on GSM8K")
    tr.add_run_args(p, compile_default="off")
    tr.add_source_args(p, "source", ("sft", "mid"))
    g = p.add_argument_group("training")
    g.add_argument("--num-epochs", type=int, default=1, help="passes over GSM8K train (when --num-iterations=-1)")
    g.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1 = from --num-epochs)")
    g.add_argument("--examples-per-step", type=int, default=16, help="problems per optimizer step (all processes)")
    g.add_argument("--num-samples", type=int, default=16, help="completions sampled per problem (the group)")
    g.add_argument("--max-new-tokens", type=int, default=256, help="generation budget per completion")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the rollouts")
    g.add_argument("--top-k", type=int, default=50, help="top-k sampling (0 = no limit)")
    g.add_argument("--device-batch-size", type=int, default=8,
                   help="rows per forward/backward pass (execution only: the gradient is the same)")
    tr.add_lr_args(p, embedding_lr=0.2, unembedding_lr=0.004, matrix_lr=0.02, weight_decay=0.0)
    g.add_argument("--init-lr-frac", type=float, default=0.05, help="scale every initial learning rate")
    g = p.add_argument_group("evaluation / output")
    g.add_argument("--eval-every", type=int, default=60, help="pass@k every N steps (-1 = start and end only)")
    g.add_argument("--eval-examples", type=int, default=400, help="GSM8K test problems per evaluation")
    g.add_argument("--eval-samples", type=int, default=-1, help="samples per problem for pass@k (-1 = --num-samples)")
    return p


def validate(args) -> None:
    tr.check_common(args)
    tr.check_positive(args, "num_epochs", "examples_per_step", "max_new_tokens", "device_batch_size",
                      "eval_examples", "init_lr_frac")
    tr.check_positive(args, "eval_samples", allow_minus_one=("eval_samples",))
    tr.check_nonnegative(args, "top_k")
    if args.num_samples < 2:
        raise UserError(f"--num-samples={args.num_samples}: the advantage compares samples of one problem, "
                        f"use --num-samples>=2")
    if not args.temperature > 0:
        raise UserError(f"--temperature={args.temperature}: greedy samples are all the same (no learning "
                        f"signal), use a positive temperature such as 1.0")
    if args.num_iterations < -1:
        raise UserError(f"--num-iterations={args.num_iterations} must be >= 0 (or -1 = from --num-epochs)")
    tr.check_source_and_schedule(args)
    world = dist_env()[3]
    if args.examples_per_step % world:
        lower = args.examples_per_step // world * world
        options = " or ".join(f"--examples-per-step={v}" for v in (lower, lower + world) if v > 0)
        raise UserError(f"--examples-per-step={args.examples_per_step} does not split over {world} processes: "
                        f"use {options}")


def main(argv=None) -> None:
    args = tr.parse_args(build_parser(), argv)
    validate(args)
    ctx = tr.init_run(args, project="nanochat-rl")
    try:
        from nanochat import rl
        rl.run(ctx, args)
    finally:
        tr.cleanup(ctx)


if __name__ == "__main__":
    run_main(main)
