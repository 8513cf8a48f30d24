"""Optimizers and schedules for pretraining.

- `Muon`: momentum SGD whose update for each 2-D weight matrix is replaced by the nearest
  semi-orthogonal matrix (computed approximately with a Newton-Schulz iteration in bf16).
  Idea: Keller Jordan's Muon (2024); the quintic coefficients (3.4445, -4.7750, 2.0315) are the
  published ones, chosen to push every singular value of a normalised matrix into roughly
  [0.7, 1.2] in five steps rather than to converge exactly.
- `DistMuon`: the same maths for data-parallel training without DDP: one reduction of the
  stacked gradients per shape group, every rank orthogonalises its own slice of the matrices,
  then the updated weights are all-gathered.
- `DistAdamW`: AdamW whose gradients are reduced once per parameter (reduce-scatter + sharded
  update + all-gather on NCCL; all-reduce + full update elsewhere).
- `lr_multiplier`, `muon_momentum`: the schedules the training loop applies each step.

The distributed optimizers replace DDP: the model is NOT wrapped in DistributedDataParallel;
every rank runs forward/backward on its own micro-batches and the optimizer averages gradients.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

# ----------------------------------------------------------------------------- schedules


def lr_multiplier(step: int, num_iterations: int, warmup_ratio: float = 0.0,
                  warmdown_ratio: float = 0.2, final_lr_frac: float = 0.0) -> float:
    """Multiplier on every group's `initial_lr` at `step` (0-based).

    Linear warmup over the first round(warmup_ratio*N) steps ((step+1)/warmup, so step 0 is not 0),
    then 1.0, then a linear warmdown over the last round(warmdown_ratio*N) steps that reaches
    `final_lr_frac` exactly at step == num_iterations.
    """
    warmup = round(warmup_ratio * num_iterations)
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup:
        return (step + 1) / warmup
    if step <= num_iterations - warmdown:
        return 1.0
    progress = max(0.0, (num_iterations - step) / warmdown)  # 1 -> 0 across the warmdown
    return progress + (1.0 - progress) * final_lr_frac


def muon_momentum(step: int, start: float = 0.85, end: float = 0.95, ramp_steps: int = 300) -> float:
    """Muon momentum: linear from 0.85 at step 0 to 0.95 at step 300, constant after."""
    frac = min(max(step, 0) / ramp_steps, 1.0)
    return (1.0 - frac) * start + frac * end


# ----------------------------------------------------------------------------- orthogonalisation

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate U V^T of G = U S V^T for a matrix or a stack of matrices [..., rows, cols].

    Runs in bf16 (returned as bf16). Each step applies the odd polynomial
    p(X) = a X + b (X X^T) X + c (X X^T)^2 X, which maps every singular value s to p(s) and
    leaves the singular vectors alone. We first divide by the Frobenius norm so all s <= 1,
    then iterate. The Gram matrix is formed on the short side (transpose tall matrices) so it
    is min(rows, cols)^2; baddbmm folds the scalar terms into the matmuls (3 matmuls/step).
    """
    a, b, c = NS_COEFFS
    X = G.float()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    X = X.to(torch.bfloat16)
    squeeze = X.dim() == 2
    if squeeze:
        X = X.unsqueeze(0)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    for _ in range(steps):
        A = X @ X.mT                                     # [n, r, r], r = short side
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)      # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a, alpha=1.0)    # a X + B X
    if tall:
        X = X.mT
    return X.squeeze(0) if squeeze else X


def _shape_scale(shape: torch.Size) -> float:
    """Orthogonalised updates have unit singular values; tall matrices (rows > cols) get
    sqrt(rows/cols) so the per-element RMS of the update does not shrink with fan-out."""
    return max(1.0, shape[-2] / shape[-1]) ** 0.5


def _momentum_updates(grads, bufs, momentum: float, nesterov: bool):
    """buf <- m*buf + (1-m)*g in place; returns the update (Nesterov: (1-m)*g + m*buf)."""
    torch._foreach_lerp_(bufs, grads, 1.0 - momentum)
    if nesterov:
        return torch._foreach_lerp(grads, bufs, momentum)
    return list(bufs)


