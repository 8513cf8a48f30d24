"""Midtraining: teach the base model the chat format, tool use and multiple choice.

    python -m scripts.mid_train --model-tag=d20 --model-step=21400
    torchrun --standalone --nproc_per_node=8 -m scripts.mid_train -- --model-tag=d20 --model-step=21400

Starts from base_checkpoints/<tag>/ step --model-step (default: newest complete step), trains on
nanochat.tasks.build_mixture("mid", "train") with conversations best-fit packed into rows of
--max-seq-len tokens (never split across rows; loss on assistant tokens only) and writes
mid_checkpoints/<tag>/. --num-iterations=-1 trains for about one epoch of the mixture (estimated
from the mean rendered length of up to 1000 evenly spaced conversations). LR: constant, then a
linear decay to 0 over the last 20% of the steps, every group's lr scaled by --init-lr-frac.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import time

from nanochat.common import UserError, dist_env, print0, run_main
from nanochat import startup
from nanochat import training as tr
from nanochat.resume import loader_resume_state


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, description="Midtrain the base model on the chat mixture")
    tr.add_run_args(p)
    tr.add_source_args(p, "base")
    g = p.add_argument_group("training")
    g.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1 = about one epoch)")
    g.add_argument("--max-seq-len", type=int, default=-1, help="row length (-1 = the model's sequence_len)")
    g.add_argument("--device-batch-size", type=int, default=32, help="rows per micro-step per process")
    g.add_argument("--total-batch-size", type=int, default=524288, help="tokens per optimizer step")
    tr.add_lr_args(p, embedding_lr=0.2, unembedding_lr=0.004, matrix_lr=0.02, weight_decay=0.0)
    g.add_argument("--init-lr-frac", type=float, default=1.0, help="scale every initial learning rate")
    g = p.add_argument_group("evaluation / output")
    g.add_argument("--eval-every", type=int, default=150, help="val loss every N steps (-1 = only at the end)")
    g.add_argument("--eval-tokens", type=int, default=20 * 524288, help="tokens per val evaluation")
    g.add_argument("--dry-run", action="store_true", help="train and log, but save no checkpoint or report")
    return p


def validate(args) -> None:
    tr.check_common(args)
    tr.check_positive(args, "device_batch_size", "total_batch_size", "eval_tokens", "init_lr_frac")
    tr.check_positive(args, "max_seq_len", allow_minus_one=("max_seq_len",))
    if args.num_iterations < -1:
        raise UserError(f"--num-iterations={args.num_iterations} must be >= 0 (or -1 = one epoch)")
    tr.check_source_and_schedule(args)
    if args.max_seq_len > 0:
        tr.grad_accum_steps(args.total_batch_size, args.device_batch_size, args.max_seq_len, dist_env()[3])


def estimate_epoch_steps(task, tokenizer, row_len: int, tokens_per_step: int, sample: int = 1000) -> int:
    n = len(task)
    k = min(n, sample)
    idx = sorted({i * n // k for i in range(k)})
    lengths = [min(len(tokenizer.render_conversation(task[i], max_tokens=row_len)[0]), row_len) for i in idx]
    mean = sum(lengths) / max(1, len(lengths))
    return max(1, math.ceil(n * mean / tokens_per_step))


def main(argv=None) -> None:
    args = tr.parse_args(build_parser(), argv)
    validate(args)
    ctx = startup.init_run(args, project="nanochat-mid")
    try:
        run(ctx, args)
    finally:
        startup.cleanup(ctx)


def run(ctx, args) -> None:
    from nanochat.dataloader import mid_loader
    from nanochat.loss_eval import evaluate_loss_bpb
    from nanochat.optim import lr_multiplier, muon_momentum
    from nanochat.tokenizer import get_token_bytes

    train_task = tr.load_mixture("mid", "train")
    val_task = tr.load_mixture("mid", "val")
    ft = startup.prepare_finetune(ctx, args, source="base", out_stage="mid")
    B, T = args.device_batch_size, ft.seq_len
    accum = tr.grad_accum_steps(args.total_batch_size, B, T, ctx.world)
    token_bytes = get_token_bytes(ctx.device)
    if args.num_iterations >= 0:
        N = args.num_iterations
    else:
        N = estimate_epoch_steps(train_task, ft.tokenizer, T + 1, args.total_batch_size)
        print0(f"--num-iterations=-1: about one epoch of the mixture = {N:,} steps")
    print0(f"mid mixture: {len(train_task):,} train / {len(val_task):,} val conversations")
    for line in train_task.report_lines():
        print0(f"  {line}")
    print0(f"batch: {args.total_batch_size:,} tokens/step = {B} x {T} x {ctx.world} process(es) x {accum} micro-step(s)")

    train_loader = mid_loader(train_task, ft.tokenizer, B, T, ctx.device, ctx.rank, ctx.world,
                              resume_state=loader_resume_state(ft.resumed, ctx.rank, ctx.world))
    eval_steps = max(1, args.eval_tokens // (B * T * ctx.world))

    def evaluate(step):
        val = mid_loader(val_task, ft.tokenizer, B, T, ctx.device, ctx.rank, ctx.world, prefetch=2)
        try:
            m = evaluate_loss_bpb(ft.model_c, val, eval_steps, token_bytes, ctx.autocast(), progress=f"step {step} val eval")
        finally:
            val.close()
        return {"val_loss": m["loss"], "val_bpb": m["bpb"]}

    meta = startup.model_meta(ft.model, args, ft.semantic, ft.tokenizer, stage="mid", num_iterations=N,
                              model_tag=ft.tag, upstream=ft.upstream, max_seq_len=T, total_batch_size=args.total_batch_size)
    flops_per_token = ft.model.estimate_flops()
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
            if not args.dry_run and not progress.continued(step) and tr.save_due(step, args.save_every, last):
                tr.save_checkpoint(ctx, step, ft.model, ft.optimizers, meta, progress.loop_state(),
                                   progress.last_eval, loader_state, ft.resumed, args.keep_last)
            if last:
                break
            t_step = time.perf_counter()
            lrm = lr_multiplier(step, N, 0.0, 0.2, 0.0)  # constant, then linear to 0 over the last 20%
            loss, ntok, loader_state = tr.train_step(ctx, ft.model_c, ft.optimizers, train_loader, accum, lrm,
                                                     muon_momentum(step))
            step += 1
            progress.log_step(step, loss, ntok, time.perf_counter() - t_step, lrm)
    if args.dry_run:
        print0("--dry-run: no checkpoint, no report")
        return
    config = {"Source": f"base {ft.upstream['tag']} step {ft.upstream['step']}", "Output": str(ft.ckpt_dir),
              "Iterations": N, "Sequence length": T, "Total batch size": args.total_batch_size,
              "Device batch size": B, "Grad accumulation steps": accum, "Init LR frac": args.init_lr_frac,
              "Matrix LR": args.matrix_lr, "Embedding LR": args.embedding_lr, "Unembedding LR": args.unembedding_lr,
              "Train conversations": len(train_task), "Val conversations": len(val_task)}
    summary = tr.summary_metrics(ctx, progress)
    summary["Final val loss"] = progress.last_eval.get("val_loss")
    summary["Final val bpb"] = progress.last_eval.get("val_bpb")
    lines = ["Mixture:"] + [f"- {x}" for x in train_task.report_lines()]
    tr.finish_report(ctx, "Midtraining", "mid_loss", progress, config, summary, lines)
    tr.record_output(ctx, args.record_output, progress.final_step)


if __name__ == "__main__":
    run_main(main)
