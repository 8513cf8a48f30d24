"""Inference: batched sampling with a KV cache and the calculator tool.

    engine = Engine(model, tokenizer)
    for token_column, mask_column in engine.generate(prompt_ids, num_samples=4, max_tokens=256):
        ...  # one token per sample per step; mask 1 = sampled by the model, 0 = forced (tool output)
    results, masks = engine.generate_batch(prompt_ids, num_samples=4, max_tokens=256)

The prompt is prefilled ONCE with a batch-1 KV cache, copied into every row of nanochat.decode's
static cache, and decoded there by one fixed-shape step (a CUDA graph on CUDA, eager elsewhere).
A row stops at <|assistant_end|> or <|bos|> (that token is the last one yielded for the row; later
columns repeat it with mask 0 until every row has stopped or max_tokens is reached).

Tool use: the tokens between <|python_start|> and <|python_end|> are decoded and evaluated by
`calculator` (arithmetic and str.count only); if it returns a value, `<|output_start|> value
<|output_end|>` is forced into that row (mask 0) before the model continues.
"""
from __future__ import annotations

import ast
import math
from collections import deque

import torch

from nanochat.decode import DecoderPool, sample_next

# ----------------------------------------------------------------------------- calculator

MAX_EXPR_CHARS = 300
MAX_NODES = 64
MAX_INT_BITS = 256        # no intermediate integer beyond ~1e77
MAX_POW_EXPONENT = 256
MAX_RESULT_CHARS = 64     # a longer result would flood the context
MAX_STR_CHARS = 1000

_BINOPS = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a ** b,
}


class _Reject(Exception):
    pass


def _number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Reject("not a number")
    if isinstance(v, int) and v.bit_length() > MAX_INT_BITS:
        raise _Reject("integer too large")
    if isinstance(v, float) and not math.isfinite(v):
        raise _Reject("not finite")
    return v


