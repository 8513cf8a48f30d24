"""Checkpoint manager: exact round trips, partial steps, corrupt and malicious files, compatibility."""
from __future__ import annotations

import argparse
import json
import os
import pickle

import pytest
import torch

from nanochat import checkpoint_manager as ckm
from nanochat.common import UserError


def tiny_model(seed=0):
    from nanochat.gpt import GPT, GPTConfig
    torch.manual_seed(seed)
    cfg = GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    model = GPT(cfg)
    opts = model.setup_optimizers()
    return model, opts


def train_step(model, opts, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, (2, 16), generator=g)
    loss = model(x, x.roll(-1, 1))
    loss.backward()
    for o in opts:
        o.step()
    model.zero_grad(set_to_none=True)
    return loss.item()


def save(d, step, model, opts, meta=None):
    meta = {"model_config": model.config.to_dict(), "semantic_config": {"depth": 2}, **(meta or {})}
    ckm.save_checkpoint(d, step, model.state_dict(), {"optimizers": [o.state_dict() for o in opts]}, meta, rank=0)


def test_checkpoint_dir_layout(base_dir):
    assert ckm.checkpoint_dir("base", "d4") == base_dir / "base_checkpoints" / "d4"
    assert ckm.checkpoint_dir("mid", "d4") == base_dir / "mid_checkpoints" / "d4"
    assert ckm.checkpoint_dir("sft", "d4") == base_dir / "chatsft_checkpoints" / "d4"
    assert ckm.checkpoint_dir("rl", "d4") == base_dir / "chatrl_checkpoints" / "d4"
    with pytest.raises(UserError):
        ckm.checkpoint_dir("ppo", "d4")
    with pytest.raises(UserError):
        ckm.checkpoint_dir("base", "../x")


def test_round_trip_is_exact_model_and_optimizer(base_dir):
    d = ckm.checkpoint_dir("base", "t")
    model, opts = tiny_model()
    for s in range(3):
        train_step(model, opts, s)
    save(d, 3, model, opts, {"val_bpb": 1.25})
    assert sorted(p.name for p in d.iterdir()) == ["meta_000003.json", "model_000003.pt", "optim_000003_rank0.pt"]
    state, optim, meta = ckm.load_checkpoint(d, 3, "cpu", load_optimizer=True)
    assert meta["step"] == 3 and meta["val_bpb"] == 1.25
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
    # a fresh model + optimizers restored from the checkpoint continue bit-for-bit identically
    model2, opts2 = tiny_model(seed=123)
    model2.load_state_dict(state)
    for o, st in zip(opts2, optim["optimizers"]):
        o.load_state_dict(st)
    for s in range(3, 6):
        a, b = train_step(model, opts, s), train_step(model2, opts2, s)
        assert a == b
    for (k, v), (_, w) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(v, w), k


def test_partial_steps_are_ignored(base_dir):
    d = ckm.checkpoint_dir("base", "t")
    model, opts = tiny_model()
    save(d, 5, model, opts)
    # step 10 crashed before its meta (meta is written last)
    torch.save(model.state_dict(), ckm.model_path(d, 10))
    torch.save({}, ckm.optim_path(d, 10, 0))
    assert ckm.complete_steps(d) == [5]
    assert ckm.all_steps(d) == [5, 10]
    assert ckm.resolve_step(d, None) == 5
    with pytest.raises(UserError, match="not a complete checkpoint"):
        ckm.load_checkpoint(d, 10, "cpu")
    _, _, meta = ckm.load_checkpoint(d, None, "cpu")
    assert meta["step"] == 5


