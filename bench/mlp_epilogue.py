"""Does fusing relu² into the MLP's matmuls pay on this GPU? (issue 17)

    python -m bench.mlp_epilogue --label default
    python -m bench.mlp_epilogue --label forced --inductor max_autotune_gemm=True --inductor max_autotune_gemm_backends=TRITON

Compiles nanochat's MLP alone (c_fc -> relu² -> c_proj, fp32 weights under bf16 autocast, as in
training) at the d20 training shape (65,536 rows of 1,280) with the given --inductor settings
(bench.profile_step's option), and times forward + backward with CUDA events (median of --iters).
Then lists the kernels of one iteration: a fused GEMM template shows up as triton_tem_fused_..mm..,
a relu² left outside the matmul as triton_poi_fused_..relu... In the whole step (bench.profile_step)
inductor's choices are the same, but the time of one change is buried in a 3 s step; here it is not.
Run each setting in its own process (the autotuning choices are cached per process).
"""
from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch

from bench.cuda_timing import cuda_median_ms
from bench.profile_step import set_inductor_config
from nanochat.gpt import MLP


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="")
    ap.add_argument("--rows", type=int, default=32 * 2048, help="tokens per micro-batch (device batch x seq len)")
    ap.add_argument("--dim", type=int, default=1280, help="n_embd (d20: 1280)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    inductor = set_inductor_config(args.inductor)

    dev = torch.device("cuda")
    torch.manual_seed(0)
    mlp = MLP(SimpleNamespace(n_embd=args.dim)).to(dev)
    run = torch.compile(mlp, dynamic=False)
    x = torch.randn(args.rows, args.dim, device=dev, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(args.rows, args.dim, device=dev, dtype=torch.bfloat16)

    def it():
        x.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = run(x)
        y.backward(g)

    t0 = time.perf_counter()
    it()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    ms = cuda_median_ms(it, args.iters)

    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        it()
        torch.cuda.synchronize()
    kernels = sorted(((getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0), e.key)
                      for e in prof.key_averages()), reverse=True)
    # 2 matmuls forward, 4 backward, at 2*rows*dim*4dim FLOP each
    tflops = 6 * 2 * args.rows * args.dim * 4 * args.dim / (ms * 1e-3) / 1e12
    print(f"{args.label}: fwd+bwd {ms:.3f} ms (min {min(times):.3f}, max {max(times):.3f}), "
          f"{tflops:.0f} TFLOP/s, first call (compile) {compile_s:.1f}s")
    for us, key in kernels:
        if us > 0:
            print(f"  {us / 1000:8.3f} ms  {key[:120]}")
    res = {"label": args.label, "rows": args.rows, "dim": args.dim, "fwd_bwd_ms": round(ms, 4),
           "min_ms": round(min(times), 4), "tflops": round(tflops, 1), "compile_s": round(compile_s, 1),
           "inductor": {k: v if isinstance(v, (bool, int, float, str, type(None))) else repr(v) for k, v in inductor.items()},
           "kernels_ms": [[round(us / 1000, 4), key] for us, key in kernels if us > 0],
           "torch": torch.__version__, "gpu": torch.cuda.get_device_name(dev)}
    print("RESULT " + json.dumps({k: v for k, v in res.items() if k != "kernels_ms"}), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
