"""Median wall time of a GPU callable by CUDA events, shared by the micro-benchmarks in bench/."""
from __future__ import annotations

import statistics

import torch


def cuda_median_ms(fn, iters: int, warmup: int = 3) -> float:
    """Run `fn` `warmup` times, then `iters` times between two CUDA events each; the median in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
