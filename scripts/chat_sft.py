"""Chat supervised fine-tuning: one conversation per row, loss on assistant tokens only.

    python -m scripts.chat_sft --source=mid --model-tag=d20 --model-step=800
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_sft -- --source=mid --model-tag=d20

Starts from <source>_checkpoints/<tag>/ (mid by default, or base), trains on
nanochat.tasks.build_mixture("sft", "train") and writes chatsft_checkpoints/<tag>/. A batch is
--device-batch-size conversations padded to the longest; --target-examples-per-step conversations
(all processes) make one optimizer step. --num-iterations=-1: --num-epochs passes over the mixture.
LR: linear decay from --init-lr-frac x the base rates to 0. Every --eval-every steps the val
mixture's loss over --eval-steps batches; every --eval-metrics-every steps multiple-choice accuracy
on MMLU and ARC-Easy (at most --eval-metrics-max-problems each; tasks without data are skipped).
"""
from __future__ import annotations

import argparse
import contextlib
import time

from nanochat.common import UserError, dist_env, print0, run_main
from nanochat import startup
from nanochat import training as tr
from nanochat.chat_eval import categorical_accuracy
from nanochat.resume import loader_resume_state
from nanochat.tasks import load_eval_task


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, description="Supervised fine-tuning on the chat mixture")
    tr.add_run_args(p, compile_default="off")
    tr.add_source_args(p, "source", ("mid", "base"))
    g = p.add_argument_group("training")
    g.add_argument("--num-epochs", type=int, default=1, help="passes over the mixture (when --num-iterations=-1)")
    g.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1 = from --num-epochs)")
    g.add_argument("--max-seq-len", type=int, default=-1, help="longest conversation in tokens (-1 = the model's)")
    g.add_argument("--device-batch-size", type=int, default=4, help="conversations per micro-step per process")
    g.add_argument("--target-examples-per-step", type=int, default=32, help="conversations per optimizer step")
    tr.add_lr_args(p, embedding_lr=0.2, unembedding_lr=0.004, matrix_lr=0.02, weight_decay=0.0)
    g.add_argument("--init-lr-frac", type=float, default=0.02, help="scale every initial learning rate")
    g = p.add_argument_group("evaluation / output")
    g.add_argument("--eval-every", type=int, default=100, help="val loss every N steps (-1 = only at the end)")
    g.add_argument("--eval-steps", type=int, default=100, help="val batches per evaluation")
    g.add_argument("--eval-metrics-every", type=int, default=200, help="MMLU/ARC-Easy accuracy every N steps (-1 = off)")
    g.add_argument("--eval-metrics-max-problems", type=int, default=1024, help="problems per metric (-1 = all)")
    return p


def validate(args) -> None:
    tr.check_common(args)
    tr.check_positive(args, "num_epochs", "device_batch_size", "target_examples_per_step", "eval_steps",
                      "init_lr_frac")
    tr.check_positive(args, "max_seq_len", "eval_metrics_max_problems",
                      allow_minus_one=("max_seq_len", "eval_metrics_max_problems"))
    if args.num_iterations < -1:
        raise UserError(f"--num-iterations={args.num_iterations} must be >= 0 (or -1 = from --num-epochs)")
    tr.check_source_and_schedule(args)
    if args.eval_metrics_every == 0 or args.eval_metrics_every < -1:
        raise UserError(f"--eval-metrics-every={args.eval_metrics_every} must be a positive number of steps or -1")
    tr.grad_accum_steps(args.target_examples_per_step, args.device_batch_size, 1, dist_env()[3],
                        total_flag="--target-examples-per-step", unit="conversations")


def load_metric_tasks() -> dict:
    """MMLU and ARC-Easy for the in-training accuracy; a task without data is skipped with a line."""
    tasks = {}
    for name in ("MMLU", "ARC-Easy"):
        try:
            tasks[name] = load_eval_task(name)
        except Exception as exc:  # TaskUnavailable, or a loader's own failure: say so, keep training
            print0(f"chat metric {name} skipped: {exc}")
    return tasks


def chat_metrics(ctx, ft, step: int, tasks: dict, max_problems: int) -> dict:
    out = {f"{name} acc": categorical_accuracy(ft.model, ft.tokenizer, task, ctx.rank, ctx.world, max_problems,
                                               autocast=ctx.autocast) for name, task in tasks.items()}
    if out:
        print0(f"step {step:05d} | " + " | ".join(f"{k} {v:.4f}" for k, v in out.items()))
    return out


def main(argv=None) -> None:
    args = tr.parse_args(build_parser(), argv)
    validate(args)
    ctx = startup.init_run(args, project="nanochat-sft")
    try:
        run(ctx, args)
    finally:
        startup.cleanup(ctx)


