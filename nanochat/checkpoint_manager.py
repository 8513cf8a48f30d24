"""Checkpoints: save atomically, find complete ones, load safely, rebuild models.

Layout of a checkpoint directory (`checkpoint_dir(source, tag)`):

    model_<step:06d>.pt              model state_dict (rank 0)
    optim_<step:06d>_rank<r>.pt      rank r's optimizer state (+ its RNG state); sharded optimizers
    meta_<step:06d>.json             written LAST: a step is complete iff its meta and model exist

A run that starts over while complete steps exist (--resume=fresh, changed settings) writes
beside them, in `staging_dir` (`.<tag>.next`), and `publish` swaps it in only once the run is
complete: a kill or a failure before that leaves the old run's model as it was.

Every file goes through a temp file + rename (`atomic_torch_save`/`atomic_write_text`), and the
meta is written only after a barrier, so every optimizer shard exists before a step looks
complete. A crash therefore leaves at worst a partial step without meta, which `complete_steps`
ignores. Loading uses `torch.load(weights_only=True)`: a checkpoint cannot execute code; any
unreadable, truncated or foreign file becomes a one-line `UserError` naming the fix.

The meta JSON holds `model_config` (GPTConfig as a dict), `user_config` (all CLI args),
`semantic_config` (the args that define the run; see nanochat.training), `step`, the latest
validation numbers, the data loader states (one per rank) and the loop state used to resume.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import torch

from nanochat.common import UserError, atomic_torch_save, atomic_write_text, get_base_dir, print0

SOURCES = {"base": "base_checkpoints", "mid": "mid_checkpoints", "sft": "chatsft_checkpoints",
           "rl": "chatrl_checkpoints"}
_ALIASES = {"chatsft": "sft", "midtrain": "mid", "pretrain": "base", "chatrl": "rl"}
_STAGE_HINT = {"base": "make pretrain", "mid": "make midtrain", "sft": "make sft", "rl": "make rl"}

_META_RE = re.compile(r"^meta_(\d{6,})\.json$")


def _source(source: str) -> str:
    s = _ALIASES.get(source, source)
    if s not in SOURCES:
        raise UserError(f"unknown checkpoint source {source!r}: use one of {', '.join(SOURCES)}")
    return s


def checkpoint_dir(source: str, model_tag: str) -> Path:
    if not model_tag or "/" in model_tag or model_tag in (".", ".."):
        raise UserError(f"invalid model tag {model_tag!r}: use a plain name such as d20")
    return get_base_dir() / SOURCES[_source(source)] / model_tag


def model_path(ckpt_dir, step: int) -> Path:
    return Path(ckpt_dir) / f"model_{step:06d}.pt"


def optim_path(ckpt_dir, step: int, rank: int) -> Path:
    return Path(ckpt_dir) / f"optim_{step:06d}_rank{rank}.pt"


def meta_path(ckpt_dir, step: int) -> Path:
    return Path(ckpt_dir) / f"meta_{step:06d}.json"


# ----------------------------------------------------------------------------- save

def _barrier():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(ckpt_dir, step: int, model_state, optimizer_states, meta: dict, rank: int = 0) -> None:
    """Every rank writes its optimizer shard; barrier; rank 0 writes the model, then the meta LAST.

    Must be called by every rank (it contains barriers). `optimizer_states=None` skips the shard.
    Returns once the whole step is on disk (a final barrier), so no rank races ahead of it.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if optimizer_states is not None:
        atomic_torch_save(optimizer_states, optim_path(ckpt_dir, step, rank))
    _barrier()
    if rank == 0:
        if model_state is not None:
            atomic_torch_save(model_state, model_path(ckpt_dir, step))
        meta = dict(meta)
        meta["step"] = step
        atomic_write_text(meta_path(ckpt_dir, step), json.dumps(meta, indent=1, default=_json_default))
    _barrier()


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


# ----------------------------------------------------------------------------- discover

def complete_steps(ckpt_dir) -> list[int]:
    """Sorted steps whose meta and model both exist (meta is written last)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    steps = []
    for p in d.iterdir():
        m = _META_RE.match(p.name)
        if m and model_path(d, int(m.group(1))).is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def all_steps(ckpt_dir) -> list[int]:
    """Every step that has any file (complete or partial)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = set()
    for p in d.iterdir():
        m = re.match(r"^(?:model|meta|optim)_(\d{6,})", p.name)
        if m:
            found.add(int(m.group(1)))
    return sorted(found)


def read_meta(ckpt_dir, step: int) -> dict:
    p = meta_path(ckpt_dir, step)
    try:
        meta = json.loads(p.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        return meta
    except FileNotFoundError:
        raise UserError(f"checkpoint step {step} has no meta file {p}: it is incomplete; "
                        f"use a complete step ({_fmt_steps(complete_steps(ckpt_dir))})") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"checkpoint meta {p} is unreadable ({exc.__class__.__name__}): delete step {step} "
                        f"of {ckpt_dir} or retrain") from None


