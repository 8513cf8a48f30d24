"""Byte-level BPE tokenizer: trained with rustbpe, run with tiktoken.

Training uses `rustbpe` (Rust, parallel) on a GPT-4 style pre-tokenisation split; the learned
merges ("mergeable ranks": token bytes -> rank) are handed to a `tiktoken.Encoding`, which does
all encoding/decoding. Special tokens come after the mergeable ranks and are never produced from
plain text: text is always encoded with tiktoken's *ordinary* encoder, so a document that
contains the characters "<|bos|>" is tokenized as those characters, not as the BOS token.

Files (base_dir/tokenizer):
    tokenizer.pkl    pickled {"pattern": str, "mergeable_ranks": {bytes: int}, "special_tokens": {str: int}}
                     (plain types only; loaded with an unpickler that refuses any class)
    token_bytes.pt   int32 tensor [vocab]: UTF-8 byte length of each token, 0 for special tokens
                     (used to report bits per byte); torch.save'd, loaded with weights_only=True

Chat format (render_conversation):
    <|bos|> <|user_start|> user text <|user_end|> <|assistant_start|> assistant parts <|assistant_end|> ...
assistant parts: plain text; {"type": "python"} -> <|python_start|> code <|python_end|> (a tool call,
trained on); {"type": "python_output"} -> <|output_start|> output <|output_end|> (comes from the
tool, not trained on). The mask is 1 exactly on the tokens the model must learn to produce.
"""
from __future__ import annotations

import io
import os
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from nanochat.common import UserError, atomic_torch_save, atomic_write_bytes, get_base_dir

SPECIAL_TOKENS = [
    "<|bos|>",            # begins every document / conversation
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>",      # assistant calls the python tool
    "<|output_start|>", "<|output_end|>",      # the tool's output, fed back
]

# GPT-4 (cl100k) style pre-tokenisation, written out piece by piece; digits are grouped in runs of
# at most two (instead of three) so that small vocabularies do not spend entries on numbers.
SPLIT_PATTERN = "|".join([
    r"'(?i:[sdmt]|ll|ve|re)",                 # English contractions: 's 'd 'm 't 'll 've 're
    r"[^\r\n\p{L}\p{N}]?+\p{L}+",             # a word, optionally led by one non-letter (space, quote...)
    r"\p{N}{1,2}",                            # numbers, at most 2 digits per piece
    r" ?[^\s\p{L}\p{N}]++[\r\n]*",            # punctuation runs (optionally space-led) and their newlines
    r"\s*[\r\n]",                             # whitespace ending in a newline
    r"\s+(?!\S)",                             # whitespace not followed by a non-space (leave one for the next word)
    r"\s+",                                   # any other whitespace
])

