"""Pretrain the base model on the packed parquet corpus.

    python -m scripts.base_train --depth=4 --max-seq-len=256 --device-batch-size=16 --total-batch-size=4096
    torchrun --standalone --nproc_per_node=8 -m scripts.base_train -- --depth=20

Training horizon (first that applies): --num-iterations > 0; else --target-flops > 0 (divided by
FLOPs/token x tokens/step); else --target-param-data-ratio x the model's TOTAL parameter count
(embeddings included, as in the original d20 speedrun) tokens, divided by --total-batch-size.

Checkpoints go to base_checkpoints/<model-tag>/ (tag default d<depth>), every --save-every steps
and at the end; --resume=auto (default) continues a compatible run (see nanochat.training).
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from nanochat.common import UserError, dist_env, print0, run_main
from nanochat import startup
from nanochat import training as tr
from nanochat.resume import loader_resume_state

SAMPLE_PROMPTS = ["The capital of France is", "The chemical symbol of gold is",
                  "If yesterday was Friday, then tomorrow will be", "The opposite of hot is"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, description="Pretrain the base model")
    tr.add_run_args(p)
    g = p.add_argument_group("model")
    g.add_argument("--depth", type=int, default=20, help="number of transformer layers")
    g.add_argument("--aspect-ratio", type=int, default=64, help="model_dim = depth * aspect_ratio (rounded up to head_dim)")
    g.add_argument("--head-dim", type=int, default=128, help="attention head dimension")
    g.add_argument("--max-seq-len", type=int, default=2048, help="context length in tokens")
    g.add_argument("--window-pattern", default="SSSL", help="per-layer attention windows: S=short, L=long (last layer always L)")
    g.add_argument("--fp8", action="store_true",
                   help="fp8 matmuls in the transformer blocks (GPUs of compute capability >= 8.9; see nanochat/fp8.py)")
    g = p.add_argument_group("horizon")
    g.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1 = from the targets below)")
    g.add_argument("--target-flops", type=float, default=-1.0, help="total training FLOPs (-1 = off)")
    g.add_argument("--target-param-data-ratio", type=float, default=20.0, help="tokens per parameter (-1 = off)")
    g = p.add_argument_group("batch")
    g.add_argument("--device-batch-size", type=int, default=32, help="rows per micro-step per process")
    g.add_argument("--total-batch-size", type=int, default=524288, help="tokens per optimizer step (all processes)")
    # nanochat's pretraining values (karpathy/nanochat@348fbb3 scripts/base_train.py: embedding 0.3, warmdown 0.5)
    tr.add_lr_args(p, embedding_lr=0.3, unembedding_lr=0.004, matrix_lr=0.02, weight_decay=0.0)
    g = p.add_argument_group("schedule")
    g.add_argument("--warmup-ratio", type=float, default=0.0, help="fraction of steps of linear LR warmup")
    g.add_argument("--warmdown-ratio", type=float, default=0.5, help="fraction of steps of linear LR warmdown")
    g.add_argument("--final-lr-frac", type=float, default=0.0, help="LR multiplier reached at the last step")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-every", type=int, default=250, help="val bits-per-byte every N steps (-1 = only at the end)")
    g.add_argument("--eval-tokens", type=int, default=20 * 524288, help="tokens per val evaluation")
    g.add_argument("--core-metric-every", type=int, default=-1, help="CORE metric every N steps (-1 = off)")
    g.add_argument("--core-metric-max-per-task", type=int, default=500, help="examples per CORE task (-1 = all)")
    g.add_argument("--sample-every", type=int, default=2000, help="print greedy samples every N steps (-1 = off)")
    g = p.add_argument_group("output")
    g.add_argument("--model-tag", default="", help="checkpoint directory name (default d<depth>)")
    g.add_argument("--dry-run", action="store_true", help="train and log (benchmarks), save no checkpoint or report")
    return p


def validate(args) -> None:
    tr.check_common(args)
    tr.check_positive(args, "depth", "aspect_ratio", "head_dim", "max_seq_len", "device_batch_size",
                      "total_batch_size", "eval_tokens")
    pat = args.window_pattern
    if not pat or set(pat) - {"S", "L"}:
        bad = sorted(set(pat) - {"S", "L"}) if pat else []
        raise UserError(f"--window-pattern={pat!r} has unknown character(s) {' '.join(bad) or '(empty)'}: use only "
                        f"S (short window) and L (full context), e.g. SSSL")
    if args.num_iterations < -1:
        raise UserError(f"--num-iterations={args.num_iterations} must be >= 0 (or -1 = from the targets)")
    for n in ("target_flops", "target_param_data_ratio"):
        v = getattr(args, n)
        if v != -1 and v <= 0:
            raise UserError(f"--{n.replace('_', '-')}={v} must be positive or -1 (off)")
    if args.num_iterations == -1 and args.target_flops <= 0 and args.target_param_data_ratio <= 0:
        raise UserError("no training horizon: set --num-iterations, --target-flops or --target-param-data-ratio")
    for n in ("warmup_ratio", "warmdown_ratio", "final_lr_frac"):
        v = getattr(args, n)
        if not 0.0 <= v <= 1.0:
            raise UserError(f"--{n.replace('_', '-')}={v} must be between 0 and 1")
    if args.warmup_ratio + args.warmdown_ratio > 1.0:
        raise UserError(f"--warmup-ratio + --warmdown-ratio = {args.warmup_ratio + args.warmdown_ratio} exceeds 1")
    for n in ("eval_every", "core_metric_every", "sample_every"):
        v = getattr(args, n)
        if v == 0 or v < -1:
            raise UserError(f"--{n.replace('_', '-')}={v} must be a positive number of steps or -1 (off)")
    if args.core_metric_max_per_task == 0 or args.core_metric_max_per_task < -1:
        raise UserError("--core-metric-max-per-task must be positive or -1 (all)")
    # the batch arithmetic can be checked before anything is loaded (world from torchrun's env)
    world = dist_env()[3]
    tr.grad_accum_steps(args.total_batch_size, args.device_batch_size, args.max_seq_len, world)


def horizon(args, flops_per_token: float, num_params: int) -> tuple[int, str]:
    if args.num_iterations >= 0:
        return args.num_iterations, "--num-iterations"
    if args.target_flops > 0:
        n = round(args.target_flops / (flops_per_token * args.total_batch_size))
        return max(1, n), f"--target-flops={args.target_flops:.3g}"
    tokens = args.target_param_data_ratio * num_params
    return max(1, int(tokens // args.total_batch_size)), f"--target-param-data-ratio={args.target_param_data_ratio:g}"


def core_metric(ctx, model, tokenizer, max_per_task) -> dict | None:
    from nanochat.core_eval import evaluate_core
    model.eval()
    with ctx.autocast():
        core = evaluate_core(model, tokenizer, ctx.device, max_per_task=max_per_task)["CORE"]
    model.train()
    return {"CORE": core} if core is not None else None


def print_samples(ctx, model, tokenizer, max_tokens=16) -> None:
    """Greedy continuations of SAMPLE_PROMPTS (rank 0)."""
    if not ctx.master:
        return
    model.eval()
    bos = tokenizer.get_bos_token_id()
    for prompt in SAMPLE_PROMPTS:
        ids = tokenizer.encode(prompt, prepend=bos)
        with ctx.autocast():
            out = list(model.generate(ids, max_tokens=max_tokens, temperature=0.0))
        print0(f"sample | {prompt!r} -> {tokenizer.decode(out)!r}")
    model.train()


def check_fits(args, config, vocab: int, device) -> None:
    """Refuse, before allocating anything, a model whose weights, gradients and optimizer state
    (>= 12 bytes per parameter) cannot fit in the device's memory (e.g. --depth=100000)."""
    import os
    approx = 12 * config.n_layer * config.n_embd ** 2 + 2 * vocab * config.n_embd
    if device.type == "cuda":
        mem = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
    if approx * 12 > mem:
        raise UserError(f"--depth={args.depth} (dim {config.n_embd}) makes a model of about {approx:.2e} "
                        f"parameters, which needs at least {approx * 12 / 2**30:,.0f} GiB but the {device.type} "
                        f"device has {mem / 2**30:,.0f} GiB: use a smaller --depth / --aspect-ratio")


