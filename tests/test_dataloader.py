"""Data loader: best-fit packing, rank-disjointness, exact resume, chat rows.

Also home of the tiny synthetic corpus + tokenizer helpers the other training tests import
(`make_corpus`, `prepare_base`): a few parquet shards of generated sentences (learnable, so a tiny
model's loss falls fast) and a 512-token BPE tokenizer trained on them.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nanochat.dataloader import MidStream, PretrainStream, SFTStream, pretrain_loader, rebase_state
from nanochat.device_loader import DataLoader
from nanochat.packer import BestFitPacker

# ----------------------------------------------------------------------------- shared corpus helpers

_SUBJ = ["the cat", "a dog", "the old man", "my sister", "the teacher", "a small bird", "the king", "our neighbour"]
_VERB = ["sees", "likes", "finds", "paints", "follows", "remembers", "carries", "builds"]
_OBJ = ["the red ball", "a green house", "the river", "an apple", "the tall tree", "a letter", "the moon", "bread"]
_TAIL = ["today", "at night", "in the garden", "with joy", "again", "near the sea", "every morning", "slowly"]


def synthetic_doc(rng: random.Random) -> str:
    n = rng.choice([1, 1, 2, 3, 5, 8, 13, 30])
    sents = []
    for _ in range(n):
        sents.append(f"{rng.choice(_SUBJ).capitalize()} {rng.choice(_VERB)} {rng.choice(_OBJ)} {rng.choice(_TAIL)}.")
    return " ".join(sents)


def make_corpus(data_dir: Path, n_shards: int = 3, docs_per_shard: int = 240, rows_per_group: int = 40, seed: int = 0):
    """Shards shard_00000.. (the last one is validation), `rows_per_group` docs per row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    all_docs = []
    for i in range(n_shards):
        docs = [synthetic_doc(rng) for _ in range(docs_per_shard)]
        all_docs += docs
        pq.write_table(pa.table({"text": docs}), data_dir / f"shard_{i:05d}.parquet", row_group_size=rows_per_group)
    return all_docs


_CACHE: dict = {}


def prepare_base(base: Path, vocab_size: int = 512) -> Path:
    """Fill `base` with base_data/ + tokenizer/ (built once per session, then copied)."""
    from nanochat.tokenizer import Tokenizer
    if "template" not in _CACHE:
        import tempfile
        import atexit
        tmpl = Path(tempfile.mkdtemp(prefix="nanochat-corpus-"))
        atexit.register(shutil.rmtree, tmpl, True)
        docs = make_corpus(tmpl / "base_data")
        tok = Tokenizer.train_from_iterator(iter(docs), vocab_size)
        tok.save(tmpl / "tokenizer")
        _CACHE["template"] = tmpl
    tmpl = _CACHE["template"]
    for sub in ("base_data", "tokenizer"):
        if not (base / sub).exists():
            shutil.copytree(tmpl / sub, base / sub)
    return base


# ----------------------------------------------------------------------------- stand-ins for packing tests

BOS = 0


def fake_source(groups: list[list[str]]):
    """A parquets_iter_batched look-alike over in-memory row groups (positions (0, g))."""
    def source(split, start, step, resume):
        for g, texts in enumerate(groups):
            if g % step != start or (resume is not None and (0, g) <= tuple(resume)):
                continue
            yield list(texts), (0, g)
    return source


def fake_encode(texts):
    # doc "a_b_c" -> [BOS, len-dependent tokens]: every char becomes a token id 1..255
    return [[BOS] + [1 + (ord(c) % 250) for c in t] for t in texts]


def random_groups(n_groups=12, per_group=7, seed=0):
    rng = random.Random(seed)
    return [["x" * rng.choice([0, 1, 3, 5, 9, 14, 20, 33, 70]) + f"{g}-{i}" for i in range(per_group)]
            for g in range(n_groups)]


def stream(groups, T=32, rank=0, world=1, resume=None, buffer_size=10):
    return PretrainStream(None, T + 1, rank=rank, world=world, resume_state=resume, buffer_size=buffer_size,
                          source=fake_source(groups), encode=fake_encode)


# ----------------------------------------------------------------------------- packer

def test_packer_best_fit_and_crop_rule():
    p = BestFitPacker(10, crop=True)
    for i, n in enumerate([3, 8, 4, 6]):
        p.add(np.array([BOS] + [7] * (n - 1)), i)
    row, mask, used = p.build_row(lambda: None)
    # largest fitting first (8), then the largest fitting the 2 left: none -> crop the shortest (3)
    assert used == [1, 0] and len(row) == 10 and row[0] == BOS and row[8] == BOS
    assert p.cropped_tokens == 1
    row, _, used = p.build_row(lambda: None)
    assert used == [3, 2]  # 6 then 4 = exactly 10