def test_missing_dir_and_no_complete_step(base_dir):
    with pytest.raises(UserError, match="no checkpoints in .*make pretrain"):
        ckm.load_checkpoint(ckm.checkpoint_dir("base", "nope"), None, "cpu")
    d = ckm.checkpoint_dir("mid", "half")
    d.mkdir(parents=True)
    torch.save({}, ckm.model_path(d, 1))
    with pytest.raises(UserError, match="no complete checkpoint.*make midtrain"):
        ckm.load_checkpoint(d, None, "cpu")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_become_user_errors(base_dir, damage):
    d = ckm.checkpoint_dir("base", "t")
    model, opts = tiny_model()
    save(d, 1, model, opts)
    p = ckm.model_path(d, 1)
    data = p.read_bytes()
    p.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(UserError) as ei:
        ckm.load_checkpoint(d, 1, "cpu")
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg and ("corrupt" in msg or "truncated" in msg)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["torch-zip", "raw-pickle"])
def test_malicious_pickle_is_rejected_without_running(base_dir, tmp_path, fmt):
    d = ckm.checkpoint_dir("base", "t")
    model, opts = tiny_model()
    save(d, 1, model, opts)
    marker = tmp_path / "pwned"
    payload = {"wte.weight": _Evil(marker)}
    if fmt == "torch-zip":
        torch.save(payload, ckm.model_path(d, 1))
    else:
        ckm.model_path(d, 1).write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match="refusing to load|corrupt"):
        ckm.load_checkpoint(d, 1, "cpu")
    assert not marker.exists()
    # the same for an optimizer shard
    save(d, 2, model, opts)
    torch.save({"optimizers": [_Evil(marker)]}, ckm.optim_path(d, 2, 0))
    with pytest.raises(UserError):
        ckm.load_checkpoint(d, 2, "cpu", load_optimizer=True)
    assert not marker.exists()


def test_corrupt_meta_and_missing_shard(base_dir):
    d = ckm.checkpoint_dir("base", "t")
    model, opts = tiny_model()
    save(d, 1, model, opts, {"world_size": 2})
    with pytest.raises(UserError, match="same number of processes"):
        ckm.load_checkpoint(d, 1, "cpu", load_optimizer=True, rank=1)
    ckm.meta_path(d, 1).write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        ckm.load_checkpoint(d, 1, "cpu")


def _args(**kw):
    base = dict(resume="auto", resume_from_step=-1)
    base.update(kw)
    return argparse.Namespace(**base)


def test_resume_policy(base_dir):
    from nanochat.resume import decide_resume
    d = ckm.checkpoint_dir("base", "t")
    model, opts = tiny_model()
    save(d, 4, model, opts)
    save(d, 8, model, opts)
    torch.save({}, ckm.model_path(d, 12))  # partial
    same = {"depth": 2}
    other = {"depth": 3}
    step, msgs, doomed, out = decide_resume(_args(), d, same)
    assert step == 8 and doomed == [12] and out == d
    # incompatible: refuse an explicit step with a one-line reason...
    with pytest.raises(UserError, match=r"other settings \(depth: 2 -> 3\).*--resume=fresh"):
        decide_resume(_args(resume_from_step=4), d, other)
    # ...while auto warns and starts over, beside the old run's steps (they go when the new run ends)
    step, msgs, doomed, out = decide_resume(_args(), d, other)
    assert step is None and doomed == [] and out == ckm.staging_dir(d) and any("do not match" in m for m in msgs)
    step, msgs, doomed, out = decide_resume(_args(resume="fresh"), d, same)
    assert step is None and doomed == [] and out == ckm.staging_dir(d)
    with pytest.raises(UserError, match="not a complete checkpoint"):
        decide_resume(_args(resume_from_step=12), d, same)


def test_prune_and_delete_order(base_dir):
    d = ckm.checkpoint_dir("base", "t")
    model, opts = tiny_model()
    for s in (1, 2, 3, 4):
        save(d, s, model, opts)
    assert ckm.prune_checkpoints(d, 2) == [1, 2]
    assert ckm.complete_steps(d) == [3, 4]
    assert not list(d.glob("*_000001*")) and not list(d.glob("*_000002*"))
    assert ckm.prune_checkpoints(d, 0) == []


