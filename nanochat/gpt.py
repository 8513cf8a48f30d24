"""The GPT model of every stage: its modules, initialisation, forward, decode step, optimizer groups
and FLOP estimate. Elsewhere: its shape (nanochat.gpt_config), loss (nanochat.loss), KV caches
(nanochat.kv_cache) and attention back ends (FlexAttention, cuDNN's window kernel, band masks, the
KV-cache SDPA context: nanochat.attention).

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

Training with torch.compile: GPT.compile_for_training compiles each block on its own (regional
compilation: blocks with the same window share one graph, so compile time does not grow with depth);
KV-cache inference always runs the plain modules (its Python-int cache position would recompile).

Decoding: forward() with a KVCache (the prompt's prefill), then decode_step() over a StaticKVCache
(fixed shapes, nanochat.decode's CUDA graph); both run CausalSelfAttention._qkv.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.attention import (_sliding_block_mask, attention, cudnn_window_sdpa, decode_attention,
                                inference_sdpa, uses_flex)
from nanochat.gpt_config import GPTConfig
from nanochat.kv_cache import KVCache, StaticKVCache
from nanochat.loss import softcap, softcapped_loss

ROPE_BASE = 10000.0
ROTARY_LEN_FACTOR = 10  # rotary tables cover 10x sequence_len so generation can run past it


# ----------------------------------------------------------------------------- helpers


def norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


def _activation_dtype(param: torch.Tensor) -> torch.dtype:
    """The dtype of the residual stream: autocast's matmul dtype where autocast is on, else the
    parameters' dtype. Parameters (and so their grads and optimizer states) stay fp32; only the
    activations between blocks drop to bf16, which halves the bytes every norm, residual add and
    their backward move (bench/RESULTS.md)."""
    dev = param.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else param.dtype


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
        # each row three times (bench/qk_prep.py, bench/RESULTS.md).
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


# ----------------------------------------------------------------------------- model


class Embedding(nn.Embedding):
    """nn.Embedding without its own N(0, 1) initialisation: GPT.init_weights owns that. Built on the
    meta device (checkpoint_manager.model_from_config), torch's normal_ runs a Python reference that
    imports torch._dynamo, slow at every load, for values it discards (bench/RESULTS.md)."""

    def reset_parameters(self):
        pass


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        # rows of the flattened [B*T, D] final activations per loss chunk (nanochat.loss): larger
        # chunks gain almost no speed for much more peak memory (bench/RESULTS.md)
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

    def make_kv_cache(self, batch_size: int, max_len: int) -> KVCache:
        if max_len > self.rotary_len:
            raise ValueError(f"max_len={max_len} exceeds the rotary tables ({self.rotary_len} positions)")
        cfg = self.config
        return KVCache(batch_size, max_len, cfg.n_layer, cfg.n_kv_head, cfg.head_dim,
                       device=self.wte.weight.device)

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
        return softcapped_loss(x, self.lm_head, targets, self.loss_chunk_rows, loss_reduction)

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
