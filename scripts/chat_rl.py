"""Reinforcement learning on GSM8K from the SFT model (GRPO-style: group-mean baseline, no KL, no critic).

    python -m scripts.chat_rl --model-tag=d20 --model-step=650
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_rl -- --model-tag=d20 --model-step=650

Starts from chatsft_checkpoints/<tag>/ (or mid with --source=mid) and writes chatrl_checkpoints/<tag>/.
Each step samples --num-samples completions for each of --examples-per-step GSM8K train problems
(shared out over the processes), rewards a correct final answer with 1, and follows the policy
gradient of (reward - group mean) on the sampled tokens. --num-iterations=-1: --num-epochs passes
over the train problems. Every --eval-every steps: greedy pass@1 and sampled pass@k on the first
--eval-examples GSM8K test problems. The maths, rollouts and data sources: nanochat/rl.py.
"""
from __future__ import annotations

import argparse
import math
import time

from nanochat.common import UserError, device_name, dist_env, print0, run_main
from nanochat import rl
from nanochat import startup
from nanochat import training as tr

SECTION = "Chat RL"
REWARD_CURVE = "rl_reward"


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
    ctx = startup.init_run(args, project="nanochat-rl")
    try:
        run(ctx, args)
    finally:
        startup.cleanup(ctx)


