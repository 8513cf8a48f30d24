"""The attention's q/k preparation (rotary + QK-norm + cast), forward + backward, at the pretraining
shape, in the formulations inductor might compile differently. The H100 profile of a d20 step shows
its backward kernel moving ~1 GB in 0.77 ms (1.3 TB/s, under half of HBM bandwidth) per layer and
micro-step; this bench finds out whether another way of writing the same math runs nearer the
bandwidth.

    python -m bench.qk_prep --batch 32 --heads 10 --seq-len 2048 --head-dim 128

Each variant is compiled together with the attention that consumes it (SDPA full causal, cuDNN /
flash, as the model's L layers), under bf16 autocast, on q/k/v laid out as the model makes them
([B, T, H, hd] from the projections); "attention only" times the consumer alone, so a variant's
own cost is the difference. Median ms from triton's do_bench; max relative error against the model's
formulation before the change (rotary_first) is printed for each.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from bench.attention_bench import add_shape_args, fwd_bwd_runner
from nanochat.gpt import apply_rotary, norm, rotary_tables


def rotary_first(x, cos, sin):
    """The order CausalSelfAttention used until commit 572a0eb: rotary (bf16 tables), then RMSNorm,
    then cast. The reference for the error column (recorded as "model" in the 2026-11-25 raw results)."""
    return norm(apply_rotary(x, cos, sin)).to(torch.bfloat16)


def norm_first(x, cos, sin):
    """RMSNorm before rotary, what the model does now (same value: rotary is orthogonal, so it keeps
    the RMS)."""
    return apply_rotary(norm(x).to(torch.bfloat16), cos, sin)


def rotary_fp32(x, cos, sin):
    """Rotary on fp32 values and fp32 tables; one cast at the end."""
    d = x.size(-1) // 2
    xf = x.float()
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    x1, x2 = xf[..., :d], xf[..., d:]
    return norm(torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)).to(torch.bfloat16)


def rotate_half_tables(x, cos, sin):
    """x * [cos, cos] + [x2, x1] * [-sin, sin]: full-width tables, one cat of the inputs only."""
    d = x.size(-1) // 2
    c2 = torch.cat([cos, cos], dim=-1)[None, :, None, :]
    s2 = torch.cat([-sin, sin], dim=-1)[None, :, None, :]
    swapped = torch.cat([x[..., d:], x[..., :d]], dim=-1)
    return norm(x.float() * c2 + swapped.float() * s2).to(torch.bfloat16)


VARIANTS = {"rotary_first": rotary_first, "norm_first": norm_first, "rotary_fp32": rotary_fp32,
            "rotate_half_tables": rotate_half_tables}


def main() -> None:
    ap = argparse.ArgumentParser()
    add_shape_args(ap)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    from triton.testing import do_bench
    B, H, T, hd = args.batch, args.heads, args.seq_len, args.head_dim
    dev = "cuda"
    torch.manual_seed(0)
    cos, sin = rotary_tables(T, hd, device=dev)
    q, k, v = (torch.randn(B, T, H, hd, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(B, H, T, hd, device=dev, dtype=torch.bfloat16)
    rows = []

    def attend(prep):
        def f(q, k, v):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if prep is None:
                    qq, kk = q, k
                else:
                    qq, kk = prep(q, cos, sin), prep(k, cos, sin)
                return F.scaled_dot_product_attention(qq.transpose(1, 2), kk.transpose(1, 2),
                                                      v.transpose(1, 2), is_causal=True)
        return torch.compile(f)

    ref = attend(rotary_first)(q, k, v).float()
    for name, prep in [("attention only", None)] + list(VARIANTS.items()):
        fn = attend(prep)
        out = fn(q, k, v)
        err = 0.0 if prep is None else ((out.float() - ref).abs().max() / ref.abs().max()).item()
        run = fwd_bwd_runner(lambda fn=fn: fn(q, k, v), (q, k, v), grad_out)
        run()
        ms = do_bench(run, warmup=10, rep=100)
        rows.append(dict(variant=name, fwd_bwd_ms=round(ms, 3), max_rel_err=round(err, 5)))
        print(f"{name:>20}: {ms:7.3f} ms fwd+bwd   max rel err vs rotary_first {err:.1e}", flush=True)
    base = rows[0]["fwd_bwd_ms"]
    for r in rows[1:]:
        print(f"{r['variant']:>20}: q/k prep costs {r['fwd_bwd_ms'] - base:6.3f} ms per layer")
    if args.json:
        with open(args.json, "a") as fh:
            for r in rows:
                fh.write(json.dumps(dict(r, B=B, H=H, T=T, hd=hd, torch=torch.__version__,
                                         gpu=torch.cuda.get_device_name())) + "\n")


if __name__ == "__main__":
    main()
