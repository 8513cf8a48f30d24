"""Reading the pretraining shards under $NANOCHAT_BASE_DIR/base_data (how they get there:
`nanochat.dataset`).

The directory holds parquet files with one `text` column, sorted by name; the LAST one is the
validation split, all the others the training split (the layout `nanochat.dataset` writes,
whatever its source).

`parquets_iter_batched(split, start, step, resume)` yields one row group at a time; rank r of W
passes start=r, step=W and gets row groups r, r+W, ... of the split's ordered (shard, row group)
list. `position = (shard_index, row_group_index)`, where shard_index counts the files of that split
in order; `resume=position` continues right after it. A missing, unreadable, truncated, empty or
column-less shard is a one-line UserError naming the file and `make data` (`check_shard` raises
`ShardError` for callers that want to decide themselves).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from nanochat.common import UserError, get_base_dir, one_line


def default_data_dir() -> Path:
    return get_base_dir() / "base_data"


def list_parquet_files(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """All parquet files of the data directory, sorted by name (= by shard index)."""
    d = Path(data_dir) if data_dir is not None else default_data_dir()
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".") and p.is_file())


def split_files(split: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    d = Path(data_dir) if data_dir is not None else default_data_dir()
    files = list_parquet_files(d)
    if not files:
        raise UserError(f"no pretraining shards in {d}: run `make data`")
    if len(files) < 2:
        raise UserError(f"only one shard in {d} ({files[0].name}) but training needs two (the last one is "
                        f"the validation split): run `make data`")
    return files[:-1] if split == "train" else files[-1:]


class ShardError(Exception):
    """A parquet file that is unreadable, truncated, empty or has no `text` column."""


def check_shard(path: Path):
    """Open a shard's footer and check it; returns the pyarrow ParquetFile. Raises ShardError."""
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise ShardError("is missing") from None
    except Exception as exc:
        raise ShardError(f"is not a readable parquet file ({type(exc).__name__}: {one_line(exc)})") from None
    if "text" not in pf.schema_arrow.names:
        raise ShardError(f"has no `text` column (columns: {', '.join(pf.schema_arrow.names) or 'none'})")
    if pf.metadata.num_rows == 0 or pf.num_row_groups == 0:
        raise ShardError("is empty (0 rows)")
    return pf


def _open_for_reading(path: Path):
    try:
        return check_shard(path)
    except ShardError as exc:
        raise UserError(f"shard {path} {exc}: delete it and rerun `make data`") from None


def parquets_iter_batched(split: str, start: int = 0, step: int = 1, resume=None,
                          data_dir: str | os.PathLike | None = None) -> Iterator[tuple[list[str], tuple[int, int]]]:
    """Yield (texts, (shard_index, row_group_index)) for this rank's row groups of the split, once.

    The split's row groups are numbered k = 0, 1, 2, ... in (shard, row group) order; this
    iterator takes those with k % step == start. With resume=(s, g) it skips every position
    <= (s, g), i.e. continues exactly after the last position a previous run consumed.
    """
    if step < 1 or not 0 <= start < step:
        raise ValueError(f"need 0 <= start < step, got start={start} step={step}")
    resume_pos = tuple(int(x) for x in resume) if resume is not None else None
    files = split_files(split, data_dir)
    k = 0
    for si, path in enumerate(files):
        pf = _open_for_reading(path)
        for g in range(pf.num_row_groups):
            mine = k % step == start
            k += 1
            if not mine or (resume_pos is not None and (si, g) <= resume_pos):
                continue
            try:
                texts = pf.read_row_group(g, columns=["text"]).column("text").to_pylist()
            except Exception as exc:
                raise UserError(f"shard {path} is corrupt (row group {g}: {one_line(exc)}): delete it and "
                                f"rerun `make data`") from None
            yield [t for t in texts if t is not None], (si, g)
