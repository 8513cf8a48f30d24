"""Model tests: tiny configs on CPU (fp32), each a fraction of a second."""
import dataclasses
import json
import shutil
import warnings

import pytest
import torch

import nanochat.attention as A
import nanochat.gpt as G
from nanochat.gpt import GPT, GPTConfig
from nanochat.gpt_config import default_short_window
from nanochat.loss import SOFTCAP


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**kw) -> GPTConfig:
    base = dict(sequence_len=64, vocab_size=256, n_layer=2, n_head=4, n_kv_head=4, n_embd=64)
    base.update(kw)
    return GPTConfig(**base)


def make_model(cfg: GPTConfig, seed: int = 0) -> GPT:
    """A model whose output projections are NOT zero (the real init makes every block the identity,
    which would make causality/window tests pass trivially)."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for block in model.blocks:
            torch.nn.init.normal_(block.attn.c_proj.weight, std=0.1)
            torch.nn.init.normal_(block.mlp.c_proj.weight, std=0.05)
        torch.nn.init.normal_(model.lm_head.weight, std=0.1)
    return model


# ----------------------------------------------------------------------------- config


def test_from_depth_rounds_width_up_to_head_dim():
    cfg = GPTConfig.from_depth(20, vocab_size=32768, sequence_len=2048)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head) == (20, 1280, 10, 10)
    cfg = GPTConfig.from_depth(3, vocab_size=256, sequence_len=64)  # 192 -> 256
    assert (cfg.n_embd, cfg.n_head, cfg.head_dim) == (256, 2, 128)
    cfg = GPTConfig.from_depth(2, vocab_size=256, sequence_len=64, aspect_ratio=32, head_dim=16,
                               window_pattern="SL")
    assert (cfg.n_embd, cfg.n_head, cfg.window_pattern) == (64, 4, "SL")


def test_config_json_round_trip():
    cfg = tiny(window_pattern="SSSL", short_window=16, n_kv_head=2)
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert GPTConfig(**d) == cfg
    # short_window=None stays None (resolved lazily), so the round trip is exact
    cfg2 = tiny()
    assert GPTConfig(**dataclasses.asdict(cfg2)) == cfg2 and cfg2.short_window is None


@pytest.mark.parametrize("kw, needle", [
    (dict(n_embd=66, n_head=4), "not divisible by n_head"),
    (dict(n_head=4, n_kv_head=3), "not divisible by n_kv_head"),
    (dict(window_pattern="SXL"), "window_pattern"),
    (dict(window_pattern=""), "window_pattern"),
    (dict(window_pattern="ssl"), "window_pattern"),
    (dict(n_layer=0), "n_layer"),
    (dict(short_window=0), "short_window"),
    (dict(n_embd=24, n_head=8, n_kv_head=8), "even"),
])
def test_bad_config_raises(kw, needle):
    with pytest.raises(ValueError, match=needle):
        tiny(**kw)


def test_default_short_window_rule():
    assert default_short_window(2048) == 1024
    assert default_short_window(1000) == 384   # 500 -> multiple of 128 below
    assert default_short_window(300) == 128
    assert default_short_window(64) == 32      # below 128: plain half
    assert default_short_window(1) == 1


def test_window_pattern_tiling_last_layer_full():
    assert tiny(n_layer=6, window_pattern="SSSL", short_window=8).layer_windows() == [8, 8, 8, None, 8, None]
    assert tiny(n_layer=4, window_pattern="SSSL").layer_windows() == [32, 32, 32, None]
    assert tiny(n_layer=3, window_pattern="S", short_window=5).layer_windows() == [5, 5, None]
    assert tiny(n_layer=1, window_pattern="S").layer_windows() == [None]
    assert tiny(n_layer=3, window_pattern="L").layer_windows() == [None, None, None]
    model = GPT(tiny(n_layer=4, window_pattern="SL", short_window=8))
    assert [b.attn.window for b in model.blocks] == [8, None, 8, None]


# ----------------------------------------------------------------------------- shapes & accounting


def test_forward_shapes_and_losses():
    cfg = tiny()
    model = make_model(cfg)
    idx = torch.randint(0, 256, (3, 17))
    tgt = torch.randint(0, 256, (3, 17))
    tgt[0, :5] = -1
    logits = model(idx)
    assert logits.shape == (3, 17, 256) and logits.dtype == torch.float32
    assert logits.abs().max() <= SOFTCAP
    mean = model(idx, tgt)
    total = model(idx, tgt, loss_reduction="sum")
    per_tok = model(idx, tgt, loss_reduction="none")
    assert mean.dim() == 0 and per_tok.shape == (3, 17)
    assert torch.all(per_tok[0, :5] == 0)
    n_valid = (tgt != -1).sum()
    torch.testing.assert_close(total, per_tok.sum())
    torch.testing.assert_close(mean, total / n_valid)
    ref = torch.nn.functional.cross_entropy(logits.view(-1, 256), tgt.view(-1), ignore_index=-1)
    torch.testing.assert_close(mean, ref)
    with pytest.raises(ValueError, match="loss_reduction"):
        model(idx, tgt, loss_reduction="avg")


def test_residual_stream_runs_in_the_autocast_dtype_parameters_stay_fp32():
    """Under bf16 autocast every block sees (and returns) a bf16 residual stream, and the loss still
    reaches the fp32 parameters as fp32 grads; without autocast the stream is the parameters' fp32."""
    cfg = tiny()
    model = make_model(cfg)
    idx = torch.randint(0, 256, (2, 16))
    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype)))
             for b in model.blocks]
    model(idx, idx).backward()
    assert seen == [(torch.float32, torch.float32)] * cfg.n_layer
    seen.clear()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(idx, idx)
    loss.backward()
    assert seen == [(torch.bfloat16, torch.bfloat16)] * cfg.n_layer
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, name
    assert model.wte.weight.grad.abs().sum() > 0
    for h in hooks:
        h.remove()