def _group_by_shape(params) -> list[list[torch.Tensor]]:
    params = list(params)
    if not params:
        raise ValueError("Muon got no parameters")
    shapes: dict[tuple, list] = {}
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise ValueError("Muon takes an iterable of tensors (it forms its own per-shape groups)")
        if p.dim() != 2:
            raise ValueError(f"Muon only handles 2-D matrices, got a parameter of shape {tuple(p.shape)}: "
                             f"give it to AdamW instead")
        shapes.setdefault(tuple(p.shape), []).append(p)
    # deterministic order (identical on every rank): by size, then shape
    return [shapes[s] for s in sorted(shapes, key=lambda s: (s[0] * s[1], s))]


# ----------------------------------------------------------------------------- Muon


class Muon(torch.optim.Optimizer):
    """Single-process Muon. Give it the 2-D hidden matrices only (not embeddings / lm_head).

    Parameters are grouped by shape (one param group per shape, each with its own lr and momentum
    that the training loop may change) so each group is orthogonalised as one batched stack.
    weight_decay is decoupled: p <- p * (1 - lr * wd) before the update.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        weight_decay=weight_decay)
        groups = [dict(params=ps) for ps in _group_by_shape(params)]
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            updates = _momentum_updates(grads, bufs, group["momentum"], group["nesterov"])
            ortho = orthogonalize(torch.stack(updates), group["ns_steps"]).to(params[0].dtype)
            lr, wd = group["lr"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_add_(params, list(ortho.unbind(0)), alpha=-lr * _shape_scale(params[0].shape))
        return loss


# ----------------------------------------------------------------------------- distributed helpers


def _dist_info() -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("DistMuon/DistAdamW need torch.distributed to be initialised "
                           "(use Muon / torch.optim.AdamW for a single process)")
    return dist.get_rank(), dist.get_world_size()


def _reduce_scatter_flat(output, input, async_op):
    # torch >= 2.13 renamed the *_tensor collectives to *_single (the old names warn)
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(output, input, op=dist.ReduceOp.SUM, async_op=async_op)


def _all_gather_flat(output, input, async_op):
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(output, input, async_op=async_op)


def _auto_reduce_scatter(flag):
    """reduce_scatter_tensor / all_gather_into_tensor by default on NCCL; the plain all_reduce
    path elsewhere (older gloo builds lack the *_tensor collectives)."""
    if flag is not None:
        return bool(flag)
    return dist.get_backend() == "nccl"


# ----------------------------------------------------------------------------- DistMuon


class DistMuon(torch.optim.Optimizer):
    """Muon for data parallelism without DDP (every rank must hold identical parameters).

    Per shape group of N matrices (padded with zeros to N_pad = k * world):
      1. one async reduction of the stacked gradients [N_pad, r, c]
         (reduce_scatter: rank i receives the summed slice [i*k, (i+1)*k); all_reduce: everyone
         gets everything and takes its slice),
      2. each rank applies momentum + orthogonalisation + the update to the matrices it owns
         (momentum buffers live only on the owner: optimizer state is sharded),
      3. one async all_gather of the owned, updated matrices, copied back into every rank's params.
    All reductions are launched before any computation so communication overlaps the NS maths.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0, reduce_scatter: bool | None = None):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        weight_decay=weight_decay)
        groups = [dict(params=ps) for ps in _group_by_shape(params)]
        super().__init__(groups, defaults)
        self._reduce_scatter = reduce_scatter

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = _dist_info()
        use_rs = _auto_reduce_scatter(self._reduce_scatter)

        # phase 1: launch one gradient reduction per shape group
        pending = []
        for group in self.param_groups:
            params = group["params"]
            n = len(params)
            k = math.ceil(n / world)
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            pad = k * world - n
            if pad:
                grads = grads + [torch.zeros_like(params[0])] * pad
            stacked = torch.stack(grads)                       # [k*world, r, c]
            if use_rs:
                mine = torch.empty_like(stacked[:k])
                work = _reduce_scatter_flat(mine, stacked, async_op=True)
            else:
                work = dist.all_reduce(stacked, op=dist.ReduceOp.SUM, async_op=True)
                mine = stacked[rank * k:(rank + 1) * k]
            pending.append((group, k, mine, work))

        # phase 2: each rank updates its own matrices, then launches the gather
        gathers = []
        for group, k, mine, work in pending:
            work.wait()
            params = group["params"]
            lo, hi = rank * k, min((rank + 1) * k, len(params))
            owned = params[lo:hi]
            send = torch.zeros((k, *params[0].shape), dtype=params[0].dtype, device=params[0].device)
            if owned:
                grads = list((mine[:len(owned)] / world).unbind(0))
                bufs = []
                for p in owned:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    bufs.append(state["momentum_buffer"])
                updates = _momentum_updates(grads, bufs, group["momentum"], group["nesterov"])
                ortho = orthogonalize(torch.stack(updates), group["ns_steps"]).to(owned[0].dtype)
                lr, wd = group["lr"], group["weight_decay"]
                if wd:
                    torch._foreach_mul_(owned, 1.0 - lr * wd)
                torch._foreach_add_(owned, list(ortho.unbind(0)), alpha=-lr * _shape_scale(owned[0].shape))
                send[:len(owned)].copy_(torch.stack(owned))
            if use_rs:
                full = torch.empty((k * world, *params[0].shape), dtype=send.dtype, device=send.device)
                gw = _all_gather_flat(full, send, async_op=True)
                gathers.append((params, list(full.unbind(0)), gw))
            else:
                outs = [torch.empty_like(send) for _ in range(world)]
                gw = dist.all_gather(outs, send, async_op=True)
                gathers.append((params, [m for o in outs for m in o.unbind(0)], gw))

        # phase 3: every rank copies every updated matrix into its params
        for params, mats, gw in gathers:
            gw.wait()
            torch._foreach_copy_(params, mats[:len(params)])
        return loss


