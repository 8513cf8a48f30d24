"""Time and profile the pretraining step itself (model + optimizers), without data files.

    python -m bench.profile_step --depth 20 --window SSSL --batch 32 --scope blocks --steps 8 --profile

Builds the model exactly as scripts.base_train does (meta init, setup_optimizers, the same
compilation through GPT.compile_for_training), then runs full optimizer steps of
--total-batch-size tokens on fresh synthetic batches with a learnable bigram map (SyntheticBatches),
so the printed losses fall and two variants can be compared step by step. --inductor KEY=VALUE
(repeatable) sets torch._inductor.config.KEY before anything compiles, e.g.
    --inductor max_autotune_gemm=True --inductor max_autotune_gemm_backends=TRITON,ATEN
Prints: time to first step (start-up + compile), median step time, tok/s, MFU
(nanochat's FLOP formula, bf16 dense peak), peak memory, losses; with --profile, the CUDA time of
one step split into kernel categories, and the top kernels. JSON line with --json FILE.
"""
from __future__ import annotations

import argparse
import ast
import json
import statistics
import time

T_START = time.time()

import torch  # noqa: E402

from nanochat.common import device_name, get_peak_flops  # noqa: E402
from nanochat.gpt import GPT, GPTConfig  # noqa: E402
from nanochat.optim import muon_momentum  # noqa: E402
from nanochat.training import apply_schedules  # noqa: E402

T_IMPORTED = time.time()  # python + torch + nanochat imports: part of every warm start

CATEGORIES = [  # first match wins; lower-case substrings of kernel names
    ("attention (flash/cuDNN/flex)", ("flash", "fmha", "cudnn", "attention", "flex", "triton_tem_fused")),
    ("matmul (cuBLAS/CUTLASS)", ("gemm", "nvjet", "cutlass", "xmma", "sm90", "sm80", "splitk", "cublas")),
    ("elementwise / reductions (triton)", ("triton",)),
    ("optimizer (foreach / fused adam)", ("multi_tensor", "foreach", "adam")),
    ("copies / memset", ("memcpy", "memset", "copy", "fill")),
]


class SyntheticBatches:
    """Fresh (x, y) micro-batches from a seeded CUDA generator: x uniform tokens, y = successor[x]
    with probability 1/2, else uniform. A bigram map to learn (loss falls from ln(vocab) towards
    ~0.5 ln(vocab)) that cannot be memorised, identical for every variant run with the same seed."""

    def __init__(self, B: int, T: int, vocab: int, device, seed: int = 0):
        self.B, self.T, self.vocab = B, T, vocab
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.succ = torch.randperm(vocab, generator=self.gen, device=device)

    def next(self):
        shape, g, V = (self.B, self.T), self.gen, self.vocab
        x = torch.randint(V, shape, generator=g, device=g.device)
        coin = torch.rand(shape, generator=g, device=g.device) < 0.5
        y = torch.where(coin, self.succ[x], torch.randint(V, shape, generator=g, device=g.device))
        return x, y