def test_gqa_equals_mha_with_repeated_kv_heads():
    """A GQA model equals the MHA model whose k/v projections repeat each kv head for its group."""
    gqa = make_model(tiny(n_head=4, n_kv_head=2), seed=1)
    assert gqa.blocks[0].attn.c_k.weight.shape == (2 * 16, 64)
    assert gqa.blocks[0].attn.c_v.weight.shape == (2 * 16, 64)
    mha = GPT(tiny(n_head=4, n_kv_head=4))
    sd = gqa.state_dict()
    for key, w in list(sd.items()):
        if key.endswith(("attn.c_k.weight", "attn.c_v.weight")):
            sd[key] = w.view(2, 16, 64).repeat_interleave(2, dim=0).reshape(64, 64)
    mha.load_state_dict(sd)
    idx = torch.randint(0, 256, (2, 40))
    torch.testing.assert_close(gqa(idx), mha(idx), atol=1e-5, rtol=1e-5)
    single = make_model(tiny(n_head=4, n_kv_head=1))  # multi-query attention also runs
    assert single(idx).shape == (2, 40, 256)


def test_num_params_and_flops_hand_count():
    cfg = tiny(n_head=4, n_kv_head=2, window_pattern="SL", short_window=16)
    model = GPT(cfg)
    D, hd, V = 64, 16, 256
    per_layer = (D * D          # c_q: 4 heads x 16
                 + D * 2 * hd   # c_k: 2 kv heads x 16
                 + D * 2 * hd   # c_v
                 + D * D        # attn c_proj
                 + D * 4 * D    # c_fc
                 + 4 * D * D)   # mlp c_proj
    assert per_layer == 45056
    matrices = 2 * per_layer            # 90112
    head = V * D                        # 16384
    emb = V * D                         # 16384
    counts = model.num_params()
    assert counts == {"total": matrices + head + emb, "embedding": emb, "lm_head": head,
                      "transformer_matrices": matrices, "scalars": 0, "matmul": matrices + head}
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    # 6 * (90112 + 16384) = 638976; attention: layer 0 (S, window 16) 12*4*16*16 = 12288,
    # layer 1 (L, full 64) 12*4*16*64 = 49152
    assert model.estimate_flops() == 638976 + 12288 + 49152 == 700416
    # a window longer than the context counts as the context
    assert GPT(tiny(window_pattern="SL", short_window=1000)).estimate_flops() == \
        GPT(tiny(window_pattern="L")).estimate_flops()


