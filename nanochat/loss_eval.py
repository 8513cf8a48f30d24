"""Validation metrics that do not depend on the tokenizer's vocabulary size: bits per byte.

Mean cross-entropy per token changes with the tokenizer (a bigger vocab packs more text per token),
so models are compared by bits per byte: total nats over the evaluated targets divided by ln(2)
times the UTF-8 bytes those targets stand for (`token_bytes[target]`). Special tokens have 0 bytes
and are left out of both sums; targets -1 (masked) are left out too. Under DDP the sums are
all-reduced, so every rank returns the same number.
"""
from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from nanochat.common import print0


def _allreduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def evaluate_loss_bpb(model, batches, steps: int, token_bytes: torch.Tensor | None = None,
                      autocast_ctx=None, progress: str | None = None, progress_every_s: float = 10.0) -> dict:
    """Run `steps` batches from the iterator `batches` ((x, y, ...) tuples).

    Returns {"loss": mean nats per counted target (targets >= 0), "bpb": bits per byte (nan when
    token_bytes is None, inf when no byte was counted), "tokens": targets counted, "bytes": bytes}.
    With `progress` (a label), rank 0 prints a progress line at most every `progress_every_s`
    seconds: a full-size evaluation can take minutes (10M tokens), and silence looks like a hang.
    The check reads only the host clock, so it adds no device sync.
    """
    import contextlib
    ctx = autocast_ctx if autocast_ctx is not None else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    device = None
    nats = ntok = bnats = nbytes = None
    t0 = last_report = time.time()
    for i in range(steps):
        x, y = next(batches)[:2]
        if device is None:
            device = x.device
            fdt = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
            nats = torch.zeros((), dtype=fdt, device=device)
            bnats = torch.zeros((), dtype=fdt, device=device)
            ntok = torch.zeros((), dtype=torch.int64, device=device)
            nbytes = torch.zeros((), dtype=torch.int64, device=device)
        with ctx:
            loss = model(x, y, loss_reduction="none")
        loss = loss.reshape(-1).to(fdt)
        y = y.reshape(-1)
        valid = y >= 0
        nats += torch.where(valid, loss, 0.0).sum()
        ntok += valid.sum()
        if token_bytes is not None:
            tb = token_bytes.to(device)
            b = torch.where(valid, tb[torch.where(valid, y, 0)], 0).to(torch.int64)
            counted = b > 0
            bnats += torch.where(counted, loss, 0.0).sum()
            nbytes += b.sum()
        now = time.time()
        if progress and i + 1 < steps and now - last_report >= progress_every_s:
            last_report = now
            print0(f"{progress}: batch {i + 1}/{steps} ({100 * (i + 1) / steps:.0f}%, {now - t0:.0f}s)")
    if device is None:
        raise ValueError("evaluate_loss_bpb needs steps >= 1")
    packed = _allreduce_sum(torch.stack([nats, bnats, ntok.to(fdt), nbytes.to(fdt)]))
    nats_v, bnats_v, ntok_v, nbytes_v = packed.tolist()
    if was_training:
        model.train()
    loss_v = nats_v / ntok_v if ntok_v > 0 else float("nan")
    if token_bytes is None:
        bpb = float("nan")
    else:
        bpb = bnats_v / (math.log(2) * nbytes_v) if nbytes_v > 0 else float("inf")
    return {"loss": loss_v, "bpb": bpb, "tokens": int(ntok_v), "bytes": int(nbytes_v)}


def evaluate_bpb(model, batches, steps: int, token_bytes: torch.Tensor, autocast_ctx=None) -> float:
    """Bits per byte over `steps` batches (see module doc)."""
    return evaluate_loss_bpb(model, batches, steps, token_bytes, autocast_ctx)["bpb"]
