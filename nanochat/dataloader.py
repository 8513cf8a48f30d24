"""Data loaders for every training stage: which tokens go into each batch (pretraining text,
midtraining and SFT conversations), with an exact resume state.

All loaders yield `(inputs [B, T] int64, targets [B, T] int64, state)` on the target device, where
`state` is a small JSON-able dict: passing it back as `resume_state` continues with EXACTLY the
batches that would have followed (same process count), which is what makes a resumed run reproduce
the uninterrupted one.

Pretraining (`PretrainStream`, `pretrain_loader`)
-------------------------------------------------
Row groups come from `nanochat.shards.parquets_iter_batched(split, start=rank, step=world)` (so
ranks read disjoint row groups) and are tokenized on the fly with the tokenizer's threaded batch
encode, every document getting a leading BOS. Documents wait in a buffer of `buffer_size` (default
1000) documents, refilled from the next row group whenever it drops below that; each row of T+1
tokens is filled by best-fit packing with crops (nanochat.packer), so rows are always full.

Hence every row starts with BOS and every document starts at a BOS. inputs = row[:-1],
targets = row[1:]. The train split cycles forever (`state["epoch"]` counts passes); so does val:
every evaluation builds a fresh loader, so all evaluations see the same tokens (if the val split is
smaller than what an evaluation asks for, the second pass repeats it).

Resume: the packing is a deterministic function of the buffer contents (in insertion order) and
of the row groups still to come, so the state records the reading position of the row-group
iterator plus, for every row group that still has documents in the buffer, where to find it
again (the position preceding it in this rank's stream) and which of its documents remain.
Resuming re-reads and re-tokenizes just those documents and continues reading where the original
left off: the next batches are identical. A state is per rank; with another world size it cannot
be honoured exactly and the stream restarts (with a warning).

Chat (`mid_loader`, `sft_loader`)
---------------------------------
Conversations are rendered with `tokenizer.render_conversation(conv, max_tokens=T+1)`: a
conversation longer than T+1 tokens is truncated to T+1 by the renderer and then fills one row on
its own; a conversation is never split across rows. Targets are -1 wherever the renderer's mask is
0 (user turns, BOS, tool outputs, padding), so the loss covers assistant tokens only. Conversations
without any trained token are skipped. Rank r of W uses examples r, r+W, r+2W, ... and cycles over
the task forever (epoch counter). MidStream packs them into rows, SFTStream puts one in each row.

Every loader is a nanochat.device_loader.DataLoader over one of these streams.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np

from nanochat.common import UserError
from nanochat.device_loader import DataLoader
from nanochat.packer import BestFitPacker

STATE_VERSION = 1


# ============================================================================ pretraining stream

def _pos(p):
    return None if p is None else tuple(int(x) for x in p)


def _jpos(p):
    return None if p is None else [int(x) for x in p]


def _default_source(split, start, step, resume):
    from nanochat.shards import parquets_iter_batched
    return parquets_iter_batched(split, start=start, step=step, resume=resume)


class PretrainStream:
    """Packs tokenized documents of one rank's row groups into rows of `row_len` tokens.

    `source(split, start, step, resume)` yields (texts, position) per row group;
    `encode(texts) -> list[list[int]]` must prepend BOS. Both default to the real modules.
    """

    def __init__(self, tokenizer, row_len: int, split: str = "train", rank: int = 0, world: int = 1,
                 resume_state: dict | None = None, buffer_size: int = 1000, tokenizer_threads: int = 4,
                 source=None, encode=None):
        if split not in ("train", "val"):
            raise UserError(f"split must be 'train' or 'val', got {split!r}")
        self.split, self.rank, self.world = split, rank, world
        self.buffer_size = max(1, int(buffer_size))
        self.source = source or _default_source
        if encode is None:
            bos = tokenizer.get_bos_token_id()
            encode = lambda texts: tokenizer.encode(texts, prepend=bos, num_threads=tokenizer_threads)  # noqa: E731
        self.encode = encode
        self.packer = BestFitPacker(row_len, crop=True)
        self.epoch = 0
        self.last_pos = None          # resume point of the row-group iterator (None = epoch start)
        self._it = None
        self._it_yielded = False
        self._serial = 0
        self.pending: OrderedDict[int, dict] = OrderedDict()  # row groups with docs in the buffer
        self.rows_emitted = 0
        if _resumes(resume_state, "pretrain", rank, world, split=split):
            self._restore(resume_state)

    # ---------------------------------------------------------------- reading
    def _next_row_group(self):
        for _ in range(3):
            if self._it is None:
                self._it = iter(self.source(self.split, self.rank, self.world, _pos(self.last_pos)))
                self._it_yielded = False
            try:
                texts, pos = next(self._it)
            except StopIteration:
                fresh = self.last_pos is None and not self._it_yielded
                self._it = None
                if fresh:
                    break
                self.epoch += 1
                self.last_pos = None
                continue
            self._it_yielded = True
            prev, self.last_pos = self.last_pos, _pos(pos)
            return list(texts), prev, self.last_pos
        raise UserError(f"rank {self.rank} of {self.world} gets no row groups from the {self.split!r} split: "
                        f"download more shards (`make data`) or use fewer processes")

    def _add_docs(self, prev, pos, doc_indices, token_lists):
        serial = self._serial
        self._serial += 1
        entry = {"prev": prev, "pos": pos, "docs": set()}
        for j, ids in zip(doc_indices, token_lists):
            if len(ids):
                entry["docs"].add(j)
                self.packer.add(np.asarray(ids, dtype=np.int64), (serial, j))
        if entry["docs"]:
            self.pending[serial] = entry

    def _refill(self):
        while len(self.packer) < self.buffer_size:
            texts, prev, pos = self._next_row_group()
            if texts:
                self._add_docs(prev, pos, range(len(texts)), self.encode(texts))

    # ---------------------------------------------------------------- rows
    def next_row(self):
        row, _, used = self.packer.build_row(self._refill)
        for serial, j in used:
            entry = self.pending[serial]
            entry["docs"].discard(j)
            if not entry["docs"]:
                del self.pending[serial]
        self.rows_emitted += 1
        return row

    def next_batch(self, B: int):
        rows = np.stack([self.next_row() for _ in range(B)])
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:]), self.state()

    # ---------------------------------------------------------------- state
    def state(self) -> dict:
        return {
            "version": STATE_VERSION, "kind": "pretrain", "split": self.split,
            "rank": self.rank, "world": self.world, "epoch": self.epoch,
            "last": _jpos(self.last_pos), "rows": self.rows_emitted,
            "pending": [[_jpos(e["prev"]), _jpos(e["pos"]), sorted(e["docs"])] for e in self.pending.values()],
        }

    def _restore(self, st: dict):
        self.epoch = int(st["epoch"])
        self.rows_emitted = int(st.get("rows", 0))
        for prev, pos, docs in st["pending"]:
            it = iter(self.source(self.split, self.rank, self.world, _pos(prev)))
            try:
                texts, got = next(it)
            except StopIteration:
                got, texts = None, []
            if _pos(got) != _pos(pos):
                raise UserError(f"cannot resume the data loader: row group {pos} of the {self.split!r} split "
                                f"is gone (found {got}); the dataset changed since the checkpoint was "
                                f"saved: restore it (`make data`) or start over with --resume=fresh")
            texts = list(texts)
            if docs and max(docs) >= len(texts):
                raise UserError(f"cannot resume the data loader: row group {pos} changed size; the dataset "
                                f"changed since the checkpoint: start over with --resume=fresh")
            self._add_docs(_pos(prev), _pos(pos), docs, self.encode([texts[j] for j in docs]))
        self.last_pos = _pos(st["last"])


def _resumes(st: dict | None, kind: str, rank: int, world: int, **expect) -> bool:
    """Whether `st` (None: a fresh start) resumes this stream; another process layout's warns."""
    if st is None:
        return False
    if not isinstance(st, dict) or st.get("version") != STATE_VERSION or st.get("kind") != kind:
        raise UserError(f"unusable data loader state (expected a {kind!r} state of version {STATE_VERSION}): "
                        f"start over with --resume=fresh")
    for k, v in expect.items():
        if st.get(k) != v:
            raise UserError(f"data loader state is for {k}={st.get(k)!r}, not {v!r}: start over with --resume=fresh")
    if (st.get("rank"), st.get("world")) == (rank, world):
        return True
    warnings.warn(f"{kind} data loader state was saved by rank {st.get('rank')} of {st.get('world')}, "
                  f"this is rank {rank} of {world}: the data stream restarts")
    return False