def _fmt_steps(steps) -> str:
    if not steps:
        return "none"
    return ", ".join(str(s) for s in steps[-10:]) if len(steps) <= 10 else "..., " + ", ".join(str(s) for s in steps[-10:])


def _hint_for(ckpt_dir: Path) -> str:
    parent = ckpt_dir.parent
    src = {v: k for k, v in SOURCES.items()}.get(parent.name)
    stage = _STAGE_HINT.get(src, "train it")
    tags = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")) if parent.is_dir() else []
    have = f" (available tags: {', '.join(tags)})" if tags else ""
    return f"run `{stage}` first or check --model-tag{have}"


def resolve_step(ckpt_dir, step: int | None) -> int:
    """`step` if complete, else the newest complete step when step is None; UserError otherwise."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise UserError(f"no checkpoints in {ckpt_dir}: {_hint_for(ckpt_dir)}")
    steps = complete_steps(ckpt_dir)
    if not steps:
        raise UserError(f"no complete checkpoint in {ckpt_dir} (only partial steps): {_hint_for(ckpt_dir)}")
    if step is None or step < 0:
        return steps[-1]
    if step not in steps:
        raise UserError(f"step {step} is not a complete checkpoint in {ckpt_dir}: use one of {_fmt_steps(steps)}")
    return step


# ----------------------------------------------------------------------------- load

def safe_torch_load(path, device="cpu"):
    """torch.load(weights_only=True) with every failure turned into a one-line UserError."""
    path = Path(path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint file {path} is missing: the checkpoint is incomplete; retrain or "
                        f"pick another step") from None
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling error"
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise UserError(f"refusing to load {path}: it contains objects other than tensors and plain data "
                            f"(a checkpoint never does; the file may be malicious or foreign): delete it and "
                            f"retrain") from None
        raise UserError(f"checkpoint file {path} is corrupt ({first[:120]}): delete it (and its step) and "
                        f"retrain or resume from an earlier step") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, KeyError,
            IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"checkpoint file {path} is truncated or corrupt ({first[:120]}): delete it (and its "
                        f"step) and retrain or resume from an earlier step") from None


def load_checkpoint(ckpt_dir, step: int | None, device, load_optimizer: bool = False, rank: int = 0):
    """-> (model_state, optimizer_state or None, meta). step=None: newest complete step."""
    ckpt_dir = Path(ckpt_dir)
    step = resolve_step(ckpt_dir, step)
    meta = read_meta(ckpt_dir, step)
    model_state = safe_torch_load(model_path(ckpt_dir, step), device)
    if not isinstance(model_state, dict):
        raise UserError(f"{model_path(ckpt_dir, step)} is not a model state dict: delete it and retrain")
    model_state = {(k[len("_orig_mod."):] if k.startswith("_orig_mod.") else k): v for k, v in model_state.items()}
    optim = load_optimizer_state(ckpt_dir, step, rank, device, meta) if load_optimizer else None
    return model_state, optim, meta


def load_optimizer_state(ckpt_dir, step: int, rank: int, device="cpu", meta: dict | None = None):
    """Rank `rank`'s optimizer shard of a complete step (UserError if missing or unreadable)."""
    p = optim_path(ckpt_dir, step, rank)
    if not p.exists():
        saved = (meta or {}).get("world_size", "?")
        raise UserError(f"no optimizer state for rank {rank} at step {step} in {ckpt_dir} (saved with "
                        f"{saved} process(es)): resume with the same number of processes or --resume=fresh")
    return safe_torch_load(p, device)


# ----------------------------------------------------------------------------- models

def model_from_config(config_dict: dict, device, init: bool = True):
    """A GPT built from its config dict on `device` (weights initialised when init=True)."""
    from nanochat.gpt import GPT, GPTConfig
    try:
        config = GPTConfig(**config_dict)
    except TypeError as exc:
        raise UserError(f"checkpoint model_config does not match this code's GPTConfig ({exc}): retrain "
                        f"the checkpoint with this version") from None
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    if init:
        model.init_weights()
    return model


def build_model(ckpt_dir, step: int | None, device, phase: str = "eval"):
    """-> (model, tokenizer, meta) with the checkpoint's weights, in train() or eval() mode."""
    if phase not in ("train", "eval"):
        raise ValueError(f"phase must be 'train' or 'eval', got {phase!r}")
    device = torch.device(device)
    model_state, _, meta = load_checkpoint(ckpt_dir, step, device)
    if "model_config" not in meta:
        raise UserError(f"checkpoint meta in {ckpt_dir} has no model_config: retrain it with this version")
    model = model_from_config(meta["model_config"], device, init=False)
    if device.type in ("cpu", "mps"):
        model_state = {k: (v.float() if v.is_floating_point() and v.dtype == torch.bfloat16 else v)
                       for k, v in model_state.items()}
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"weights in {ckpt_dir} do not fit the model they claim ({first[:160]}): retrain "
                        f"the checkpoint with this version") from None
    model.train() if phase == "train" else model.eval()
    from nanochat.tokenizer import get_tokenizer
    tokenizer = get_tokenizer()
    vocab = meta["model_config"].get("vocab_size")
    tok_vocab = tokenizer.get_vocab_size()
    saved_tok = meta.get("tokenizer_vocab_size")
    if (saved_tok is not None and saved_tok != tok_vocab) or (vocab is not None and tok_vocab > vocab):
        raise UserError(f"the tokenizer (vocab {tok_vocab}) is not the one the checkpoint in {ckpt_dir} was "
                        f"trained with (vocab {saved_tok or vocab}): retrain the model (`make pretrain`)")
    return model, tokenizer, meta


