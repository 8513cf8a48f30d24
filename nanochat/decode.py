"""KV-cache decoding: a static cache, one fixed-shape decode step replayed as a CUDA graph, the sampler.

A decode step of a small model is all host overhead: a few hundred kernel launches from Python for
little arithmetic. Here:

- `StaticDecoder` owns a `StaticKVCache` of fixed (batch, max_len) and runs `GPT.decode_step`
  (token ids [B, 1] + the cache's position tensor -> logits [B, vocab]) on static input/output
  buffers. On CUDA the step is captured once as a `torch.cuda.CUDAGraph` (warmed up on a side
  stream) and every later step is one `replay()`; on CPU, or where capture fails, the same step runs
  eagerly. The prefill (GPT.forward into a KVCache, any length) is copied into the static cache.
- `sample_next` draws the next tokens without a host sync: torch.multinomial's own algorithm for one
  sample (argmax(probs / q), q ~ Exp(1) from the same generator), minus its validity checks, so it
  returns the tokens torch.multinomial would from the same generator state.

The loop around them (nanochat.engine.Engine) reads the tokens back once every `sync_every` steps.

Assumptions of the graph capture (checked where cheap, documented where not):
- The parameters and rotary buffers keep their storage between capture and replay (in-place updates
  such as optimizer steps or load_state_dict are fine: the graph reads the current values). Each
  generation compares their data pointers with those at capture and recaptures when one moved (.to(),
  to_empty()). The check runs once per generation (load_prefill), not per step.
- Autocast is captured as it is at capture time, with autocast's weight-cast cache off (a cached
  bf16 copy made during warmup would be freed when the caller's autocast context exits, and the
  graph would read freed memory); decoders are keyed by the autocast state, so a caller without
  autocast gets another graph. The cost: every replay casts the fp32 weights to bf16 again.
- Sampling stays outside the graph (a torch.Generator of the caller's seed, not captured).
"""
from __future__ import annotations

import itertools
import sys
from collections import OrderedDict

import torch

MAX_LEN_BUCKET = 256  # static caches are sized in multiples of this: few distinct graphs per session
MAX_DECODERS = 4      # decoders (each a cache + a graph) an Engine keeps, least recently used dropped
WARMUP_STEPS = 3      # eager steps on a side stream before capture (cuBLAS handles, lazy inits)


