"""How every training stage starts, before its loop (scripts/base_train.py and the others):

- `init_run` -> `RunContext`: the base dir's writability, process group, device, autocast dtype,
  compile, wandb, and the run's first lines (world, device); `cleanup` at its end;
- `resume_or_start`: the resume policy for the stage's checkpoint dir (nanochat.resume), the
  model-shape check, the checkpoint's weights, the optimizers, their restored state, compilation;
- `prepare_finetune`: the upstream checkpoint of mid/SFT/RL, then `resume_or_start`;
- `model_meta`, `upstream_fingerprint`: what a stage's checkpoints say about their run.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from nanochat import checkpoint_manager as ckm
from nanochat import training as tr
from nanochat.resume import Resumed, resolve_resume, restore_optimizers
from nanochat.common import (PROCESS_START, UserError, base_dir_path, compute_cleanup, compute_init, device_name,
                             ensure_base_dir, get_base_dir, print0)


@dataclass
class RunContext:
    args: argparse.Namespace
    is_ddp: bool
    rank: int
    local_rank: int
    world: int
    device: torch.device
    dtype: torch.dtype
    compile: bool
    t_start: float
    wandb: object = None
    ckpt_dir: Path | None = None     # the run's output checkpoint dir (resume_or_start), published at its end

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def device_type(self) -> str:
        return self.device.type

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_memory_gib(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        return None


class _NoWandb:
    def log(self, *a, **k):
        pass

    def finish(self):
        pass


def use_compile_cache() -> None:
    """Keep torch.compile's kernel cache (inductor, and the Triton cache inside it) in the base dir
    unless TORCHINDUCTOR_CACHE_DIR says otherwise: a rerun, a resume after a failure or the next
    stage then reuses the compiled kernels, and the cache is cleaned with the rest of the run's data."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(get_base_dir() / "compile_cache"))


_runs_started = 0  # init_run calls in this process: only the first one waited for the imports


def init_run(args, project: str = "nanochat") -> RunContext:
    global _runs_started
    # time to first step counts the imports (torch's are seconds) for the process's first run
    t_start = PROCESS_START if _runs_started == 0 else time.time()
    _runs_started += 1
    ensure_base_dir(base_dir_path())  # a read-only or unusable base dir: one line now, not after training
    is_ddp, rank, local_rank, world, device = compute_init(args.device_type, args.seed)
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    use_compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    if use_compile:
        use_compile_cache()
    ctx = RunContext(args, is_ddp, rank, local_rank, world, device, dtype, use_compile, t_start)
    ctx.wandb = _NoWandb()
    if args.run != "dummy" and rank == 0:
        try:
            import wandb  # noqa: F401
        except ImportError:
            print0(f"wandb is not installed: --run={args.run} is logged to stdout only")
        else:
            ctx.wandb = wandb.init(project=project, name=args.run, config=vars(args))
    print0(describe_world(world, device))
    print0(f"device: {device_name(device)} x {world} process(es) | autocast: {str(dtype).replace('torch.', '')} "
           f"| compile: {'on' if use_compile else 'off'}")
    return ctx


def describe_world(world: int, device: torch.device) -> str:
    """The one line every training run starts with (rank 0 prints it, from init_run): how many
    processes, on which device type, over which process-group backend."""
    ranks = "rank 0" if world == 1 else f"ranks 0-{world - 1}"
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else "none, single process"
    return f"world size {world} ({ranks}; device type {device.type}; backend {backend})"


def set_seeds(seed: int):
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def maybe_compile(ctx: RunContext, model, dynamic: bool | None = False):
    """What to call for training forwards: the model itself, or (with --compile) its compiled form."""
    if not ctx.compile:
        return model
    return model.compile_for_training(ctx.args.compile_scope, dynamic=dynamic)


def build_optimizers(model, args, lr_frac: float = 1.0) -> list:
    """The model's optimizers from the --*-lr / --weight-decay flags (add_lr_args), every initial lr
    scaled by `lr_frac` (mid/SFT: --init-lr-frac)."""
    optimizers = model.setup_optimizers(unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                        matrix_lr=args.matrix_lr, weight_decay=args.weight_decay)
    scale_initial_lr(optimizers, lr_frac)
    return optimizers


@dataclass
class Start:
    model_c: torch.nn.Module        # what the loop calls (the model, or its compiled form)
    optimizers: list
    resumed: Resumed | None         # the checkpoint continued from; None: a fresh start


