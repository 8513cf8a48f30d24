"""GPTConfig: the model's shape (depth, width, heads, vocabulary, context) and its per-layer
attention windows, validated on construction."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


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
