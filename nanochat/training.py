"""What base_train, mid_train, chat_sft and chat_rl share; each script runs its own loop with these
(how a stage starts -- init_run, resume_or_start, prepare_finetune -- is nanochat.startup).

- flags (`add_run_args`, `add_lr_args`, `add_source_args`), `parse_args` and the validation helpers;
- `semantic_config(args)`: the flags that DEFINE a run (everything except execution settings such as
  device batch size, device type, logging/eval/save cadence, tags); a checkpoint can only be
  resumed by a run with the same semantic config;
- the loop's pieces: `train_step` (gradient accumulation, one host sync per optimizer step),
  `Progress` (history across resumes; the step line with loss, lr multiplier, dt, tok/s, MFU, ETA),
  `save_checkpoint` (what nanochat.resume needs to continue exactly), `due`/`save_due`;
- `finish_report`, `summary_metrics`, `record_output` (publishes a started-over run, --record-output);
  `load_mixture` (a stage's task mixture, or a UserError).

Step convention: checkpoint `s` holds the model after s optimizer steps; evaluations at step s
measure that model; a stage's loop runs s = start..N and trains between them.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import time

import torch
import torch.distributed as dist

from nanochat import checkpoint_manager as ckm
from nanochat.resume import Resumed, rng_state
from nanochat.common import UserError, atomic_write_text, device_name, get_peak_flops, print0

# flags that never change what is trained (excluded from semantic_config)
EXECUTION_KEYS = frozenset({
    "run", "device_type", "dtype", "compile", "compile_scope", "device_batch_size", "save_every", "keep_last", "eval_every",
    "eval_tokens", "eval_steps", "eval_metrics_every", "eval_metrics_max_problems", "core_metric_every",
    "core_metric_max_per_task", "sample_every", "model_tag", "resume", "resume_from_step", "record_output",
    "dry_run", "log_every", "eval_examples", "eval_samples",
})


# ============================================================================ arguments

def add_run_args(parser: argparse.ArgumentParser, compile_default: str = "auto") -> None:
    g = parser.add_argument_group("run / execution")
    g.add_argument("--run", default="dummy", help="wandb run name ('dummy' = no wandb)")
    g.add_argument("--device-type", default="", help="cuda|cpu|mps (empty = autodetect)")
    g.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="autocast dtype (auto: bfloat16 on cuda, float32 elsewhere)")
    g.add_argument("--compile", default=compile_default, choices=["auto", "on", "off"],
                   help="torch.compile the model (auto: on for cuda, off otherwise)")
    g.add_argument("--compile-scope", default="blocks", choices=["blocks", "model"],
                   help="blocks: compile each transformer block (shared graphs, short compile); "
                        "model: the whole forward as one graph")
    g.add_argument("--seed", type=int, default=42, help="random seed (semantic)")
    g.add_argument("--resume", default="auto", choices=["auto", "fresh"],
                   help="auto: continue from the newest compatible checkpoint, else start over; "
                        "fresh: start over (clears this tag's checkpoints)")
    g.add_argument("--resume-from-step", type=int, default=-1, help="resume exactly from this step (-1 = see --resume)")
    g.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps (-1 = only at the end)")
    g.add_argument("--keep-last", type=int, default=0, help="keep only the newest K checkpoints (0 = keep all)")
    g.add_argument("--record-output", default="", help="write the final step number to this file")


def add_source_args(parser: argparse.ArgumentParser, what: str, choices: tuple[str, ...] = ()) -> None:
    """The checkpoint a finetuning stage starts from: --source (when there is a choice), --model-tag,
    --model-step. `what` names it in the help ("base", "source")."""
    g = parser.add_argument_group("source")
    if choices:
        g.add_argument("--source", default=choices[0], choices=list(choices), help="which checkpoints to start from")
    g.add_argument("--model-tag", default="", help=f"{what} model tag (default: the only one); also the output tag")
    g.add_argument("--model-step", type=int, default=-1, help=f"{what} checkpoint step (-1 = newest complete)")


def check_source_and_schedule(args) -> None:
    """--model-step and --eval-every, as every finetuning stage takes them."""
    if args.model_step < -1:
        raise UserError(f"--model-step={args.model_step} must be a step >= 0 (or -1 = newest)")
    if args.eval_every == 0 or args.eval_every < -1:
        raise UserError(f"--eval-every={args.eval_every} must be a positive number of steps or -1")


def add_lr_args(parser: argparse.ArgumentParser, embedding_lr=0.2, unembedding_lr=0.004, matrix_lr=0.02,
                weight_decay=0.0) -> None:
    g = parser.add_argument_group("optimizer")
    g.add_argument("--embedding-lr", type=float, default=embedding_lr, help="AdamW lr of the token embedding")
    g.add_argument("--unembedding-lr", type=float, default=unembedding_lr, help="AdamW lr of lm_head")
    g.add_argument("--matrix-lr", type=float, default=matrix_lr, help="Muon lr of the block matrices")
    g.add_argument("--weight-decay", type=float, default=weight_decay, help="Muon weight decay")


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """argparse errors exit 2 with usage; we make them one line like every UserError."""
    def error(message):
        raise UserError(f"{message} (see --help)")
    parser.error = error  # type: ignore[assignment]
    return parser.parse_args(argv)


def check_positive(args, *names, allow_minus_one=()):
    for n in names:
        v = getattr(args, n)
        if n in allow_minus_one and v == -1:
            continue
        if v is None or v <= 0:
            extra = " (or -1)" if n in allow_minus_one else ""
            raise UserError(f"--{n.replace('_', '-')}={v} must be positive{extra}")


def check_nonnegative(args, *names):
    for n in names:
        v = getattr(args, n)
        if v is None or v < 0 or (isinstance(v, float) and not math.isfinite(v)):
            raise UserError(f"--{n.replace('_', '-')}={v} must be >= 0")


def check_common(args) -> None:
    """Validation shared by all training scripts (cheap; before anything is loaded)."""
    check_nonnegative(args, "keep_last")
    for n in ("save_every",):
        v = getattr(args, n)
        if v == 0 or v < -1:
            raise UserError(f"--{n.replace('_', '-')}={v} must be a positive number of steps or -1 (off)")
    if args.resume_from_step < -1:
        raise UserError(f"--resume-from-step={args.resume_from_step} must be a step >= 0 (or -1)")
    lrs = [n for n in ("embedding_lr", "unembedding_lr", "matrix_lr", "weight_decay") if hasattr(args, n)]
    check_nonnegative(args, *lrs)


def semantic_config(args, extra: dict | None = None, drop=()) -> dict:
    out = {k: v for k, v in sorted(vars(args).items()) if k not in EXECUTION_KEYS and k not in drop}
    if extra:
        out.update(extra)
    return json.loads(json.dumps(out, default=str))


def grad_accum_steps(total_batch: int, device_batch: int, seq_len: int, world: int,
                     total_flag="--total-batch-size", unit="tokens") -> int:
    """total_batch / (device_batch * seq_len * world), or a UserError naming valid values."""
    per = device_batch * seq_len * world
    if total_batch % per == 0:
        return total_batch // per
    lower = total_batch // per * per
    upper = lower + per
    options = f"{total_flag}={upper}" if lower == 0 else f"{total_flag}={lower} or {upper}"
    alt = [b for b in range(device_batch, 0, -1) if total_batch % (b * seq_len * world) == 0]
    alt_s = f", or --device-batch-size={alt[0]}" if alt else ""
    shape = f"{device_batch} x {seq_len} x {world}" if seq_len != 1 else f"{device_batch} x {world}"
    raise UserError(f"{total_flag}={total_batch} is not a multiple of one micro-step "
                    f"(device_batch_size x {'max_seq_len x ' if seq_len != 1 else ''}processes = {shape} = "
                    f"{per} {unit}): use {options}{alt_s}")


def apply_schedules(optimizers, lrm: float, momentum: float | None = None) -> None:
    from nanochat.optim import DistMuon, Muon
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if momentum is not None and isinstance(opt, (Muon, DistMuon)):
                group["momentum"] = momentum


def fmt_time(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.2f}h"


def _fmt_mfu(mfu: float) -> str:
    """MFU as the log prints it: a percentage, or n/a where the device's bf16 peak is unknown."""
    return f"{mfu:.2f}%" if math.isfinite(mfu) else "n/a"


