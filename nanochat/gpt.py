"""Decoder-only Transformer used by every training stage.

Architecture (all choices made for speed of training at small scale):
- token embedding (untied from lm_head), RMSNorm right after it;
- pre-norm blocks: x += attn(norm(x)); x += mlp(norm(x)); norms are parameter-free F.rms_norm;
- attention: rotary position embeddings, QK-norm, grouped-query attention (n_kv_head | n_head),
  optional sliding windows per layer ("S" = short window, "L" = full causal) with the last layer
  always full;
- MLP: Linear(D, 4D) -> relu(x)^2 -> Linear(4D, D);
- no biases anywhere; logits soft-capped: 15 * tanh(logits / 15), computed in fp32.

Window semantics: a layer with window w lets the query at position i see keys j with
i - w < j <= i, i.e. w keys including itself ("L" = unlimited).

Attention back ends (FlexAttention, cuDNN's window kernel, band masks, the KV-cache SDPA
context): nanochat.attention.

Measured (torch 2.11, bf16 autocast, d20, device batch 32, 524,288 tokens per step,
bench/RESULTS.md): on one H100, "SSSL" 168K tok/s (51.2% MFU) with cuDNN's window kernel, "L" 159K
(52.0%); with --fp8 184K / 176K (56.0% / 57.7%, measured before the bf16 residual stream). On one
H200, same code: SSSL 174K (52.8%), L 171K (55.9%), SSSL --fp8 203K (61.5%). Time to the first
step at d20, imports included, on the H200: 18-24 s with a cold compile cache, 9 s warm (whole-model
compile, H100: 104-182 s).

Training with torch.compile: GPT.compile_for_training compiles each block on its own (regional
compilation: blocks with the same window share one graph, so compile time does not grow with depth);
KV-cache inference always runs the plain modules (its Python-int cache position would recompile).

Decoding: forward() with a KVCache (any length, a Python-int position: the prompt's prefill), then
decode_step() over a StaticKVCache (one token per row at a position tensor, fixed shapes: the step
nanochat.decode replays as a CUDA graph). Both run CausalSelfAttention._qkv.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.attention import (CompiledOutsideTrace, _sliding_block_mask, attention, cache_visibility,
                                cudnn_window_sdpa, decode_attention, inference_sdpa, uses_flex)

SOFTCAP = 15.0
ROPE_BASE = 10000.0
ROTARY_LEN_FACTOR = 10  # rotary tables cover 10x sequence_len so generation can run past it


# ----------------------------------------------------------------------------- config


@dataclass
class GPTConfig:
    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int
    window_pattern: str = "L"
    # None -> default_short_window(sequence_len); kept as None in the config so asdict() round-trips
    short_window: int | None = None

    def __post_init__(self):
        for name in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(f"GPTConfig: n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head} "
                             f"(grouped-query attention needs whole groups)")
        if (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"GPTConfig: head_dim={self.n_embd // self.n_head} must be even for rotary embeddings")
        if not isinstance(self.window_pattern, str) or not self.window_pattern \
                or set(self.window_pattern) - {"S", "L"}:
            raise ValueError(f"GPTConfig.window_pattern must be a non-empty string of 'S' (short window) and "
                             f"'L' (full context) characters, e.g. 'L' or 'SSSL'; got {self.window_pattern!r}")
        if self.short_window is not None and (not isinstance(self.short_window, int)
                                              or isinstance(self.short_window, bool) or self.short_window <= 0):
            raise ValueError(f"GPTConfig.short_window must be a positive integer or None, got {self.short_window!r}")

    @classmethod
    def from_depth(cls, depth: int, vocab_size: int, sequence_len: int, aspect_ratio: int = 64,
                   head_dim: int = 128, window_pattern: str = "L") -> "GPTConfig":
        """depth layers of width depth*aspect_ratio rounded UP to a multiple of head_dim."""
        if not isinstance(depth, int) or depth <= 0:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        if head_dim <= 0 or aspect_ratio <= 0:
            raise ValueError(f"aspect_ratio and head_dim must be positive, got {aspect_ratio}, {head_dim}")
        model_dim = -(-depth * aspect_ratio // head_dim) * head_dim
        n_head = model_dim // head_dim
        return cls(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth, n_head=n_head,
                   n_kv_head=n_head, n_embd=model_dim, window_pattern=window_pattern)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def resolved_short_window(self) -> int:
        return self.short_window if self.short_window is not None else default_short_window(self.sequence_len)

    def layer_windows(self) -> list[int | None]:
        """Per-layer attention window (None = full causal): the pattern tiled over the layers,
        with the final layer forced to full context."""
        windows = []
        for i in range(self.n_layer):
            char = self.window_pattern[i % len(self.window_pattern)]
            windows.append(self.resolved_short_window if char == "S" else None)
        windows[-1] = None
        return windows

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_short_window(sequence_len: int) -> int:
    """Half the context, rounded DOWN to a multiple of 128 (FlexAttention's block size, so the
    band covers whole blocks) once it is at least 128; plain sequence_len // 2 (>= 1) below that.
    2048 -> 1024, 1000 -> 384, 300 -> 128, 64 -> 32."""
    half = sequence_len // 2
    if half >= 128:
        return half // 128 * 128
    return max(1, half)


# ----------------------------------------------------------------------------- helpers


def norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


def _activation_dtype(param: torch.Tensor) -> torch.dtype:
    """The dtype of the residual stream: autocast's matmul dtype where autocast is on, else the
    parameters' dtype. Parameters (and so their grads and optimizer states) stay fp32; only the
    activations between blocks drop to bf16, which halves the bytes every norm, residual add and
    their backward move: left in fp32 (the embedding's dtype) they cost H100 d20 SSSL ~4% of a step
    (bench/RESULTS.md)."""
    dev = param.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else param.dtype


def softcap(logits: torch.Tensor) -> torch.Tensor:
    return SOFTCAP * torch.tanh(logits / SOFTCAP)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, hd]; cos/sin [T, hd/2]. Rotates the pairs (x[i], x[i + hd/2])."""
    d = x.size(-1) // 2
    cos = cos[None, :, None, :].to(x.dtype)
    sin = sin[None, :, None, :].to(x.dtype)
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def rotary_tables(length: int, head_dim: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [length, head_dim/2] in fp32 (computed in fp32 even if the model is not)."""
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(length, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    return freqs.cos(), freqs.sin()


# ----------------------------------------------------------------------------- KV cache


class KVCache:
    """Per-layer keys/values for incremental decoding.

    k, v: [n_layer, B, n_kv_head, max_len, head_dim] (allocated on first use with the dtype of
    the keys the model produces, so bf16 autocast gives a bf16 cache); `pos` = number of positions
    already stored. GPT.forward writes the new keys at [pos, pos+T) in every layer and then
    advances pos by T.
    """

    def __init__(self, batch_size: int, max_len: int, n_layer: int, n_kv_head: int, head_dim: int,
                 device=None, dtype: torch.dtype | None = None):
        self.batch_size, self.max_len = batch_size, max_len
        self.n_layer, self.n_kv_head, self.head_dim = n_layer, n_kv_head, head_dim
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.pos = 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        if dtype is not None:
            self._allocate(dtype)

    def _allocate(self, dtype):
        shape = (self.n_layer, self.batch_size, self.n_kv_head, self.max_len, self.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, Hkv, T, hd] at [pos, pos+T) of `layer`; return that layer's [0, pos+T)."""
        B, _, T, _ = k.shape
        if B != self.batch_size:
            raise ValueError(f"KV cache holds batch size {self.batch_size}, got a batch of {B}")
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len={self.max_len}")
        if self.k is None:
            self._allocate(k.dtype)
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


# ----------------------------------------------------------------------------- modules


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int, window: int | None):
        super().__init__()
        self.layer_idx = layer_idx
        self.window = window
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        D = config.n_embd
        self.c_q = nn.Linear(D, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(D, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(D, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(D, D, bias=False)

    def _qkv(self, x, cos, sin):
        """x [B, T, D] -> q [B, H, T, hd], k, v [B, Hkv, T, hd], normed and rotated (one code path for
        training, the dynamic cache and the static decode step, so they compute the same values)."""
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        # QK-norm (bounds the logits), then rotary. With a parameter-free RMSNorm over the whole head
        # the order does not change the value (rotary is orthogonal, so it keeps the RMS), but it does
        # change the compiled backward: rotary's half-slices feeding a reduction made inductor re-read
        # each row three times (H100, d20 shape: 0.96 -> 0.55 ms per layer for q and k, bench/qk_prep.py).
        # autocast may leave the norm's output in fp32 while v is bf16: attention needs one dtype.
        q = apply_rotary(norm(q).to(v.dtype), cos, sin)
        k = apply_rotary(norm(k).to(v.dtype), cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x, cos, sin, kv_cache: KVCache | None = None):
        B, T, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        if kv_cache is None:
            y = attention(q, k, v, window=self.window)
        else:
            pos = kv_cache.pos
            k_all, v_all = kv_cache.update(self.layer_idx, k, v)
            # every prompt and step brings new lengths: no kernel that plans or compiles per shape
            # (the cuDNN window op, FlexAttention; GPT.forward also keeps SDPA off cuDNN): windows
            # are cut by an explicit band mask
            y = attention(q, k_all.to(q.dtype), v_all.to(q.dtype), window=self.window, q_offset=pos,
                          impl="sdpa_mask")
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.c_proj(y)

    def decode_step(self, x, cos, sin, cache: StaticKVCache, visible: torch.Tensor):
        """One new token per row (x [B, 1, D]) at cache.pos: store its keys there, attend over the
        whole fixed-length cache with `visible` (this layer's window mask for that position)."""
        B = x.size(0)
        q, k, v = self._qkv(x, cos, sin)
        k_all, v_all = cache.write(self.layer_idx, k, v)
        y = decode_attention(q, k_all.to(q.dtype), v_all.to(q.dtype), visible)
        return self.c_proj(y.transpose(1, 2).reshape(B, 1, -1))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int, window: int | None):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx, window)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, kv_cache=None):
        x = x + self.attn(norm(x), cos, sin, kv_cache)
        x = x + self.mlp(norm(x))
        return x

    def decode_step(self, x, cos, sin, cache: StaticKVCache, visible: torch.Tensor):
        x = x + self.attn.decode_step(norm(x), cos, sin, cache, visible)
        x = x + self.mlp(norm(x))
        return x


# ----------------------------------------------------------------------------- chunked loss


def _softcap_ce_chunk(xc: torch.Tensor, w: torch.Tensor, targets: torch.Tensor):
    """One chunk of rows: (summed loss over non-ignored rows, d loss / d raw logits in xc's dtype).

    The gradient of the soft-capped cross-entropy w.r.t. the raw logits z is
    (softmax - onehot) * (1 - tanh(z/15)^2), zero for ignored rows (target -1).

    Written so that, compiled, nothing of size [rows, V] is stored besides z and dz: the one-hot is
    a comparison with a column index (a scatter into the probabilities would force them into
    memory as fp32, 4 bytes per logit written and read back), and the target's logit is gathered
    from z, not from the capped fp32 logits (a gather would make those a stored buffer too)."""
    valid = (targets != -1).unsqueeze(1)
    safe_t = targets.clamp(min=0).unsqueeze(1)
    z = xc @ w.t()                                            # [rows, V], matmul dtype
    th = torch.tanh(z.float() / SOFTCAP)
    logits = th * SOFTCAP
    lse = torch.logsumexp(logits, dim=1, keepdim=True)
    picked = torch.tanh(z.gather(1, safe_t).float() / SOFTCAP) * SOFTCAP
    loss = ((lse - picked) * valid).sum()
    onehot = torch.arange(z.size(1), device=z.device) == safe_t
    dz = ((torch.exp(logits - lse) - onehot.float()) * (1.0 - th * th) * valid).to(xc.dtype)
    return loss, dz


# on CUDA the chunk runs compiled: eager, its ~8 elementwise passes over a [rows, vocab] fp32 block
# each go through memory; compiled, they fuse into about two
_softcap_ce_chunk_compiled = CompiledOutsideTrace(_softcap_ce_chunk)


class _ChunkedSoftcapCE(torch.autograd.Function):
    """Cross-entropy of softcap(x @ W^T) without materialising all logits at once.

    Forward walks the rows in chunks; for each chunk it computes the fp32 soft-capped logits, the
    loss, and immediately the gradient w.r.t. the raw logits, which it turns into that chunk's
    grad_x rows and adds into grad_W. The logits of a chunk are then dropped, so peak memory is one
    chunk of [rows, vocab], and nothing is recomputed in backward (which only scales the stored
    grads by grad_output). Only for a scalar loss ("sum" or "mean" over non-ignored targets).
    """

    @staticmethod
    def forward(ctx, x, weight, targets, chunk_rows: int, mean: bool):
        dev = x.device.type
        # match what autocast would do for the lm_head matmul: compute dtype of the matmuls
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype
        chunk_fn = _softcap_ce_chunk_compiled if x.device.type == "cuda" else _softcap_ce_chunk
        with torch.autocast(dev, enabled=False):
            N = x.size(0)
            w = weight.to(cdt)
            loss = torch.zeros((), dtype=torch.float32, device=x.device)
            grad_x = torch.empty_like(x)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            for s in range(0, N, chunk_rows):
                xc = x[s:s + chunk_rows].to(cdt)
                loss_c, dz = chunk_fn(xc, w, targets[s:s + chunk_rows])
                loss = loss + loss_c
                grad_x[s:s + chunk_rows] = (dz @ w).to(x.dtype)
                grad_w += (dz.t() @ xc).float()
            if mean:
                scale = 1.0 / (targets != -1).sum().to(torch.float32)
            else:
                scale = torch.ones((), dtype=torch.float32, device=x.device)
            loss = loss * scale
        ctx.save_for_backward(grad_x, grad_w, scale)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_w, scale = ctx.saved_tensors
        g = grad_out.float() * scale
        return (grad_x * g.to(grad_x.dtype), (grad_w * g).to(ctx.weight_dtype), None, None, None)


# ----------------------------------------------------------------------------- model


class Embedding(nn.Embedding):
    """nn.Embedding without its own N(0, 1) initialisation: GPT.init_weights owns that. Built on the
    meta device (checkpoint_manager.model_from_config), torch's normal_ runs a Python reference that
    imports torch._dynamo: 1.3 s of every CPU process that loads a model, for values it discards."""

    def reset_parameters(self):
        pass


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        # rows of the flattened [B*T, D] final activations per loss chunk (see _loss). H100, 65,536 rows
        # per micro-step: 8192 -> 32768 gives d12 +0.5% tok/s, d20 nothing, and +4.5 GiB of peak memory
        # that d20 at device batch 32 (69 GiB) can hardly spare on an 80 GB card (bench/RESULTS.md).
        self.loss_chunk_rows = 8192
        self.wte = Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i, w) for i, w in enumerate(config.layer_windows()))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.rotary_len = ROTARY_LEN_FACTOR * config.sequence_len
        # non-persistent: derived data, never in checkpoints. Shapes only here: the values come from
        # _init_rotary (init_weights below, or to_empty() after a meta build; computing them on meta
        # would run torch's Python references, which import torch._dynamo)
        tables = torch.empty(self.rotary_len, config.head_dim // 2, device=self.wte.weight.device)
        self.register_buffer("cos", tables, persistent=False)
        self.register_buffer("sin", tables.clone(), persistent=False)
        # compile_for_training(scope="blocks") fills this with compiled views of self.blocks (a plain
        # list, so state_dict keys stay those of the plain model)
        self._compiled_blocks: list | None = None
        if self.wte.weight.device.type != "meta":
            self.init_weights()

    # -- initialisation

    @torch.no_grad()
    def init_weights(self):
        """Embedding N(0, 1) (it is RMS-normed right away); lm_head N(0, 0.001) so the first logits are
        ~uniform; q/k/v/fc uniform with std 1/sqrt(fan_in) (unit-variance outputs for unit-RMS inputs);
        both output projections zero so every block starts as the identity."""
        D = self.config.n_embd
        nn.init.normal_(self.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        bound = math.sqrt(3.0 / D)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        self._init_rotary()

    def _init_rotary(self):
        device = self.wte.weight.device
        cos, sin = rotary_tables(self.rotary_len, self.config.head_dim, device=device)
        self.cos, self.sin = cos, sin

    def to_empty(self, *, device, recurse: bool = True):
        """meta -> real device: parameters stay uninitialised (load a state dict or call
        init_weights()), but the rotary tables are derived data, so rebuild them here."""
        super().to_empty(device=device, recurse=recurse)
        self._init_rotary()
        return self

    # -- accounting

    def num_params(self) -> dict:
        emb = self.wte.weight.numel()
        head = self.lm_head.weight.numel()
        matrices = sum(p.numel() for p in self.blocks.parameters() if p.dim() == 2)
        scalars = sum(p.numel() for p in self.parameters() if p.dim() < 2)
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "embedding": emb, "lm_head": head, "transformer_matrices": matrices,
                "scalars": scalars, "matmul": matrices + head}

    def estimate_flops(self) -> float:
        """Training FLOPs per token: 6 * (matmul params incl. lm_head, excl. embedding) + per layer
        12 * n_head * head_dim * effective context (min(window, sequence_len)); see performance.md §8."""
        cfg = self.config
        n = self.num_params()["matmul"]
        attn = 0
        for w in cfg.layer_windows():
            ctx = cfg.sequence_len if w is None else min(w, cfg.sequence_len)
            attn += 12 * cfg.n_head * cfg.head_dim * ctx
        return float(6 * n + attn)

    # -- optimizers

    def setup_optimizers(self, unembedding_lr: float = 0.004, embedding_lr: float = 0.2, matrix_lr: float = 0.02,
                         weight_decay: float = 0.0, adam_betas=(0.8, 0.95)):
        """[AdamW(lm_head, wte), Muon(block matrices)]; distributed variants when
        torch.distributed is initialised (then do NOT wrap the model in DDP: they average grads).

        AdamW learning rates are scaled by (n_embd/768)^-0.5 (tuned at width 768); Muon's lr is not
        (its updates are already normalised per matrix). weight_decay applies to Muon only.
        """
        from nanochat.optim import DistAdamW, DistMuon, Muon
        scale = (self.config.n_embd / 768) ** -0.5
        matrix_params = [p for p in self.blocks.parameters() if p.dim() == 2]
        # the model has no scalar parameters (parameter-free norms, no biases): the assert below
        # catches one added without an optimizer group
        adam_groups = [
            dict(params=[self.lm_head.weight], lr=unembedding_lr * scale),
            dict(params=[self.wte.weight], lr=embedding_lr * scale),
        ]
        n_assigned = len(matrix_params) + sum(len(g["params"]) for g in adam_groups)
        assert n_assigned == len(list(self.parameters())), "a parameter is missing from the optimizers"
        adam_kwargs = dict(betas=tuple(adam_betas), eps=1e-10, weight_decay=0.0)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            adamw = DistAdamW(adam_groups, **adam_kwargs)
            muon = DistMuon(matrix_params, lr=matrix_lr, momentum=0.95, weight_decay=weight_decay)
        else:
            fused = self.lm_head.weight.device.type == "cuda"
            adamw = torch.optim.AdamW(adam_groups, fused=fused, **adam_kwargs)
            muon = Muon(matrix_params, lr=matrix_lr, momentum=0.95, weight_decay=weight_decay)
        optimizers = [adamw, muon]
        for opt in optimizers:
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]
        return optimizers

    # -- compilation

    def compile_for_training(self, scope: str = "blocks", dynamic: bool | None = False,
                             backend: str = "inductor") -> nn.Module:
        """torch.compile for the training/evaluation forward (no KV cache); returns what to call.

        scope "blocks" (regional compilation): each Block is compiled on its own. Dynamo treats a
        module's parameters as inputs, so all blocks with the same window share one compiled graph:
        compilation cost is that of one or two blocks, not of the whole depth. The embedding, final
        norm and loss stay eager, with the loss's per-chunk math compiled by itself.
        scope "model": the whole forward as one graph (longer compile; kept for comparison).
        Either way KV-cache inference keeps using the plain modules (its Python-int cache position
        would recompile). `backend` is torch.compile's (tests use "aot_eager": same tracing and
        graph sharing, no code generation)."""
        if scope == "blocks":
            self._compiled_blocks = [torch.compile(b, dynamic=dynamic, backend=backend) for b in self.blocks]
            return self
        if scope == "model":
            self._prepare_attention(self.config.sequence_len)
            return torch.compile(self, dynamic=dynamic, backend=backend)
        raise ValueError(f"compile scope must be 'blocks' or 'model', got {scope!r}")

    def _prepare_attention(self, T: int):
        """Eagerly, before compiled blocks run: look up the cuDNN window kernel, and build (once per T)
        the FlexAttention block masks the attention layers may use."""
        device = self.wte.weight.device
        if device.type == "cuda":
            cudnn_window_sdpa()
        for w in set(self.config.layer_windows()):
            if uses_flex(w, T, device):
                _sliding_block_mask(T, w, device)

    # -- forward

    def make_kv_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        if max_len > self.rotary_len:
            raise ValueError(f"max_len={max_len} exceeds the rotary tables ({self.rotary_len} positions)")
        cfg = self.config
        return KVCache(batch_size, max_len, cfg.n_layer, cfg.n_kv_head, cfg.head_dim,
                       device=self.wte.weight.device, dtype=dtype)

    def make_static_kv_cache(self, batch_size: int, max_len: int, dtype: torch.dtype) -> StaticKVCache:
        if max_len > self.rotary_len:
            raise ValueError(f"max_len={max_len} exceeds the rotary tables ({self.rotary_len} positions)")
        cfg = self.config
        return StaticKVCache(batch_size, max_len, cfg.n_layer, cfg.n_kv_head, cfg.head_dim,
                             device=self.wte.weight.device, dtype=dtype)

    def decode_step(self, idx: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """One token per row at the cache's position tensor: idx [B, 1] -> float32 logits [B, vocab];
        writes the keys at cache.pos and advances it. The same arithmetic as forward() with a KVCache
        (the same modules, rotary rows picked by index_select instead of a slice), but fixed shapes
        and no host reads, so nanochat.decode can capture it as a CUDA graph."""
        pos = cache.pos
        cos, sin = self.cos.index_select(0, pos), self.sin.index_select(0, pos)
        act_dtype = _activation_dtype(self.wte.weight)
        x = norm(self.wte(idx)).to(act_dtype)
        visible = {w: cache.visible(w) for w in set(self.config.layer_windows())}  # one mask per window
        with inference_sdpa():
            for block in self.blocks:
                x = block.decode_step(x, cos, sin, cache, visible[block.attn.window])
        cache.advance()
        x = norm(x).to(act_dtype)
        return softcap(self.lm_head(x).float())[:, -1]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                loss_reduction: str = "mean"):
        """idx [B, T] int64. targets [B, T] (-1 = ignore) -> loss: scalar for "mean"/"sum", [B, T] for
        "none". No targets -> float32 soft-capped logits [B, T, vocab]. With kv_cache the T tokens
        continue the cached sequence (positions pos..pos+T-1) and kv_cache.pos advances by T."""
        B, T = idx.shape
        pos = 0 if kv_cache is None else kv_cache.pos
        if pos + T > self.rotary_len:
            raise ValueError(f"position {pos + T} is past the rotary tables ({self.rotary_len} positions)")
        cos, sin = self.cos[pos:pos + T], self.sin[pos:pos + T]
        blocks = self.blocks
        if kv_cache is None:
            if not torch.compiler.is_compiling():
                self._prepare_attention(T)
            if self._compiled_blocks is not None:
                blocks = self._compiled_blocks
        act_dtype = _activation_dtype(self.wte.weight)
        x = norm(self.wte(idx)).to(act_dtype)
        if kv_cache is None:  # (the branch a whole-model compilation traces: no context manager in it)
            for block in blocks:
                x = block(x, cos, sin)
        else:
            with inference_sdpa():
                for block in blocks:
                    x = block(x, cos, sin, kv_cache)
            kv_cache.advance(T)
        x = norm(x).to(act_dtype)
        if targets is None:
            return softcap(self.lm_head(x).float())
        return self._loss(x, targets, loss_reduction)

    def _loss(self, x: torch.Tensor, targets: torch.Tensor, reduction: str):
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"loss_reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        B, T, D = x.shape
        xf, tf = x.reshape(B * T, D), targets.reshape(B * T)
        N, chunk = B * T, self.loss_chunk_rows
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.lm_head.weight.requires_grad)
        # On CUDA a training loss always takes the chunked path, even as a single chunk: its chunk math
        # is compiled on its own, while under regional compilation the simple path below runs eager
        # (H100, d12, 65,536 rows as one eager block: 348K tok/s against 486K chunked).
        simple = N <= chunk and not (needs_grad and x.device.type == "cuda")
        if simple or (needs_grad and reduction == "none"):
            # simple path: all logits at once (small batches; per-token losses with grad)
            logits = softcap(self.lm_head(xf).float())
            loss = F.cross_entropy(logits, tf, ignore_index=-1, reduction=reduction)
            return loss.view(B, T) if reduction == "none" else loss
        if needs_grad:
            return _ChunkedSoftcapCE.apply(xf, self.lm_head.weight, tf, chunk, reduction == "mean")
        # no grad (evaluation): chunk the rows, keep only the per-token losses
        losses = []
        for s in range(0, N, chunk):
            logits = softcap(self.lm_head(xf[s:s + chunk]).float())
            losses.append(F.cross_entropy(logits, tf[s:s + chunk], ignore_index=-1, reduction="none"))
        per_token = torch.cat(losses)
        if reduction == "none":
            return per_token.view(B, T)
        if reduction == "sum":
            return per_token.sum()
        return per_token.sum() / (tf != -1).sum()

    # -- sampling

    def generate(self, tokens: list[int], max_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int = 42):
        """Yield up to max_tokens sampled token ids continuing `tokens` (batch 1, no stop token, no
        tool): nanochat.engine.Engine's decoding. temperature 0 = greedy; top_k keeps the k most likely."""
        from nanochat.engine import Engine  # (engine imports no model code)
        # one-off prompts (training samples): a CUDA graph capture would not pay for itself
        for column, _ in Engine(self, None, cuda_graph=False).generate(tokens, 1, max_tokens, temperature,
                                                                       top_k, seed):
            yield column[0]