def find_model_tag(source: str) -> str:
    root = get_base_dir() / SOURCES[_source(source)]
    tags = sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and complete_steps(p)) if root.is_dir() else []
    if len(tags) == 1:
        return tags[0]
    if not tags:
        raise UserError(f"no {source} checkpoints under {root}: run `{_STAGE_HINT[_source(source)]}` first")
    raise UserError(f"several {source} models under {root} ({', '.join(tags)}): choose one with --model-tag")


def load_model(source: str, device, phase: str = "eval", model_tag: str | None = None, step: int | None = None):
    """-> (model, tokenizer, meta). model_tag=None: the only tag there; step=None: newest complete."""
    tag = model_tag or find_model_tag(source)
    d = checkpoint_dir(source, tag)
    return build_model(d, step, device, phase)


# ----------------------------------------------------------------------------- compatibility & housekeeping

# flags that no longer exist (and never acted): a checkpoint that recorded one is still compatible
RETIRED_KEYS = frozenset({"scalar_lr"})


def config_differences(saved: dict, wanted: dict) -> list[str]:
    """Human-readable differences between two semantic configs ("key: saved -> wanted")."""
    out = []
    for k in sorted((set(saved) - (RETIRED_KEYS - set(wanted))) | set(wanted)):
        a, b = saved.get(k, "(unset)"), wanted.get(k, "(unset)")
        if _norm(a) != _norm(b):
            out.append(f"{k}: {a} -> {b}")
    return out


def _norm(v):
    return json.loads(json.dumps(v, default=_json_default))


def delete_step(ckpt_dir, step: int) -> None:
    """Remove one step, meta FIRST (so a half-deleted step already reads as incomplete)."""
    d = Path(ckpt_dir)
    files = [meta_path(d, step), model_path(d, step)] + sorted(d.glob(f"optim_{step:06d}_rank*.pt"))
    for f in files:
        try:
            f.unlink()
        except FileNotFoundError:
            pass


def staging_dir(ckpt_dir) -> Path:
    """Where a run that starts over writes while the old run's steps stay in `ckpt_dir`."""
    d = Path(ckpt_dir)
    return d.parent / f".{d.name}.next"


def write_dir(ckpt_dir) -> Path:
    """Where this run saves: the staging dir while it exists (nanochat.resume creates it for a run
    that starts over on top of complete steps, and removes it for any other run), else `ckpt_dir`."""
    beside = staging_dir(ckpt_dir)
    return beside if beside.is_dir() else Path(ckpt_dir)


def publish(ckpt_dir) -> bool:
    """Replace `ckpt_dir` by its staging dir once that holds a complete step (the run's end): two
    renames, the old run deleted last (`recover` completes a publish cut short between them)."""
    d, beside = Path(ckpt_dir), staging_dir(ckpt_dir)
    if not complete_steps(beside):
        return False
    old = d.parent / f".{d.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if d.exists():
        os.rename(d, old)
    os.rename(beside, d)
    shutil.rmtree(old, ignore_errors=True)
    return True


def recover(ckpt_dir) -> None:
    """Complete a publish killed between its renames (`ckpt_dir` gone, the old run set aside)."""
    d, beside = Path(ckpt_dir), staging_dir(ckpt_dir)
    old = d.parent / f".{d.name}.old"
    if not d.exists() and old.is_dir():
        os.rename(beside if complete_steps(beside) else old, d)
    if d.exists():
        shutil.rmtree(old, ignore_errors=True)


def remove_temp_files(ckpt_dir) -> None:
    """Temp files left by a killed writer (never renamed into place)."""
    d = Path(ckpt_dir)
    if d.is_dir():
        for f in d.glob(".*.tmp"):
            try:
                f.unlink()
            except OSError:
                pass


def prune_checkpoints(ckpt_dir, keep_last: int, protect: tuple = ()) -> list[int]:
    """Keep the newest `keep_last` complete steps (and `protect`); delete older ones. keep_last<=0: keep all."""
    if keep_last <= 0:
        return []
    steps = complete_steps(ckpt_dir)
    doomed = [s for s in steps[:-keep_last] if s not in protect]
    for s in doomed:
        delete_step(ckpt_dir, s)
    if doomed:
        print0(f"pruned checkpoints {_fmt_steps(doomed)} from {ckpt_dir} (--keep-last={keep_last})")
    return doomed