def _fmt_metric(v) -> str:
    if isinstance(v, float):
        return f"{v:.6f}" if abs(v) < 100 else f"{v:,.1f}"
    return str(v)


# ============================================================================ the pieces of every stage's loop

def due(step: int, every: int, last: bool) -> bool:
    """An evaluation at `step`: every `every` steps (-1: off) and always at the last step."""
    return last or (every > 0 and step % every == 0)


def save_due(step: int, every: int, last: bool) -> bool:
    """A checkpoint at `step`: every --save-every steps (never step 0) and always at the last step."""
    return last or (every > 0 and step > 0 and step % every == 0)


def train_step(ctx, model, optimizers, loader, accum: int, lrm: float, momentum: float | None = None):
    """One optimizer step over `accum` micro-batches of `loader` -> (mean loss over all ranks, tokens
    over all ranks, this rank's loader state after its last batch). One host sync: the loss."""
    loss_sum = torch.zeros((), device=ctx.device, dtype=torch.float32)
    ntok = 0
    loader_state = None
    for _ in range(accum):
        x, y, loader_state = next(loader)
        with ctx.autocast():
            loss = model(x, y)
        loss_sum += loss.detach().float()
        (loss / accum).backward()
        ntok += x.numel()
    apply_schedules(optimizers, lrm, momentum)
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    loss_t = loss_sum / accum
    if ctx.is_ddp:
        both = torch.stack([loss_t, torch.tensor(float(ntok), device=ctx.device)])
        dist.all_reduce(both, op=dist.ReduceOp.SUM)
        loss_t, ntok = both[0] / ctx.world, int(both[1].item())
    return loss_t.item(), ntok, loader_state