# ----------------------------------------------------------------------------- masking


@pytest.mark.parametrize("pattern", ["L", "SSSL"])
def test_causal_masking(pattern):
    cfg = tiny(n_layer=4, window_pattern=pattern, short_window=8, n_kv_head=2)
    model = make_model(cfg)
    idx = torch.randint(0, 256, (2, 64))
    base = model(idx)
    for t in (0, 31, 63):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 256
        out = model(changed)
        assert torch.equal(out[:, :t], base[:, :t]), f"position < {t} saw token {t}"
        assert not torch.allclose(out[:, t], base[:, t])


def test_attention_function_honours_window():
    """Direct test of the kernel: output i depends on key/value j iff i - w < j <= i."""
    torch.manual_seed(0)
    B, H, Hkv, T, hd, w = 1, 4, 2, 48, 8, 5
    q = torch.randn(B, H, T, hd)
    k = torch.randn(B, Hkv, T, hd)
    v = torch.randn(B, Hkv, T, hd)
    for impl in (None, "sdpa_mask"):
        base = A.attention(q, k, v, window=w, impl=impl)
        for j in (0, 10, 47):
            k2, v2 = k.clone(), v.clone()
            k2[:, :, j] += 1.0
            v2[:, :, j] += 1.0
            out = A.attention(q, k2, v2, window=w, impl=impl)
            changed = (out - base).abs().amax(dim=(0, 1, 3)) > 1e-6
            expected = torch.tensor([j <= i < j + w for i in range(T)])
            assert torch.equal(changed, expected), (impl, j)
    # full window == plain causal attention
    full = A.attention(q, k, v, window=None)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                           is_causal=True)
    torch.testing.assert_close(full, ref)


def test_flex_block_mask_semantics_match_band_mask():
    """The FlexAttention block mask (the CUDA path) encodes the same band as the explicit mask.
    Runs flex_attention's eager reference implementation on CPU; the compiled kernel itself is only
    exercised on a GPU."""
    if not A.HAS_FLEX:
        pytest.skip("no FlexAttention in this torch build")
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 200, 8), torch.randn(1, 2, 200, 8), torch.randn(1, 2, 200, 8)
    bm = A._sliding_block_mask(200, 37, "cpu")
    assert A._sliding_block_mask(200, 37, "cpu") is bm  # cached
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = A.flex_attention(q, k, v, block_mask=bm, enable_gqa=True)
    ref = A.attention(q, k, v, window=37, impl="sdpa_mask")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_window_backend_without_cuda_is_the_explicit_mask():
    q = k = torch.randn(1, 2, 64, 16, dtype=torch.bfloat16)
    assert A.window_backend(16, q, k) == "sdpa_mask"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuDNN's window kernel needs CUDA")
@pytest.mark.parametrize("T", [384, 300])
def test_cudnn_window_matches_the_band_in_value_and_gradient(T):
    """Where nvidia-cudnn-frontend is installed, window layers run cuDNN's sliding-window kernel; it
    must give exactly our band (window keys ending at the query's own), forward and backward, also
    for a length that is not a multiple of the kernel's tiles."""
    if A.cudnn_window_sdpa() is None:
        pytest.skip("nvidia-cudnn-frontend is not installed")
    torch.manual_seed(0)
    B, H, D, W = 2, 4, 64, 100
    q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_(True)
               for _ in range(3))
    assert A.window_backend(W, q, k) == "cudnn"
    out = A.attention(q, k, v, window=W)
    go = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), go)
    q32, k32, v32 = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    ref = A.attention(q32, k32, v32, window=W, impl="sdpa_mask")
    ref_grads = torch.autograd.grad(ref, (q32, k32, v32), go.float())
    for got, want in zip((out, *grads), (ref, *ref_grads)):
        assert ((got.float() - want).norm() / want.norm()).item() < 0.01


