"""mid_train and chat_sft on CPU with a small fixture mixture (no network, no task downloads)."""
from __future__ import annotations

import json
import random

import pytest

from test_base_train import TINY, ok, run_script
from test_dataloader import prepare_base

NAMES = ["the cat", "a dog", "the old man", "my sister", "the teacher", "a small bird", "the king", "our neighbour"]
THINGS = ["the red ball", "a green house", "the river", "an apple", "the tall tree", "a letter", "the moon", "bread"]


def fixture_task(split: str, n: int):
    from nanochat.tasks.base import ListTask, TaskMixture
    rng = random.Random(0 if split == "train" else 1)
    convs = []
    for _ in range(n):
        i = rng.randrange(len(THINGS))
        convs.append({"messages": [
            {"role": "user", "content": f"Who likes {THINGS[i]}?"},
            {"role": "assistant", "content": f"{NAMES[i].capitalize()} likes {THINGS[i]}."}]})
    return TaskMixture([ListTask("Fixture", convs, source="test fixture", split=split)], seed=3)


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs: one intra-op thread (2 cores shared with the data thread and other jobs;
    OpenMP spinning on an oversubscribed machine is 10x slower)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base_template(tmp_path_factory):
    """Corpus, tokenizer and a tiny base checkpoint (tag c, step 20), trained once per module."""
    tmpl = tmp_path_factory.mktemp("chat-template")
    prepare_base(tmpl)
    ok(run_script(tmpl, "scripts.base_train", *TINY, "--num-iterations=20", "--eval-every=-1", "--model-tag=c"))
    return tmpl


@pytest.fixture
def chat_base(base_dir, base_template, monkeypatch):
    """A base dir with corpus, tokenizer, the tiny base checkpoint, and build_mixture patched."""
    import shutil
    for sub in ("base_data", "tokenizer", "base_checkpoints"):
        shutil.copytree(base_template / sub, base_dir / sub)
    from nanochat import training

    def fake_load_mixture(stage, split, max_examples=None):
        return fixture_task(split, 200 if split == "train" else 40)
    monkeypatch.setattr(training, "load_mixture", fake_load_mixture)
    return base_dir


MID = ["--device-type=cpu", "--model-tag=c", "--device-batch-size=4", "--total-batch-size=512",
       "--max-seq-len=64", "--eval-tokens=1024"]
SFT = ["--device-type=cpu", "--model-tag=c", "--device-batch-size=4", "--target-examples-per-step=8",
       "--eval-steps=4", "--eval-metrics-every=-1"]


def evals(meta):
    return {s: m for s, m in meta["loop_state"]["evals"]}


def read_meta(base, stage_dir, tag, step):
    return json.loads((base / stage_dir / tag / f"meta_{step:06d}.json").read_text())


def test_mid_then_sft_lower_val_loss(chat_base):
    from scripts import chat_sft, mid_train
    base = chat_base
    rec = base / "mid.step"
    mid_train.main([*MID, "--num-iterations=8", "--eval-every=8", "--model-step=20", f"--record-output={rec}"])
    meta = read_meta(base, "mid_checkpoints", "c", 8)
    ev = evals(meta)
    assert ev[8]["val_loss"] < ev[0]["val_loss"] - 0.5, ev
    assert meta["semantic_config"]["upstream"]["source"] == "base"
    assert meta["semantic_config"]["upstream"]["step"] == 20
    assert rec.read_text().strip() == "8"
    assert (base / "report" / "midtraining.md").exists() and (base / "report" / "mid_loss.svg").exists()

    sft_rec = base / "sft.step"
    chat_sft.main([*SFT, "--source=mid", "--model-step=8", "--num-iterations=6", "--eval-every=3",
                   f"--record-output={sft_rec}"])
    meta = read_meta(base, "chatsft_checkpoints", "c", 6)
    ev = evals(meta)
    assert sorted(ev) == [0, 3, 6] and ev[6]["val_loss"] < ev[0]["val_loss"], ev
    assert meta["semantic_config"]["upstream"]["source"] == "mid"
    assert sft_rec.read_text().strip() == "6"
    section = (base / "report" / "chat-sft.md").read_text()
    assert "Final val loss" in section and (base / "report" / "sft_loss.svg").exists()


