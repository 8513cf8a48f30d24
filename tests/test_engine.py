"""nanochat.engine: the calculator, KV-cache sampling, shared prefill, seeding and the tool round trip."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from nanochat.engine import Engine, calculator, tokens_to_parts
from nanochat.gpt import GPT, GPTConfig

FIX = Path(__file__).resolve().parent / "fixtures" / "tasks"
_spec = importlib.util.spec_from_file_location("tiny_chat", FIX / "tiny_chat.py")
tiny_chat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_chat)


# ----------------------------------------------------------------------------- calculator

@pytest.mark.parametrize("expr,want", [
    ("48/2", "24"), ("16-3-4", "9"), ("80000*1.5", "120000"), ("2/3", "0.666667"), ("(1+2)*3", "9"),
    ("7//2", "3"), ("7%3", "1"), ("2**10", "1024"), ("-5+2", "-3"), ("1,200*3", "3600"), (" 10 / 4 ", "2.5"),
    ("'strawberry'.count('r')", "3"), ('"banana".count("an")', "2"), ("0.1+0.2", "0.3"),
])
def test_calculator_allows_arithmetic_and_count(expr, want):
    assert calculator(expr) == want


@pytest.mark.parametrize("expr", [
    "__import__('os').system('echo hi')", "open('/etc/passwd').read()", "'abc'.upper()", "'a'.count",
    "x + 1", "().__class__.__bases__[0].__subclasses__()", "'a' * 10", "[1, 2, 3]", "{1: 2}",
    "lambda: 1", "9**9**9", "10**100000", "2**5000", "(10**60)*(10**60)", "2.5**300", "1/0", "'abc'.count(x)",
    "'abc'.count('a', 1)", "print(1)", "len('abc')", "1 if True else 2", "a.count('b')", "'x'.count('x').real",
    "", "1+" * 200 + "1", "(" * 200 + "1" + ")" * 200, "-" * 250 + "1" * 40, "True + 1", "1e308*10", "'a'.count('a'*2000)",
])
def test_calculator_refuses_everything_else(expr):
    assert calculator(expr) is None


# ----------------------------------------------------------------------------- model-backed tests

@pytest.fixture(scope="module")
def tok():
    return tiny_chat.train_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_chat.tiny_model(tok.get_vocab_size(), sequence_len=64, seed=1)


def _prompt(tok, text="how many letters in strawberry"):
    return tok.render_for_completion({"messages": [{"role": "user", "content": text}]})


def _stops(tok):
    return {tok.encode_special("<|assistant_end|>"), tok.get_bos_token_id()}


def test_kv_cache_equals_full_recompute_greedy(model, tok):
    prompt = _prompt(tok)
    got = []
    for col, mask in Engine(model, tok).generate(prompt, max_tokens=40, temperature=0.0):
        got.append(col[0])
        assert mask == [1]
        if col[0] in _stops(tok):
            break
    # reference: no cache, the whole sequence through the model at every step
    ids = list(prompt)
    want = []
    with torch.no_grad():
        for _ in range(40):
            nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
            want.append(nxt)
            ids.append(nxt)
            if nxt in _stops(tok):
                break
    assert got == want and len(got) >= 5


class Recorder(torch.nn.Module):
    """Wraps a model and records the input shape of every forward and decode step."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.rotary_len = inner.rotary_len
        self.shapes = []

    def make_kv_cache(self, *a, **k):
        return self.inner.make_kv_cache(*a, **k)

    def make_static_kv_cache(self, *a, **k):
        return self.inner.make_static_kv_cache(*a, **k)

    def forward(self, idx, kv_cache=None):
        self.shapes.append(tuple(idx.shape))
        return self.inner(idx, kv_cache=kv_cache)

    def decode_step(self, idx, cache):
        self.shapes.append(tuple(idx.shape))
        return self.inner.decode_step(idx, cache)


def test_samples_share_one_prefill_and_are_seeded(model, tok):
    rec = Recorder(model)
    prompt = _prompt(tok)
    eng = Engine(rec, tok)
    res1, masks1 = eng.generate_batch(prompt, num_samples=4, max_tokens=12, temperature=1.0, seed=123)
    assert rec.shapes[0] == (1, len(prompt))                 # one batch-1 prefill
    assert all(s == (4, 1) for s in rec.shapes[1:])          # then one token per sample per step
    res2, _ = eng.generate_batch(prompt, num_samples=4, max_tokens=12, temperature=1.0, seed=123)
    assert res1 == res2                                      # same seed, same samples
    res3, _ = eng.generate_batch(prompt, num_samples=4, max_tokens=12, temperature=1.0, seed=7)
    assert res3 != res1
    assert len({tuple(r) for r in res1}) > 1                 # the rows are independent samples
    for r, m in zip(res1, masks1):
        assert r[:len(prompt)] == prompt and len(r) == len(m) and m[:len(prompt)] == [0] * len(prompt)
        assert len(r) - len(prompt) <= 12
    greedy, _ = eng.generate_batch(prompt, num_samples=3, max_tokens=10, temperature=0.0)
    assert greedy[0] == greedy[1] == greedy[2]
    topk1, _ = eng.generate_batch(prompt, num_samples=2, max_tokens=10, temperature=1.0, top_k=1, seed=5)
    assert topk1[0] == topk1[1] == greedy[0]