class Progress:
    """A stage's history (losses, evaluations, time, tokens, extras: meta["loop_state"] in every
    checkpoint, continued by a resumed run) and its log lines. A context manager: after the first
    step the garbage collector is frozen and disabled (the heap is then the long-lived model), at
    exit it is on again."""

    def __init__(self, ctx, resumed: Resumed | None, num_iterations: int, flops_per_token: float = 0.0,
                 wandb_prefix: str = ""):
        loop = dict((resumed.meta.get("loop_state") or {}) if resumed else {})
        self.ctx, self.N, self.flops_per_token, self.wandb_prefix = ctx, num_iterations, flops_per_token, wandb_prefix
        self.resumed = resumed is not None
        self.start = self.final_step = resumed.step if resumed else 0
        self.train_losses = [list(x) for x in loop.get("train_losses", []) if x[0] <= self.start]
        self.evals = [list(x) for x in loop.get("evals", []) if x[0] <= self.start]
        self.total_time = float(loop.get("total_time", 0.0))
        self.tokens_trained = int(loop.get("tokens_trained", 0))
        self.extras: dict = dict(loop.get("extras", {}))
        self.last_eval: dict = dict(self.evals[-1][1]) if self.evals else {}
        self.peak = get_peak_flops(device_name(ctx.device))  # inf for CPUs and unlisted GPUs: MFU "n/a"
        self.dts: list[float] = []
        self.tps: list[float] = []
        self.mfus: list[float] = []
        self.time_to_first_step = None
        self._gc_frozen = False
        if self.start > self.N:
            print0(f"warning: resumed step {self.start} is past --num-iterations={self.N}: nothing to train")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._gc_frozen:
            gc.enable()
            gc.unfreeze()
        return False

    def continued(self, step: int) -> bool:
        """`step` is the one this run resumed from: its hooks and checkpoint ran in the earlier run."""
        return self.resumed and step == self.start

    def evaluated(self, step: int) -> bool:
        return any(e[0] == step for e in self.evals)

    def record_eval(self, step: int, metrics: dict | None, seconds: float) -> None:
        if not metrics:
            return
        self.evals.append([step, metrics])
        self.last_eval = dict(metrics)
        print0(f"step {step:05d} | " + " | ".join(f"{k} {_fmt_metric(v)}" for k, v in metrics.items())
               + f" | eval {seconds:.1f}s")
        self.ctx.wandb.log({"step": step, **{f"{self.wandb_prefix}{k}": v for k, v in metrics.items()}})

    def record_extras(self, step: int, out: dict | None) -> None:
        """Results of an in-training measurement (CORE, chat metrics): into the report's summary."""
        if out:
            self.extras.update(out)
            self.ctx.wandb.log({"step": step, **{k: v for k, v in out.items() if isinstance(v, (int, float))}})

    def log_step(self, step: int, loss: float, ntok: int, dt: float, lrm: float) -> None:
        """After optimizer step `step` (1-based): refuse a diverged loss, count time and tokens (the
        first step of a run segment is mostly compilation: kept out of the rates), print the line."""
        ctx, N, start = self.ctx, self.N, self.start
        self.final_step = step
        if not math.isfinite(loss):
            raise UserError(f"training diverged at step {step} (loss {loss}): lower the learning rates "
                            f"or check the data; the last good checkpoint is kept in {ctx.ckpt_dir}")
        if step - start > 1:
            self.total_time += dt
        self.tokens_trained += ntok
        self.train_losses.append([step, loss])
        tok_per_sec = ntok / dt
        mfu = math.nan
        if math.isfinite(self.peak):
            mfu = 100.0 * self.flops_per_token * ntok / dt / (ctx.world * self.peak)
        if step - start > 1 or N - start <= 1:
            self.dts.append(dt)
            self.tps.append(tok_per_sec)
            self.mfus.append(mfu)
        if self.time_to_first_step is None:
            self.time_to_first_step = time.time() - ctx.t_start
            print0(f"time to first step: {self.time_to_first_step:.1f}s")
            gc.collect()
            gc.freeze()
            gc.disable()
            self._gc_frozen = True
        elif step % 5000 == 0:
            gc.collect()
        recent = self.dts[-50:]
        eta = fmt_time(sum(recent) / len(recent) * (N - step)) if recent else "?"
        print0(f"step {step:05d}/{N:05d} ({100 * step / max(N, 1):5.1f}%) | loss {loss:.6f} | "
               f"lrm {lrm:.3f} | dt {dt * 1000:.1f}ms | tok/s {tok_per_sec:,.0f} | mfu {_fmt_mfu(mfu)} | "
               f"eta {eta} | total {fmt_time(self.total_time)}")
        ctx.wandb.log({"step": step, "train/loss": loss, "train/lrm": lrm, "train/dt": dt,
                       "train/tok_per_sec": tok_per_sec, **({"train/mfu": mfu} if math.isfinite(mfu) else {})})

    def loop_state(self) -> dict:
        return {"train_losses": self.train_losses, "evals": self.evals, "total_time": self.total_time,
                "tokens_trained": self.tokens_trained, "extras": self.extras}