TOKENIZER_PKL = "tokenizer.pkl"
TOKEN_BYTES_PT = "token_bytes.pt"
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only built-in containers/scalars: a tampered file cannot run code."""

    def find_class(self, module, name):  # noqa: D401
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _tokenizer_error(directory: Path, what: str) -> UserError:
    return UserError(f"tokenizer in {directory} {what}: run `make tokenizer`")


class Tokenizer:
    """GPT-4 style BPE over bytes; see the module docstring for the formats."""

    def __init__(self, pattern: str, mergeable_ranks: dict[bytes, int], special_tokens: dict[str, int] | None = None,
                 name: str = "nanochat"):
        import tiktoken
        n = len(mergeable_ranks)
        if sorted(mergeable_ranks.values()) != list(range(n)):
            raise ValueError("mergeable ranks must be exactly 0..n-1")
        if special_tokens is None:
            special_tokens = {s: n + i for i, s in enumerate(SPECIAL_TOKENS)}
        self.pattern = pattern
        self.mergeable_ranks = dict(mergeable_ranks)
        self.special_tokens = dict(special_tokens)
        self.enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=self.mergeable_ranks,
                                     special_tokens=self.special_tokens)
        self._init_pool()

    def _init_pool(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pool_threads = 0
        self._pool_pid = os.getpid()
        self._pool_lock = threading.Lock()

    def __getstate__(self):  # picklable (e.g. for worker processes): rebuilt from the plain data
        return self.to_dict()

    def __setstate__(self, state):
        self.__init__(state["pattern"], state["mergeable_ranks"], state["special_tokens"])

    # ------------------------------------------------------------------ training / files

    @classmethod
    def train_from_iterator(cls, text_iter: Iterable[str], vocab_size: int, buffer_size: int = 8192,
                            pattern: str = SPLIT_PATTERN) -> "Tokenizer":
        """Train on an iterable of strings. vocab_size includes the special tokens.

        If the text is too small to learn that many merges, the vocabulary comes out smaller
        (get_vocab_size() tells the truth).
        """
        try:
            import rustbpe
        except ImportError as exc:
            raise UserError(f"the BPE trainer rustbpe cannot be imported ({exc}): install it with "
                            "`pip install rustbpe` (the Makefile's .venv and `nix develop` have it)") from exc
        vocab_size = int(vocab_size)
        if vocab_size < MIN_VOCAB_SIZE:
            raise UserError(f"vocab size {vocab_size} is too small: it must be at least {MIN_VOCAB_SIZE} "
                            f"(256 byte tokens + {len(SPECIAL_TOKENS)} special tokens)")
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(iter(text_iter), vocab_size - len(SPECIAL_TOKENS),
                                    buffer_size=buffer_size, pattern=pattern)
        ranks = {bytes(tok): int(rank) for tok, rank in trainer.get_mergeable_ranks()}
        return cls(trainer.get_pattern(), ranks)

    def to_dict(self) -> dict:
        return {"pattern": self.pattern, "mergeable_ranks": dict(self.mergeable_ranks),
                "special_tokens": dict(self.special_tokens)}

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.token_bytes(), directory / TOKEN_BYTES_PT)
        atomic_write_bytes(directory / TOKENIZER_PKL, pickle.dumps(self.to_dict(), protocol=4))
        return directory

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> "Tokenizer":
        directory = Path(directory)
        path = directory / TOKENIZER_PKL
        if not path.is_file():
            raise _tokenizer_error(directory, f"is missing ({path} not found)")
        try:
            data = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
        except Exception as exc:
            raise _tokenizer_error(directory, f"is corrupt ({TOKENIZER_PKL}: {type(exc).__name__})") from None
        ok = (isinstance(data, dict) and isinstance(data.get("pattern"), str)
              and isinstance(data.get("mergeable_ranks"), dict) and isinstance(data.get("special_tokens"), dict)
              and all(isinstance(k, bytes) and isinstance(v, int) for k, v in data["mergeable_ranks"].items())
              and all(isinstance(k, str) and isinstance(v, int) for k, v in data["special_tokens"].items()))
        if not ok:
            raise _tokenizer_error(directory, f"is corrupt ({TOKENIZER_PKL} does not hold pattern/mergeable_ranks/"
                                              f"special_tokens)")
        missing = [s for s in SPECIAL_TOKENS if s not in data["special_tokens"]]
        if missing:
            raise _tokenizer_error(directory, f"lacks special tokens {missing}")
        try:
            return cls(data["pattern"], data["mergeable_ranks"], data["special_tokens"])
        except Exception as exc:
            raise _tokenizer_error(directory, f"is corrupt ({_short(exc)})") from None

    # ------------------------------------------------------------------ vocabulary

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_special_tokens(self) -> list[str]:
        return list(self.special_tokens)

    def get_bos_token_id(self) -> int:
        return self.special_tokens["<|bos|>"]

    def encode_special(self, s: str) -> int:
        try:
            return self.special_tokens[s]
        except KeyError:
            raise KeyError(f"{s!r} is not a special token (known: {', '.join(self.special_tokens)})") from None

    def id_to_token(self, i: int) -> str:
        return self.enc.decode_single_token_bytes(int(i)).decode("utf-8", errors="replace")

    def token_bytes(self):
        """int32 tensor [vocab]: byte length of each token, 0 for special tokens."""
        import torch
        out = torch.zeros(self.get_vocab_size(), dtype=torch.int32)
        for tok, rank in self.mergeable_ranks.items():
            out[rank] = len(tok)
        return out

    # ------------------------------------------------------------------ encode / decode

    def _as_id(self, x) -> int:
        return self.encode_special(x) if isinstance(x, str) else int(x)

    def _executor(self, threads: int) -> ThreadPoolExecutor:
        if self._pool_pid != os.getpid():   # forked child: the parent's threads do not exist here
            self._init_pool()
        with self._pool_lock:
            if self._pool is None or self._pool_threads != threads:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tok")
                self._pool_threads = threads
            return self._pool

    def _encode_many(self, texts: list[str], num_threads: int) -> list[list[int]]:
        enc = self.enc.encode_ordinary
        threads = max(1, min(int(num_threads), len(texts)))
        total = sum(len(t) for t in texts)
        if threads == 1 or total < 64 * 1024:  # threads cost more than they save on small batches
            return [enc(t) for t in texts]
        # Contiguous chunks of about equal character count, one task per chunk (tiktoken releases the GIL).
        bounds, acc, step = [0], 0, total / (threads * 2)
        for i, t in enumerate(texts):
            acc += len(t)
            if acc >= step * len(bounds) and i + 1 < len(texts):
                bounds.append(i + 1)
        bounds.append(len(texts))
        chunks = [texts[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
        pool = self._executor(threads)
        out: list[list[int]] = []
        for part in pool.map(lambda ch: [enc(t) for t in ch], chunks):
            out.extend(part)
        return out

    def encode(self, text, prepend=None, append=None, num_threads: int = 8):
        """str -> list[int]; list[str] -> list[list[int]]. prepend/append: a token id or special string.

        Special-token strings inside the text are encoded as ordinary text.
        """
        pre = self._as_id(prepend) if prepend is not None else None
        post = self._as_id(append) if append is not None else None
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            if pre is not None:
                ids.insert(0, pre)
            if post is not None:
                ids.append(post)
            return ids
        if isinstance(text, (list, tuple)):
            if not all(isinstance(t, str) for t in text):
                raise TypeError("encode() takes a str or a list of str")
            rows = self._encode_many(list(text), num_threads)
            if pre is not None or post is not None:
                for ids in rows:
                    if pre is not None:
                        ids.insert(0, pre)
                    if post is not None:
                        ids.append(post)
            return rows
        raise TypeError(f"encode() takes a str or a list of str, not {type(text).__name__}")

    __call__ = encode

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])

    # ------------------------------------------------------------------ chat

    def _normalise_messages(self, conversation) -> list[dict]:
        if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
            raise ValueError("a conversation is a dict with a 'messages' list")
        messages = [dict(m) for m in conversation["messages"]]
        if not messages:
            raise ValueError("conversation has no messages")
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"each message needs 'role' and 'content': {m!r}")
        if messages[0]["role"] == "system":
            if len(messages) < 2 or messages[1]["role"] != "user":
                raise ValueError("a system message must be followed by a user message")
            if not isinstance(messages[0]["content"], str) or not isinstance(messages[1]["content"], str):
                raise ValueError("system and user message content must be strings")
            merged = dict(messages[1])
            merged["content"] = messages[0]["content"] + "\n\n" + messages[1]["content"]
            messages = [merged] + messages[2:]
        for i, m in enumerate(messages):
            want = "user" if i % 2 == 0 else "assistant"
            if m["role"] != want:
                raise ValueError(f"message {i} has role {m['role']!r} but messages must alternate user/assistant "
                                 f"starting with user (a system message is allowed only first)")
        return messages

    def render_conversation(self, conversation, max_tokens: int = 2048) -> tuple[list[int], list[int]]:
        """Token ids and a same-length 0/1 mask (1 = the model is trained to produce this token)."""
        messages = self._normalise_messages(conversation)
        sp = self.special_tokens
        ids: list[int] = []
        mask: list[int] = []

        def add(tokens, m: int) -> None:
            if isinstance(tokens, int):
                tokens = [tokens]
            ids.extend(tokens)
            mask.extend([m] * len(tokens))

        add(sp["<|bos|>"], 0)
        for m in messages:
            content = m["content"]
            if m["role"] == "user":
                if not isinstance(content, str):
                    raise ValueError("user message content must be a string")
                add(sp["<|user_start|>"], 0)
                add(self.enc.encode_ordinary(content), 0)
                add(sp["<|user_end|>"], 0)
                continue
            add(sp["<|assistant_start|>"], 0)
            if isinstance(content, str):
                add(self.enc.encode_ordinary(content), 1)
            elif isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                        raise ValueError(f"assistant content parts are {{'type', 'text'}} dicts: {part!r}")
                    kind, toks = part.get("type"), self.enc.encode_ordinary(part["text"])
                    if kind == "text":
                        add(toks, 1)
                    elif kind == "python":
                        add(sp["<|python_start|>"], 1)
                        add(toks, 1)
                        add(sp["<|python_end|>"], 1)
                    elif kind == "python_output":
                        add(sp["<|output_start|>"], 0)
                        add(toks, 0)
                        add(sp["<|output_end|>"], 0)
                    else:
                        raise ValueError(f"unknown assistant part type {kind!r} (text, python, python_output)")
            else:
                raise ValueError(f"assistant content must be a string or a list of parts, not {type(content).__name__}")
            add(sp["<|assistant_end|>"], 1)
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation) -> list[int]:
        """Prompt ids for generation: the conversation minus its final assistant message, then <|assistant_start|>."""
        messages = self._normalise_messages(conversation)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("render_for_completion needs a conversation ending with a user message "
                             "(optionally followed by the assistant answer, which is dropped)")
        ids, _ = self.render_conversation({"messages": messages}, max_tokens=1 << 62)
        ids.append(self.special_tokens["<|assistant_start|>"])
        return ids

    def visualize_tokenization(self, ids, mask=None) -> str:
        """Debug helper: tokens separated by '|', masked-out ones in brackets."""
        out = []
        for i, t in enumerate(ids):
            s = self.id_to_token(t) if t < len(self.mergeable_ranks) else next(
                (k for k, v in self.special_tokens.items() if v == t), f"<{t}>")
            out.append(s if mask is None or mask[i] else f"[{s}]")
        return "|".join(out)

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None and getattr(self, "_pool_pid", None) == os.getpid():
            try:
                pool.shutdown(wait=False)
            except Exception:
                pass


def _short(exc: BaseException, limit: int = 160) -> str:
    s = " ".join(str(exc).split())
    return s if len(s) <= limit else s[:limit] + "..."


def tokenizer_dir() -> Path:
    return get_base_dir() / "tokenizer"


def get_tokenizer() -> Tokenizer:
    """The trained tokenizer in base_dir/tokenizer (UserError if missing or corrupt)."""
    return Tokenizer.from_directory(tokenizer_dir())


def get_token_bytes(device="cpu"):
    """int32 tensor [vocab] of token byte lengths (0 = special), on `device`."""
    import torch
    directory = tokenizer_dir()
    path = directory / TOKEN_BYTES_PT
    if not path.is_file():
        raise _tokenizer_error(directory, f"is missing ({path} not found)")
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _tokenizer_error(directory, f"is corrupt ({TOKEN_BYTES_PT}: {type(exc).__name__})") from None
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != torch.int32:
        raise _tokenizer_error(directory, f"is corrupt ({TOKEN_BYTES_PT} is not a 1-D int32 tensor)")
    return t.to(device)


__all__ = ["SPECIAL_TOKENS", "SPLIT_PATTERN", "MIN_VOCAB_SIZE", "Tokenizer", "get_tokenizer", "get_token_bytes",
           "tokenizer_dir"]
