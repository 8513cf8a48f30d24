"""Training mixtures for midtraining and SFT, and the chat-evaluation task registry.

`build_mixture(stage, split)` assembles what is available. A component whose data cannot be found
is left out and listed in `mixture.unavailable` ("X: not available offline (reason)"); a component
served by a substitute says so in its `source`. `mixture.report_lines()` gives both for the report.
"""
from __future__ import annotations

from typing import Callable

from nanochat.tasks.arc import ARC
from nanochat.tasks.base import Task, TaskMixture, TaskUnavailable
from nanochat.tasks.chat import SmolTalk
from nanochat.tasks.gsm8k import GSM8K, ArithmeticWordProblems, gsm8k_train_or_substitute
from nanochat.tasks.humaneval import HumanEval
from nanochat.tasks.identity import Identity
from nanochat.tasks.mmlu import MMLU, MultipleChoiceDrill, mmlu_aux_or_substitute
from nanochat.tasks.spelling import SimpleSpelling, SpellingBee

MIXTURE_SEED = 42


def _first_available(*factories: Callable[[], Task]) -> Task:
    """The first factory that does not raise TaskUnavailable (the last error is re-raised)."""
    err = None
    for f in factories:
        try:
            return f()
        except TaskUnavailable as exc:
            err = exc
    raise err


def _components(stage: str, split: str) -> list[tuple[str, Callable[[], Task]]]:
    if stage == "mid" and split == "train":
        return [
            ("SmolTalk", lambda: SmolTalk("train")),
            ("MMLU auxiliary_train", lambda: mmlu_aux_or_substitute(size_if_substitute=5_000)),
            ("GSM8K train", lambda: gsm8k_train_or_substitute()),
            ("Identity", lambda: Identity("train")),
            ("Identity (2nd copy)", lambda: Identity("train")),
            ("SimpleSpelling", lambda: SimpleSpelling("train", size=5_000)),
            ("SpellingBee", lambda: SpellingBee("train", size=5_000)),
        ]
    if stage == "mid" and split == "val":
        return [
            ("SmolTalk val", lambda: SmolTalk("val")),
            ("MMLU val", lambda: _first_available(lambda: MMLU("validation", stop=1000),
                                                  lambda: MMLU("test", stop=1000),
                                                  lambda: MultipleChoiceDrill("val", size=500))),
            ("GSM8K val", lambda: _first_available(lambda: GSM8K("test", stop=400),
                                                   lambda: ArithmeticWordProblems("val", size=400))),
            ("Identity val", lambda: Identity("val")),
            ("SimpleSpelling val", lambda: SimpleSpelling("val", size=200)),
            ("SpellingBee val", lambda: SpellingBee("val", size=200)),
        ]
    if stage == "sft" and split == "train":
        return [
            ("ARC-Easy train", lambda: ARC("ARC-Easy", "train")),
            ("ARC-Challenge train", lambda: ARC("ARC-Challenge", "train")),
            ("GSM8K train", lambda: gsm8k_train_or_substitute()),
            ("SmolTalk", lambda: SmolTalk("train", stop=10_000)),
            ("Identity", lambda: Identity("train")),
            ("SimpleSpelling", lambda: SimpleSpelling("train", size=300)),
            ("SpellingBee", lambda: SpellingBee("train", size=300)),
        ]
    if stage == "sft" and split == "val":
        return [
            ("SmolTalk val", lambda: SmolTalk("val", stop=2_000)),
            ("ARC-Easy val", lambda: ARC("ARC-Easy", "validation")),
            ("ARC-Challenge val", lambda: ARC("ARC-Challenge", "validation")),
            ("GSM8K val", lambda: _first_available(lambda: GSM8K("test", stop=200),
                                                   lambda: ArithmeticWordProblems("val", size=200))),
            ("Identity val", lambda: Identity("val")),
            ("SimpleSpelling val", lambda: SimpleSpelling("val", size=100)),
            ("SpellingBee val", lambda: SpellingBee("val", size=100)),
        ]
    raise ValueError(f"build_mixture: stage must be mid|sft and split train|val, got {stage!r}/{split!r}")


def build_mixture(stage: str, split: str, max_examples: int | None = None, seed: int = MIXTURE_SEED) -> TaskMixture:
    """The deterministic training (split="train") or validation (split="val") mixture of a stage.

    Returns a TaskMixture with extra attributes: `unavailable` (report lines of missing components),
    `report_lines()` (one line per component with its source, then the missing ones, then the total).
    Raises TaskUnavailable if no component at all could be loaded.
    """
    tasks, missing = [], []
    for label, factory in _components(stage, split):
        try:
            tasks.append(factory())
        except TaskUnavailable as exc:
            missing.append(str(exc))
    if not tasks:
        raise TaskUnavailable(f"{stage} {split} mixture", "; ".join(missing))
    mix = TaskMixture(tasks, seed=seed, split=split, max_examples=max_examples)
    mix.name = f"{stage}-{split}"
    mix.unavailable = missing
    return mix


# ----------------------------------------------------------------------------- evaluation registry

EVAL_TASKS: dict[str, Callable[[], Task]] = {
    "ARC-Easy": lambda: ARC("ARC-Easy", "test"),
    "ARC-Challenge": lambda: ARC("ARC-Challenge", "test"),
    "MMLU": lambda: MMLU("test"),
    "GSM8K": lambda: GSM8K("test"),
    "HumanEval": lambda: HumanEval("test"),
    "SpellingBee": lambda: SpellingBee("test", size=256),
}

# chance accuracy, for ChatCORE's centring: (acc - baseline) / (1 - baseline)
BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0,
             "SpellingBee": 0.0}


def load_eval_task(name: str) -> Task:
    """One of EVAL_TASKS by its report name (case-insensitive); TaskUnavailable if its data is missing."""
    for key, factory in EVAL_TASKS.items():
        if key.lower() == name.strip().lower():
            return factory()
    raise ValueError(f"unknown task {name!r}; choose from {', '.join(EVAL_TASKS)}")