def test_mid_and_sft_resume_exactly(chat_base):
    from scripts import chat_sft, mid_train
    base = chat_base
    mid_train.main([*MID, "--num-iterations=4", "--eval-every=-1", "--save-every=2"])
    full = read_meta(base, "mid_checkpoints", "c", 4)["loop_state"]["train_losses"]
    mid_train.main([*MID, "--num-iterations=4", "--eval-every=-1", "--save-every=2", "--resume-from-step=2"])
    again = read_meta(base, "mid_checkpoints", "c", 4)["loop_state"]["train_losses"]
    assert again == full and [s for s, _ in full] == [1, 2, 3, 4]

    chat_sft.main([*SFT, "--source=mid", "--num-iterations=4", "--eval-every=-1", "--save-every=2"])
    full = read_meta(base, "chatsft_checkpoints", "c", 4)["loop_state"]["train_losses"]
    (base / "chatsft_checkpoints" / "c" / "meta_000004.json").unlink()  # crash before step 4 completed
    chat_sft.main([*SFT, "--source=mid", "--num-iterations=4", "--eval-every=-1", "--save-every=2"])
    again = read_meta(base, "chatsft_checkpoints", "c", 4)["loop_state"]["train_losses"]
    assert again == full


def test_upstream_change_starts_over(chat_base, capsys):
    from scripts import mid_train
    base = chat_base
    mid_train.main([*MID, "--num-iterations=2", "--eval-every=-1"])
    # a newer base checkpoint appears: mid now starts from another upstream and must not resume
    import shutil
    d = base / "base_checkpoints" / "c"
    shutil.copy(d / "model_000020.pt", d / "model_000021.pt")
    meta = json.loads((d / "meta_000020.json").read_text())
    meta["step"] = 21
    (d / "meta_000021.json").write_text(json.dumps(meta))
    capsys.readouterr()
    mid_train.main([*MID, "--num-iterations=2", "--eval-every=-1"])
    out = capsys.readouterr().out
    assert "do not match" in out and "upstream" in out
    assert read_meta(base, "mid_checkpoints", "c", 2)["semantic_config"]["upstream"]["step"] == 21


def test_chat_flag_errors(base_dir, monkeypatch):
    from nanochat.common import UserError
    from scripts import chat_sft, mid_train
    with pytest.raises(UserError, match="target-examples-per-step=10 is not a multiple.*8 or 12"):
        chat_sft.main(["--device-type=cpu", "--device-batch-size=4", "--target-examples-per-step=10"])
    with pytest.raises(UserError, match="init-lr-frac"):
        mid_train.main(["--device-type=cpu", "--init-lr-frac=0"])
    from nanochat import training
    monkeypatch.setattr(training, "load_mixture", lambda stage, split, max_examples=None: fixture_task(split, 10))
    with pytest.raises(UserError, match="no base checkpoints .*make pretrain"):
        mid_train.main(["--device-type=cpu"])
    with pytest.raises(UserError, match="no checkpoints in .*mid_checkpoints/x.*make midtrain"):
        chat_sft.main(["--device-type=cpu", "--model-tag=x"])


def test_sft_chat_metrics_use_the_categorical_evaluator(chat_base, monkeypatch):
    """--eval-metrics-every: MMLU / ARC-Easy accuracy through nanochat.chat_eval, in the loop state and
    the report; a task whose data is missing is skipped with a line, training goes on."""
    from nanochat.tasks import TaskUnavailable
    from nanochat.tasks.base import ListTask, multiple_choice_conversation
    from scripts import chat_sft
    convs = [multiple_choice_conversation(f"Which is thing {i}?", THINGS[:4], i % 4) for i in range(6)]
    calls = []

    def fake_load_eval_task(name):
        calls.append(name)
        if name == "ARC-Easy":
            raise TaskUnavailable("ARC-Easy test", "not available offline")
        return ListTask(name, convs, source="test fixture", split="test", eval_type="categorical")
    monkeypatch.setattr(chat_sft, "load_eval_task", fake_load_eval_task)
    chat_sft.main([*SFT[:-1], "--eval-metrics-every=2", "--eval-metrics-max-problems=5", "--source=base",
                   "--num-iterations=2", "--eval-every=-1"])
    extras = read_meta(chat_base, "chatsft_checkpoints", "c", 2)["loop_state"]["extras"]
    assert calls == ["MMLU", "ARC-Easy"] and set(extras) == {"MMLU acc"}
    assert extras["MMLU acc"] in {k / 5 for k in range(6)}       # 5 problems counted
    assert "MMLU acc" in (chat_base / "report" / "chat-sft.md").read_text()