# ============================================================================ chat streams

def _render(tokenizer, conversation, max_tokens):
    ids, mask = tokenizer.render_conversation(conversation, max_tokens=max_tokens)
    ids = np.asarray(ids, dtype=np.int64)[:max_tokens]
    mask = np.asarray(mask, dtype=np.int8)[:max_tokens]
    if len(ids) < 2 or not mask[1:].any():
        return None, None  # nothing to learn from
    return ids, mask


def _targets(ids, mask):
    return np.where(mask[1:] == 1, ids[1:], -1).astype(np.int64)


class _TaskCursor:
    """Examples rank, rank+world, ... of a task, forever (epochs counted); their resume state."""

    def __init__(self, task, rank, world, kind, resume_state=None):
        self.task, self.rank, self.world, self.kind = task, rank, world, kind
        self.n = len(task)
        if self.n <= rank:
            raise UserError(f"the task mixture has {self.n} examples, too few for {world} processes: "
                            f"use fewer processes or more data")
        self.epoch, self.index = 0, rank
        self.resumed = _resumes(resume_state, kind, rank, world)
        if self.resumed:
            self.epoch, self.index = int(resume_state["epoch"]), int(resume_state["index"])

    def state(self) -> dict:
        return {"version": STATE_VERSION, "kind": self.kind, "rank": self.rank, "world": self.world,
                "epoch": self.epoch, "index": self.index}

    def next(self):
        if self.index >= self.n:
            self.epoch += 1
            self.index = self.rank
        i = self.index
        self.index += self.world
        return self.epoch, i


