"""Inference: batched sampling with a KV cache and the calculator tool.

    engine = Engine(model, tokenizer)
    for token_column, mask_column in engine.generate(prompt_ids, num_samples=4, max_tokens=256):
        ...  # one token per sample per step; mask 1 = sampled by the model, 0 = forced (tool output)
    results, masks = engine.generate_batch(prompt_ids, num_samples=4, max_tokens=256)

The prompt is prefilled ONCE with a batch-1 KV cache which is then expanded to `num_samples` rows.
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


# ----------------------------------------------------------------------------- sampling

def sample_next(logits: torch.Tensor, rng: torch.Generator | None, temperature: float = 1.0,
                top_k: int | None = None) -> torch.Tensor:
    """logits [B, V] -> ids [B]. temperature 0 = greedy; top_k restricts to the k most likely."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if top_k is not None and 0 < top_k < logits.size(-1):
        vals, idx = torch.topk(logits, top_k, dim=-1)
        probs = torch.softmax(vals / temperature, dim=-1)
        choice = torch.multinomial(probs, 1, generator=rng)
        return idx.gather(-1, choice).squeeze(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=rng).squeeze(-1)


class _Row:
    __slots__ = ("forced", "in_python", "python_tokens", "done")

    def __init__(self):
        self.forced: deque[int] = deque()
        self.in_python = False
        self.python_tokens: list[int] = []
        self.done = False


MAX_TOOL_TOKENS = 256


class Engine:
    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        sp = tokenizer.encode_special
        self.bos = tokenizer.get_bos_token_id()
        self.assistant_end = sp("<|assistant_end|>")
        self.python_start, self.python_end = sp("<|python_start|>"), sp("<|python_end|>")
        self.output_start, self.output_end = sp("<|output_start|>"), sp("<|output_end|>")

    def _device(self):
        try:
            return next(self.model.parameters()).device
        except (StopIteration, AttributeError):
            return torch.device("cpu")

    def _max_positions(self) -> int | None:
        m = self.model
        for attr in ("rotary_len",):
            if isinstance(getattr(m, attr, None), int):
                return getattr(m, attr)
        cfg = getattr(m, "config", None)
        if cfg is not None and isinstance(getattr(cfg, "sequence_len", None), int):
            return 10 * cfg.sequence_len
        return None

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

    @torch.no_grad()
    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 42):
        """Yield (token_column, mask_column) lists of length num_samples, one per step."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("generate() needs at least one prompt token")
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        limit = self._max_positions()
        if limit is not None:
            if len(tokens) >= limit:
                raise ValueError(f"prompt of {len(tokens)} tokens does not fit the model's {limit} positions")
            room = limit - len(tokens)
            max_tokens = room if max_tokens is None else min(max_tokens, room)
        elif max_tokens is None:
            raise ValueError("max_tokens is required for this model")
        if max_tokens <= 0:
            return
        device = self._device()
        rng = torch.Generator(device=device)
        rng.manual_seed(int(seed))
        model = self.model
        use_cache = hasattr(model, "make_kv_cache")
        prompt = torch.tensor([tokens], dtype=torch.long, device=device)
        if use_cache:
            cache = model.make_kv_cache(1, len(tokens) + max_tokens)
            logits = model(prompt, kv_cache=cache)[:, -1, :]
            if num_samples > 1:
                expanded = cache.expand(num_samples)
                cache = expanded if expanded is not None else cache
        else:  # no cache support: recompute the whole sequence every step (slow; stand-ins and tests)
            cache = None
            seqs = prompt.expand(num_samples, -1).clone()
            logits = model(prompt)[:, -1, :]
        logits = logits.expand(num_samples, -1)
        rows = [_Row() for _ in range(num_samples)]
        for step in range(max_tokens):
            sampled = sample_next(logits, rng, temperature, top_k).tolist()
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
            yield column, masks
            if all(r.done for r in rows) or step + 1 == max_tokens:
                break
            ids = torch.tensor(column, dtype=torch.long, device=device).unsqueeze(1)
            if use_cache:
                logits = model(ids, kv_cache=cache)[:, -1, :]
            else:
                seqs = torch.cat([seqs, ids], dim=1)
                logits = model(seqs)[:, -1, :]

    def generate_batch(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                       temperature: float = 1.0, top_k: int | None = None, seed: int = 42):
        """-> (results, masks): per sample, prompt + generated ids (the stop token excluded) and the
        matching mask (0 for prompt and forced tool-output tokens, 1 for sampled tokens)."""
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        done = [False] * num_samples
        for column, mcol in self.generate(tokens, num_samples, max_tokens, temperature, top_k, seed):
            for i, (tok, m) in enumerate(zip(column, mcol)):
                if done[i]:
                    continue
                if tok in (self.assistant_end, self.bos):
                    done[i] = True
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