def sample_next(logits: torch.Tensor, rng: torch.Generator | None, temperature: float = 1.0,
                top_k: int | None = None) -> torch.Tensor:
    """logits [B, V] -> ids [B], on the logits' device, without reading anything back.

    temperature <= 0 = greedy (argmax); top_k keeps the k most likely. Sampling replays
    torch.multinomial(probs, 1)'s algorithm for one sample (divide the probabilities by Exp(1) noise
    drawn with exponential_ from the generator, take the argmax): the same noise, so the same tokens
    from the same generator state, but without its checks for inf/NaN probabilities (softmax of
    finite logits has none), so it never waits on the device (tests/test_decode.py compares the two)."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits, idx = logits.float(), None
    if top_k is not None and 0 < top_k < logits.size(-1):
        logits, idx = torch.topk(logits, top_k, dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    choice = (probs / torch.empty_like(probs).exponential_(1, generator=rng)).argmax(dim=-1)
    return choice if idx is None else idx.gather(-1, choice[:, None]).squeeze(-1)


def bucket_length(needed: int, limit: int | None) -> int:
    """Static cache length for `needed` positions: rounded up to MAX_LEN_BUCKET, at most `limit`."""
    length = -(-needed // MAX_LEN_BUCKET) * MAX_LEN_BUCKET
    return min(length, limit) if limit is not None else length


def _autocast_state(device: torch.device) -> tuple[bool, torch.dtype | None]:
    dev = device.type
    if torch.is_autocast_enabled(dev):
        return True, torch.get_autocast_dtype(dev)
    return False, None


def _storage_signature(model) -> tuple[int, ...]:
    return tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers()))


class StaticDecoder:
    """Decode steps of `model` over one StaticKVCache of (batch_size, max_len, dtype).

        dec = StaticDecoder(model, batch_size=4, max_len=768, dtype=torch.bfloat16)
        dec.load_prefill(kv_cache)     # a dynamic KVCache after the prompt's forward
        logits = dec.step(ids)         # ids [4, 1] at the next position -> logits [4, vocab]

    `step` returns the graph's static output buffer on CUDA: read it (or sample from it) before the
    next step overwrites it. `position` is the host's copy of the cache position (the device's copy
    is never read back); `rewind(p)` moves both back, so the next step rewrites position p.
    """

    def __init__(self, model, batch_size: int, max_len: int, dtype: torch.dtype, cuda_graph: bool = True):
        self.model = model
        self.cache = model.make_static_kv_cache(batch_size, max_len, dtype)
        self.device = self.cache.k.device
        self.batch_size, self.max_len = batch_size, max_len
        self.ids = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.position = 0
        self.autocast = _autocast_state(self.device)
        self.use_graph = cuda_graph and self.device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.captures = 0  # how many times a graph was captured (tests: a new prompt reuses it)
        self.in_use = False  # held by a running Engine.generate (two live generators never share one)
        self._signature: tuple[int, ...] | None = None

    # -- state

    def load_prefill(self, kv_cache) -> None:
        """Start a new sequence from a dynamic cache's prefill. Also the once-per-generation check that
        the captured graph still reads the model's current storage (else it is captured again)."""
        self.position = self.cache.load_prefill(kv_cache)
        if self.graph is not None and self._signature != _storage_signature(self.model):
            self.graph, self.logits = None, None

    def rewind(self, position: int) -> None:
        if not 0 <= position <= self.position:
            raise ValueError(f"cannot rewind to position {position} (at {self.position})")
        self.cache.pos.fill_(position)
        self.position = position

    # -- stepping

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed ids [B, 1] at the current position; -> logits [B, vocab] for the next one."""
        if self.position >= self.max_len:
            raise ValueError(f"static KV cache overflow: position {self.position} >= max_len={self.max_len}")
        self.ids.copy_(ids.view(self.batch_size, 1))
        if self.use_graph and self.graph is None:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            out = self.logits
        else:
            out = self.model.decode_step(self.ids, self.cache)
        self.position += 1
        return out

    def _capture(self) -> None:
        """Warm up on a side stream, then capture one step. Warmup and capture leave the device
        position where it was (the capture itself runs nothing); the warmup writes keys only at that
        position, which the real step then overwrites (so it never goes past max_len either)."""
        enabled, dtype = self.autocast
        autocast = torch.autocast(self.device.type, dtype=dtype, enabled=enabled, cache_enabled=False)
        start = self.position
        self.graph, self.logits = None, None
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), autocast:
                for _ in range(WARMUP_STEPS):  # each at the same, not yet valid, position
                    self.model.decode_step(self.ids, self.cache)
                    self.cache.pos.fill_(start)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: only this thread's unsafe calls break the capture (a loader thread may run)
            with autocast, torch.cuda.graph(graph, capture_error_mode="thread_local"):
                logits = self.model.decode_step(self.ids, self.cache)
        except Exception as e:  # capture unsupported here: the same step, eagerly
            print(f"warning: CUDA graph capture of the decode step failed ({type(e).__name__}: {e}); "
                  f"decoding eagerly", file=sys.stderr)
            self.use_graph = False
            self.cache.pos.fill_(start)
            return
        self.cache.pos.fill_(start)
        self.graph, self.logits = graph, logits
        self._signature = _storage_signature(self.model)
        self.captures += 1


class DecoderPool:
    """The few StaticDecoders an Engine keeps: reuses one of the same batch, dtype and autocast whose
    length covers the request without being more than twice it (attention reads the whole cache),
    else builds one of bucket_length(needed), dropping the least recently used beyond MAX_DECODERS."""

    def __init__(self, model, cuda_graph: bool = True):
        self.model, self.cuda_graph = model, cuda_graph
        self.decoders: OrderedDict[tuple, StaticDecoder] = OrderedDict()
        self._serial = itertools.count()  # in the key: a busy decoder of the same shape may exist

    def get(self, batch_size: int, needed: int, dtype: torch.dtype, device: torch.device) -> StaticDecoder:
        state = _autocast_state(device)
        for key, dec in self.decoders.items():
            if (key[:3] == (batch_size, dtype, state) and not dec.in_use
                    and needed <= dec.max_len <= 2 * max(needed, MAX_LEN_BUCKET)):
                self.decoders.move_to_end(key)
                return dec
        length = bucket_length(needed, getattr(self.model, "rotary_len", None))
        key = (batch_size, dtype, state, length, next(self._serial))
        dec = StaticDecoder(self.model, batch_size, length, dtype, cuda_graph=self.cuda_graph)
        self.decoders[key] = dec
        for old in [k for k, d in self.decoders.items() if not d.in_use][:max(0, len(self.decoders) - MAX_DECODERS)]:
            del self.decoders[old]
        return dec