class MidStream:
    """Best-fit packing of whole conversations into rows of T+1 tokens, never cropping: when nothing
    fits, the rest of the row is padded (inputs BOS, targets -1)."""

    def __init__(self, task, tokenizer, row_len, rank=0, world=1, resume_state=None, buffer_size=100):
        self.task, self.tokenizer, self.row_len = task, tokenizer, row_len
        self.buffer_size = max(1, int(buffer_size))
        self.packer = BestFitPacker(row_len, crop=False, pad_id=tokenizer.get_bos_token_id())
        self.cursor = _TaskCursor(task, rank, world, "mid", resume_state)
        if self.cursor.resumed:
            for epoch, i in resume_state["pending"]:
                self._add(int(epoch), int(i))

    def _add(self, epoch, i):
        ids, mask = _render(self.tokenizer, self.task[i], self.row_len)
        if ids is not None:
            self.packer.add(ids, (epoch, i), mask)

    def _refill(self):
        guard = 0
        while len(self.packer) < self.buffer_size:
            self._add(*self.cursor.next())
            guard += 1
            if guard > 10 * self.cursor.n + self.buffer_size and len(self.packer) == 0:
                raise UserError("no conversation of the task mixture has any assistant token to train on")

    def next_batch(self, B):
        rows, masks = [], []
        for _ in range(B):
            row, mask, _ = self.packer.build_row(self._refill)
            rows.append(row)
            masks.append(mask)
        rows, masks = np.stack(rows), np.stack(masks)
        inputs = np.ascontiguousarray(rows[:, :-1])
        targets = np.where(masks[:, 1:] == 1, rows[:, 1:], -1).astype(np.int64)
        return inputs, targets, self.state()

    def state(self):
        return {**self.cursor.state(), "pending": [list(x) for x in self.packer.idents()]}


def bucket_width(n: int, cap: int, smallest: int = 64) -> int:
    """n rounded up to a power of two (at least `smallest`, at most `cap`): compiled kernels and
    FlexAttention block masks then see a handful of shapes instead of one per batch."""
    w = smallest
    while w < n:
        w *= 2
    return max(min(w, cap), min(n, cap))


