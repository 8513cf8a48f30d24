"""Sliding-window attention kernel timing: FlexAttention (default and hand-picked kernel options)
against cuDNN/flash SDPA full causal, forward + backward, at the pretraining shape.

    python -m bench.flex_tune --batch 32 --heads 10 --seq-len 2048 --window 1024

Checks each FlexAttention variant against the default one (same function, relative error) and
prints median milliseconds per forward+backward (CUDA events, triton's do_bench).
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from bench.attention_bench import add_shape_args, band_block_mask, fwd_bwd_runner

VARIANTS = {
    "default": None,
    "fwd128x64_bwd64x128_w8s3": {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_M1": 64, "BLOCK_N1": 128,
                                  "BLOCK_M2": 128, "BLOCK_N2": 64, "num_warps": 8, "num_stages": 3},
    "bwd64x128_w4s3": {"BLOCK_M1": 64, "BLOCK_N1": 128, "BLOCK_M2": 128, "BLOCK_N2": 64, "num_warps": 4, "num_stages": 3},
    "bwd32x128_w4s3": {"BLOCK_M1": 32, "BLOCK_N1": 128, "BLOCK_M2": 128, "BLOCK_N2": 32, "num_warps": 4, "num_stages": 3},
    "bwd64x64_w4s3": {"BLOCK_M1": 64, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 64, "num_warps": 4, "num_stages": 3},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    add_shape_args(ap)
    args = ap.parse_args()
    from triton.testing import do_bench
    B, H, T, D, W = args.batch, args.heads, args.seq_len, args.head_dim, args.window
    dev = "cuda"
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    go = torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16)
    bm = band_block_mask(T, W, dev)
    results = {}

    def fwd_bwd(fn):
        return fwd_bwd_runner(fn, (q, k, v), go)

    ref_out = None
    for name, opts in VARIANTS.items():
        try:
            f = torch.compile(lambda q, k, v, o=opts: flex_attention(q, k, v, block_mask=bm, kernel_options=o),
                              dynamic=False)
            out = f(q, k, v)
            if ref_out is None:
                ref_out = out.detach().float()
            err = ((out.detach().float() - ref_out).norm() / ref_out.norm()).item()
            ms = do_bench(fwd_bwd(lambda: f(q, k, v)), warmup=50, rep=300, return_mode="median")
            ms_f = do_bench(lambda: f(q, k, v), warmup=50, rep=200, return_mode="median")
            results[name] = {"fwd_bwd_ms": round(ms, 3), "fwd_ms": round(ms_f, 3), "rel_err_vs_default": err}
        except Exception as exc:  # a config the compiler rejects (shared memory) is a result too
            results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        print(name, results[name], flush=True)
    ms = do_bench(fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)), warmup=50, rep=300,
                  return_mode="median")
    ms_f = do_bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), warmup=50, rep=200,
                    return_mode="median")
    results["sdpa_full_causal"] = {"fwd_bwd_ms": round(ms, 3), "fwd_ms": round(ms_f, 3)}
    print("sdpa_full_causal", results["sdpa_full_causal"])
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