def run(ctx, args) -> None:
    from nanochat.dataloader import sft_loader
    from nanochat.loss_eval import evaluate_loss_bpb
    from nanochat.optim import lr_multiplier

    train_task = tr.load_mixture("sft", "train")
    val_task = tr.load_mixture("sft", "val")
    # batch widths are powers of two (nanochat.dataloader.bucket_width): few shapes, static compile
    ft = startup.prepare_finetune(ctx, args, source=args.source, out_stage="sft", compile_dynamic=False)
    B, T = args.device_batch_size, ft.seq_len
    accum = tr.grad_accum_steps(args.target_examples_per_step, B, 1, ctx.world,
                                total_flag="--target-examples-per-step", unit="conversations")
    if args.num_iterations >= 0:
        N = args.num_iterations
    else:
        N = max(1, len(train_task) // args.target_examples_per_step * args.num_epochs)
        print0(f"--num-iterations=-1: {args.num_epochs} epoch(s) of {len(train_task):,} conversations = {N:,} steps")
    print0(f"sft mixture: {len(train_task):,} train / {len(val_task):,} val conversations")
    for line in train_task.report_lines():
        print0(f"  {line}")
    print0(f"batch: {args.target_examples_per_step} conversations/step = {B} x {ctx.world} process(es) x {accum} "
           f"micro-step(s); rows up to {T} tokens")

    train_loader = sft_loader(train_task, ft.tokenizer, B, T, ctx.device, ctx.rank, ctx.world,
                              resume_state=loader_resume_state(ft.resumed, ctx.rank, ctx.world))

    def evaluate(step):
        val = sft_loader(val_task, ft.tokenizer, B, T, ctx.device, ctx.rank, ctx.world, prefetch=2)
        try:
            m = evaluate_loss_bpb(ft.model_c, val, args.eval_steps, None, ctx.autocast(), progress=f"step {step} val eval")
        finally:
            val.close()
        return {"val_loss": m["loss"]}

    meta = startup.model_meta(ft.model, args, ft.semantic, ft.tokenizer, stage="sft", num_iterations=N,
                              model_tag=ft.tag, upstream=ft.upstream, max_seq_len=T)
    flops_per_token = ft.model.estimate_flops()
    metric_tasks = None  # loaded at the first measurement
    # step s: evaluate and checkpoint the model after s optimizer steps, then train step s + 1
    loader_state = None
    progress = tr.Progress(ctx, ft.resumed, N, flops_per_token)
    step = progress.start
    with progress, contextlib.closing(train_loader):
        while True:
            last = step >= N
            if tr.due(step, args.eval_every, last) and not progress.evaluated(step):
                t_eval = time.time()
                progress.record_eval(step, evaluate(step), time.time() - t_eval)
            if not progress.continued(step):  # the step resumed from had these in the earlier run
                if args.eval_metrics_every > 0 and tr.due(step, args.eval_metrics_every, last):
                    metric_tasks = load_metric_tasks() if metric_tasks is None else metric_tasks
                    metrics = chat_metrics(ctx, ft, step, metric_tasks, args.eval_metrics_max_problems)
                    progress.record_extras(step, metrics)
                if tr.save_due(step, args.save_every, last):
                    tr.save_checkpoint(ctx, step, ft.model, ft.optimizers, meta, progress.loop_state(),
                                       progress.last_eval, loader_state, ft.resumed, args.keep_last)
            if last:
                break
            t_step = time.perf_counter()
            lrm = lr_multiplier(step, N, 0.0, 1.0, 0.0)  # linear decay to 0
            loss, ntok, loader_state = tr.train_step(ctx, ft.model_c, ft.optimizers, train_loader, accum, lrm)
            step += 1
            progress.log_step(step, loss, ntok, time.perf_counter() - t_step, lrm)
    config = {"Source": f"{args.source} {ft.upstream['tag']} step {ft.upstream['step']}", "Output": str(ft.ckpt_dir),
              "Iterations": N, "Epochs (if from epochs)": args.num_epochs, "Max sequence length": T,
              "Examples per step": args.target_examples_per_step, "Device batch size": B,
              "Grad accumulation steps": accum, "Init LR frac": args.init_lr_frac, "Matrix LR": args.matrix_lr,
              "Embedding LR": args.embedding_lr, "Unembedding LR": args.unembedding_lr,
              "Train conversations": len(train_task), "Val conversations": len(val_task)}
    summary = tr.summary_metrics(ctx, progress)
    summary["Final val loss"] = progress.last_eval.get("val_loss")
    for k, v in progress.extras.items():
        summary[k] = v
    lines = ["Mixture:"] + [f"- {x}" for x in train_task.report_lines()]
    tr.finish_report(ctx, "Chat SFT", "sft_loss", progress, config, summary, lines)
    tr.record_output(ctx, args.record_output, progress.final_step)


if __name__ == "__main__":
    run_main(main)
