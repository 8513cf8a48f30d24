"""Letter-level tasks generated from an English word list.

SpellingBee: "How many 'r' are in strawberry?" answered by spelling the word, a calculator tool call
`'strawberry'.count('r')`, its output, and "#### 3". SimpleSpelling: "Spell apple" -> "a,p,p,l,e".

Word list: `nanochat.task_data`'s "words" (offline, Webster's 2nd International (1934), public domain, from
the english-words package). Words are split 90/10 into train / held-out by a hash of the word, so test
questions use words never seen in training.
"""
from __future__ import annotations

import random
import zlib

from nanochat import task_data
from nanochat.tasks.base import Task, TaskUnavailable, extract_final_number, numbers_equal

_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
_SPLIT_WORDS: dict[bool, tuple[list, list[str]]] = {}  # held out? -> (the rows split, their words)


def _held_out(word: str) -> bool:
    return zlib.crc32(word.encode()) % 10 == 0


def _split_words(held: bool) -> tuple[list[str], str]:
    """The train (held=False) or held-out words, split once per word list (a mixture builds four tasks)."""
    rows, source = task_data.load("words", "all")
    if held not in _SPLIT_WORDS or _SPLIT_WORDS[held][0] is not rows:
        _SPLIT_WORDS[held] = (rows, [w for w in sorted({r["word"] for r in rows}) if _held_out(w) == held])
    return _SPLIT_WORDS[held][1], source


class _WordTask(Task):
    default_size = {"train": 10_000}
    held_default = 300

    def __init__(self, split: str = "train", size: int | None = None, **kwargs):
        if split not in ("train", "val", "validation", "test"):
            raise ValueError(f"{self.name} split must be train|val|test, not {split!r}")
        held = split != "train"
        self._words, source = _split_words(held)
        if not self._words:
            raise TaskUnavailable(f"{self.name} {split}", f"the word list from {source} has no {split} words")
        self._size = size if size is not None else (self.default_size["train"] if not held else self.held_default)
        self._salt = "train" if not held else ("test" if split == "test" else "val")
        self.source = f"generated from {source}"
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return self._size

    def _rng(self, index: int) -> random.Random:
        return random.Random(f"{self.name}-{self._salt}-{index}")


_BEE_QUESTIONS = [
    "How many '{l}' are in the word {w}?",
    "How many times does the letter {l} appear in \"{w}\"?",
    "Count the number of {l}'s in {w}.",
    "In the word '{w}', how many {l}s are there?",
    "how many {l} in {w}",
    "How many letter {L} are there in {w}?",
    "Can you tell me how many times '{l}' occurs in the word {w}?",
    "Number of '{l}' characters in \"{w}\"?",
]


class SpellingBee(_WordTask):
    """Count a letter in a word, with a python tool call. Scored on the "#### N" answer."""

    name = "SpellingBee"
    eval_type = "generative"

    def get_example(self, index: int) -> dict:
        rng = self._rng(index)
        w = rng.choice(self._words)
        letter = rng.choice(w) if rng.random() < 0.7 else rng.choice(_ALPHABET)
        count = w.count(letter)
        question = rng.choice(_BEE_QUESTIONS).format(l=letter, L=letter.upper(), w=w)
        parts = [
            {"type": "text", "text": f"Let me spell '{w}' out: {','.join(w)}.\n"
                                     f"Now I count the letter '{letter}' with Python.\n\n"},
            {"type": "python", "text": f"'{w}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\n\nThe letter '{letter}' appears {count} time{'' if count == 1 else 's'} "
                                     f"in '{w}'.\n\n#### {count}"},
        ]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": parts}],
                "word": w, "letter": letter}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        want = str(conversation["word"].count(conversation["letter"]))
        return numbers_equal(extract_final_number(completion), want)


_SPELL_QUESTIONS = [
    "Spell the word: {w}", "How do you spell {w}?", "spell {w}", "Can you spell '{w}' letter by letter?",
    "Please spell out \"{w}\".", "What are the letters of the word {w}?", "Spell {w} for me.",
]


class SimpleSpelling(_WordTask):
    """Spell a word letter by letter ("apple" -> "a,p,p,l,e")."""

    name = "SimpleSpelling"
    eval_type = "generative"

    def get_example(self, index: int) -> dict:
        rng = self._rng(index)
        w = rng.choice(self._words)
        question = rng.choice(_SPELL_QUESTIONS).format(w=w)
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": f"{w}: {','.join(w)}"}],
                "word": w}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        letters = "".join(c for c in completion.lower().split(":")[-1] if c.isalpha())
        return letters == conversation["word"]