def test_packer_no_crop_pads():
    p = BestFitPacker(10, crop=False, pad_id=99)
    p.add(np.array([BOS, 1, 2, 3, 4, 5, 6]), "a", np.ones(7, dtype=np.int8))
    p.add(np.array([BOS, 1, 2, 3, 4, 5]), "b", np.ones(6, dtype=np.int8))
    row, mask, used = p.build_row(lambda: None)
    assert used == ["a"] and list(row[7:]) == [99, 99, 99] and list(mask[7:]) == [0, 0, 0]


def test_every_row_starts_with_bos_and_only_crops_drop_tokens():
    groups = random_groups()
    s = stream(groups, T=32)
    total_docs = sum(len(g) for g in groups)
    rows = [s.next_row() for _ in range(20)]
    assert all(r[0] == BOS and len(r) == 33 for r in rows)
    emitted = sum(len(r) for r in rows)
    # every token read is emitted, cropped (documented), still buffered or not read yet
    assert s.epoch == 0 and total_docs > 0
    all_tokens = sum(len(x) for x in fake_encode([t for g in groups for t in g]))
    in_buffer = sum(len(it[0]) for it in s.packer._items.values())
    unread = 0
    if s.last_pos is not None:
        unread = sum(len(x) for g in groups[s.last_pos[1] + 1:] for x in fake_encode(g))
    assert emitted + s.packer.cropped_tokens + in_buffer + unread == all_tokens


def test_docs_start_at_bos_and_are_contiguous():
    groups = [[chr(97 + (i % 26)) * (3 + i % 11) for i in range(9)] for _ in range(6)]
    s = stream(groups, T=16, buffer_size=4)
    for _ in range(10):
        row = s.next_row()
        segs = np.split(row, np.where(row == BOS)[0][1:])
        for seg in segs:
            assert seg[0] == BOS
            assert len(set(seg[1:].tolist())) <= 1  # one document's (single-letter) body, never mixed


def test_ranks_are_disjoint():
    groups = [[f"g{g}d{i}" + "y" * i for i in range(5)] for g in range(8)]
    seen = []
    for rank in range(2):
        s = stream(groups, T=8, rank=rank, world=2, buffer_size=3)
        for _ in range(6):
            s.next_row()
        seen.append({e["pos"] for e in s.pending.values()} | {p for p in [s.last_pos]})
        groups_read = {g for g in range(s.last_pos[1] + 1) if g % 2 == rank}
        assert all(g % 2 == rank for g in groups_read)
    assert not (seen[0] & seen[1])


@pytest.mark.parametrize("cut", [1, 3, 7, 18])
def test_resume_from_state_gives_identical_batches(cut):
    groups = random_groups(n_groups=6, per_group=5, seed=cut)
    ref = stream(groups, T=24, buffer_size=6)
    batches = [ref.next_batch(3) for _ in range(30)]  # crosses several epochs
    assert batches[-1][2]["epoch"] >= 1
    state = batches[cut - 1][2]
    import json
    state = json.loads(json.dumps(state))  # it must survive the meta JSON
    res = stream(groups, T=24, buffer_size=6, resume=state)
    for k in range(cut, 30):
        x, y, st = res.next_batch(3)
        assert np.array_equal(x, batches[k][0]) and np.array_equal(y, batches[k][1])
        assert st == batches[k][2]


def test_inputs_targets_shifted():
    s = stream(random_groups(), T=16)
    x, y, _ = s.next_batch(4)
    assert x.shape == y.shape == (4, 16)
    assert np.array_equal(x[:, 1:], y[:, :-1])


def test_rebase_state_other_world():
    groups = random_groups(n_groups=10)
    states = []
    for r in range(2):
        s = stream(groups, T=16, rank=r, world=2, buffer_size=4)
        for _ in range(3):
            s.next_row()
        states.append(s.state())
    st = rebase_state(states, 0, 3)
    assert st["world"] == 3 and st["pending"] == []
    s3 = stream(groups, T=16, rank=0, world=3, resume=st, buffer_size=4)
    s3.next_row()
    assert s3.last_pos > tuple(max(x["last"] for x in states))


def test_empty_rank_is_a_user_error():
    from nanochat.common import UserError
    s = stream([["a", "b"]], T=8, rank=1, world=2)
    with pytest.raises(UserError, match="no row groups"):
        s.next_row()


# ----------------------------------------------------------------------------- chat rows (stand-in tokenizer)

class FakeChatTokenizer:
    """render_conversation: BOS, user tokens (mask 0), assistant tokens + end (mask 1)."""

    def get_bos_token_id(self):
        return BOS

    def encode_special(self, s):
        return {"<|assistant_end|>": 3}[s]

    def render_conversation(self, conv, max_tokens=2048):
        ids, mask = [BOS], [0]
        for m in conv["messages"]:
            toks = [10 + (ord(c) % 50) for c in m["content"]]
            if m["role"] == "user":
                ids += [1] + toks + [2]
                mask += [0] * (len(toks) + 2)
            else:
                ids += toks + [3]
                mask += [1] * (len(toks) + 1)
        return ids[:max_tokens], mask[:max_tokens]


