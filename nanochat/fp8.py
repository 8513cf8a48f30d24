"""fp8 matmuls for the transformer blocks' linear layers (`--fp8`), tensorwise dynamic scaling.

Each forward quantises the activations and the weight to float8_e4m3fn with one scale per tensor
(scale = largest finite fp8 / amax, computed fresh every call, so nothing is carried between steps)
and multiplies on the fp8 tensor cores through torch._scaled_mm, accumulating in fp32 and writing
bf16. The backward quantises the output gradient to float8_e5m2 (wider range, less precision: the
usual choice for gradients) and computes both input and weight gradients in fp8 as well, reusing
the fp8 activations saved by the forward (half the bytes of saving them in bf16).

_scaled_mm wants its first operand row-major and its second column-major; the transposes the
backward needs are explicit .contiguous() copies of fp8 tensors, which torch.compile fuses into
the quantisation kernels. The lm_head and the embedding stay in bf16 (the logits are the most
precision-sensitive matmul, and the chunked loss has its own path).

Only the hardware decides whether this is available: fp8 tensor cores exist from compute
capability 8.9 (Ada, Hopper, Blackwell). torch's CPU build also implements _scaled_mm, which the
tests use to check the arithmetic.
"""
from __future__ import annotations

import torch
import torch.nn as nn

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
MIN_CAPABILITY = (8, 9)


def fp8_support_problem(device: torch.device) -> str | None:
    """None if fp8 training can run on `device`, else why not (one line, names the fix)."""
    if device.type != "cuda":
        return (f"--fp8 needs an NVIDIA GPU with fp8 tensor cores (compute capability >= 8.9, e.g. H100, "
                f"RTX 4090/5090); this run is on {device.type}: drop --fp8")
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (f"--fp8 needs compute capability >= 8.9 (fp8 tensor cores); {name} has "
                f"{cap[0]}.{cap[1]}: drop --fp8")
    return None


def quantize(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """t -> (fp8 tensor, inverse scale as a float32 scalar tensor) with t ~= fp8 * inverse scale."""
    fmax = torch.finfo(dtype).max
    amax = t.detach().abs().amax().float().clamp(min=1e-12)
    scale = fmax / amax
    q = (t.float() * scale).clamp(-fmax, fmax).to(dtype)
    return q, scale.reciprocal()


def _column_major(t: torch.Tensor) -> torch.Tensor:
    """The same matrix, laid out column-major (what _scaled_mm wants for its second operand)."""
    return t.t().contiguous().t()


class _Fp8Matmul(torch.autograd.Function):
    """y = x @ w^T for x [M, K], w [N, K], with fp8 operands in forward and backward."""

    @staticmethod
    def forward(ctx, x, w, out_dtype: torch.dtype):
        x8, x_inv = quantize(x, E4M3)
        w8, w_inv = quantize(w, E4M3)
        y = torch._scaled_mm(x8, w8.t(), scale_a=x_inv, scale_b=w_inv, out_dtype=out_dtype,
                             use_fast_accum=True)
        ctx.save_for_backward(x8, x_inv, w8, w_inv)
        ctx.x_dtype, ctx.w_dtype = x.dtype, w.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x8, x_inv, w8, w_inv = ctx.saved_tensors
        g8, g_inv = quantize(grad_y, E5M2)
        # grad_x [M, K] = g [M, N] @ w [N, K]
        grad_x = torch._scaled_mm(g8, _column_major(w8), scale_a=g_inv, scale_b=w_inv,
                                  out_dtype=grad_y.dtype)
        # grad_w [N, K] = g^T [N, M] @ x [M, K]
        grad_w = torch._scaled_mm(g8.t().contiguous(), _column_major(x8), scale_a=g_inv, scale_b=x_inv,
                                  out_dtype=torch.float32)
        return grad_x.to(ctx.x_dtype), grad_w.to(ctx.w_dtype), None


class Fp8Linear(nn.Linear):
    """nn.Linear (no bias) whose matmul runs in fp8; same parameters and state_dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.size(-1))
        if x2.size(0) % 16 != 0:
            # _scaled_mm needs every dimension divisible by 16; odd row counts (one decoded token,
            # a short eval batch) are few rows, so they simply take the bf16 path
            return super().forward(x)
        dev = x.device.type
        out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        if out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
            out_dtype = torch.bfloat16
        with torch.autocast(dev, enabled=False):
            y = _Fp8Matmul.apply(x2, self.weight, out_dtype)
        return y.view(*lead, y.size(-1))


def convert_to_fp8(module: nn.Module) -> int:
    """Swap every bias-free nn.Linear inside `module` for an Fp8Linear sharing its weight Parameter
    (so optimizers, state_dict keys and checkpoints are unchanged). Returns how many were swapped.
    _scaled_mm needs both matrix dimensions divisible by 16: other layers stay in bf16."""
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.bias is None \
                    and child.in_features % 16 == 0 and child.out_features % 16 == 0:
                new = Fp8Linear(child.in_features, child.out_features, bias=False, device="meta")
                new.weight = child.weight
                setattr(parent, name, new)
                swapped += 1
    return swapped
