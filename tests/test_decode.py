"""nanochat.decode and Engine's decoding: the same columns as a plain loop over the dynamic KVCache.

CPU: the static-cache step (eager) against `reference` (one forward and one host read per token, the
engine's own column rules), for sliding-window layers, GQA, batch 1 and 3, sampling, stops, a
calculator tool call (which makes the chunked loop discard and redo steps), cache overflow, reuse of
a decoder for a new prompt, and the benchmark's smoke run.
GPU (skipped without CUDA): the CUDA graph path against the eager step and the reference. The GPU
models have as many kv heads as query heads, as GPTConfig.from_depth builds them.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from bench.bench_decode import SyntheticTokenizer
from nanochat import decode as D
from nanochat.engine import Engine, _Row
from nanochat.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")

VOCAB = 300
FIRST_SPECIAL = VOCAB - 9  # specials inside the vocab: the model can produce them
PROMPT = [(5 * i + 11) % 256 for i in range(20)]


def tiny_model(pattern="SL", window=4, n_kv_head=2, seed=0, device="cpu", model_cls=GPT) -> GPT:
    """Random (not zero-initialised) weights, so attention and the windows matter."""
    torch.manual_seed(seed)
    cfg = GPTConfig(sequence_len=64, vocab_size=VOCAB, n_layer=3, n_head=4, n_kv_head=n_kv_head, n_embd=64,
                    window_pattern=pattern, short_window=window)
    model = model_cls(cfg).to(device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    return SyntheticTokenizer(first_special=FIRST_SPECIAL)


def run(model, tok, num_samples=1, max_tokens=40, temperature=0.0, top_k=None, seed=3, **kw):
    engine = Engine(model, tok, **kw)
    return list(engine.generate(PROMPT, num_samples, max_tokens, temperature, top_k, seed))


@torch.no_grad()
def reference(model, tok, num_samples=1, max_tokens=40, temperature=0.0, top_k=None, seed=3, prompt=PROMPT):
    """The plain loop Engine's chunks must agree with: a dynamic KVCache holding the batch-1 prefill
    in every row, one forward, torch.multinomial and one host read per token, the engine's column rules."""
    device = model.wte.weight.device
    rng = torch.Generator(device=device).manual_seed(seed)
    cache = model.make_kv_cache(1, len(prompt) + max_tokens)
    logits = model(torch.tensor([prompt], device=device), kv_cache=cache)[:, -1].expand(num_samples, -1)
    cache.batch_size, cache.k, cache.v = num_samples, *(c.expand(-1, num_samples, -1, -1, -1).clone()
                                                         for c in (cache.k, cache.v))
    engine, rows, cols = Engine(model, tok), [_Row() for _ in range(num_samples)], []
    for _ in range(max_tokens):
        cols.append(engine._column(rows, multinomial_sample(logits, rng, temperature, top_k).tolist()))
        if all(r.done for r in rows) or len(cols) == max_tokens:
            return cols
        logits = model(torch.tensor(cols[-1][0], device=device)[:, None], kv_cache=cache)[:, -1]


# ----------------------------------------------------------------------------- the step itself


@pytest.mark.parametrize("pattern,n_kv_head", [("SL", 2), ("L", 4)])
def test_decode_step_matches_the_kv_cache_forward(pattern, n_kv_head):
    """Teacher-forced, batch 3: every step's logits equal the dynamic cache's to float rounding, also
    for a window (4) far shorter than the 30 decoded positions; stale keys past the position (here
    random values from a 'previous prompt') never leak in."""
    model = tiny_model(pattern, n_kv_head=n_kv_head)
    idx = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        prefill = model.make_kv_cache(1, 10)
        model(idx[:1, :10], kv_cache=prefill)
        dynamic = model.make_kv_cache(3, 40)
        model(idx[:1, :10].expand(3, -1), kv_cache=dynamic)
        static = model.make_static_kv_cache(3, 64, torch.float32)
        static.k.normal_(0, 5.0)
        static.v.normal_(0, 5.0)
        static.load_prefill(prefill)
        assert static.pos.tolist() == [10]
        for t in range(10, 40):
            col = idx[:, t:t + 1]
            want = model(col, kv_cache=dynamic)[:, -1]
            got = model.decode_step(col, static)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert torch.equal(got.argmax(-1), want.argmax(-1))
        assert static.pos.tolist() == [40]