def convs(n, seed=0):
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": "q" * rng.randint(1, 12)},
                          {"role": "assistant", "content": "a" * rng.randint(1, 15)}]} for _ in range(n)]


def test_mid_rows_pack_whole_conversations_with_masked_targets():
    task = convs(40)
    s = MidStream(task, FakeChatTokenizer(), 33, buffer_size=8)
    x, y, st = s.next_batch(4)
    assert x.shape == (4, 32) and (x[:, 0] == BOS).all()
    assert ((y == -1) | (y >= 3)).all()
    # a user token is never a target; every target is an assistant token or <|assistant_end|>
    assert not np.isin(y, [1, 2]).any()
    # resume equality
    ref = [s.next_batch(4) for _ in range(6)]
    s2 = MidStream(task, FakeChatTokenizer(), 33, resume_state=st, buffer_size=8)
    for xb, yb, _ in ref:
        x2, y2, _ = s2.next_batch(4)
        assert np.array_equal(x2, xb) and np.array_equal(y2, yb)


def test_sft_one_conversation_per_row_padded():
    task = convs(10)
    s = SFTStream(task, FakeChatTokenizer(), 65)
    x, y, st = s.next_batch(3)
    assert (x[:, 0] == BOS).all()
    for r in range(3):
        assert (x[r] == BOS).sum() == 1
    assert x.shape[1] <= 64
    s2 = SFTStream(task, FakeChatTokenizer(), 65, rank=1, world=2)
    assert s2.cursor.next() == (0, 1)


def test_threaded_loader_matches_stream_and_propagates_errors():
    groups = random_groups()
    ld = DataLoader(stream(groups, T=16), 2, 16, prefetch=2)
    ref = stream(groups, T=16)
    for _ in range(5):
        x, y, st = next(ld)
        rx, ry, rst = ref.next_batch(2)
        assert x.dtype == torch.int64 and torch.equal(x, torch.from_numpy(rx)) and st == rst
    ld.close()

    class Boom:
        def next_batch(self, B):
            from nanochat.common import UserError
            raise UserError("shard X is corrupt: rerun `make data`")
    from nanochat.common import UserError
    with pytest.raises(UserError, match="corrupt"):
        next(DataLoader(Boom(), 2, 4, prefetch=1))


def test_threaded_loader_close_stops_production_and_the_worker():
    import threading

    class Counting:
        calls = 0

        def next_batch(self, B):
            Counting.calls += 1
            return np.zeros((B, 4), dtype=np.int64), np.zeros((B, 4), dtype=np.int64), {"n": Counting.calls}
    ld = DataLoader(Counting(), 2, 4, prefetch=2)
    assert [next(ld)[2]["n"] for _ in range(3)] == [1, 2, 3]        # in order
    ld.close()
    for t in threading.enumerate():
        if t.name.startswith("nanochat-dataloader"):
            t.join(10)
            assert not t.is_alive()
    assert Counting.calls <= 3 + 2                                   # at most `prefetch` ahead, none after close
    with pytest.raises(RuntimeError, match="closed"):
        next(ld)
    ld.close()                                                       # closing twice is fine


# ----------------------------------------------------------------------------- real modules

def test_real_corpus_and_tokenizer(base_dir):
    prepare_base(base_dir)
    from nanochat.tokenizer import get_tokenizer
    tok = get_tokenizer()
    bos = tok.get_bos_token_id()
    ld = pretrain_loader(tok, 4, 64, "train", "cpu", 0, 1)
    x, y, st = next(ld)
    assert x.shape == (4, 64) and (x[:, 0] == bos).all()
    assert torch.equal(x[:, 1:], y[:, :-1])
    text = tok.decode(x[0].tolist())
    assert "." in text
    batches = [next(ld) for _ in range(4)]
    ld.close()
    ld2 = pretrain_loader(tok, 4, 64, "train", "cpu", 0, 1, resume_state=st)
    for bx, by, bst in batches:
        x2, y2, st2 = next(ld2)
        assert torch.equal(x2, bx) and torch.equal(y2, by) and st2 == bst
    ld2.close()
    # the two ranks read different row groups
    a = pretrain_loader(tok, 2, 64, "train", "cpu", 0, 2, prefetch=0)
    b = pretrain_loader(tok, 2, 64, "train", "cpu", 1, 2, prefetch=0)
    sa, sb = next(a)[2], next(b)[2]
    pa = {tuple(p[1]) for p in sa["pending"]}
    pb = {tuple(p[1]) for p in sb["pending"]}
    assert pa and pb and not (pa & pb)
    val = pretrain_loader(tok, 2, 64, "val", "cpu", 0, 1, prefetch=0)
    for _ in range(60):  # loops past the end of the small val split
        next(val)


def test_bucket_width():
    from nanochat.dataloader import bucket_width
    assert [bucket_width(n, 2048) for n in (1, 64, 65, 300, 1500, 2048)] == [64, 64, 128, 512, 2048, 2048]
    assert bucket_width(100, 100) == 100 and bucket_width(30, 40) == 40
