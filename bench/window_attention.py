"""Sliding-window attention back ends, forward + backward, at the pretraining shape: FlexAttention
(what training uses now), cuDNN's own sliding-window SDPA (through the cudnn frontend's torch op,
`pip install nvidia-cudnn-frontend`), and cuDNN full causal SDPA for scale.

    python -m bench.window_attention --batch 32 --heads 10 --seq-len 2048 --window 1024

First checks on a small problem which cuDNN `window_left` gives our band (key j visible from query i
iff 0 <= i - j < window), against a float32 masked reference; then times each back end on q/k/v laid
out as the model makes them (transposed views of [B, T, H, hd]). Median ms from triton's do_bench.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from bench.attention_bench import add_shape_args, band_block_mask, fwd_bwd_runner


def band_reference(q, k, v, window):
    T = q.size(2)
    i = torch.arange(T, device=q.device)[:, None]
    j = torch.arange(T, device=q.device)[None, :]
    mask = (j <= i) & (i - j < window)
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser()
    add_shape_args(ap)
    args = ap.parse_args()
    from triton.testing import do_bench
    import cudnn
    from cudnn.sdpa.fwd.torch_op import sdpa as cudnn_sdpa
    print("cudnn frontend", getattr(cudnn, "__version__", "?"), "backend", cudnn.backend_version(), flush=True)
    dev, bf = "cuda", torch.bfloat16
    results = {}

    # 1. semantics, small problem: which window_left is our band?
    torch.manual_seed(0)
    B, H, T, D, W = 2, 2, 256, 64, 48
    q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=bf).transpose(1, 2) for _ in range(3))
    want = band_reference(q, k, v, W)
    for left in (W - 1, W):
        out = cudnn_sdpa(q, k, v, is_causal=True, window_left=left, window_right=0, return_lse=True)[0]
        results[f"semantics_window_left={left}"] = rel(out, want)
    print(results, flush=True)

    # 2. timing at the real shape, model layout
    B, H, T, D, W = args.batch, args.heads, args.seq_len, args.head_dim, args.window
    torch.manual_seed(0)
    base = [torch.randn(B, T, H, D, device=dev, dtype=bf) for _ in range(3)]
    q, k, v = (t.transpose(1, 2).requires_grad_(True) for t in (b.clone() for b in base))
    go = torch.randn(B, H, T, D, device=dev, dtype=bf)
    bm = band_block_mask(T, W, dev)
    flex = torch.compile(lambda q, k, v: flex_attention(q, k, v, block_mask=bm), dynamic=False)
    backends = {
        "flex": lambda: flex(q, k, v),
        "cudnn_window": lambda: cudnn_sdpa(q, k, v, is_causal=True, window_left=W, window_right=0,
                                           return_lse=True)[0],
        "sdpa_full_causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    }
    grads = {}
    for name, fn in backends.items():
        try:
            q.grad = k.grad = v.grad = None
            out = fn()
            out.backward(go)
            grads[name] = (out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone())
            ms = do_bench(fwd_bwd_runner(fn, (q, k, v), go), warmup=30, rep=300, return_mode="median")
            with torch.no_grad():
                ms_f = do_bench(fn, warmup=30, rep=200, return_mode="median")
            results[name] = {"fwd_bwd_ms": round(ms, 3), "fwd_ms": round(ms_f, 3)}
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        print(name, results[name], flush=True)
    if "flex" in grads and "cudnn_window" in grads:
        results["cudnn_vs_flex_rel_err"] = [round(rel(a, b), 5) for a, b in zip(grads["cudnn_window"], grads["flex"])]
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
