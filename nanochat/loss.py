"""The soft-capped cross-entropy of the logits 15 * tanh(x @ W^T / 15), chunked over rows so the
[rows, vocab] logits never exist all at once."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nanochat.attention import CompiledOutsideTrace

SOFTCAP = 15.0


def softcap(logits: torch.Tensor) -> torch.Tensor:
    return SOFTCAP * torch.tanh(logits / SOFTCAP)


def _softcap_ce_chunk(xc: torch.Tensor, w: torch.Tensor, targets: torch.Tensor):
    """One chunk of rows: (summed loss over non-ignored rows, d loss / d raw logits in xc's dtype).

    The gradient of the soft-capped cross-entropy w.r.t. the raw logits z is
    (softmax - onehot) * (1 - tanh(z/15)^2), zero for ignored rows (target -1).

    Written so that, compiled, nothing of size [rows, V] is stored besides z and dz: the one-hot is
    a comparison with a column index (a scatter into the probabilities would force them into
    memory as fp32, 4 bytes per logit written and read back), and the target's logit is gathered
    from z, not from the capped fp32 logits (a gather would make those a stored buffer too)."""
    valid = (targets != -1).unsqueeze(1)
    safe_t = targets.clamp(min=0).unsqueeze(1)
    z = xc @ w.t()                                            # [rows, V], matmul dtype
    th = torch.tanh(z.float() / SOFTCAP)
    logits = th * SOFTCAP
    lse = torch.logsumexp(logits, dim=1, keepdim=True)
    picked = torch.tanh(z.gather(1, safe_t).float() / SOFTCAP) * SOFTCAP
    loss = ((lse - picked) * valid).sum()
    onehot = torch.arange(z.size(1), device=z.device) == safe_t
    dz = ((torch.exp(logits - lse) - onehot.float()) * (1.0 - th * th) * valid).to(xc.dtype)
    return loss, dz


# on CUDA the chunk runs compiled: eager, its ~8 elementwise passes over a [rows, vocab] fp32 block
# each go through memory; compiled, they fuse into about two
_softcap_ce_chunk_compiled = CompiledOutsideTrace(_softcap_ce_chunk)


class _ChunkedSoftcapCE(torch.autograd.Function):
    """Cross-entropy of softcap(x @ W^T) without materialising all logits at once.

    Forward walks the rows in chunks; for each chunk it computes the fp32 soft-capped logits, the
    loss, and immediately the gradient w.r.t. the raw logits, which it turns into that chunk's
    grad_x rows and adds into grad_W. The logits of a chunk are then dropped, so peak memory is one
    chunk of [rows, vocab], and nothing is recomputed in backward (which only scales the stored
    grads by grad_output). Only for a scalar loss ("sum" or "mean" over non-ignored targets).
    """

    @staticmethod
    def forward(ctx, x, weight, targets, chunk_rows: int, mean: bool):
        dev = x.device.type
        # match what autocast would do for the lm_head matmul: compute dtype of the matmuls
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype
        chunk_fn = _softcap_ce_chunk_compiled if x.device.type == "cuda" else _softcap_ce_chunk
        with torch.autocast(dev, enabled=False):
            N = x.size(0)
            w = weight.to(cdt)
            loss = torch.zeros((), dtype=torch.float32, device=x.device)
            grad_x = torch.empty_like(x)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            for s in range(0, N, chunk_rows):
                xc = x[s:s + chunk_rows].to(cdt)
                loss_c, dz = chunk_fn(xc, w, targets[s:s + chunk_rows])
                loss = loss + loss_c
                grad_x[s:s + chunk_rows] = (dz @ w).to(x.dtype)
                grad_w += (dz.t() @ xc).float()
            if mean:
                scale = 1.0 / (targets != -1).sum().to(torch.float32)
            else:
                scale = torch.ones((), dtype=torch.float32, device=x.device)
            loss = loss * scale
        ctx.save_for_backward(grad_x, grad_w, scale)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_w, scale = ctx.saved_tensors
        g = grad_out.float() * scale
        return (grad_x * g.to(grad_x.dtype), (grad_w * g).to(ctx.weight_dtype), None, None, None)


def softcapped_loss(x: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor,
                    chunk_rows: int, reduction: str):
    """x [B, T, D], targets [B, T] (-1 = ignore) -> the loss of softcap(lm_head(x)): a scalar for
    "mean" (over non-ignored targets) or "sum", [B, T] for "none"."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"loss_reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    B, T, D = x.shape
    xf, tf = x.reshape(B * T, D), targets.reshape(B * T)
    N, chunk = B * T, chunk_rows
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or lm_head.weight.requires_grad)
    # On CUDA a training loss always takes the chunked path, even as a single chunk: its chunk math
    # is compiled on its own, while under regional compilation the simple path below runs eager and
    # much slower (bench/RESULTS.md).
    simple = N <= chunk and not (needs_grad and x.device.type == "cuda")
    if simple or (needs_grad and reduction == "none"):
        # simple path: all logits at once (small batches; per-token losses with grad)
        logits = softcap(lm_head(xf).float())
        loss = F.cross_entropy(logits, tf, ignore_index=-1, reduction=reduction)
        return loss.view(B, T) if reduction == "none" else loss
    if needs_grad:
        return _ChunkedSoftcapCE.apply(xf, lm_head.weight, tf, chunk, reduction == "mean")
    # no grad (evaluation): chunk the rows, keep only the per-token losses
    losses = []
    for s in range(0, N, chunk):
        logits = softcap(lm_head(xf[s:s + chunk]).float())
        losses.append(F.cross_entropy(logits, tf[s:s + chunk], ignore_index=-1, reduction="none"))
    per_token = torch.cat(losses)
    if reduction == "none":
        return per_token.view(B, T)
    if reduction == "sum":
        return per_token.sum()
    return per_token.sum() / (tf != -1).sum()