def resume_or_start(ctx: RunContext, model, ckpt_dir: Path, semantic: dict, lr_frac: float = 1.0,
                    compile_dynamic: bool | None = False) -> Start:
    """Every stage's start-up, in this order: the resume policy for `ckpt_dir` (a run that starts
    over writes beside the old run's steps until its end: record_output), refusal of a checkpoint of
    another model shape, its weights into `model`, the optimizers (build_optimizers), their state and
    the RNG restored, then compilation. `model` is the freshly initialised (or upstream) model on
    ctx.device."""
    resumed = resolve_resume(ctx, ckpt_dir, semantic)
    ctx.ckpt_dir = Path(ckpt_dir)
    if resumed is not None:
        if resumed.meta.get("model_config") != dataclasses.asdict(model.config):
            raise UserError(f"checkpoint step {resumed.step} in {ckpt_dir} has another model shape: --resume=fresh")
        model.load_state_dict(resumed.model_state, strict=True)
        resumed.model_state = None  # the model holds the weights now; keep no second copy
    optimizers = build_optimizers(model, ctx.args, lr_frac)
    restore_optimizers(optimizers, resumed)
    return Start(maybe_compile(ctx, model, dynamic=compile_dynamic), optimizers, resumed)


def scale_initial_lr(optimizers, frac: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] = group["initial_lr"] * frac


def cleanup(ctx: RunContext) -> None:
    try:
        ctx.wandb.finish()
    except Exception:
        pass
    compute_cleanup()


def model_meta(model, args, semantic: dict, tokenizer, **extra) -> dict:
    cfg = model.config
    return {"model_config": dataclasses.asdict(cfg), "user_config": json.loads(json.dumps(vars(args), default=str)),
            "semantic_config": semantic, "tokenizer_vocab_size": tokenizer.get_vocab_size(), **extra}


def upstream_fingerprint(source: str, tag: str, step: int, meta: dict) -> dict:
    """Identifies the checkpoint a mid/sft run starts from (part of its semantic config)."""
    blob = json.dumps({"semantic": meta.get("semantic_config"), "model": meta.get("model_config")},
                      sort_keys=True, default=str)
    return {"source": source, "tag": tag, "step": step, "config_sha": hashlib.sha256(blob.encode()).hexdigest()[:16]}


# ============================================================================ fine-tuning stages (mid, sft, rl)

@dataclass
class Finetune:
    model: torch.nn.Module
    model_c: torch.nn.Module
    tokenizer: object
    optimizers: list
    upstream: dict          # fingerprint of the checkpoint we start from
    upstream_meta: dict
    tag: str
    ckpt_dir: Path
    semantic: dict
    resumed: Resumed | None
    seq_len: int


def prepare_finetune(ctx: RunContext, args, source: str, out_stage: str, compile_dynamic: bool | None = False) -> Finetune:
    """Load the upstream checkpoint (source dir + tag + step), then `resume_or_start` for the output
    dir `out_stage`/<tag> with every lr scaled by --init-lr-frac. Shared by mid_train, chat_sft, chat_rl."""
    tag = args.model_tag or ckm.find_model_tag(source)
    src_dir = ckm.checkpoint_dir(source, tag)
    step = ckm.resolve_step(src_dir, args.model_step if args.model_step >= 0 else None)
    set_seeds(args.seed)
    model, tokenizer, up_meta = ckm.build_model(src_dir, step, ctx.device, phase="train")
    upstream = upstream_fingerprint(source, tag, step, up_meta)
    print0(f"starting from {source} checkpoint {tag} step {step} ({src_dir})")
    if getattr(args, "max_seq_len", -1) > 0:
        seq_len = args.max_seq_len
        if seq_len > model.config.sequence_len:
            raise UserError(f"--max-seq-len={seq_len} is longer than the context of {source} model {tag} "
                            f"({model.config.sequence_len} tokens): use --max-seq-len<={model.config.sequence_len} "
                            f"(or -1 = the model's)")
    else:  # the row length the upstream stage trained with (else the model's context)
        seq_len = int(up_meta.get("max_seq_len") or model.config.sequence_len)
    semantic = tr.semantic_config(args, {"upstream": upstream, "vocab_size": tokenizer.get_vocab_size(),
                                      "max_seq_len": seq_len}, drop=("model_step", "source"))
    ckpt_dir = ckm.checkpoint_dir(out_stage, tag)
    start = resume_or_start(ctx, model, ckpt_dir, semantic, lr_frac=args.init_lr_frac, compile_dynamic=compile_dynamic)
    return Finetune(model, start.model_c, tokenizer, start.optimizers, upstream, up_meta, tag, ckpt_dir, semantic,
                    start.resumed, seq_len)