def save_checkpoint(ctx, step: int, model, optimizers, meta: dict, loop_state: dict, metrics: dict,
                    loader_state=None, resumed: Resumed | None = None, keep_last: int = 0) -> None:
    """Checkpoint `step` of the run into ctx.ckpt_dir (beside the old run's steps while this run
    started over): weights, this rank's optimizer and RNG states, every rank's loader state, the
    loop history, the latest metrics. Every rank calls it; rank 0 prunes to --keep-last."""
    t0 = time.time()
    states = [loader_state]
    if ctx.is_ddp:
        states = [None] * ctx.world
        dist.all_gather_object(states, loader_state)
    if resumed is not None and all(s is None for s in states):
        # nothing consumed since the resume point (e.g. N == resumed step): keep the old states
        states = resumed.meta.get("dataloader_state") or states
    meta = {**meta, "world_size": ctx.world, "dataloader_state": states, "loop_state": loop_state, **metrics}
    optim = {"optimizers": [o.state_dict() for o in optimizers], "rng": rng_state()}
    out = ckm.write_dir(ctx.ckpt_dir)
    ckm.save_checkpoint(out, step, model.state_dict(), optim, meta, ctx.rank)
    if ctx.master and keep_last > 0:
        ckm.prune_checkpoints(out, keep_last, protect=(step,))
    print0(f"saved checkpoint step {step} to {out} ({time.time() - t0:.1f}s)")


# ============================================================================ reporting

def record_output(ctx, path: str, step: int) -> None:
    """The run is complete: a run that started over beside an old one replaces it now (ckm.publish),
    then its final step goes to `path` (what make's later commands load)."""
    if ctx.master and ctx.ckpt_dir is not None and ckm.publish(ctx.ckpt_dir):
        print0(f"checkpoints of the previous run in {ctx.ckpt_dir} replaced by this run's")
    if path and ctx.master:
        atomic_write_text(path, f"{step}\n")


def finish_report(ctx, section: str, curve: str, progress: Progress, config: dict,
                  summary: dict, extra_lines: list[str] | None = None) -> None:
    """Write the report section + loss curve (rank 0)."""
    if not ctx.master:
        return
    from nanochat.report import Report
    rep = Report()
    xs = [s for s, _ in progress.train_losses]
    ys = [l for _, l in progress.train_losses]
    rep.save_curve(curve, xs, ys, title=f"{section}: training loss")
    data = [config, summary] + list(extra_lines or [])
    if xs:
        data.append(f"Loss curve: ![{curve}]({curve}.svg)")
    rep.log(section, data)


def summary_metrics(ctx, progress: Progress) -> dict:
    mean = (lambda xs: sum(xs) / len(xs) if xs else 0.0)
    out = {
        "Final step": progress.final_step,
        "Final train loss": progress.train_losses[-1][1] if progress.train_losses else float("nan"),
        "Tokens trained": progress.tokens_trained,
        "Training time": fmt_time(progress.total_time),
        "Mean tok/s": mean(progress.tps),
        "Mean MFU %": mean(progress.mfus) if math.isfinite(progress.peak) else "n/a (no bf16 peak known for this device)",
        "Processes": ctx.world,
        "Device": device_name(ctx.device),
    }
    if progress.time_to_first_step is not None:
        out["Time to first step (s)"] = round(progress.time_to_first_step, 1)
    if ctx.peak_memory_gib() is not None:
        out["Peak memory (GiB)"] = round(ctx.peak_memory_gib(), 2)
    return out


def load_mixture(stage: str, split: str, max_examples: int | None = None):
    """nanochat.tasks.build_mixture(stage, split, max_examples); unavailability -> UserError."""
    from nanochat.tasks import TaskUnavailable, build_mixture
    try:
        return build_mixture(stage, split, max_examples=max_examples)
    except TaskUnavailable as exc:
        raise UserError(f"no data for the {stage} {split} mixture ({exc}): see README 'Offline data'") from None
