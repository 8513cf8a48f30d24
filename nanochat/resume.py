"""Resume policy: which checkpoint step a training run continues from, and how its state comes back.

- `--resume-from-step N` loads exactly step N, refusing one made with another semantic config
  (training.semantic_config: the flags that define a run, execution settings excluded);
- `--resume=auto` (default) continues from the newest COMPATIBLE complete step (in the tag directory,
  else in its staging dir: a run that had started over) and, when there is none, says so in one line
  and starts over;
- `--resume=fresh` always starts over.

A run that starts over while the tag directory holds complete steps writes beside them
(checkpoint_manager.staging_dir) and replaces them only at its end (training.record_output ->
checkpoint_manager.publish): killed or failed before, it costs the old model nothing. Resuming restores the model, the
per-rank optimizer shards, the RNG states, the data loader states and the loop history, so a
resumed run logs exactly the losses of the uninterrupted one (same process count, deterministic
kernels). With another process count the (sharded) optimizer state restarts and each data stream
continues after the furthest position read (dataloader.rebase_state).

`decide_resume` is the pure decision (file inspection, rank 0); `resolve_resume` applies it on
every rank and loads the step; `restore_optimizers` and `loader_resume_state` hand the loaded
state to the optimizers and data loaders; `rng_state` is what a checkpoint saves for
`restore_optimizers` to put back. `startup.resume_or_start` strings them together for a stage.
"""
from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from nanochat import checkpoint_manager as ckm
from nanochat.common import UserError, print0


@dataclass
class Resumed:
    step: int
    model_state: dict | None    # None once loaded into the model
    optim: dict | None          # this rank's {"optimizers": [...], "rng": {...}}; None: restart them
    meta: dict


def _broadcast(obj):
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def decide_resume(args, ckpt_dir: Path, semantic: dict) -> tuple[int | None, list[str], list[int], Path]:
    """(step to resume or None, messages to print, steps to delete, the directory this run writes:
    `ckpt_dir` or its staging dir). Pure file inspection (rank 0)."""
    msgs: list[str] = []
    beside = ckm.staging_dir(ckpt_dir)
    if args.resume_from_step >= 0:
        step = ckm.resolve_step(ckpt_dir, args.resume_from_step)
        meta = ckm.read_meta(ckpt_dir, step)
        diff = ckm.config_differences(meta.get("semantic_config", {}), semantic)
        if diff:
            raise UserError(f"cannot resume step {step} of {ckpt_dir}: it was made with other settings "
                            f"({'; '.join(diff[:3])}{'; ...' if len(diff) > 3 else ''}): use the same flags, "
                            f"or --resume=fresh to start over")
        msgs.append(f"resuming from step {step} of {ckpt_dir} (--resume-from-step)")
        return step, msgs, [], ckpt_dir
    first_diff = None
    for d in ([] if args.resume == "fresh" else [ckpt_dir, beside]):
        complete, everything = ckm.complete_steps(d), ckm.all_steps(d)
        for step in reversed(complete):
            try:
                meta = ckm.read_meta(d, step)
            except UserError as exc:
                msgs.append(f"warning: ignoring checkpoint step {step}: {exc}")
                continue
            diff = ckm.config_differences(meta.get("semantic_config", {}), semantic)
            if not diff:
                stale = [s for s in everything if s > step or (s in complete and s != step and
                         ckm.config_differences(_meta_or_empty(d, s).get("semantic_config", {}), semantic))]
                msgs.append(f"resuming from step {step} of {d}")
                if stale:
                    msgs.append(f"removing {len(stale)} checkpoint step(s) of another run from {d}")
                return step, msgs, stale, d
            first_diff = first_diff or diff
    everything, kept = ckm.all_steps(ckpt_dir), ckm.complete_steps(ckpt_dir)
    if args.resume == "fresh":
        what = f"--resume=fresh: removing {len(everything)} existing checkpoint step(s) from {ckpt_dir}"
    else:
        why = f" ({'; '.join(first_diff[:2])})" if first_diff else " (none complete)"
        what = f"warning: checkpoints in {ckpt_dir} do not match this configuration{why}: starting over and removing them"
    if kept:  # the old run's model stays whole until this one has its own
        msgs.append(f"{what} once this run ends (until then it writes beside them, in {beside})")
        return None, msgs, ckm.all_steps(beside), beside
    if everything:
        msgs.append(what)
    return None, msgs, everything, ckpt_dir