def test_max_tokens_clamped_to_positions(tok):
    short = tiny_chat.tiny_model(tok.get_vocab_size(), sequence_len=4, seed=2)  # 40 positions
    prompt = _prompt(tok, "hi")
    cols = list(Engine(short, tok).generate(prompt, max_tokens=10_000, temperature=1.0, seed=0))
    assert len(cols) <= short.rotary_len - len(prompt)
    with pytest.raises(ValueError):
        next(Engine(short, tok).generate(list(range(40)), max_tokens=5))


class ScriptedModel(GPT):
    """Emits a fixed script of tokens (every row the same; past its end, the last entry again);
    WAIT = keep proposing `fallback` (<|assistant_end|>) until `wake_token` (<|output_end|>) is fed.

    If the engine did not force the tool output, the row would end at that <|assistant_end|>. A
    one-layer GPT underneath keeps the KV caches; its logits are replaced. The script's place is
    replayed from row 0's tokens fed so far (`seen`, by position: a rewound step is overwritten)."""

    WAIT = -1

    def __init__(self, vocab, script, wake_token):
        super().__init__(GPTConfig(sequence_len=64, vocab_size=vocab, n_layer=1, n_head=1, n_kv_head=1, n_embd=8))
        self.script, self.wake, self.fallback = script, wake_token, None
        self.seen: list[int] = []
        self.prompt_len = 0

    def _scripted(self, pos: int, idx: torch.Tensor) -> torch.Tensor:
        self.prompt_len = idx.size(1) if pos == 0 else self.prompt_len
        self.seen[pos:] = idx[0].tolist()
        p, tok = 0, None
        for fed in [self.seen[:self.prompt_len]] + [[t] for t in self.seen[self.prompt_len:]]:  # one per call
            if self.script[p] == self.WAIT and self.wake in fed:
                p += 1
            tok = self.script[p]
            if tok == self.WAIT:
                tok = self.fallback
            else:
                p = min(p + 1, len(self.script) - 1)
        logits = torch.full((idx.size(0), self.config.vocab_size), -10.0)
        logits[:, tok] = 10.0
        return logits

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        pos = kv_cache.pos if kv_cache is not None else 0
        super().forward(idx, kv_cache=kv_cache)
        return self._scripted(pos, idx)[:, None]

    def decode_step(self, idx, cache):
        pos = int(cache.pos)
        super().decode_step(idx, cache)
        return self._scripted(pos, idx)


def test_tool_call_round_trip(tok):
    sp = tok.encode_special
    end = sp("<|assistant_end|>")
    script = [sp("<|python_start|>"), *tok.encode("6*7"), sp("<|python_end|>"), ScriptedModel.WAIT,
              *tok.encode(" so 42"), end]
    m = ScriptedModel(tok.get_vocab_size(), script, sp("<|output_end|>"))
    m.fallback = end
    prompt = _prompt(tok, "what is 6 times 7")
    cols = list(Engine(m, tok).generate(prompt, max_tokens=40, temperature=0.0))
    toks = [c[0] for c, _ in cols]
    masks = [mm[0] for _, mm in cols]
    forced = [sp("<|output_start|>"), *tok.encode("42"), sp("<|output_end|>")]
    i = toks.index(sp("<|python_end|>"))
    assert toks[i + 1:i + 1 + len(forced)] == forced
    assert masks[i + 1:i + 1 + len(forced)] == [0] * len(forced)      # injected, not sampled
    assert all(masks[:i + 1]) and all(masks[i + 1 + len(forced):])
    assert toks[-1] == end and tok.decode(toks[i + 1 + len(forced):-1]) == " so 42"
    assert m.seen[len(prompt):][:len(toks) - 1] == toks[:-1]  # the model was fed every column, forced ones too
    parts = tokens_to_parts(tok, toks)
    assert parts == [{"type": "python", "text": "6*7"}, {"type": "python_output", "text": "42"},
                     {"type": "text", "text": " so 42"}]
    # a refused expression gets no output: the model's own next token follows directly
    script2 = [sp("<|python_start|>"), *tok.encode("open(1)"), sp("<|python_end|>"), end]
    m2 = ScriptedModel(tok.get_vocab_size(), script2, sp("<|output_end|>"))
    toks2 = [c[0] for c, _ in Engine(m2, tok).generate(prompt, max_tokens=40, temperature=0.0)]
    assert sp("<|output_start|>") not in toks2 and toks2[-1] == end


def test_rows_stop_independently(model, tok):
    sp = tok.encode_special
    end = sp("<|assistant_end|>")
    m = ScriptedModel(tok.get_vocab_size(), [*tok.encode("hi"), end] + [end] * 50, -99)
    res, masks = Engine(m, tok).generate_batch(_prompt(tok), num_samples=2, max_tokens=30, temperature=0.0)
    assert [r[len(_prompt(tok)):] for r in res] == [tok.encode("hi")] * 2
    kept, kept_masks = Engine(m, tok).generate_batch(_prompt(tok), num_samples=2, max_tokens=30, temperature=0.0,
                                                     keep_stop=True)  # RL trains on the stop too
    assert [r[len(_prompt(tok)):] for r in kept] == [tok.encode("hi") + [end]] * 2 and kept_masks[0][-1] == 1
    assert tokens_to_parts(tok, tok.encode("plain text") + [end, 5, 6]) == "plain text"