class SFTStream:
    """One conversation per row; a batch is padded (inputs `<|assistant_end|>`, targets -1) to its
    longest row rounded up by bucket_width (few distinct shapes for compiled/flex kernels)."""

    def __init__(self, task, tokenizer, row_len, rank=0, world=1, resume_state=None):
        self.task, self.tokenizer, self.row_len = task, tokenizer, row_len
        self.pad_id = tokenizer.encode_special("<|assistant_end|>")
        self.cursor = _TaskCursor(task, rank, world, "sft", resume_state)

    def next_batch(self, B):
        rows = []
        tries = 0
        while len(rows) < B:
            _, i = self.cursor.next()
            ids, mask = _render(self.tokenizer, self.task[i], self.row_len)
            tries += 1
            if ids is None:
                if tries > 10 * self.cursor.n + B:
                    raise UserError("no conversation of the task mixture has any assistant token to train on")
                continue
            rows.append((ids[:-1], _targets(ids, mask)))
        width = bucket_width(max(len(x) for x, _ in rows), self.row_len - 1)
        inputs = np.full((B, width), self.pad_id, dtype=np.int64)
        targets = np.full((B, width), -1, dtype=np.int64)
        for r, (x, y) in enumerate(rows):
            inputs[r, :len(x)] = x
            targets[r, :len(y)] = y
        return inputs, targets, self.state()

    def state(self):
        return self.cursor.state()


def rebase_state(states: list, rank: int, world: int) -> dict | None:
    """A state for `rank` of `world` from the states saved by ANOTHER number of processes.

    Exact continuation is impossible (the row groups are dealt out differently), so the new
    stream continues after the furthest position any old rank had read (pretraining) / after the
    lowest example index (chat); the documents that were waiting in the old buffers are skipped.
    """
    states = [s for s in states if isinstance(s, dict)]
    if not states:
        return None
    kind = states[0].get("kind")
    if kind == "pretrain":
        best = max(states, key=lambda s: (int(s.get("epoch", 0)), tuple(s["last"]) if s.get("last") else (-1, -1)))
        return {"version": STATE_VERSION, "kind": "pretrain", "split": best.get("split"), "rank": rank,
                "world": world, "epoch": int(best.get("epoch", 0)), "last": best.get("last"), "rows": 0,
                "pending": []}
    if kind in ("mid", "sft"):
        epoch = min(int(s.get("epoch", 0)) for s in states)
        m = min(int(s.get("index", 0)) for s in states if int(s.get("epoch", 0)) == epoch)
        out = {"version": STATE_VERSION, "kind": kind, "rank": rank, "world": world, "epoch": epoch,
               "index": m + ((rank - m) % world)}
        if kind == "mid":
            out["pending"] = []
        return out
    return None


# ============================================================================ constructors

def pretrain_loader(tokenizer, B: int, T: int, split: str = "train", device="cpu", rank: int = 0,
                    world: int = 1, resume_state: dict | None = None, buffer_size: int = 1000,
                    tokenizer_threads: int = 4, prefetch: int = 3, source=None, encode=None) -> DataLoader:
    """BOS-aligned best-fit packed pretraining batches of `split` for `rank` of `world`."""
    stream = PretrainStream(tokenizer, T + 1, split=split, rank=rank, world=world, resume_state=resume_state,
                            buffer_size=buffer_size, tokenizer_threads=tokenizer_threads, source=source,
                            encode=encode)
    return DataLoader(stream, B, T, device=device, prefetch=prefetch)


def mid_loader(task, tokenizer, B: int, T: int, device="cpu", rank: int = 0, world: int = 1,
               resume_state: dict | None = None, buffer_size: int = 100, prefetch: int = 3) -> DataLoader:
    """Packed conversations (midtraining); targets -1 outside assistant tokens."""
    stream = MidStream(task, tokenizer, T + 1, rank=rank, world=world, resume_state=resume_state,
                       buffer_size=buffer_size)
    return DataLoader(stream, B, T, device=device, prefetch=prefetch)


def sft_loader(task, tokenizer, B: int, T: int, device="cpu", rank: int = 0, world: int = 1,
               resume_state: dict | None = None, prefetch: int = 3) -> DataLoader:
    """One conversation per row (SFT), padded to the batch's longest row; pad targets -1."""
    stream = SFTStream(task, tokenizer, T + 1, rank=rank, world=world, resume_state=resume_state)
    return DataLoader(stream, B, T, device=device, prefetch=prefetch)
