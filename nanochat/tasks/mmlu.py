"""MMLU (57-subject multiple choice) and a generated multiple-choice drill used as a clearly
labelled substitute for MMLU's auxiliary_train split, which no PyPI package ships."""
from __future__ import annotations

import random

from nanochat import task_data
from nanochat.tasks.base import Task, TaskUnavailable, multiple_choice_conversation

_SPLITS = {"test": "test", "validation": "validation", "val": "validation", "dev": "dev",
           "auxiliary_train": "auxiliary_train", "train": "auxiliary_train"}


class MMLU(Task):
    """split: "test" | "validation" ("val") | "dev" | "auxiliary_train" ("train"); rows from `nanochat.task_data`."""

    name = "MMLU"
    eval_type = "categorical"

    def __init__(self, split: str = "test", **kwargs):
        if split not in _SPLITS:
            raise ValueError(f"MMLU split must be one of {sorted(_SPLITS)}, not {split!r}")
        self._rows, self.source = task_data.load("mmlu", _SPLITS[split])
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return len(self._rows)

    def get_example(self, index: int) -> dict:
        r = self._rows[index]
        return multiple_choice_conversation(r["question"], r["choices"], r["answer"], subject=r["subject"])


# ----------------------------------------------------------------------------- substitute

class MultipleChoiceDrill(Task):
    """Generated multiple-choice questions (arithmetic, comparisons, letters, word lengths).

    Teaches the *format* MMLU's auxiliary_train teaches (read a question and lettered choices,
    answer with one letter). It is a substitute, labelled as such; it teaches no world knowledge.
    Deterministic: example i depends only on (split, i).
    """

    name = "MultipleChoiceDrill"
    eval_type = "categorical"
    source = "substitute: generated multiple-choice drills (nanochat templates) for MMLU auxiliary_train"

    _WORDS = ["cat", "house", "river", "elephant", "sun", "mountain", "book", "garden", "window", "computer",
              "tree", "ocean", "pencil", "butterfly", "cloud", "dog", "bicycle", "moon", "library", "apple",
              "teacher", "island", "friend", "kitchen", "rain", "planet", "violin", "bridge", "forest", "egg"]

    def __init__(self, split: str = "train", size: int | None = None, **kwargs):
        self._size = size if size is not None else (20_000 if split == "train" else 500)
        self._salt = {"train": 0, "val": 1, "validation": 1, "test": 2}.get(split, 3) * 1_000_003
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return self._size

    def get_example(self, index: int) -> dict:
        rng = random.Random(f"mcdrill-{self._salt}-{index}")
        kind = rng.randrange(5)
        if kind == 0:
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            op = rng.choice(["+", "-", "*"])
            right = eval(f"{a}{op}{b}")  # noqa: S307 - two ints and a fixed operator
            question = f"What is {a} {op} {b}?"
            wrong = {right + d for d in (-10, -2, -1, 1, 2, 10, 11)} - {right}
            options = [str(right)] + [str(w) for w in rng.sample(sorted(wrong), 3)]
        elif kind == 1:
            nums = rng.sample(range(1, 1000), 4)
            largest = rng.random() < 0.5
            question = f"Which of these numbers is the {'largest' if largest else 'smallest'}?"
            right = max(nums) if largest else min(nums)
            options = [str(right)] + [str(n) for n in nums if n != right]
        elif kind == 2:
            i = rng.randrange(25)
            letter = "abcdefghijklmnopqrstuvwxyz"[i]
            question = f"Which letter comes right after '{letter}' in the English alphabet?"
            right = "abcdefghijklmnopqrstuvwxyz"[i + 1]
            others = [c for c in "abcdefghijklmnopqrstuvwxyz" if c != right]
            options = [right] + rng.sample(others, 3)
        elif kind == 3:
            words = rng.sample(self._WORDS, 4)
            while len({len(w) for w in words}) < 4:
                words = rng.sample(self._WORDS, 4)
            longest = rng.random() < 0.5
            question = f"Which word has the {'most' if longest else 'fewest'} letters?"
            right = (max if longest else min)(words, key=len)
            options = [right] + [w for w in words if w != right]
        else:
            n = rng.randint(2, 12)
            question = f"How many sides does a polygon with {n + 1} corners have?"
            right = n + 1
            options = [str(right)] + [str(x) for x in rng.sample([v for v in range(3, 16) if v != right], 3)]
        order = list(range(4))
        rng.shuffle(order)
        choices = [options[j] for j in order]
        return multiple_choice_conversation(question, choices, order.index(0), subject="drill")


def mmlu_aux_or_substitute(size_if_substitute: int | None = None, **kwargs) -> Task:
    """MMLU auxiliary_train when available, else the labelled MultipleChoiceDrill substitute."""
    try:
        return MMLU(split="auxiliary_train", **kwargs)
    except TaskUnavailable as exc:
        task = MultipleChoiceDrill(split="train", size=size_if_substitute, **kwargs)
        task.source = f"{MultipleChoiceDrill.source} ({exc.reasons[0]})"
        return task

