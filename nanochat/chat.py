"""Chat turns against a model, shared by the terminal (scripts/chat_cli.py) and the web server
(nanochat/web.py).

    reply = Reply(engine, prompt_ids, max_tokens=256, temperature=0.6, top_k=50, seed=1)
    for piece in reply:              # Piece(kind="text"|"python"|"python_output", text, segment)
        show(piece)
    reply.content()                  # the assistant message for the history (str, or tool parts)

`Reply` stops at <|assistant_end|>/<|bos|>, decodes incrementally (a multi-byte character split
over two tokens is held back until it is complete) and splits the answer into segments at the
calculator markers, so a front end can show a tool call apart from the prose. `Chat` is the
terminal's stateful conversation (history, oldest exchanges dropped when the context is full).
`check_sampling` is the one range check for temperature/top-k, for both front ends.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

# what the KV-cache engine accepts: the rotary tables cover 10x the training sequence length
_ROTARY_FACTOR_FALLBACK = 10
# tokens kept free for the answer when the terminal chat trims its history to fit
ANSWER_RESERVE = 64


MAX_TEMPERATURE = 2.0
# below 0.01 a positive temperature only reorders near-ties while pushing logits/T toward float overflow
# (inf/nan probabilities): 0, greedy, says what is meant
MIN_TEMPERATURE = 0.01


def describe_value(v) -> str:
    """A refused value for a one-line error (containers by kind: they may be huge or deeply nested)."""
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return repr(v)[:40] if isinstance(v, str) else str(v)[:40]


def check_sampling(temperature, top_k, vocab_size: int | None = None,
                   names: tuple[str, str] = ("temperature", "top_k")) -> tuple[float, int]:
    """The sampling settings the engine can honour -> (temperature, top_k); ValueError naming the valid range.

    The one check for the web chat's request fields and the terminal chat's flags (`names` are how each
    front end spells them). top_k 0 = no limit; `vocab_size`, when known, bounds it."""
    t_name, k_name = names
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not (temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE)):  # NaN fails too
        raise ValueError(f"{t_name} must be 0 (greedy) or a number from {MIN_TEMPERATURE:g} to "
                         f"{MAX_TEMPERATURE:g}, got {describe_value(temperature)}")
    k_range = f"from 0 (no limit) to {vocab_size}" if vocab_size else ">= 0 (0 = no limit)"
    if (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0
            or (vocab_size and top_k > vocab_size)):
        raise ValueError(f"{k_name} must be an integer {k_range}, got {describe_value(top_k)}")
    return float(temperature), top_k


def model_positions(model) -> int | None:
    """Positions the model can attend over at inference (prompt + answer), or None if unknown."""
    n = getattr(model, "rotary_len", None)
    if isinstance(n, int):
        return n
    cfg = getattr(model, "config", None)
    seq = getattr(cfg, "sequence_len", None)
    return _ROTARY_FACTOR_FALLBACK * seq if isinstance(seq, int) else None


def model_device(model):
    import torch
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def inference_context(device):
    """bf16 autocast on CUDA (and that GPU as the current device, for kernels that look it up)."""
    import torch
    if device.type != "cuda":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.cuda.device(device))
    stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
    return stack


def add_model_args(ap) -> None:
    """The flags that pick a checkpoint, the same for every chat front end."""
    # no argparse `choices`: the sources are nanochat.checkpoint_manager's (it refuses others with the
    # list), and importing it here would load torch before a bad flag can be refused
    ap.add_argument("-i", "--source", default="sft",
                    help="which checkpoints: sft (default), mid, base, or another stage's (checkpoint_manager.SOURCES)")
    ap.add_argument("-g", "--model-tag", default=None, help="model tag (default: the only one there)")
    ap.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: newest complete)")
    ap.add_argument("--device-type", default="", help="cuda|cpu|mps (default: autodetect)")


@dataclass
class Piece:
    kind: str      # "text" | "python" (a calculator expression) | "python_output" (its value)
    text: str      # newly decoded characters of this segment (may be "" at a segment's start)
    segment: int   # increments at every marker: a new number means a new text run, tool call or output


class Reply:
    """One answer streamed from an Engine; iterate once for the pieces, then read the results."""

    def __init__(self, engine, prompt: list[int], max_tokens: int, temperature: float = 0.6,
                 top_k: int | None = None, seed: int = 42):
        tok = engine.tokenizer
        sp = tok.encode_special
        self.engine, self.tokenizer, self.prompt = engine, tok, list(prompt)
        self.max_tokens, self.temperature, self.top_k, self.seed = max_tokens, temperature, top_k or None, seed
        self.stop = {sp("<|assistant_end|>"), tok.get_bos_token_id()}
        # marker -> the kind of segment it opens (a closing marker returns to prose)
        self.opens = {sp("<|python_start|>"): "python", sp("<|python_end|>"): "text",
                      sp("<|output_start|>"): "python_output", sp("<|output_end|>"): "text"}
        self.tokens: list[int] = []
        self.finish_reason: str | None = None   # "stop" (the model ended), "length", or set by the caller

    def __iter__(self):
        kind, segment, seg_tokens, shown = "text", 0, [], ""
        with inference_context(model_device(self.engine.model)):
            for column, _ in self.engine.generate(self.prompt, num_samples=1, max_tokens=self.max_tokens,
                                                  temperature=self.temperature, top_k=self.top_k,
                                                  seed=self.seed):
                t = column[0]
                if t in self.stop:
                    self.finish_reason = "stop"
                    break
                self.tokens.append(t)
                if t in self.opens:
                    if seg_tokens:
                        rest = self.tokenizer.decode(seg_tokens)[len(shown):]
                        if rest:
                            yield Piece(kind, rest, segment)
                    kind, segment, seg_tokens, shown = self.opens[t], segment + 1, [], ""
                    yield Piece(kind, "", segment)
                    continue
                seg_tokens.append(t)
                now = self.tokenizer.decode(seg_tokens)
                if now.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                    continue
                yield Piece(kind, now[len(shown):], segment)
                shown = now
        if seg_tokens:
            rest = self.tokenizer.decode(seg_tokens)[len(shown):]
            if rest:
                yield Piece(kind, rest, segment)
        if self.finish_reason is None:
            self.finish_reason = "length"

    def content(self):
        """The answer as an assistant message content: plain text, or parts when tools were used."""
        from nanochat.engine import tokens_to_parts
        return tokens_to_parts(self.tokenizer, self.tokens) or ""


class Chat:
    """The terminal's conversation: keeps the history and streams the model's answers to `out`.

    Tool calls are shown inline as "[python: expr = result]" and kept in the history as tool parts."""

    def __init__(self, model, tokenizer, device, temperature=0.6, top_k=50, max_tokens=512, seed=42, out=None):
        from nanochat.engine import Engine
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.engine = Engine(model, tokenizer)
        self.temperature, self.top_k, self.max_tokens, self.seed = temperature, top_k, max_tokens, seed
        self.out = out or sys.stdout
        self.messages: list[dict] = []
        self.turn = 0
        self.context = model_positions(model)

    def clear(self):
        self.messages = []

    def _render(self, text: str) -> list[int]:
        """Prompt ids for the conversation plus `text`; the oldest exchanges are dropped if too long."""
        def render():
            return self.tokenizer.render_for_completion({"messages": self.messages + [{"role": "user", "content": text}]})
        ids = render()
        while self.context and len(ids) + ANSWER_RESERVE > self.context and len(self.messages) >= 2:
            self.messages = self.messages[2:]
            ids = render()
        if self.context and len(ids) + ANSWER_RESERVE > self.context:  # one huge message: keep its end
            ids = ids[-(self.context - ANSWER_RESERVE):]
        return ids

    def respond(self, text: str) -> str:
        reply = Reply(self.engine, self._render(text), self.max_tokens, self.temperature, self.top_k,
                      self.seed + self.turn)
        shown: list[str] = []
        bracket_open = False  # inside "[python: ... = ...]"; closed lazily when prose follows

        def write(s: str) -> None:
            shown.append(s)
            self.out.write(s)

        segment = 0
        for piece in reply:
            if piece.segment != segment:  # a marker: open, extend or (lazily) close the bracket
                segment = piece.segment
                if piece.kind == "python":
                    write("] [python: " if bracket_open else "[python: ")
                    bracket_open = True
                elif piece.kind == "python_output":
                    write(" = " if bracket_open else "[= ")
                    bracket_open = True
            if piece.text:
                if piece.kind == "text" and bracket_open:
                    write("]")
                    bracket_open = False
                write(piece.text)
                self.out.flush()
        if bracket_open:  # the answer ended inside or right after a tool call
            write("]")
        self.out.write("\n")
        self.out.flush()
        self.turn += 1
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": reply.content()}]
        return "".join(shown)