def _eval(node):
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            raise _Reject("bare string")
        return _number(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _number(_eval(node.operand))
        return v if isinstance(node.op, ast.UAdd) else -v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _number(_eval(node.left)), _number(_eval(node.right))
        if isinstance(node.op, ast.Pow):
            if abs(b) > MAX_POW_EXPONENT:
                raise _Reject("exponent too large")
            if isinstance(a, int) and isinstance(b, int) and b > 0 and a.bit_length() * b > MAX_INT_BITS:
                raise _Reject("power too large")
        if isinstance(node.op, ast.Mult) and isinstance(a, int) and isinstance(b, int) \
                and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
            raise _Reject("product too large")
        try:
            return _number(_BINOPS[type(node.op)](a, b))
        except (ZeroDivisionError, OverflowError, ValueError, TypeError):
            raise _Reject("arithmetic error") from None
    if isinstance(node, ast.Call):
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr == "count" and isinstance(f.value, ast.Constant)
                and isinstance(f.value.value, str) and len(node.args) == 1 and not node.keywords
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            s, sub = f.value.value, node.args[0].value
            if len(s) > MAX_STR_CHARS or len(sub) > MAX_STR_CHARS:
                raise _Reject("string too long")
            return s.count(sub)
        raise _Reject("only '<string literal>'.count('<string literal>') calls are allowed")
    raise _Reject(f"{type(node).__name__} is not allowed")


def format_number(v) -> str:
    if isinstance(v, float):
        r = round(v, 6)
        if r.is_integer() and abs(r) < 1e15:
            return str(int(r))
        return repr(r)
    return str(v)


def calculator(expr: str) -> str | None:
    """Safely evaluate a tool call. Returns the result as text, or None if the expression is refused.

    Allowed: int/float literals, + - * / // % ** (bounded), unary +/-, parentheses, and
    'string literal'.count('string literal'). Everything else (names, attributes, subscripts,
    imports, other calls...) is refused without evaluating anything.
    """
    if not isinstance(expr, str):
        return None
    expr = expr.strip()
    if not expr or len(expr) > MAX_EXPR_CHARS:
        return None
    if "'" not in expr and '"' not in expr:
        expr = expr.replace(",", "")  # "1,200*3" from GSM8K-style text
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        return None
    try:
        out = format_number(_eval(tree))
    except (_Reject, RecursionError):
        return None
    return out if len(out) <= MAX_RESULT_CHARS else None


class _Row:
    __slots__ = ("forced", "in_python", "python_tokens", "done")

    def __init__(self):
        self.forced: deque[int] = deque()
        self.in_python = False
        self.python_tokens: list[int] = []
        self.done = False


MAX_TOOL_TOKENS = 256
SYNC_EVERY = 16  # on CUDA the sampled tokens are read back once per this many steps


class Engine:
    """Sampling with a KV cache and the calculator tool (module docstring).

    Decoding runs nanochat.decode's static cache and fixed-shape step: replayed as a CUDA graph on
    CUDA when `cuda_graph`, eager elsewhere. Up to `sync_every` steps run between two reads of the
    sampled tokens (default: SYNC_EVERY on CUDA; 1 elsewhere, where a read costs nothing and a longer
    chunk would only add discarded steps). The columns do not depend on `sync_every` or `cuda_graph`
    (tests/test_decode.py). `tokenizer` None (GPT.generate): no stop token and no tool."""

    def __init__(self, model, tokenizer, cuda_graph: bool = True, sync_every: int | None = None):
        if sync_every is not None and (not isinstance(sync_every, int) or sync_every < 1):
            raise ValueError(f"sync_every must be a positive integer, got {sync_every!r}")
        if not all(callable(getattr(model, f, None)) for f in ("decode_step", "make_static_kv_cache")):
            raise ValueError(f"Engine needs a model with decode_step/make_static_kv_cache "
                             f"({type(model).__name__} has none)")
        self.model, self.tokenizer, self.sync_every = model, tokenizer, sync_every
        self._pool = DecoderPool(model, cuda_graph=cuda_graph)
        if tokenizer is None:  # ids no model produces: nothing stops a row or opens a tool call
            self.bos = self.assistant_end = self.python_start = self.python_end = -1
            self.output_start = self.output_end = -1
            return
        sp = tokenizer.encode_special
        self.bos = tokenizer.get_bos_token_id()
        self.assistant_end = sp("<|assistant_end|>")
        self.python_start, self.python_end = sp("<|python_start|>"), sp("<|python_end|>")
        self.output_start, self.output_end = sp("<|output_start|>"), sp("<|output_end|>")

    def _tool_output(self, row: _Row) -> None:
        expr = self.tokenizer.decode(row.python_tokens)
        result = calculator(expr)
        if result is not None:
            row.forced.extend([self.output_start, *self.tokenizer.encode(result), self.output_end])

    def _advance(self, row: _Row, tok: int) -> None:
        """Update a row's tool state after `tok` was appended to it."""
        if tok == self.python_start:
            row.in_python, row.python_tokens = True, []
        elif tok == self.python_end:
            if row.in_python:
                self._tool_output(row)
            row.in_python, row.python_tokens = False, []
        elif row.in_python:
            row.python_tokens.append(tok)
            if len(row.python_tokens) > MAX_TOOL_TOKENS:  # runaway tool call: give up on it
                row.in_python, row.python_tokens = False, []
        if tok in (self.assistant_end, self.bos):
            row.done = True

    def _column(self, rows: list[_Row], sampled: list[int]) -> tuple[list[int], list[int]]:
        """The next column from the sampled ids: a stopped row repeats <|assistant_end|> (mask 0), a
        row with forced tool output takes its next token (mask 0), the others their sample (mask 1);
        every row's tool state advances."""
        column, masks = [], []
        for i, row in enumerate(rows):
            if row.done:
                column.append(self.assistant_end)
                masks.append(0)
                continue
            if row.forced:
                tok, m = row.forced.popleft(), 0
            else:
                tok, m = int(sampled[i]), 1
            column.append(tok)
            masks.append(m)
            self._advance(row, tok)
        return column, masks

    @torch.no_grad()
    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 42):
        """Yield (token_column, mask_column) lists of length num_samples, one per step."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("generate() needs at least one prompt token")
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        limit = self.model.rotary_len
        if len(tokens) >= limit:
            raise ValueError(f"prompt of {len(tokens)} tokens does not fit the model's {limit} positions")
        max_tokens = limit - len(tokens) if max_tokens is None else min(max_tokens, limit - len(tokens))
        if max_tokens <= 0:
            return
        model = self.model
        device = next(model.parameters()).device
        rng = torch.Generator(device=device)
        rng.manual_seed(int(seed))
        prefill = model.make_kv_cache(1, len(tokens))  # one prefill, copied into every row
        logits = model(torch.tensor([tokens], dtype=torch.long, device=device), kv_cache=prefill)[:, -1, :]
        decoder = self._pool.get(num_samples, len(tokens) + max_tokens, prefill.k.dtype, device)
        decoder.load_prefill(prefill)
        del prefill
        decoder.in_use = True
        try:
            yield from self._decode(decoder, len(tokens), logits.expand(num_samples, -1), num_samples,
                                    max_tokens, temperature, top_k, rng, device)
        finally:
            decoder.in_use = False

    def _decode(self, decoder, prompt_len, logits, n, max_tokens, temperature, top_k, rng, device):
        """The columns, read back in chunks.

        While no row has forced tool output pending, up to sync_every steps run back to back on the
        device: each samples, feeds a stopped row <|assistant_end|> as the host would (a done flag kept
        on the device), and steps; then the chunk's tokens come back in one read and the host runs the
        exact per-token rules (_column) over them. A row whose <|python_end|> makes the calculator
        answer needs its forced output fed from the next column on, which the device could not know:
        the steps after that column are discarded (the cache position rewound, the generator restored
        to its state before the first discarded draw, the column fed again) and decoding goes one step
        at a time until every forced token is in. The other rows then draw the same tokens again, so
        the columns do not depend on the chunk length; the price is at most sync_every - 1 wasted
        steps per tool call and after the last row stops."""
        every = self.sync_every or (SYNC_EVERY if device.type == "cuda" else 1)
        rows = [_Row() for _ in range(n)]
        stochastic = temperature > 0.0
        emitted = 0  # columns yielded; column c is fed at position prompt_len + c

        def host_done() -> torch.Tensor:
            return torch.tensor([r.done for r in rows], dtype=torch.bool, device=device)

        done = host_done()
        while True:
            if any(r.forced for r in rows):  # tool output goes in: one step, fed from the host
                column, masks = self._column(rows, sample_next(logits, rng, temperature, top_k).tolist())
                yield column, masks
                emitted += 1
                if all(r.done for r in rows) or emitted == max_tokens:
                    return
                done = host_done()
                logits = decoder.step(torch.tensor(column, dtype=torch.long, device=device))
                continue
            states, drawn = [], []
            for _ in range(min(every, max_tokens - emitted)):
                if stochastic:
                    states.append(rng.get_state())  # host-side (seed, offset) on CUDA: no sync
                tok = sample_next(logits, rng, temperature, top_k)
                drawn.append(tok)
                if emitted + len(drawn) == max_tokens:
                    break  # the last column is never fed
                fed = torch.where(done, self.assistant_end, tok)
                done = done | (fed == self.assistant_end) | (fed == self.bos)
                logits = decoder.step(fed)
            chunk = torch.stack(drawn, dim=1).tolist()  # the chunk's one host sync
            for j in range(len(drawn)):
                column, masks = self._column(rows, [chunk[i][j] for i in range(n)])
                yield column, masks
                emitted += 1
                if all(r.done for r in rows) or emitted == max_tokens:
                    return
                # steps j+1.. fed the wrong tokens: redo from column j (no later step: it was fed right)
                if j + 1 < len(drawn) and any(r.forced for r in rows):
                    decoder.rewind(prompt_len + emitted - 1)
                    if stochastic:
                        rng.set_state(states[j + 1])
                    done = host_done()
                    logits = decoder.step(torch.tensor(column, dtype=torch.long, device=device))
                    break

    def generate_batch(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                       temperature: float = 1.0, top_k: int | None = None, seed: int = 42, keep_stop: bool = False):
        """-> (results, masks): per sample, prompt + generated ids (the stop token excluded, unless
        keep_stop) and the matching mask (0 for prompt and forced tool-output tokens, 1 for sampled)."""
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        done = [False] * num_samples
        for column, mcol in self.generate(tokens, num_samples, max_tokens, temperature, top_k, seed):
            for i, (tok, m) in enumerate(zip(column, mcol)):
                if done[i]:
                    continue
                if tok in (self.assistant_end, self.bos):
                    done[i] = True
                    if not keep_stop:
                        continue
                results[i].append(tok)
                masks[i].append(m)
        return results, masks


def tokens_to_parts(tokenizer, ids: list[int]) -> list[dict] | str:
    """Generated assistant ids -> assistant content (plain str, or parts when tool calls occur)."""
    sp = tokenizer.encode_special
    marks = {sp("<|python_start|>"): ("python", sp("<|python_end|>")),
             sp("<|output_start|>"): ("python_output", sp("<|output_end|>"))}
    stop = {sp("<|assistant_end|>"), tokenizer.get_bos_token_id()}
    parts: list[dict] = []
    cur: list[int] = []
    kind, closing = "text", None
    for t in ids:
        if t in stop:
            break
        if kind == "text" and t in marks:
            if cur:
                parts.append({"type": "text", "text": tokenizer.decode(cur)})
            kind, closing = marks[t]
            cur = []
        elif kind != "text" and t == closing:
            parts.append({"type": kind, "text": tokenizer.decode(cur)})
            kind, closing, cur = "text", None, []
        else:
            cur.append(t)
    if cur:
        parts.append({"type": kind, "text": tokenizer.decode(cur)})
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts
