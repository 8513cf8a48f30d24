"""KV caches for decoding: KVCache (any prompt length, the prefill) and StaticKVCache (fixed
shapes, one token per step: the step nanochat.decode replays as a CUDA graph)."""
from __future__ import annotations

import torch

from nanochat.attention import cache_visibility


class KVCache:
    """Per-layer keys/values for incremental decoding.

    k, v: [n_layer, B, n_kv_head, max_len, head_dim] (allocated on first use with the dtype of
    the keys the model produces, so bf16 autocast gives a bf16 cache); `pos` = number of positions
    already stored. GPT.forward writes the new keys at [pos, pos+T) in every layer and then
    advances pos by T.
    """

    def __init__(self, batch_size: int, max_len: int, n_layer: int, n_kv_head: int, head_dim: int,
                 device=None):
        self.batch_size, self.max_len = batch_size, max_len
        self.n_layer, self.n_kv_head, self.head_dim = n_layer, n_kv_head, head_dim
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.pos = 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, Hkv, T, hd] at [pos, pos+T) of `layer`; return that layer's [0, pos+T)."""
        B, _, T, _ = k.shape
        if B != self.batch_size:
            raise ValueError(f"KV cache holds batch size {self.batch_size}, got a batch of {B}")
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len={self.max_len}")
        if self.k is None:
            shape = (self.n_layer, self.batch_size, self.n_kv_head, self.max_len, self.head_dim)
            self.k = torch.zeros(shape, dtype=k.dtype, device=self.device)
            self.v = torch.zeros(shape, dtype=k.dtype, device=self.device)
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, T: int):
        self.pos += T


class StaticKVCache:
    """Keys/values for decoding with fixed shapes (nanochat.decode replays its step as a CUDA graph).

    k, v: [n_layer, B, n_kv_head, max_len, head_dim], allocated once in the given dtype (that of the
    keys the model produces: bf16 under autocast). `pos` is a LongTensor [1] on the cache's device,
    the position the next token is written at: GPT.decode_step reads it, writes every layer's keys
    there with index_copy_, masks the keys after it (and those a window cuts off) and adds one to it,
    all on the device, so no step reads anything back to the host and every step has the same shapes.
    Positions past `pos` may hold stale keys of an earlier prompt or a discarded step: they are masked,
    and overwritten before they are ever visible. Bounds are the caller's to check (the host knows the
    position; reading `pos` would be a sync): nanochat.decode.StaticDecoder does.
    """

    def __init__(self, batch_size: int, max_len: int, n_layer: int, n_kv_head: int, head_dim: int,
                 device, dtype: torch.dtype):
        self.batch_size, self.max_len, self.n_layer = batch_size, max_len, n_layer
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.key_positions = torch.arange(max_len, device=device)

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    def load_prefill(self, cache: KVCache) -> int:
        """Copy a dynamic cache's stored positions (batch 1: into every row; else row for row) and set
        pos after them. Returns that position."""
        n = cache.pos
        if n > self.max_len:
            raise ValueError(f"static KV cache overflow: a prefill of {n} positions > max_len={self.max_len}")
        if cache.batch_size not in (1, self.batch_size):
            raise ValueError(f"a prefill of batch {cache.batch_size} cannot fill a cache of batch {self.batch_size}")
        if n:
            self.k[:, :, :, :n].copy_(cache.k[:, :, :, :n])
            self.v[:, :, :, :n].copy_(cache.v[:, :, :, :n])
        self.pos.fill_(n)
        return n

    def visible(self, window: int | None) -> torch.Tensor:
        """[1, 1, 1, max_len] bool: the keys the token at `pos` may attend to in a layer with `window`."""
        return cache_visibility(self.key_positions, self.pos, window)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, Hkv, 1, hd] at pos of `layer`; return that layer's whole [B, Hkv, max_len, hd]."""
        k_layer, v_layer = self.k[layer], self.v[layer]
        k_layer.index_copy_(2, self.pos, k.to(k_layer.dtype))
        v_layer.index_copy_(2, self.pos, v.to(v_layer.dtype))
        return k_layer, v_layer

    def advance(self):
        self.pos.add_(1)