def test_sliding_window_receptive_field_of_a_block():
    """Block 0 of an "SL" model (window 8) only mixes tokens less than 8 positions apart; the final
    (L) block sees everything."""
    cfg = tiny(n_layer=2, window_pattern="SL", short_window=8)
    model = make_model(cfg)
    T = 40
    idx = torch.randint(0, 256, (1, T))
    cos, sin = model.cos[:T], model.sin[:T]

    def block_outputs(ids):
        x = G.norm(model.wte(ids))
        h0 = model.blocks[0](x, cos, sin)
        return h0, model.blocks[1](h0, cos, sin)

    base0, base1 = block_outputs(idx)
    j = 10
    changed = idx.clone()
    changed[0, j] = (changed[0, j] + 7) % 256
    out0, out1 = block_outputs(changed)
    diff0 = (out0 - base0).abs().amax(dim=-1)[0] > 1e-6
    assert torch.equal(diff0, torch.tensor([j <= i < j + 8 for i in range(T)]))
    diff1 = (out1 - base1).abs().amax(dim=-1)[0] > 1e-6
    assert torch.equal(diff1, torch.tensor([i >= j for i in range(T)]))


# ----------------------------------------------------------------------------- chunked loss


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_loss_equals_plain_loss_and_grads(reduction):
    cfg = tiny(n_kv_head=2, window_pattern="SL", short_window=16)
    model = make_model(cfg)
    idx = torch.randint(0, 256, (2, 64))
    tgt = torch.randint(0, 256, (2, 64))
    tgt[0, 3:40] = -1
    tgt[1, 60:] = -1

    def run(chunk):
        model.zero_grad(set_to_none=True)
        model.loss_chunk_rows = chunk
        loss = model(idx, tgt, loss_reduction=reduction)
        (2.5 * loss).backward()  # a non-unit upstream gradient
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_loss, plain_grads = run(10_000)   # N = 128 rows <= chunk -> simple path
    chunk_loss, chunk_grads = run(24)       # 6 chunks, the last one partial
    torch.testing.assert_close(chunk_loss, plain_loss, atol=1e-6, rtol=1e-6)
    for name in plain_grads:
        ref = plain_grads[name]
        err = (chunk_grads[name] - ref).abs().max().item()
        assert err <= 1e-5 * ref.abs().max().item() + 1e-8, (name, err)  # fp32 rounding only


def test_chunked_loss_without_grad_all_reductions():
    model = make_model(tiny())
    idx = torch.randint(0, 256, (2, 64))
    tgt = torch.randint(0, 256, (2, 64))
    tgt[1, :7] = -1
    with torch.no_grad():
        model.loss_chunk_rows = 10_000
        plain = {r: model(idx, tgt, loss_reduction=r) for r in ("mean", "sum", "none")}
        model.loss_chunk_rows = 30
        chunked = {r: model(idx, tgt, loss_reduction=r) for r in ("mean", "sum", "none")}
    for r in plain:
        torch.testing.assert_close(chunked[r], plain[r], atol=1e-6, rtol=1e-6)
    assert chunked["none"].shape == (2, 64)


# ----------------------------------------------------------------------------- KV cache & generation


def test_kv_cache_matches_full_forward():
    cfg = tiny(n_layer=4, window_pattern="SSSL", short_window=6, n_kv_head=2)
    model = make_model(cfg)
    idx = torch.randint(0, 256, (2, 50))
    full = model(idx)
    cache = model.make_kv_cache(batch_size=2, max_len=50)
    parts = [model(idx[:, :20], kv_cache=cache)]            # prefill
    assert cache.pos == 20
    parts.append(model(idx[:, 20:27], kv_cache=cache))       # a multi-token step at an offset
    for t in range(27, 50):                                  # then one token at a time
        parts.append(model(idx[:, t:t + 1], kv_cache=cache))
    assert cache.pos == 50
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="overflow"):
        model(idx[:, :1], kv_cache=cache)