def _meta_or_empty(ckpt_dir, step) -> dict:
    try:
        return ckm.read_meta(ckpt_dir, step)
    except UserError:
        return {}


def resolve_resume(ctx, ckpt_dir: Path, semantic: dict) -> Resumed | None:
    """Apply the resume policy (see module doc) for the run `ctx` (a startup.RunContext: master,
    rank, world, device, args.resume/resume_from_step). Every rank must call it: rank 0 decides,
    sets up the directory the run writes (ckm.write_dir) and cleans up, the others receive the decision."""
    decision = None
    if ctx.master:
        try:
            ckm.recover(ckpt_dir)
            step, msgs, doomed, out = decide_resume(ctx.args, Path(ckpt_dir), semantic)
            for m in msgs:
                print0(m)
            beside = ckm.staging_dir(ckpt_dir)
            if out == beside:
                beside.mkdir(parents=True, exist_ok=True)  # from now on ckm.write_dir is the staging dir
            else:
                shutil.rmtree(beside, ignore_errors=True)  # a started-over run that this one does not continue
            for s in doomed:
                ckm.delete_step(out, s)
            ckm.remove_temp_files(out)
            decision = ("ok", step, str(out))
        except UserError as exc:
            decision = ("error", str(exc))
    decision = _broadcast(decision)
    _barrier()
    if decision[0] == "error":
        raise UserError(decision[1])
    step, src = decision[1], Path(decision[2])
    if step is None:
        return None
    model_state, optim, meta = ckm.load_checkpoint(src, step, ctx.device, load_optimizer=False, rank=ctx.rank)
    saved_world = int(meta.get("world_size", ctx.world))
    if saved_world == ctx.world:
        optim = ckm.load_optimizer_state(src, step, ctx.rank, "cpu", meta)
    else:
        print0(f"warning: step {step} was saved by {saved_world} process(es), this run has {ctx.world}: the "
               f"(sharded) optimizer state restarts and the data stream continues after the furthest position read")
    return Resumed(step, model_state, optim, meta)


def restore_optimizers(optimizers, resumed: Resumed | None) -> None:
    """Load this rank's optimizer states and RNG states from `resumed` (nothing when starting over
    or when the process count changed)."""
    if resumed is None or resumed.optim is None:
        return
    states = resumed.optim.get("optimizers")
    if not isinstance(states, list) or len(states) != len(optimizers):
        raise UserError("checkpoint optimizer state does not match this optimizer setup: --resume=fresh")
    for opt, st in zip(optimizers, states):
        try:
            opt.load_state_dict(st)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise UserError(f"checkpoint optimizer state does not fit ({str(exc).splitlines()[0][:120]}): "
                            f"start over with --resume=fresh") from None
    restore_rng_state(resumed.optim.get("rng", {}))


def loader_resume_state(resumed: Resumed | None, rank: int, world: int) -> dict | None:
    """This rank's data loader state from a checkpoint (rebased when the process count changed)."""
    if resumed is None:
        return None
    states = resumed.meta.get("dataloader_state")
    if not states:
        return None
    if len(states) == world:
        return states[rank]
    from nanochat.dataloader import rebase_state
    return rebase_state(states, rank, world)


def rng_state() -> dict:
    """Every generator a resumed run must continue: torch (CPU), Python's, and CUDA's where present."""
    st = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def restore_rng_state(st: dict) -> None:
    if not st:
        return
    if "torch" in st:
        torch.set_rng_state(st["torch"].cpu())
    if "python" in st:
        random.setstate((3, tuple(int(x) for x in st["python"]), None))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"].cpu())