def check_shards() -> None:
    """Every train/val shard opens (footer, `text` column, rows), or a one-line UserError naming it."""
    from nanochat.shards import ShardError, check_shard, split_files
    for split in ("train", "val"):
        for f in split_files(split):
            try:
                check_shard(f)
            except ShardError as exc:
                raise UserError(f"shard {f} {exc}: delete it and rerun `make data`") from None


def main(argv=None) -> None:
    args = tr.parse_args(build_parser(), argv)
    validate(args)
    ctx = startup.init_run(args, project="nanochat")
    try:
        run(ctx, args)
    finally:
        startup.cleanup(ctx)


def run(ctx, args) -> None:
    from nanochat import checkpoint_manager as ckm
    from nanochat.attention import describe_window_kernel
    from nanochat.dataloader import pretrain_loader
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.loss_eval import evaluate_loss_bpb
    from nanochat.optim import lr_multiplier, muon_momentum
    from nanochat.tokenizer import get_token_bytes, get_tokenizer

    if args.fp8:  # a hardware limit: refuse before loading anything
        from nanochat.fp8 import fp8_support_problem
        problem = fp8_support_problem(ctx.device)
        if problem:
            raise UserError(problem)
    tokenizer = get_tokenizer()
    token_bytes = get_token_bytes(ctx.device)
    vocab = tokenizer.get_vocab_size()
    try:
        config = GPTConfig.from_depth(args.depth, vocab, args.max_seq_len, aspect_ratio=args.aspect_ratio,
                                      head_dim=args.head_dim, window_pattern=args.window_pattern)
    except ValueError as exc:
        raise UserError(f"invalid model shape: {exc}") from None
    B, T = args.device_batch_size, args.max_seq_len
    accum = tr.grad_accum_steps(args.total_batch_size, B, T, ctx.world)
    check_fits(args, config, vocab, ctx.device)

    startup.set_seeds(args.seed)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=ctx.device)
    model.init_weights()
    if args.fp8:
        from nanochat.fp8 import convert_to_fp8
        print0(f"fp8: {convert_to_fp8(model.blocks)} block linear layers run their matmuls in fp8")
    nparams = model.num_params()
    flops_per_token = model.estimate_flops()
    N, why = horizon(args, flops_per_token, nparams["total"])
    total_flops = flops_per_token * args.total_batch_size * N

    tag = args.model_tag or f"d{args.depth}"
    ckpt_dir = ckm.checkpoint_dir("base", tag)
    semantic = tr.semantic_config(args, {"vocab_size": vocab})
    check_shards()  # before the resume policy may clear this tag's old checkpoints
    start = startup.resume_or_start(ctx, model, ckpt_dir, semantic)
    model_c, optimizers, resumed = start.model_c, start.optimizers, start.resumed

    print0(f"model: depth {config.n_layer}, dim {config.n_embd}, heads {config.n_head}, windows "
           f"{config.window_pattern}, vocab {vocab:,}, params {nparams['total']:,} "
           f"(matmul {nparams['matmul']:,}), FLOPs/token {flops_per_token:.3e}")
    if any(w is not None and w < T for w in config.layer_windows()):
        print0(f"window attention: {describe_window_kernel(ctx.device)}")
    print0(f"batch: {args.total_batch_size:,} tokens/step = {B} x {T} x {ctx.world} process(es) x {accum} "
           f"micro-step(s); horizon {N:,} steps ({why}), {args.total_batch_size * N:,} tokens, "
           f"{total_flops:.3e} FLOPs, tokens:params {args.total_batch_size * N / nparams['total']:.2f}")

    progress = tr.Progress(ctx, resumed, N, flops_per_token)
    train_loader = pretrain_loader(tokenizer, B, T, "train", ctx.device, ctx.rank, ctx.world,
                                   resume_state=loader_resume_state(resumed, ctx.rank, ctx.world))
    eval_steps = max(1, args.eval_tokens // (B * T * ctx.world))

    def evaluate(step):
        val = pretrain_loader(tokenizer, B, T, "val", ctx.device, ctx.rank, ctx.world, prefetch=2)
        try:
            m = evaluate_loss_bpb(model_c, val, eval_steps, token_bytes, ctx.autocast(), progress=f"step {step} val eval")
        finally:
            val.close()
        return {"val_bpb": m["bpb"], "val_loss": m["loss"]}

    meta = startup.model_meta(model, args, semantic, tokenizer, stage="base", num_iterations=N, model_tag=tag,
                              total_batch_size=args.total_batch_size, max_seq_len=T)
    # step s: evaluate and checkpoint the model after s optimizer steps, then train step s + 1
    t0 = time.time()
    loader_state = None
    step = progress.start
    with progress, contextlib.closing(train_loader):
        while True:
            last = step >= N
            if tr.due(step, args.eval_every, last) and not progress.evaluated(step):
                t_eval = time.time()
                progress.record_eval(step, evaluate(step), time.time() - t_eval)
            if not progress.continued(step):  # the step resumed from had these in the earlier run
                if args.core_metric_every > 0 and tr.due(step, args.core_metric_every, last):
                    core = core_metric(ctx, model, tokenizer, args.core_metric_max_per_task)
                    print0(f"step {step:05d} | CORE {core['CORE'] if core else None}")
                    progress.record_extras(step, core)
                if args.sample_every > 0 and tr.due(step, args.sample_every, last):
                    print_samples(ctx, model, tokenizer)
                if not args.dry_run and tr.save_due(step, args.save_every, last):
                    tr.save_checkpoint(ctx, step, model, optimizers, meta, progress.loop_state(),
                                       progress.last_eval, loader_state, resumed, args.keep_last)
            if last:
                break
            t_step = time.perf_counter()
            lrm = lr_multiplier(step, N, args.warmup_ratio, args.warmdown_ratio, args.final_lr_frac)
            loss, ntok, loader_state = tr.train_step(ctx, model_c, optimizers, train_loader, accum, lrm,
                                                     muon_momentum(step))
            step += 1
            progress.log_step(step, loss, ntok, time.perf_counter() - t_step, lrm)
    print0(f"training done in {time.time() - t0:.1f}s wall | final val bpb {progress.last_eval.get('val_bpb')}")
    if ctx.peak_memory_gib() is not None:
        print0(f"peak memory: {ctx.peak_memory_gib():.2f} GiB")

    if args.dry_run:
        print0("--dry-run: no checkpoint, no report")
        return
    vals = [e[1].get("val_bpb") for e in progress.evals if e[1].get("val_bpb") is not None]
    config_rows = {
        "Model tag": tag, "Depth": config.n_layer, "Model dim": config.n_embd, "Heads": config.n_head,
        "Window pattern": config.window_pattern, "Sequence length": T, "Vocab size": vocab,
        "Parameters": nparams["total"], "Parameters (matmul)": nparams["matmul"],
        "FLOPs per token": f"{flops_per_token:.4e}", "Total batch size": args.total_batch_size,
        "Device batch size": B, "Grad accumulation steps": accum, "Iterations": N, "Horizon from": why,
        "Training tokens": args.total_batch_size * N, "Tokens : params": round(args.total_batch_size * N / nparams["total"], 2),
        "Total training FLOPs": f"{total_flops:.4e}", "Matrix LR": args.matrix_lr, "Embedding LR": args.embedding_lr,
        "Unembedding LR": args.unembedding_lr, "Weight decay": args.weight_decay,
        "Warmup / warmdown / final LR": f"{args.warmup_ratio} / {args.warmdown_ratio} / {args.final_lr_frac}",
        "Seed": args.seed,
    }
    summary = tr.summary_metrics(ctx, progress)
    summary["Final val bpb"] = progress.last_eval.get("val_bpb")
    summary["Min val bpb"] = min(vals) if vals else None
    if "CORE" in progress.extras:
        summary["CORE (during training)"] = progress.extras["CORE"]
    tr.finish_report(ctx, "Base model training", "base_loss", progress, config_rows, summary)
    tr.record_output(ctx, args.record_output, progress.final_step)


if __name__ == "__main__":
    run_main(main)
