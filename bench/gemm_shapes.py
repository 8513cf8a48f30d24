"""The pretraining step's GEMMs one by one: how fast does each BLAS back end run them?

    python -m bench.gemm_shapes --depth 20 --rows 65536 [--json FILE]

For every nn.Linear shape of a d<depth> block and the lm_head (rows = device batch x seq len tokens),
times the three GEMMs that training runs for it, in the layouts autograd hands cuBLAS:
forward y = x W^T, input gradient dx = dy W, weight gradient dW = dy^T x (a transposed view, K = rows),
in bf16, under each `torch.backends.cuda.preferred_blas_library` choice, median of --iters by CUDA
events. Prints TFLOP/s per GEMM and back end, and each back end's total for one micro-step of the
model (all layers), which is what a back-end switch could save or cost.
"""
from __future__ import annotations

import argparse
import json

import torch

from bench.cuda_timing import cuda_median_ms


def linear_shapes(depth: int, vocab: int, aspect: int = 64, head_dim: int = 128) -> list[tuple[str, int, int, int]]:
    """(name, in_features, out_features, count per model) of the model's matmul weights."""
    dim = -(-depth * aspect // head_dim) * head_dim
    return [("attn q/k/v/o", dim, dim, 4 * depth), ("mlp c_fc", dim, 4 * dim, depth),
            ("mlp c_proj", 4 * dim, dim, depth), ("lm_head", dim, vocab, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--rows", type=int, default=65536, help="tokens per micro-step")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--backends", nargs="+", default=["cublas", "cublaslt"])
    ap.add_argument("--variants", action="store_true", help="also time other ways to get each weight gradient")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    dev = torch.device("cuda")
    M = args.rows
    rows, totals = [], {b: 0.0 for b in args.backends}
    for name, k_in, n_out, count in linear_shapes(args.depth, args.vocab):
        x = torch.randn(M, k_in, device=dev, dtype=torch.bfloat16)
        w = torch.randn(n_out, k_in, device=dev, dtype=torch.bfloat16)
        dy = torch.randn(M, n_out, device=dev, dtype=torch.bfloat16)
        ops = {"fwd x@W^T": lambda: x @ w.t(), "dgrad dy@W": lambda: dy @ w, "wgrad dy^T@x": lambda: dy.t() @ x}
        if args.variants:  # the same weight gradient computed other ways: does cuBLAS pick a better kernel?
            ops["wgrad^T x^T@dy"] = lambda: x.t() @ dy
            ops["wgrad fp32 out"] = lambda: torch.mm(dy.t(), x, out_dtype=torch.float32)
            ops["wgrad 2 halves"] = lambda: torch.cat([dy[:, :n_out // 2].t() @ x, dy[:, n_out // 2:].t() @ x])
        for op, fn in ops.items():
            row = {"gemm": name, "op": op, "count": count}
            flops = 2 * M * k_in * n_out
            for backend in args.backends:
                torch.backends.cuda.preferred_blas_library(backend)
                ms = cuda_median_ms(fn, args.iters)
                row[backend + "_ms"] = round(ms, 4)
                row[backend + "_tflops"] = round(flops / ms / 1e9, 1)
                if not op.startswith("wgrad") or op == "wgrad dy^T@x":
                    totals[backend] += ms * count
            rows.append(row)
            print(f"{name:<14}{op:<14}" + "".join(f"{b} {row[b + '_ms']:.3f} ms {row[b + '_tflops']:6.1f} TF/s   "
                                                  for b in args.backends), flush=True)
        del x, w, dy
    print("one micro-step of the model's GEMMs: " + ", ".join(f"{b} {t:.1f} ms" for b, t in totals.items()))
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
            f.write(json.dumps({"totals_ms_per_micro_step": totals, "depth": args.depth, "rows": M,
                                "gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__}) + "\n")


if __name__ == "__main__":
    main()
