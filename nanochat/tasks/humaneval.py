"""HumanEval (OpenAI, MIT): 164 Python functions; a completion passes when the hidden tests pass.

Model-written code is only ever run through nanochat.execution.execute (separate, resource-limited,
sandboxed process). The rows come from `nanochat.task_data`.
"""
from __future__ import annotations

import re
import secrets

from nanochat import task_data
from nanochat.tasks.base import Task

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(completion: str) -> str:
    """The first fenced code block if there is one, else the completion as is."""
    m = _FENCE.search(completion)
    return m.group(1) if m else completion


def build_program(prompt: str, completion: str, test: str, entry_point: str, passed_code: int = 0) -> str:
    """Prompt + completion + the task's tests + the call to `check`, then exit with `passed_code`.

    A completion that (re)defines the entry point is appended after the prompt (so helper functions
    and imports in the prompt stay available); otherwise it is taken as the body continuing the prompt.
    A secret `passed_code` proves `check` ran to its end: a completion that exits early with status 0
    (`sys.exit()` under `if __name__ == "__main__":`, `os._exit(0)`) must not count as a pass.
    """
    code = extract_code(completion)
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        body = prompt.rstrip("\n") + "\n\n" + code
    else:
        body = prompt + code
    return f"{body}\n\n{test}\n\ncheck({entry_point})\nraise SystemExit({passed_code})\n"


class HumanEval(Task):
    """split "test" only (the dataset has no other split)."""

    name = "HumanEval"
    eval_type = "generative"

    def __init__(self, split: str = "test", timeout: float = 5.0, **kwargs):
        if split != "test":
            raise ValueError("HumanEval has only a test split")
        self.timeout = timeout
        self._rows, self.source = task_data.load("humaneval", "test")
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
        passed_code = 3 + secrets.randbelow(120)  # an exit status the completion cannot know
        program = build_program(conversation["prompt"], completion, conversation["test"], conversation["entry_point"],
                                passed_code)
        return execute(program, timeout=self.timeout).returncode == passed_code