def test_kv_cache_inference_avoids_per_shape_kernels(monkeypatch):
    """With a KV cache every SDPA call runs with cuDNN's back end switched off (it plans per new
    key length: ~40 ms per decoded token) and no call takes the cuDNN window op or FlexAttention,
    even for a prefill whose window cuts keys off; without a cache the defaults stay."""
    cfg = tiny(n_layer=3, window_pattern="LS", short_window=6)  # layers L, S, L
    assert cfg.layer_windows() == [None, 6, None]
    model = make_model(cfg)
    seen = []
    real_sdpa = G.F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return real_sdpa(*args, **kwargs)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a per-shape kernel was chosen for KV-cache inference")

    monkeypatch.setattr(G.F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(A, "window_backend", lambda *a: "flex")  # what a CUDA training call would pick
    monkeypatch.setattr(A, "_flex_compiled", must_not_run)
    idx = torch.randint(0, 256, (1, 20))
    cache = model.make_kv_cache(batch_size=1, max_len=24)
    model(idx, kv_cache=cache)                               # prefill: T 20 > window 6
    for t in range(3):
        model(idx[:, t:t + 1], kv_cache=cache)               # decode steps
    assert len(seen) == 4 * cfg.n_layer and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()           # restored afterwards
    seen.clear()
    with pytest.raises(AssertionError, match="per-shape"):
        model(idx)                                           # training path: the window kernel is used
    assert seen == [True]                                    # layer 0 (L) ran SDPA with the defaults


def test_static_kv_cache_shares_one_prefill():
    """A batch-1 prefill loaded into every row of a static cache: each row continues it on its own."""
    cfg = tiny(n_layer=2, window_pattern="SL", short_window=5, n_kv_head=1)
    model = make_model(cfg)
    prompt = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        cache = model.make_kv_cache(batch_size=1, max_len=12)
        model(prompt, kv_cache=cache)
        wide = model.make_static_kv_cache(3, 16, cache.k.dtype)
        assert wide.load_prefill(cache) == 12 and wide.pos.tolist() == [12] and wide.k.shape[1] == 3
        nxt = torch.tensor([[5], [77], [200]])
        out = model.decode_step(nxt, wide)
        for r in range(3):
            seq = torch.cat([prompt, nxt[r:r + 1]], dim=1)
            torch.testing.assert_close(out[r], model(seq)[0, -1], atol=1e-5, rtol=1e-5)
    assert cache.pos == 12  # the original cache is untouched
    with pytest.raises(ValueError):
        wide.load_prefill(model.make_kv_cache(batch_size=2, max_len=16))


def test_generate_greedy_matches_naive_loop_and_sampling_is_seeded():
    cfg = tiny(n_layer=2, window_pattern="SL", short_window=4)
    model = make_model(cfg)
    prompt = [1, 2, 3, 4, 5]
    greedy = list(model.generate(prompt, max_tokens=8, temperature=0.0))
    ids = list(prompt)
    for _ in range(8):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert greedy == ids[len(prompt):]
    assert list(model.generate(prompt, 8, temperature=1.0, top_k=1)) == greedy
    a = list(model.generate(prompt, 12, temperature=1.0, top_k=50, seed=7))
    b = list(model.generate(prompt, 12, temperature=1.0, top_k=50, seed=7))
    assert a == b and len(a) == 12 and all(0 <= t < 256 for t in a)


def test_generation_past_sequence_len():
    model = make_model(tiny(sequence_len=16))
    out = list(model.generate([3, 1, 4], max_tokens=40, temperature=0.0))  # 43 positions > 16
    assert len(out) == 40
    with pytest.raises(ValueError, match="rotary"):
        model.make_kv_cache(1, 10 * 16 + 1)


# ----------------------------------------------------------------------------- build & optimizers


def test_meta_build_then_load_state_dict():
    cfg = tiny(n_kv_head=2, window_pattern="SL", short_window=8)
    src = make_model(cfg)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.lm_head.weight.is_meta
    model.to_empty(device="cpu")
    model.load_state_dict(src.state_dict())          # rotary tables are not in the state dict...
    assert "cos" not in src.state_dict()
    idx = torch.randint(0, 256, (2, 30))
    torch.testing.assert_close(model(idx), src(idx))  # ...and were rebuilt by to_empty()
    model.init_weights()
    assert torch.count_nonzero(model.blocks[0].attn.c_proj.weight) == 0
    assert torch.count_nonzero(model.blocks[1].mlp.c_proj.weight) == 0


def test_setup_optimizers_groups():
    from nanochat.optim import Muon
    model = GPT(tiny(n_embd=192, n_head=4, n_kv_head=2))
    adamw, muon = model.setup_optimizers(unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02,
                                         weight_decay=0.1)
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, Muon)
    scale = (192 / 768) ** -0.5  # = 2
    lrs = sorted(g["lr"] for g in adamw.param_groups)
    assert lrs == pytest.approx(sorted([0.004 * scale, 0.2 * scale]))
    assert all(g["lr"] == 0.02 and g["weight_decay"] == 0.1 for g in muon.param_groups)
    for opt in (adamw, muon):
        assert all(g["initial_lr"] == g["lr"] for g in opt.param_groups)
    seen = [id(p) for opt in (adamw, muon) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each exactly once
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    assert id(model.wte.weight) not in muon_ids and id(model.lm_head.weight) not in muon_ids


def test_optimizers_memorise_a_batch():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=2, window_pattern="SL", short_window=16))
    opts = model.setup_optimizers()
    idx = torch.randint(0, 256, (4, 32))
    tgt = torch.randint(0, 256, (4, 32))
    losses = []
    for _ in range(30):
        loss = model(idx, tgt)
        loss.backward()
        for opt in opts:
            opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(5.545, abs=0.05)  # ~ln(256): lm_head starts tiny
    assert losses[-1] < 0.3 * losses[0], losses