def categorize(name: str) -> str:
    low = name.lower()
    # inductor's own GEMM templates (max_autotune_gemm), any epilogue fused in, are named
    # triton_tem_fused_[ops_]mm[_ops]_N: catch them before flex attention's triton_tem_fused
    if low.startswith("triton_tem_") and {"mm", "addmm", "bmm"} & set(low.split("_")):
        return "matmul (inductor Triton templates)"
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def set_inductor_config(pairs: list[str]) -> dict:
    """Apply --inductor KEY=VALUE pairs to torch._inductor.config (read at compile time, so this
    must run before the first compiled call). VALUE goes through ast.literal_eval ("True", "3"),
    else stays the raw string ("TRITON,ATEN"). Unknown keys are an error: a misspelt key would
    otherwise leave the run a silent copy of the baseline."""
    import torch._inductor.config as cfg
    done = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--inductor wants KEY=VALUE, got {pair!r}")
        try:
            old = getattr(cfg, key)
        except AttributeError:
            raise SystemExit(f"--inductor: torch._inductor.config has no {key!r} (torch {torch.__version__})")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        setattr(cfg, key, value)
        print(f"inductor config: {key} = {value!r} (was {old!r})", flush=True)
        done[key] = value
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--window", default="SSSL")
    ap.add_argument("--batch", type=int, default=32, help="device batch size (rows per micro-step)")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--total-batch-size", type=int, default=524288)
    ap.add_argument("--scope", default="blocks", choices=["blocks", "model", "off"])
    ap.add_argument("--fp8", action="store_true", help="fp8 matmuls in the blocks (nanochat.fp8)")
    ap.add_argument("--loss-chunk-rows", type=int, default=0, help="override GPT.loss_chunk_rows (0 = keep)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--profile", action="store_true", help="profile one step after the timed ones")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--startup", action="store_true",
                    help="split the first step's time (forward, backward, other micro-steps, optimizer) "
                         "and print torch.compile's time per compiled function")
    ap.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                    help="set torch._inductor.config.KEY before compiling (repeatable)")
    ap.add_argument("--blas", default="", choices=["", "cublas", "cublaslt"],
                    help="torch.backends.cuda.preferred_blas_library for every matmul (default: torch's)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    inductor = set_inductor_config(args.inductor)
    if args.blas:
        torch.backends.cuda.preferred_blas_library(args.blas)
    # the set-up before the first step, split (host clock; the CUDA context is created in to_empty).
    # Importing torch._inductor.config pulls in most of dynamo/inductor (sympy, ...): a cost any
    # compiled run pays somewhere before its first step, booked here on its own.
    t_setup = time.time()
    setup = {"imports": T_IMPORTED - T_START, "torch._inductor import (+ argparse)": t_setup - T_IMPORTED}

    def setup_mark(name: str) -> None:
        nonlocal t_setup
        torch.cuda.synchronize()
        setup[name] = time.time() - t_setup
        t_setup = time.time()

    device = torch.device("cuda")
    B, T = args.batch, args.seq_len
    accum = args.total_batch_size // (B * T)
    torch.manual_seed(42)
    config = GPTConfig.from_depth(args.depth, args.vocab, T, window_pattern=args.window)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    setup_mark("model on meta + CUDA init + to_empty")
    model.init_weights()
    if args.fp8:
        from nanochat.fp8 import convert_to_fp8
        convert_to_fp8(model.blocks)
    if args.loss_chunk_rows > 0:
        model.loss_chunk_rows = args.loss_chunk_rows
    optimizers = model.setup_optimizers()
    setup_mark("init_weights + optimizers")
    if args.scope == "off":
        run = model
    elif hasattr(model, "compile_for_training"):
        run = model.compile_for_training(args.scope)
    else:  # an older checkout (PYTHONPATH pointing at it): whole-model compile was all it had
        run = torch.compile(model, dynamic=False)
    data = SyntheticBatches(B, T, args.vocab, device)
    flops_per_token = model.estimate_flops()
    peak = get_peak_flops(device_name(device))

    setup_mark("compile wrappers + data")
    phases: dict[str, float] = {}
    print(f"set-up before the first step: {time.time() - T_START:.1f}s ("
          + ", ".join(f"{k} {v:.1f}s" for k, v in setup.items()) + ")", flush=True)

    def mark(name: str, t: float) -> float:
        """With --startup, on the first step: synchronize and book the time since t under name."""
        torch.cuda.synchronize()
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - t
        return now

    def step(i: int) -> float:
        timed = args.startup and i == 0
        t = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for k in range(accum):
            x, y = data.next()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = run(x, y)
            if timed:
                t = mark("forward (first micro-step)" if k == 0 else "other micro-steps", t)
            loss_sum += loss.detach()
            (loss / accum).backward()
            if timed:
                t = mark("backward (first micro-step)" if k == 0 else "other micro-steps", t)
        apply_schedules(optimizers, 1.0, muon_momentum(i))
        for opt in optimizers:
            opt.step()
        if timed:
            mark("optimizer step", t)
        model.zero_grad(set_to_none=True)
        return (loss_sum / accum).item()

    losses, dts = [], []
    ttfs = None
    for i in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step(i))
        dts.append(time.perf_counter() - t0)
        if ttfs is None:
            ttfs = time.time() - T_START
        print(f"step {i + 1}/{args.steps} loss {losses[-1]:.6f} dt {dts[-1] * 1000:.1f}ms", flush=True)
    dt = statistics.median(dts[1:]) if len(dts) > 1 else dts[0]
    tokens = accum * B * T
    res = {
        "depth": args.depth, "window": args.window, "batch": B, "scope": args.scope, "fp8": args.fp8,
        "loss_chunk_rows": model.loss_chunk_rows, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(device), "dt_ms": round(dt * 1000, 1),
        "tok_per_s": round(tokens / dt), "mfu_pct": round(100 * flops_per_token * tokens / dt / peak, 2),
        "time_to_first_step_s": round(ttfs, 1), "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "losses": [round(v, 5) for v in losses],
    }
    res["setup_s"] = {k: round(v, 2) for k, v in setup.items()}
    if args.blas:
        res["blas"] = args.blas
    if inductor:
        res["inductor"] = {k: v if isinstance(v, (bool, int, float, str, type(None))) else repr(v)
                           for k, v in inductor.items()}
    if args.startup:
        res["first_step_phases_s"] = {k: round(v, 2) for k, v in phases.items()}
        print("first step, by phase: " + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()))
        try:
            from torch._dynamo.utils import compile_times
            print(compile_times(repr="str", aggregate=True))
        except Exception as exc:  # pragma: no cover - private API
            print(f"(no compile_times: {exc})")
    try:
        from torch._dynamo.utils import counters
        res["dynamo_unique_graphs"] = counters["stats"]["unique_graphs"]
    except Exception:  # pragma: no cover - private API
        pass
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step(args.steps)
            torch.cuda.synchronize()
        by_cat: dict[str, float] = {}
        kernels = []
        for ev in prof.key_averages():
            us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            if us <= 0 or ev.key.startswith("ProfilerStep"):
                continue
            kernels.append((us, ev.count, ev.key))
            by_cat[categorize(ev.key)] = by_cat.get(categorize(ev.key), 0.0) + us
        total = sum(by_cat.values())
        res["profile_ms"] = {k: round(v / 1000, 1) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])}
        res["profile_total_ms"] = round(total / 1000, 1)
        print(f"\nCUDA time of one step ({total / 1000:.1f} ms of kernels; step wall {dt * 1000:.1f} ms):")
        for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1]):
            print(f"  {v / 1000:9.1f} ms {100 * v / total:5.1f}%  {k}")
        print(f"top {args.top} kernels:")
        for us, count, key in sorted(kernels, reverse=True)[:args.top]:
            print(f"  {us / 1000:9.1f} ms x{count:<5d} {key[:110]}")
    print("RESULT " + json.dumps(res), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