def multinomial_sample(logits, rng, temperature, top_k):
    """What D.sample_next must draw: torch.multinomial over the (top-k) softmax; argmax at temperature 0."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    vals, idx = torch.topk(logits.float(), top_k, dim=-1) if top_k else (logits.float(), None)
    choice = torch.multinomial(torch.softmax(vals / temperature, dim=-1), 1, generator=rng).squeeze(-1)
    return choice if idx is None else idx.gather(-1, choice[:, None]).squeeze(-1)


def test_sample_next_draws_what_multinomial_draws():
    """Same generator state -> same tokens as torch.multinomial's path, draw after draw."""
    logits = torch.randn(5, 500, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_k in ((0.0, None), (1.0, None), (0.7, None), (1.0, 40), (0.5, 1)):
        a, b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
        for _ in range(20):
            want = multinomial_sample(logits, a, temperature, top_k)
            got = D.sample_next(logits, b, temperature, top_k)
            assert torch.equal(got, want), (temperature, top_k)
    draws = {tuple(D.sample_next(logits, torch.Generator().manual_seed(s), 1.0).tolist()) for s in range(5)}
    assert len(draws) > 1  # it does sample


# ----------------------------------------------------------------------------- Engine == the plain loop


@pytest.mark.parametrize("num_samples,temperature,top_k", [(1, 0.0, None), (3, 0.0, None), (1, 1.0, None),
                                                           (3, 1.0, None), (3, 0.8, 20)])
@pytest.mark.parametrize("sync_every", [1, 7, 16])
def test_engine_gives_the_reference_columns(tok, num_samples, temperature, top_k, sync_every):
    model = tiny_model("SL", window=4)
    want = reference(model, tok, num_samples, 40, temperature, top_k)
    got = run(model, tok, num_samples, 40, temperature, top_k, sync_every=sync_every)
    assert got == want and len(got) >= 5
    if num_samples > 1 and temperature > 0:
        assert len({tuple(c[i] for c, _ in got) for i in range(num_samples)}) > 1  # independent rows


class ScriptedGPT(GPT):
    """A GPT whose logits are pushed (+50, past the softcap's 15) to a scripted token per (row,
    column): in forward() with a KVCache and in decode_step alike, by tensor ops only (so a CUDA
    graph captures it). script[row][c] = the token for column c, or None = the model's own choice
    among the ordinary tokens (special tokens pushed down by 50: free rows never stop or call the tool)."""

    def set_script(self, prompt_len: int, script: list[list[int | None]]):
        table = torch.full((len(script), self.rotary_len + 1), -1, dtype=torch.long)
        for r, toks in enumerate(script):
            for c, t in enumerate(toks):
                if t is not None:
                    table[r, prompt_len + c - 1] = t  # logits out of position p pick column p - prompt_len + 1
        self.register_buffer("script_table", table.to(self.wte.weight.device), persistent=False)

    def _bias(self, p: torch.Tensor, rows: int, vocab: int) -> torch.Tensor:
        want = self.script_table[:rows].index_select(1, p).squeeze(1)                       # [rows]
        scripted = (want >= 0).float()[:, None]
        bias = torch.zeros(rows, vocab, device=p.device)
        bias[:, FIRST_SPECIAL:] = -50.0
        bias = bias * (1.0 - scripted)
        return bias.scatter_(1, want.clamp(min=0)[:, None], 50.0 * scripted)

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        last = (kv_cache.pos if kv_cache is not None else 0) + idx.size(1) - 1
        logits = super().forward(idx, targets, kv_cache, loss_reduction)
        if targets is None:
            p = torch.tensor([last], device=idx.device)
            logits[:, -1] += self._bias(p, idx.size(0), logits.size(-1))
        return logits

    def decode_step(self, idx, cache):
        p = cache.pos.clone()
        logits = super().decode_step(idx, cache)
        return logits + self._bias(p, idx.size(0), logits.size(-1))


def tool_script(tok):
    sp = tok.encode_special
    end = sp("<|assistant_end|>")
    return [
        # row 0: a calculator call at columns 1-5 (its output is forced at 6-9), then " ok" and the end
        [None, sp("<|python_start|>"), *tok.encode("6*7"), sp("<|python_end|>"), None, None, None, None,
         *tok.encode(" ok"), end],
        [None, None, None, end],  # row 1 stops at column 3, early in the first chunk
        [],                       # row 2 samples freely throughout
    ]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_tool_call_and_stops_match_the_reference(tok, device, monkeypatch):
    """Row 0's <|python_end|> at column 5 arrives inside a 16-token chunk: the chunk's later steps
    fed the wrong token, so they are discarded and redone, and the freely sampled row 2 must draw
    exactly what the reference draws. (On CUDA this goes through the captured graph.)"""
    sp = tok.encode_special
    model = tiny_model("SL", window=4, n_kv_head=2 if device == "cpu" else 4, device=device, model_cls=ScriptedGPT)
    model.set_script(len(PROMPT), tool_script(tok))
    rewinds = []
    real_rewind = D.StaticDecoder.rewind
    monkeypatch.setattr(D.StaticDecoder, "rewind", lambda self, p: (rewinds.append(p), real_rewind(self, p))[1])
    want = reference(model, tok, 3, 30, temperature=1.0, seed=11)
    got = run(model, tok, 3, 30, temperature=1.0, seed=11, sync_every=16)
    assert got == want
    assert rewinds == [len(PROMPT) + 5]  # column 5 fed again, after the discarded steps
    row0 = [c[0] for c, _ in got]
    mask0 = [m[0] for _, m in got]
    forced = [sp("<|output_start|>"), *tok.encode("42"), sp("<|output_end|>")]
    assert row0[5:10] == [sp("<|python_end|>"), *forced] and mask0[5:10] == [1, 0, 0, 0, 0]
    assert tok.decode(row0[10:13]) == " ok" and row0[13] == sp("<|assistant_end|>")
    row1 = [(c[1], m[1]) for c, m in got]
    assert row1[3] == (sp("<|assistant_end|>"), 1) and set(row1[4:]) == {(sp("<|assistant_end|>"), 0)}
    assert len(got) == 30 and all(m[2] == 1 for _, m in got)  # row 2 sampled freely to the end


def test_engine_refuses_bad_settings(tok):
    with pytest.raises(ValueError, match="sync_every"):
        Engine(tiny_model(), tok, sync_every=0)

    class NoStep(torch.nn.Module):  # no static decode step: nothing to decode with
        def forward(self, idx, kv_cache=None):
            return torch.zeros(idx.size(0), idx.size(1), VOCAB)
    with pytest.raises(ValueError, match="decode_step"):
        Engine(NoStep(), tok)


# ----------------------------------------------------------------------------- decoder bookkeeping


def test_static_cache_overflow_is_an_error():
    model = tiny_model()
    with torch.no_grad():
        prefill = model.make_kv_cache(1, 6)
        model(torch.tensor([PROMPT[:6]]), kv_cache=prefill)
        dec = D.StaticDecoder(model, 1, max_len=8, dtype=prefill.k.dtype)
        dec.load_prefill(prefill)
        dec.step(torch.tensor([[1]]))
        dec.step(torch.tensor([[2]]))                            # positions 6 and 7: the last two
        with pytest.raises(ValueError, match="overflow"):
            dec.step(torch.tensor([[3]]))
        small = D.StaticDecoder(model, 1, max_len=4, dtype=prefill.k.dtype)
        with pytest.raises(ValueError, match="overflow"):
            small.load_prefill(prefill)                          # 6 prompt positions > 4
        with pytest.raises(ValueError, match="rotary"):
            model.make_static_kv_cache(1, model.rotary_len + 1, torch.float32)


def test_a_new_prompt_reuses_the_decoder_and_sees_none_of_the_old_one(tok):
    model = tiny_model()
    engine = Engine(model, tok)
    first = list(engine.generate(PROMPT, 2, 30, 1.0, None, 5))
    other = [(3 * i + 1) % 256 for i in range(24)]
    second = list(engine.generate(other, 2, 30, 1.0, None, 5))
    assert len(engine._pool.decoders) == 1                         # same bucket: the same cache
    fresh = list(Engine(model, tok).generate(other, 2, 30, 1.0, None, 5))
    assert second == fresh and second != first
    gen = engine.generate(PROMPT, 2, 30, 1.0, None, 5)
    next(gen)
    (dec,) = engine._pool.decoders.values()
    assert dec.in_use                                              # a live generator holds it...
    assert list(engine.generate(PROMPT, 2, 30, 1.0, None, 5)) == first  # ...so a second one gets its own
    assert len(engine._pool.decoders) == 2
    gen.close()
    assert not dec.in_use


def test_bucket_length():
    assert D.bucket_length(1, None) == D.bucket_length(256, None) == 256
    assert D.bucket_length(257, None) == 512 and D.bucket_length(700, 640) == 640


# ----------------------------------------------------------------------------- the benchmark


def test_bench_decode_cpu_smoke(tmp_path, capsys):
    from bench import bench_decode
    out = tmp_path / "decode.jsonl"
    bench_decode.main(["--depth", "2", "--vocab", "512", "--new-tokens", "8", "--prompt-len", "16",
                       "--decode-prompt-len", "8", "--batches", "1", "2", "--repeats", "1", "--out", str(out),
                       "--device-type", "cpu"])   # the CPU path, on a GPU box too
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["path"], r["batch"]) for r in rows] == [("graph", 1), ("graph", 2), ("eager", 1), ("eager", 2)]
    for r in rows:
        assert r["tokens"] == r["new_tokens"] == 8 and r["device"] == "cpu" and r["cuda_graph"] is False
        assert r["ms_per_token"] > 0 and r["tokens_per_s"] > 0 and r["prefill_ms"] > 0
        assert r["prefill_prompt_len"] == 16 and r["depth"] == 2 and r["same_tokens"] is True
    table = capsys.readouterr().out
    assert "| path | batch | ms/token | tokens/s |" in table and "| eager | 2 |" in table
    with pytest.raises(bench_decode.UserError, match="--depth"):
        bench_decode.parse_args(["--depth", "0"])


