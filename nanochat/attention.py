"""Attention kernels of the GPT model: the dispatcher `attention(...)` and its back ends.

The model (nanochat.gpt) calls `attention`, `inference_sdpa`, the static-cache decode pair
(`cache_visibility`, `decode_attention`) and the eager preparation helpers
(`cudnn_window_sdpa`, `uses_flex`, `_sliding_block_mask`); the training log and `make doctor` ask
`describe_window_kernel`. Kept apart from the model so the kernel choices live in one place.

Attention back ends:
- CUDA, no KV cache: full causal -> SDPA(is_causal=True) (flash kernel); sliding window ->
  cuDNN's sliding-window SDPA where the optional nvidia-cudnn-frontend is installed, else
  FlexAttention with a block mask cached per (T, window, device); no T x T mask exists either way.
- CPU/MPS, no KV cache: SDPA with an explicit boolean band mask (small sizes only).
- with a KV cache (inference, any device): SDPA over cache[:pos+T] with an explicit
  causal + window mask offset by pos (none where nothing is cut off), never through cuDNN's SDPA,
  window op or FlexAttention, which plan or compile per shape (inference_sdpa).
- the static decode step (nanochat.decode, any device): one query per row over the whole
  preallocated cache, with a mask built on the device from the position tensor (cache_visibility,
  decode_attention), inside inference_sdpa; the same shapes at every step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

try:  # FlexAttention is only used on CUDA; guard so that CPU / older builds still import
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    HAS_FLEX = True
except Exception:  # pragma: no cover - depends on the torch build
    create_block_mask = flex_attention = None
    HAS_FLEX = False

_BLOCK_MASKS: dict = {}


class CompiledOutsideTrace:
    """Call `fn` through a torch.compile'd copy, made on the first eager call; inside a Dynamo trace
    call `fn` itself (the outer compilation fuses it, and compiling while tracing would not work).
    For kernels that are only fast compiled but are called from eager code under regional
    compilation (FlexAttention, the loss chunk)."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled = None

    def __call__(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return self.fn(*args, **kwargs)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=False)
        return self.compiled(*args, **kwargs)


def _sliding_block_mask(T: int, window: int, device):
    """Cached FlexAttention block mask for causal attention limited to `window` keys.

    Built eagerly (GPT.forward warms the cache before any compiled block runs): a mask first built
    while Dynamo traces would be traced into the graph, and the cache fill would then change the
    guards and force a second full compilation."""
    key = (T, window, str(device))
    bm = _BLOCK_MASKS.get(key)
    if bm is None:
        def band(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx < window)
        bm = create_block_mask(band, None, None, T, T, device=device)
        _BLOCK_MASKS[key] = bm
    return bm


def uses_flex(window: int | None, T: int, device) -> bool:
    """May a training (no KV cache) attention call with this window take the FlexAttention path?
    (True also where window_backend will pick cuDNN for the actual tensors: a block mask built and
    not used costs milliseconds once, one built inside a trace costs a recompilation.)"""
    return window is not None and window < T and device.type == "cuda" and HAS_FLEX


_CUDNN_WINDOW: list = []  # [the op or None] once looked up


def cudnn_window_sdpa():
    """cuDNN's own sliding-window attention (the torch op of NVIDIA's cudnn frontend, the optional
    `nvidia-cudnn-frontend` package), or None where that package is not installed or does not load.
    Preferred over FlexAttention because it is faster (bench/RESULTS.md). Looked up once, eagerly
    (GPT.forward does it before any compiled block runs: an import inside a trace breaks the graph)."""
    if not _CUDNN_WINDOW:
        try:
            from cudnn.sdpa.fwd.torch_op import sdpa
        except Exception:  # not installed, or no loadable libcudnn: FlexAttention does the job
            sdpa = None
        _CUDNN_WINDOW.append(sdpa)
    return _CUDNN_WINDOW[0]


def window_backend(window: int, q: torch.Tensor, k: torch.Tensor) -> str:
    """Kernel for a training attention call (no KV cache, Tq == Tk) whose window cuts keys off:
    "cudnn" where cudnn_window_sdpa() exists and takes the tensors (CUDA, bf16/fp16, head_dim <= 128,
    as many kv heads as query heads), else "flex" (CUDA with FlexAttention), else "sdpa_mask"."""
    if q.device.type != "cuda":
        return "sdpa_mask"
    if (q.dtype in (torch.bfloat16, torch.float16) and q.size(-1) <= 128 and q.size(1) == k.size(1)
            and cudnn_window_sdpa() is not None):
        return "cudnn"
    return "flex" if uses_flex(window, q.size(2), q.device) else "sdpa_mask"