def test_build_and_load_model(base_dir):
    from test_dataloader import prepare_base
    prepare_base(base_dir)
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import get_tokenizer
    vocab = get_tokenizer().get_vocab_size()
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=vocab, n_layer=2, n_head=2, n_kv_head=2, n_embd=32))
    d = ckm.checkpoint_dir("base", "only")
    ckm.save_checkpoint(d, 7, model.state_dict(), None, {"model_config": model.config.to_dict(),
                                                          "tokenizer_vocab_size": vocab}, 0)
    m2, tok, meta = ckm.load_model("base", "cpu", "eval", model_tag=None, step=None)
    assert meta["step"] == 7 and not m2.training and tok.get_vocab_size() == vocab
    x = torch.randint(0, vocab, (1, 16))
    model.eval()
    assert torch.equal(model(x), m2(x))
    # a retrained tokenizer with another vocabulary is detected
    meta_p = ckm.meta_path(d, 7)
    m = json.loads(meta_p.read_text())
    m["tokenizer_vocab_size"] = vocab + 5
    meta_p.write_text(json.dumps(m))
    with pytest.raises(UserError, match="tokenizer"):
        ckm.build_model(d, 7, "cpu")


# ----------------------------------------------------------------------------- starting over (issue 30.3)

def _ctx(**kw):
    from types import SimpleNamespace
    return SimpleNamespace(master=True, rank=0, world=1, device="cpu", args=_args(**kw))


def _files(d):
    return {p.name: p.read_bytes() for p in d.iterdir()}


@pytest.mark.parametrize("how", ["--resume=fresh", "other settings"])
def test_starting_over_keeps_the_old_steps_until_the_new_run_is_complete(base_dir, how):
    """`make redo-pretrain` (--resume=fresh) or changed settings, killed before the new run's last
    checkpoint: the old model is still there, whole; the new run's steps live beside it until it ends."""
    from nanochat.resume import resolve_resume
    d = ckm.checkpoint_dir("base", "t")
    model, opts = tiny_model()
    save(d, 4, model, opts)
    save(d, 8, model, opts)
    before = _files(d)
    fresh = how == "--resume=fresh"
    semantic = {"depth": 2 if fresh else 3}
    assert resolve_resume(_ctx(resume="fresh" if fresh else "auto"), d, semantic) is None   # starts over...
    assert _files(d) == before                                   # ...and the old run is untouched
    new, new_opts = tiny_model(seed=1)
    save(ckm.write_dir(d), 2, new, new_opts, {"semantic_config": semantic})   # the new run's first save
    assert _files(d) == before and ckm.find_model_tag("base") == "t"          # (a kill here loses nothing)
    if not fresh:   # rerun with the same settings: the new run continues beside the old one
        resumed = resolve_resume(_ctx(), d, semantic)
        assert resumed.step == 2 and _files(d) == before
    assert ckm.publish(d)                                        # its last checkpoint: it replaces the old run
    assert ckm.complete_steps(d) == [2] and not ckm.staging_dir(d).exists()
    assert torch.equal(ckm.load_checkpoint(d, 2, "cpu")[0]["lm_head.weight"], new.state_dict()["lm_head.weight"])


def test_a_publish_cut_short_between_its_renames_is_completed(base_dir):
    from nanochat.resume import resolve_resume
    d = ckm.checkpoint_dir("base", "t")
    model, opts = tiny_model()
    save(d, 4, model, opts)
    resolve_resume(_ctx(resume="fresh"), d, {"depth": 2})
    save(ckm.write_dir(d), 1, model, opts)
    d.rename(d.parent / ".t.old")                                # killed after publish's first rename
    assert resolve_resume(_ctx(), d, {"depth": 2}).step == 1     # the next run finishes it first
    assert ckm.complete_steps(d) == [1] and not (d.parent / ".t.old").exists()