def test_compile_scope_is_checked():
    model = GPT(GPTConfig(sequence_len=16, vocab_size=32, n_layer=1, n_head=1, n_kv_head=1, n_embd=16))
    with pytest.raises(ValueError, match="compile scope"):
        model.compile_for_training("everything")


@pytest.mark.parametrize("backend", [
    # Dynamo + AOTAutograd, no code generation (~2 s): the graph sharing and the traced semantics
    "aot_eager",
    # what training runs: inductor's generated C++ on CPU (~25 s of g++ on 2 cores)
    pytest.param("inductor", marks=[pytest.mark.slow, pytest.mark.skipif(
        shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")]),
])
def test_regional_compile_matches_eager_and_shares_graphs(backend):
    """compile_for_training('blocks'): same loss and gradients as the eager model, same state_dict
    keys, one compiled graph per distinct window (not per layer), and KV-cache inference untouched."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=32, vocab_size=64, n_layer=6, n_head=2, n_kv_head=2, n_embd=32,
                    window_pattern="SSL")
    model = GPT(cfg)
    x = torch.randint(0, 64, (2, 32))
    y = torch.randint(0, 64, (2, 32))
    ref = model(x, y)
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    keys = list(model.state_dict().keys())
    run = model.compile_for_training("blocks", backend=backend)
    assert run is model and list(model.state_dict().keys()) == keys
    for _ in range(2):  # the second call must reuse, not recompile
        loss = run(x, y)
        loss.backward()
        assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-5)
        for p, g in zip(model.parameters(), ref_grads):
            assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-5)
        model.zero_grad(set_to_none=True)
    # windows S,S,L,S,S,L: two distinct block graphs for six blocks
    assert counters["stats"]["unique_graphs"] == 2
    with torch.no_grad():  # generation keeps the plain modules: no new graphs
        list(model.generate([1, 2, 3], max_tokens=4, temperature=0.0))
    assert counters["stats"]["unique_graphs"] == 2
    torch._dynamo.reset()
