"""Best-fit packing of BOS-led token sequences into fixed-length rows, shared by pretraining (which
crops) and midtraining (which pads)."""
from __future__ import annotations

import bisect
from typing import Callable

import numpy as np


class BestFitPacker:
    """A buffer of token sequences (each starting with BOS) that builds fixed-length rows.

    Each row: repeatedly place the LARGEST buffered item that fits the space left. When none fits,
    with `crop` the SHORTEST item is cropped to exactly the space left and its tail discarded (a
    tail has no BOS, so it could never start a row): the only way a token is dropped, and it closes
    every row, so rows are always full. Without `crop` (in a row not empty) the rest is padded with
    `pad_id` (mask 0). Items are kept sorted by (length, -insertion_order), so both picks are
    bisections and ties go to the oldest item. Selection depends only on the multiset of buffered
    items and their relative insertion order, which is what resume reconstructs.
    """

    def __init__(self, row_len: int, crop: bool = True, pad_id: int = 0):
        if row_len < 2:
            raise ValueError("row_len must be >= 2")
        self.row_len = row_len
        self.crop = crop
        self.pad_id = pad_id
        self._keys: list[tuple[int, int]] = []          # sorted (length, -seq)
        self._items: dict[int, tuple] = {}              # seq -> (ids, mask, ident)
        self._seq = 0
        self.cropped_tokens = 0                         # tokens discarded by crops (diagnostics)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, ids, ident, mask=None) -> None:
        if len(ids) == 0:
            return
        seq = self._seq
        self._seq += 1
        self._items[seq] = (ids, mask, ident)
        bisect.insort(self._keys, (len(ids), -seq))

    def idents(self) -> list:
        """Identities of the buffered items, oldest first."""
        return [self._items[s][2] for s in sorted(self._items)]

    def _pop(self, index: int):
        _, negseq = self._keys.pop(index)
        return self._items.pop(-negseq)

    def build_row(self, refill: Callable[[], None]):
        """One row: (ids int64 [row_len], mask int8 [row_len], idents of the items used)."""
        n = self.row_len
        row = np.empty(n, dtype=np.int64)
        mask = np.ones(n, dtype=np.int8)
        used = []
        filled = 0
        while filled < n:
            refill()
            if not self._keys:
                raise RuntimeError("data source produced no documents")
            space = n - filled
            i = bisect.bisect_right(self._keys, (space, 1)) - 1   # largest length <= space, oldest
            if i >= 0:
                ids, m, ident = self._pop(i)
                k = len(ids)
            elif self.crop or filled == 0:
                # nothing fits: crop the shortest (oldest among equals), drop its tail
                shortest = self._keys[0][0]
                j = bisect.bisect_right(self._keys, (shortest, 1)) - 1
                ids, m, ident = self._pop(j)
                self.cropped_tokens += len(ids) - space
                k = space
            else:
                row[filled:] = self.pad_id
                mask[filled:] = 0
                break
            row[filled:filled + k] = ids[:k]
            if m is not None:
                mask[filled:filled + k] = m[:k]
            filled += k
            used.append(ident)
        return row, mask, used
