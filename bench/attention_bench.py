"""What the attention kernel benches (bench.flex_tune, bench.window_attention) share: the shape
flags, the sliding-window block mask, and the forward + backward runner they time."""
from __future__ import annotations

import argparse

import torch


def add_shape_args(ap: argparse.ArgumentParser) -> None:
    """--batch --heads --seq-len --head-dim --window, defaulting to the d20 pretraining shape."""
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--heads", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--window", type=int, default=1024)


def band_block_mask(T: int, window: int, device: str = "cuda"):
    """FlexAttention block mask of our band: key j visible from query i iff 0 <= i - j < window."""
    from torch.nn.attention.flex_attention import create_block_mask

    def band(b, h, qi, ki):
        return (qi >= ki) & (qi - ki < window)
    return create_block_mask(band, None, None, T, T, device=device)


def fwd_bwd_runner(fn, inputs: tuple[torch.Tensor, ...], grad_out: torch.Tensor):
    """A no-argument callable: clear the inputs' gradients, run fn() and backpropagate grad_out."""
    def run():
        for t in inputs:
            t.grad = None
        fn().backward(grad_out)
    return run
