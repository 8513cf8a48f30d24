"""The real pipeline, end to end, on CPU, through the Makefile.

The session trains ONE tiny pipeline with the real `make speedrun` (tests/conftest.py::trained_base:
bench.fault_soak.MICRO, every stage, in a temp base dir; also the fault trials' reference). The first
test reads it as it is; every test that changes a parameter reruns on its own copy of it, so each
asserts exactly which suffix of stages reruns, and nothing here trains the pipeline from scratch again.
"""
import os
import subprocess
from pathlib import Path

import pytest
from conftest import stage_modules

ROOT = Path(__file__).resolve().parent.parent

FULL = ["dataset", "tok_train", "tok_eval", "base_train", "base_loss", "base_eval", "mid_train", "chat_eval",
        "chat_sft", "chat_eval", "report"]


def make(base, *args, timeout=900):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "NANOCHAT_"))}
    env.update(NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    py = os.environ.get("NANOCHAT_TEST_PY") or str(Path(os.sys.executable))
    cmd = ["make", "--no-print-directory", f"PY={py}", "VENV_DEP=", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def knob(micro, name):
    return dict(a.split("=", 1) for a in micro)[name]


def test_speedrun_tiny_runs_every_stage_and_reports(trained_base):
    """The shared run itself (read-only): every stage once, in order, a complete report, then a null build."""
    base, micro = trained_base.base, trained_base.micro
    assert stage_modules(trained_base.log) == FULL, trained_base.log[-4000:]
    report = (base / "report" / "report.md").read_text()
    for section in ("## Tokenizer training", "## Base model training", "## Base model loss",
                    "## Base model evaluation", "## Midtraining", "## Chat evaluation mid", "## Chat SFT",
                    "## Chat evaluation sft", "| Metric | BASE | MID | SFT |", "torch: "):
        assert section in report, section
    assert "## Missing sections" not in report
    assert {p.name for p in (base / "report").glob("*.svg")} >= {"base_loss.svg", "mid_loss.svg", "sft_loss.svg"}
    # downstream stages loaded exactly what upstream recorded
    assert (base / ".stamps" / "pretrain.step").read_text().strip() == knob(micro, "NUM_ITERATIONS")
    # a null build (-q: a question, it writes nothing)
    res = make(base, "-q", "speedrun", *micro)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.slow   # fast cover: test_pipeline::test_5_6_7_10 (SFT_EPOCHS=2 reruns exactly sft's suffix, fake
#                     stages) and test_chat_eval::test_chat_cli_one_shot_and_interactive (the real chat CLI)
def test_sft_change_reruns_exactly_sft_then_chat(trained_base, tmp_path):
    """An SFT-only change reruns exactly sft (+ its eval) and the report; then a person can talk to it."""
    base, micro = trained_base.copy(tmp_path / "base"), trained_base.micro
    sft = [*micro, f"SFT_ITERATIONS={int(knob(micro, 'SFT_ITERATIONS')) + 1}"]
    sft_before = (base / "report" / "chat-sft.md").read_text()
    base_before = (base / "report" / "base-model-training.md").read_text()
    res = make(base, "speedrun", *sft)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert stage_modules(res.stdout) == ["chat_sft", "chat_eval", "report"]
    assert (base / "report" / "chat-sft.md").read_text() != sft_before
    assert (base / "report" / "base-model-training.md").read_text() == base_before
    assert make(base, "-q", "speedrun", *sft).returncode == 0

    res = make(base, "chat", *sft, "PROMPT=Hello there", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip()


@pytest.mark.slow   # fast cover: test_pipeline's rl DAG tests (fake stages) + test_chat_rl (the real chat_rl)
def test_rl_by_hand_leaves_speedrun_up_to_date_and_rl_1_only_reports(trained_base, tmp_path):
    """The optional rl stage on the SFT model: by hand it leaves the default pipeline up to date; RL=1
    then only reassembles the report, which now has the RL sections and an RL column."""
    base = trained_base.copy(tmp_path / "base")
    rl = [*trained_base.micro, "RL_ITERATIONS=2", "RL_SAMPLES=2", "RL_MAX_NEW_TOKENS=8", "RL_EVAL_EXAMPLES=2"]
    res = make(base, "rl", *rl)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert stage_modules(res.stdout) == ["chat_rl", "chat_eval"]
    assert (base / ".stamps" / "rl.step").read_text().strip() == "2"
    assert make(base, "-q", "speedrun", *rl).returncode == 0
    res = make(base, "speedrun", "RL=1", *rl)
    assert res.returncode == 0 and stage_modules(res.stdout) == ["report"], res.stdout[-3000:]
    report = (base / "report" / "report.md").read_text()
    assert "## Chat RL" in report and "## Chat evaluation rl" in report and "| Metric | BASE | MID | SFT | RL |" in report
    assert "offline substitute, not GSM8K" in report  # GSM8K train is not shipped offline: the report says so


@pytest.mark.slow   # fast cover: test_launcher (2 ranks via torchrun_no_libuv), test_base_train (nproc=2 == 1),
#                     test_pipeline::test_multiprocess_stages_go_through_the_launcher (make's command line)
def test_pretrain_with_two_gloo_processes_through_the_no_libuv_launcher(trained_base, tmp_path):
    """The same stage with 2 gloo processes through the no-libuv launcher (torchrun must not see the
    scripts' flags; every rank must shut down cleanly): a new DEPTH reruns pretrain (+ its evals) only,
    and NPROC is execution-only."""
    base, micro = trained_base.copy(tmp_path / "base"), trained_base.micro
    depth = f"DEPTH={int(knob(micro, 'DEPTH')) + 1}"
    res = make(base, "pretrain", *micro, depth, "NPROC=2", "DEVICE_BATCH_SIZE=2", "USE_LIBUV=0")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert stage_modules(res.stdout) == ["base_train", "base_loss", "base_eval"]
    assert "-m nanochat.torchrun_no_libuv --standalone --nproc_per_node=2" in res.stdout
    assert "x 2 process(es)" in res.stdout
    assert make(base, "-q", "pretrain", *micro, depth).returncode == 0   # NPROC is execution-only