def describe_window_kernel(device) -> str:
    """One line for the training log and `make doctor`: the kernel window_backend picks for bf16
    window layers on `device` (asked with a tiny probe tensor, so the answer is the same decision)."""
    probe = torch.empty(1, 1, 2, 128, dtype=torch.bfloat16, device=device)
    kind = window_backend(1, probe, probe)
    if kind == "cudnn":
        return "cuDNN sliding-window SDPA (nvidia-cudnn-frontend)"
    if kind == "flex":
        return "FlexAttention (pip install nvidia-cudnn-frontend, or PY_EXTRAS=test,cudnn, for cuDNN's faster kernel)"
    return "explicit-mask SDPA " + ("(no GPU)" if device.type != "cuda" else "(no FlexAttention in this torch build)")


# flex_attention must run compiled to be fast (eager, it materialises all the scores)
_flex_compiled = CompiledOutsideTrace(flex_attention) if HAS_FLEX else None


def inference_sdpa():
    """Context for KV-cache inference: SDPA may use every back end but cuDNN's. Each decode step
    has a new key length, and cuDNN's SDPA builds a costly execution plan per new shape
    (bench/RESULTS.md); flash / memory-efficient kernels need no plan."""
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def band_mask(Tq: int, Tk: int, q_offset: int, window: int | None, device) -> torch.Tensor:
    """Boolean [Tq, Tk] mask, True = may attend. Query i sits at absolute position q_offset + i,
    key j at position j: allowed iff j <= q_offset + i and (q_offset + i) - j < window."""
    qpos = torch.arange(q_offset, q_offset + Tq, device=device)[:, None]
    kpos = torch.arange(Tk, device=device)[None, :]
    mask = kpos <= qpos
    if window is not None:
        mask = mask & (qpos - kpos < window)
    return mask


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None,
              q_offset: int = 0, impl: str | None = None) -> torch.Tensor:
    """Causal (optionally windowed) attention.

    q [B, H, Tq, hd]; k, v [B, Hkv, Tk, hd] with Hkv | H (query head h uses kv head h // (H/Hkv)).
    Query i is at absolute position q_offset + i; keys are at positions 0..Tk-1.
    impl: None = choose by device and installed kernels (window_backend); "sdpa_mask", "flex" or
    "cudnn" force one ("sdpa_mask": KV-cache inference and tests; the others: tests).
    """
    Tq, Tk = q.size(2), k.size(2)
    gqa = q.size(1) != k.size(1)
    extra = {"enable_gqa": True} if gqa else {}
    full = window is None or window >= q_offset + Tq  # the window never cuts anything off
    if q_offset == 0 and Tq == Tk:
        # training / no-cache path (and a KV-cache prefill)
        if full and impl in (None, "sdpa_mask"):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **extra)
        if impl is None:
            impl = window_backend(window, q, k)
        if impl == "cudnn":
            # window_left=window is our band, `window` keys ending at the query's own (window - 1
            # measured one key short against the masked reference: bench/window_attention.py, and
            # tests/test_gpt.py on CUDA); the op's backward needs the forward's softmax statistics
            return cudnn_window_sdpa()(q, k, v, is_causal=True, window_left=window, window_right=0,
                                       return_lse=True)[0]
        if impl == "flex":
            bm = _sliding_block_mask(Tq, window if window is not None else Tq, q.device)
            return _flex_compiled(q, k, v, block_mask=bm, enable_gqa=gqa)
    # explicit mask: KV-cache inference, CPU windows, forced sdpa_mask
    if Tq == 1 and full:
        return F.scaled_dot_product_attention(q, k, v, **extra)  # one query sees every cached key
    mask = band_mask(Tq, Tk, q_offset, window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **extra)


def cache_visibility(key_positions: torch.Tensor, pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """[1, 1, 1, L] bool mask for one query at position `pos` (a LongTensor [1], read on the device)
    over a static cache of L keys at `key_positions` (arange(L)): the band_mask rule, key j visible
    iff j <= pos and pos - j < window. Keys past pos (not yet written for this sequence) are hidden."""
    visible = key_positions <= pos
    if window is not None:
        visible = visible & (pos - key_positions < window)
    return visible.view(1, 1, 1, -1)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """One query per row over a whole static KV cache: q [B, H, 1, hd], k/v [B, Hkv, L, hd], `visible`
    from cache_visibility. Same shapes at every step (the point: a CUDA graph can replay it); run inside
    inference_sdpa(), so with the mask CUDA takes the memory-efficient kernel, CPU its flash kernel."""
    extra = {"enable_gqa": True} if q.size(1) != k.size(1) else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, **extra)