def num_iterations(args, num_train: int) -> int:
    if args.num_iterations >= 0:
        return args.num_iterations
    return max(1, num_train // args.examples_per_step * args.num_epochs)


def run(ctx, args) -> None:
    from nanochat.engine import Engine
    from nanochat.optim import lr_multiplier

    ft = startup.prepare_finetune(ctx, args, source=args.source, out_stage="rl", compile_dynamic=True)
    tasks = rl.load_tasks()  # (after the checkpoint: a missing SFT model fails before any data is fetched)
    model, tokenizer = ft.model, ft.tokenizer
    engine = Engine(model, tokenizer)
    pad_id = tokenizer.encode_special("<|assistant_end|>")
    top_k = args.top_k if args.top_k > 0 else None
    eval_k = args.eval_samples if args.eval_samples > 0 else args.num_samples
    N = num_iterations(args, len(tasks.train))
    if args.num_iterations < 0:
        print0(f"--num-iterations=-1: {args.num_epochs} epoch(s) of {len(tasks.train):,} problems at "
               f"{args.examples_per_step} per step = {N:,} steps")
    for line in tasks.report_lines():
        print0(line)
    print0(f"batch: {args.examples_per_step} problems x {args.num_samples} samples per step "
           f"({args.examples_per_step // ctx.world} problem(s) per process), up to {args.max_new_tokens} new tokens")

    # the history a resumed run continues (meta["loop_state"] of every checkpoint)
    resumed = ft.resumed
    loop = dict((resumed.meta.get("loop_state") or {}) if resumed else {})
    start = resumed.step if resumed else 0
    history = {key: [list(x) for x in loop.get(key, []) if x[0] <= start]
               for key in ("rewards", "train_losses", "gen_lengths", "evals")}
    total_time = float(loop.get("total_time", 0.0))
    tokens_trained = int(loop.get("tokens_trained", 0))
    last_eval = dict(history["evals"][-1][1]) if history["evals"] else {}
    if start > N:
        print0(f"warning: resumed step {start} is past --num-iterations={N}: nothing to train")
    meta = startup.model_meta(model, args, ft.semantic, tokenizer, stage="rl", num_iterations=N, model_tag=ft.tag,
                              upstream=ft.upstream, max_seq_len=ft.seq_len, train_source=tasks.train.source,
                              eval_source=tasks.test.source)

    # step s: evaluate and checkpoint the model after s optimizer steps, then train step s + 1
    step = start
    while True:
        last = step >= N
        if (step == 0 or tr.due(step, args.eval_every, last)) and not any(e[0] == step for e in history["evals"]):
            t0 = time.time()
            metrics = rl.evaluate_pass_at_k(ctx, engine, tokenizer, tasks.test, args.eval_examples, eval_k,
                                            args.max_new_tokens, args.temperature, top_k, args.seed)
            history["evals"].append([step, metrics])
            last_eval = dict(metrics)
            print0(f"step {step:05d} | " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                   + f" | eval {time.time() - t0:.1f}s")
            ctx.wandb.log({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
        if not (resumed is not None and step == start) and tr.save_due(step, args.save_every, last):
            loop_state = {**history, "total_time": total_time, "tokens_trained": tokens_trained}
            tr.save_checkpoint(ctx, step, model, ft.optimizers, meta, loop_state, last_eval, None, resumed,
                               args.keep_last)
        if last:
            break
        t0 = time.perf_counter()
        groups = [rl.rollout(ctx, engine, tokenizer, tasks.train, i, args.num_samples, args.max_new_tokens,
                             args.temperature, top_k, rl.derive_seed("rl-sample", args.seed, step, i))
                  for i in rl.step_problems(step, args.examples_per_step, len(tasks.train), args.seed, ctx.rank,
                                            ctx.world)]
        stats = rl.backward_rollouts(ctx, ft.model_c, groups, args.num_samples, args.device_batch_size, pad_id)
        lrm = lr_multiplier(step, N, 0.0, 1.0, 0.0)  # linear decay to 0
        tr.apply_schedules(ft.optimizers, lrm)
        for opt in ft.optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        step += 1
        if not math.isfinite(stats.loss):
            raise UserError(f"RL diverged at step {step} (loss {stats.loss}): lower --init-lr-frac; the last good "
                            f"checkpoint is kept in {ft.ckpt_dir}")
        total_time += dt
        tokens_trained += stats.sampled_tokens
        history["rewards"].append([step, stats.mean_reward])
        history["train_losses"].append([step, stats.loss])
        history["gen_lengths"].append([step, stats.mean_gen_len])
        print0(f"step {step:05d}/{N:05d} ({100 * step / max(N, 1):5.1f}%) | reward {stats.mean_reward:.4f} | "
               f"loss {stats.loss:.6f} | signal {stats.groups_with_signal}/{stats.groups} problems | "
               f"gen len {stats.mean_gen_len:.1f} | lrm {lrm:.3f} | dt {dt:.2f}s")
        ctx.wandb.log({"step": step, "rl/reward": stats.mean_reward, "rl/loss": stats.loss, "rl/lrm": lrm,
                       "rl/gen_len": stats.mean_gen_len, "rl/dt": dt})

    write_report(ctx, args, ft, tasks, N, step, history, last_eval, total_time, tokens_trained, eval_k)
    tr.record_output(ctx, args.record_output, step)


def write_report(ctx, args, ft, tasks: rl.RLTasks, N: int, final_step: int, history: dict, last_eval: dict,
                 total_time: float, tokens_trained: int, eval_k: int) -> None:
    """The "Chat RL" section: configuration, task sources, final pass@k, reward curve (rank 0)."""
    if not ctx.master:
        return
    from nanochat.report import Report
    rep = Report()
    xs = [s for s, _ in history["rewards"]]
    rep.save_curve(REWARD_CURVE, xs, [r for _, r in history["rewards"]],
                   title=f"{SECTION}: mean reward of each step's samples", ylabel="mean reward")
    config = {"Source": f"{args.source} {ft.upstream['tag']} step {ft.upstream['step']}", "Output": str(ft.ckpt_dir),
              "Iterations": N, "Epochs (if from epochs)": args.num_epochs,
              "Examples per step": args.examples_per_step, "Samples per example": args.num_samples,
              "Max new tokens": args.max_new_tokens, "Temperature": args.temperature, "Top-k": args.top_k,
              "Init LR frac": args.init_lr_frac, "Matrix LR": args.matrix_lr, "Embedding LR": args.embedding_lr,
              "Unembedding LR": args.unembedding_lr, "Train task source": tasks.train.source,
              "Train task kind": rl.source_kind(tasks.train.source), "Eval task source": tasks.test.source,
              "Eval task kind": rl.source_kind(tasks.test.source), "Eval problems": min(len(tasks.test), args.eval_examples),
              "Eval samples (k)": eval_k}
    rewards = [r for _, r in history["rewards"]]
    summary = {"Final step": final_step,
               "Mean reward, first step": rewards[0] if rewards else "n/a (no step trained)",
               "Mean reward, last step": rewards[-1] if rewards else "n/a (no step trained)",
               "Sampled tokens trained": tokens_trained, "Training time": tr.fmt_time(total_time),
               "Processes": ctx.world, "Device": device_name(ctx.device)}
    for k, v in last_eval.items():
        summary[f"Final {k}"] = v
    lines = ["\nTasks:"] + [f"- {x}" for x in tasks.report_lines()]
    if history["evals"]:
        keys = list(history["evals"][-1][1])
        lines += ["\n| step | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        lines += [f"| {s} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in keys) + " |"
                  for s, m in history["evals"]]
    if xs:
        lines.append(f"\nReward curve: ![{REWARD_CURVE}]({REWARD_CURVE}.svg)")
    rep.log(SECTION, [config, summary] + lines)


if __name__ == "__main__":
    run_main(main)