# ----------------------------------------------------------------------------- GPU: the CUDA graph


def _greedy(model, tok, num_samples, cuda_graph=True, prompt=PROMPT, max_tokens=40):
    engine = Engine(model, tok, cuda_graph=cuda_graph)
    cols = list(engine.generate(prompt, num_samples, max_tokens, temperature=0.0))
    return _by_row(cols, num_samples), engine


def _by_row(cols, num_samples):
    return [[c[i] for c, _ in cols] for i in range(num_samples)]


@needs_cuda
@pytest.mark.parametrize("num_samples", [1, 3])
def test_graph_equals_eager_equals_reference_fp32(tok, num_samples):
    """Without autocast the graph, the eager step and the reference agree token for token (their
    logits differ by ~1e-6)."""
    model = tiny_model("SL", window=4, n_kv_head=4, device="cuda")
    graph, engine = _greedy(model, tok, num_samples)
    assert any(d.graph is not None for d in engine._pool.decoders.values())
    eager, _ = _greedy(model, tok, num_samples, cuda_graph=False)
    dynamic = _by_row(reference(model, tok, num_samples, 40), num_samples)
    assert graph == eager == dynamic


@needs_cuda
@pytest.mark.parametrize("num_samples", [1, 3])
def test_graph_path_under_bf16_autocast(tok, num_samples):
    """bf16: the graph replays exactly the eager static step (same kernels), token for token. The
    reference's dynamic cache runs other attention kernels (flash over a growing slice, not the masked whole
    cache), so its logits differ by bf16 rounding: its tokens must agree wherever its own top two
    logits are not a near-tie, and up to the first place where they are."""
    model = tiny_model("SL", window=4, n_kv_head=4, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        graph, _ = _greedy(model, tok, num_samples)
        eager, _ = _greedy(model, tok, num_samples, cuda_graph=False)
        dynamic = _by_row(reference(model, tok, num_samples, 40), num_samples)
        assert graph == eager
        for g, d in zip(graph, dynamic):
            if g == d:
                continue
            first = next(i for i, (a, b) in enumerate(zip(g, d)) if a != b)
            # the logits at the divergence, the shared prefix fed through a KV cache (the inference
            # kernels; the no-cache path would compile FlexAttention for the window layer)
            with torch.no_grad():
                seq = torch.tensor([PROMPT + d[:first]], device="cuda")
                logits = model(seq, kv_cache=model.make_kv_cache(1, seq.size(1)))[0, -1].float()
            gap = (logits[d[first]] - logits[g[first]]).abs().item()
            assert gap < 0.1, f"tokens differ at {first} with a logit gap of {gap}"


@needs_cuda
def test_graph_is_reused_for_a_new_prompt(tok):
    model = tiny_model("SL", window=4, n_kv_head=4, device="cuda")
    a1, engine = _greedy(model, tok, 2)
    other = [(3 * i + 1) % 256 for i in range(24)]
    cols = list(engine.generate(other, 2, 40, temperature=0.0))
    b = [[c[i] for c, _ in cols] for i in range(2)]
    a2 = [[c[i] for c, _ in list(engine.generate(PROMPT, 2, 40, temperature=0.0))] for i in range(2)]
    (dec,) = engine._pool.decoders.values()
    assert dec.captures == 1 and dec.graph is not None           # one capture, replayed for every prompt
    b_eager, _ = _greedy(model, tok, 2, cuda_graph=False, prompt=other)
    assert b == b_eager and a2 == a1
    with torch.no_grad():                                        # parameters moved: the graph is recaptured
        model.lm_head.weight.data = model.lm_head.weight.data.clone()
    list(engine.generate(PROMPT, 2, 8, temperature=0.0))
    assert dec.captures == 2


@needs_cuda
def test_sampling_on_cuda_matches_multinomial_and_never_syncs(tok):
    logits = torch.randn(4, 1000, device="cuda") * 3
    for temperature, top_k in ((1.0, None), (0.8, 50)):
        a = torch.Generator(device="cuda").manual_seed(1)
        b = torch.Generator(device="cuda").manual_seed(1)
        for _ in range(10):
            assert torch.equal(D.sample_next(logits, b, temperature, top_k),
                               multinomial_sample(logits, a, temperature, top_k))
    # a whole generation: chunks of 8 read back about once per chunk, chunks of 1 once per token
    model = tiny_model("L", n_kv_head=4, device="cuda")
    counts = {}
    for every in (8, 1):
        engine = Engine(model, tok, sync_every=every)
        list(engine.generate(PROMPT, 2, 64, temperature=1.0, seed=0))  # warm: graph captured
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                list(engine.generate(PROMPT, 2, 64, temperature=1.0, seed=0))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts[every] = sum("synchroniz" in str(w.message) for w in seen)
    assert counts[1] >= 63, counts                             # the counter works: one read per token
    assert counts[8] <= 64 // 8 + 8, counts                    # one per chunk, plus the prefill's few