# ----------------------------------------------------------------------------- DistAdamW


class DistAdamW(torch.optim.Optimizer):
    """AdamW (same update as torch.optim.AdamW) for data parallelism without DDP.

    Each parameter's gradient is reduced exactly once. With reduce_scatter (NCCL default) and a
    first dimension divisible by the world size, rank i receives the summed rows of its shard,
    updates only that shard (Adam state is sharded) and the shards are all-gathered; otherwise the
    gradient is all-reduced and every rank performs the full (identical) update.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, reduce_scatter: bool | None = None):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self._reduce_scatter = reduce_scatter

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = _dist_info()
        use_rs = _auto_reduce_scatter(self._reduce_scatter)

        # phase 1: launch every reduction
        pending = []
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                if use_rs and p.dim() >= 1 and p.size(0) % world == 0:
                    rows = p.size(0) // world
                    g_shard = torch.empty_like(g[:rows])
                    work = _reduce_scatter_flat(g_shard, g.contiguous(), async_op=True)
                    pending.append((group, p, p[rank * rows:(rank + 1) * rows], g_shard, work, True))
                else:
                    g = g.clone()  # never reduce into p.grad in place: leave the caller's grad local
                    work = dist.all_reduce(g, op=dist.ReduceOp.SUM, async_op=True)
                    pending.append((group, p, p, g, work, False))

        # phase 2: Adam update on what this rank owns, then gather sharded params
        gathers = []
        for group, p, p_part, g, work, sharded in pending:
            work.wait()
            g.div_(world)
            self._adamw(group, p, p_part, g)
            if sharded:
                gw = _all_gather_flat(p, p_part.clone(), async_op=True)
                gathers.append(gw)
        for gw in gathers:
            gw.wait()
        return loss

    def _adamw(self, group, p, p_part, g):
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p_part)
            state["exp_avg_sq"] = torch.zeros_like(p_part)
        state["step"] += 1
        t = state["step"]
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if wd:
            p_part.mul_(1.0 - lr * wd)
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        bias1 = 1.0 - beta1 ** t
        bias2 = 1.0 - beta2 ** t
        denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)
        p_part.addcdiv_(m, denom, value=-lr / bias1)
