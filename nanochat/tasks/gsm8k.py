"""GSM8K grade-school maths, rendered with calculator tool calls.

GSM8K solutions annotate each computation as `<<48/2=24>>`. We turn the solution into assistant
parts: the text before the annotation, then {"type": "python", "text": "48/2"} and
{"type": "python_output", "text": "24"}, then the following text, ... ending with "#### 72".

The rows come from `nanochat.task_data`. GSM8K *train* is not shipped by any PyPI package.
`ArithmeticWordProblems` generates GSM8K-style problems (same annotation format) and is used as a
labelled substitute by build_mixture.
"""
from __future__ import annotations

import random
import re

from nanochat import task_data
from nanochat.tasks.base import Task, TaskUnavailable, extract_final_number, last_assistant_text, numbers_equal

_CALC = re.compile(r"<<([^<>]*)>>")


def solution_parts(answer: str) -> list[dict]:
    """GSM8K answer text -> assistant parts with python / python_output tool calls."""
    parts: list[dict] = []

    def text(t: str):
        if not t:
            return
        if parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += t
        else:
            parts.append({"type": "text", "text": t})

    pos = 0
    for m in _CALC.finditer(answer):
        text(answer[pos:m.start()])
        expr, sep, result = m.group(1).rpartition("=")
        if not sep:  # malformed annotation: keep it as plain text
            text(m.group(0))
        else:
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "python_output", "text": result})
        pos = m.end()
    text(answer[pos:])
    return parts


def reference_answer(conversation: dict) -> str | None:
    return extract_final_number(last_assistant_text(conversation))


def score_final_number(conversation: dict, completion: str) -> bool:
    return numbers_equal(extract_final_number(completion), reference_answer(conversation))


class GSM8K(Task):
    """split "train" | "test" (offline, only the test split exists)."""

    name = "GSM8K"
    eval_type = "generative"

    def __init__(self, split: str = "test", **kwargs):
        if split not in ("train", "test"):
            raise ValueError(f"GSM8K split must be train|test, not {split!r}")
        self._rows, self.source = task_data.load("gsm8k", split)
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return len(self._rows)

    def get_example(self, index: int) -> dict:
        r = self._rows[index]
        return {"messages": [{"role": "user", "content": r["question"]},
                             {"role": "assistant", "content": solution_parts(r["answer"])}]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return score_final_number(conversation, completion)


# ----------------------------------------------------------------------------- substitute

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira", "Liam",
          "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yusuf"]
_ITEMS = [("apple", "apples"), ("marble", "marbles"), ("sticker", "stickers"), ("book", "books"),
          ("cookie", "cookies"), ("pencil", "pencils"), ("shell", "shells"), ("stamp", "stamps")]


def _fmt(x) -> str:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return str(x)


def _problem(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(_NAMES)
    _, items = rng.choice(_ITEMS)
    kind = rng.randrange(6)
    if kind == 0:
        a, b, c = rng.randint(5, 60), rng.randint(2, 9), rng.randint(2, 12)
        bc = b * c
        t = a + bc
        q = (f"{name} has {a} {items}. {name} buys {b} packs with {c} {items} in each pack. "
             f"How many {items} does {name} have now?")
        s = (f"The packs hold {b}*{c}=<<{b}*{c}={bc}>>{bc} {items}.\n"
             f"So {name} has {a}+{bc}=<<{a}+{bc}={t}>>{t} {items} now.\n#### {t}")
    elif kind == 1:
        price, n = rng.randint(2, 15), rng.randint(2, 9)
        cost = price * n
        paid = (cost // 10 + 1) * 10 + rng.choice([0, 10, 20])
        change = paid - cost
        q = (f"{name} buys {n} {items} for ${price} each and pays with ${paid}. "
             f"How much change does {name} get back?")
        s = (f"The {items} cost {n}*{price}=$<<{n}*{price}={cost}>>{cost}.\n"
             f"The change is {paid}-{cost}=$<<{paid}-{cost}={change}>>{change}.\n#### {change}")
    elif kind == 2:
        k = rng.randint(2, 6)
        per = rng.randint(3, 20)
        total = k * per
        q = f"{name} shares {total} {items} equally among {k} friends. How many {items} does each friend get?"
        s = f"Each friend gets {total}/{k}=<<{total}/{k}={per}>>{per} {items}.\n#### {per}"
    elif kind == 3:
        a, d = rng.randint(10, 90), rng.randint(2, 9)
        w = rng.randint(2, 5)
        given = d * w
        left = a + 100 - given
        q = (f"{name} starts with {a + 100} {items} and gives away {d} {items} every week for {w} weeks. "
             f"How many {items} are left?")
        s = (f"{name} gives away {d}*{w}=<<{d}*{w}={given}>>{given} {items}.\n"
             f"{a + 100}-{given}=<<{a + 100}-{given}={left}>>{left} {items} are left.\n#### {left}")
    elif kind == 4:
        speed, hours, extra = rng.randint(20, 70), rng.randint(2, 6), rng.randint(5, 40)
        dist = speed * hours
        total = dist + extra
        q = (f"{name} drives at {speed} miles per hour for {hours} hours, then walks {extra} more miles. "
             f"How many miles does {name} travel in total?")
        s = (f"Driving covers {speed}*{hours}=<<{speed}*{hours}={dist}>>{dist} miles.\n"
             f"In total that is {dist}+{extra}=<<{dist}+{extra}={total}>>{total} miles.\n#### {total}")
    else:
        price, pct = rng.choice([20, 40, 60, 80, 120, 200]), rng.choice([10, 20, 25, 50])
        off = price * pct // 100
        final = price - off
        q = f"A jacket costs ${price}. {name} gets a {pct}% discount. How much does {name} pay?"
        s = (f"The discount is {price}*{pct}/100=$<<{price}*{pct}/100={_fmt(price * pct / 100)}>>{off}.\n"
             f"{name} pays {price}-{off}=$<<{price}-{off}={final}>>{final}.\n#### {final}")
    return q, s


class ArithmeticWordProblems(Task):
    """Generated GSM8K-style word problems with <<calc>> annotations (deterministic per (split, index))."""

    name = "ArithmeticWordProblems"
    eval_type = "generative"
    source = "substitute: generated GSM8K-style arithmetic word problems (nanochat templates) for GSM8K train"

    def __init__(self, split: str = "train", size: int | None = None, **kwargs):
        self._size = size if size is not None else (7_473 if split == "train" else 400)  # GSM8K train size
        self._salt = {"train": "tr", "val": "va", "validation": "va", "test": "te"}.get(split, split)
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return self._size

    def get_example(self, index: int) -> dict:
        q, s = _problem(random.Random(f"awp-{self._salt}-{index}"))
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": solution_parts(s)}]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return score_final_number(conversation, completion)


def gsm8k_train_or_substitute(**kwargs) -> Task:
    try:
        return GSM8K(split="train", **kwargs)
    except TaskUnavailable as exc:
        task = ArithmeticWordProblems(split="train", **kwargs)
        task.source = f"{ArithmeticWordProblems.source} ({exc.reasons[0]})"
        return task
