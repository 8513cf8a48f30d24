"""base_train / base_loss end to end on CPU: a tiny model learns, resumes exactly, runs under DDP."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env
from test_dataloader import prepare_base

TINY = ["--depth=2", "--head-dim=64", "--max-seq-len=64", "--window-pattern=SL", "--device-batch-size=8",
        "--total-batch-size=1024", "--eval-tokens=2048", "--sample-every=-1", "--device-type=cpu"]
STEP_RE = re.compile(r"^step (\d+)/\d+ .*\| loss ([0-9.]+) ")


def run_script(base, module, *args, nproc=1, timeout=240):
    if nproc == 1:
        cmd = [sys.executable, "-m", module, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", module, *args]
    return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(base), capture_output=True, text=True, timeout=timeout)


def losses(out: str) -> dict[int, str]:
    found = {}
    for line in out.splitlines():
        m = STEP_RE.match(line.strip())
        if m:
            found[int(m.group(1))] = m.group(2)
    return found


def ok(res):
    assert res.returncode == 0, f"exit {res.returncode}\nSTDOUT:\n{res.stdout[-3000:]}\nSTDERR:\n{res.stderr[-3000:]}"
    return res.stdout


def test_tiny_run_learns_and_reports(base_dir):
    prepare_base(base_dir)
    rec = base_dir / "pretrain.step"
    out = ok(run_script(base_dir, "scripts.base_train", *TINY, "--num-iterations=30", "--eval-every=15",
                        "--sample-every=30", "--model-tag=tiny", f"--record-output={rec}"))
    ls = {k: float(v) for k, v in losses(out).items()}
    assert sorted(ls) == list(range(1, 31))
    assert sum(ls[s] for s in range(26, 31)) / 5 < ls[1] - 2.0, ls  # ~6.0 -> ~1.2 on this corpus
    assert "time to first step" in out and "tok/s" in out and "eta" in out
    assert "| mfu n/a |" in out and "mfu 0.00%" not in out  # no bf16 peak is known for a CPU
    from bench.bench_pretrain import STEP_RE as BENCH_STEP_RE  # the throughput bench parses these lines
    step_lines = [line for line in out.splitlines() if STEP_RE.match(line)]
    assert len(step_lines) == 30 and all(BENCH_STEP_RE.match(line) for line in step_lines), step_lines[:2]
    assert "sample |" in out
    assert "window attention: explicit-mask SDPA (no GPU)" in out  # SL pattern, short window 32 < 64
    vals = [float(x) for x in re.findall(r"val_bpb ([0-9.]+)", out)]
    assert len(vals) == 3 and vals[-1] < vals[0]
    d = base_dir / "base_checkpoints" / "tiny"
    assert sorted(p.name for p in d.iterdir()) == ["meta_000030.json", "model_000030.pt", "optim_000030_rank0.pt"]
    meta = json.loads((d / "meta_000030.json").read_text())
    assert meta["step"] == 30 and meta["model_config"]["n_layer"] == 2 and meta["val_bpb"] == pytest.approx(vals[-1], abs=1e-5)
    assert "device_batch_size" not in meta["semantic_config"] and meta["semantic_config"]["depth"] == 2
    assert meta["user_config"]["device_batch_size"] == 8
    assert rec.read_text().strip() == "30"
    section = (base_dir / "report" / "base-model-training.md").read_text()
    for key in ("Parameters", "FLOPs per token", "Total training FLOPs", "Final val bpb", "Mean MFU", "Mean tok/s"):
        assert key in section
    assert re.search(r"Mean MFU %.*n/a \(no bf16 peak known for this device\)", section), section
    assert (base_dir / "report" / "base_loss.svg").read_text().startswith("<svg")
    # base_loss on that checkpoint
    out = ok(run_script(base_dir, "scripts.base_loss", "--model-tag=tiny", "--step=30", "--device-batch-size=4",
                        "--split-tokens=2048", "--device-type=cpu"))
    assert re.search(r"train bpb: [0-9.]+", out) and re.search(r"val bpb: [0-9.]+", out)
    assert "sample: 'The capital of France is" in out
    loss_md = (base_dir / "report" / "base-model-loss.md").read_text()
    assert "val bpb" in loss_md and "train bpb" in loss_md


def test_resume_reproduces_losses_exactly(base_dir):
    prepare_base(base_dir)
    args = [*TINY, "--num-iterations=8", "--eval-every=4", "--save-every=4", "--model-tag=res"]
    full = losses(ok(run_script(base_dir, "scripts.base_train", *args)))
    d = base_dir / "base_checkpoints" / "res"
    assert [p.name for p in sorted(d.glob("meta_*"))] == ["meta_000004.json", "meta_000008.json"]
    # simulate a crash while writing step 8: no meta -> step 8 is partial and ignored
    (d / "meta_000008.json").unlink()
    out = ok(run_script(base_dir, "scripts.base_train", *args))  # --resume=auto (default)
    assert "resuming from step 4" in out
    resumed = losses(out)
    assert sorted(resumed) == [5, 6, 7, 8]
    for s in (5, 6, 7, 8):
        assert resumed[s] == full[s], (s, resumed[s], full[s])
    assert (d / "meta_000008.json").exists()
    meta = json.loads((d / "meta_000008.json").read_text())
    assert [x[0] for x in meta["loop_state"]["train_losses"]] == list(range(1, 9))  # history survives resume
    # rerunning a finished run resumes at its end: nothing left to train
    again = ok(run_script(base_dir, "scripts.base_train", *args))
    assert losses(again) == {} and "resuming from step 8" in again
    # another configuration does not resume: one warning, then it starts over
    out = ok(run_script(base_dir, "scripts.base_train", *args[:-1], "--matrix-lr=0.01", "--num-iterations=2",
                        "--model-tag=res"))
    assert "do not match" in out and "matrix_lr: 0.02 -> 0.01" in out
    assert sorted(losses(out)) == [1, 2]
    assert sorted(p.name for p in d.glob("meta_*")) == ["meta_000002.json"]


def test_ddp_two_processes_match_one(base_dir):
    prepare_base(base_dir)
    args = [*TINY, "--num-iterations=6", "--eval-every=-1", "--save-every=3"]
    one = ok(run_script(base_dir, "scripts.base_train", *args, "--model-tag=one"))
    two = ok(run_script(base_dir, "scripts.base_train", *args, "--model-tag=two", nproc=2))
    # init_run's world line: printed once, by rank 0 only
    assert [line for line in one.splitlines() if line.startswith("world size")] == \
        ["world size 1 (rank 0; device type cpu; backend none, single process)"]
    assert [line for line in two.splitlines() if line.startswith("world size")] == \
        ["world size 2 (ranks 0-1; device type cpu; backend gloo)"]
    l1, l2 = losses(one), losses(two)
    assert sorted(l1) == sorted(l2) == list(range(1, 7))
    # same total batch; the ranks see other documents, so the curves agree only approximately
    for s in l1:
        assert abs(float(l1[s]) - float(l2[s])) <= 0.1 * float(l1[s]) + 0.02, (s, l1[s], l2[s])
    v1 = float(re.findall(r"val_bpb ([0-9.]+)", one)[-1])
    v2 = float(re.findall(r"val_bpb ([0-9.]+)", two)[-1])
    assert abs(v1 - v2) <= 0.15 * v1, (v1, v2)
    d = base_dir / "base_checkpoints" / "two"
    assert (d / "optim_000006_rank0.pt").exists() and (d / "optim_000006_rank1.pt").exists()
    meta = json.loads((d / "meta_000006.json").read_text())
    assert meta["world_size"] == 2 and [s["rank"] for s in meta["dataloader_state"]] == [0, 1]
    # DDP resume from step 3 reproduces steps 4..6 exactly
    res = ok(run_script(base_dir, "scripts.base_train", *args, "--model-tag=two", "--resume-from-step=3", nproc=2))
    lr = losses(res)
    assert sorted(lr) == [4, 5, 6] and all(lr[s] == l2[s] for s in lr), (lr, l2)


def test_bad_flags_fail_fast_with_one_line(base_dir):
    res = run_script(base_dir, "scripts.base_train", "--total-batch-size=1000", "--max-seq-len=64",
                     "--device-batch-size=8", timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --total-batch-size=1000") and "512 or 1024" in lines[0]


@pytest.mark.parametrize("argv,pattern", [
    (["--depth=0"], "--depth=0 must be positive"),
    (["--window-pattern=SXL"], "unknown character"),
    (["--warmup-ratio=1.5"], "between 0 and 1"),
    (["--num-iterations=-5"], "num-iterations"),
    (["--num-iterations=-1", "--target-param-data-ratio=-1"], "no training horizon"),
    (["--eval-every=0"], "eval-every"),
    (["--matrix-lr=-1"], "matrix-lr"),
    (["--nope"], "unrecognized arguments"),
    (["--resume=sometimes"], "invalid choice"),
    (["--device-type=cuda", "--max-seq-len=64", "--total-batch-size=2048"], "cuda|CUDA|GPU"),
])
def test_bad_flags_in_process(base_dir, argv, pattern):
    import torch
    from nanochat.common import UserError
    from scripts import base_train
    if "--device-type=cuda" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UserError, match=pattern):
        base_train.main(argv)


def test_missing_tokenizer_is_a_user_error(base_dir):
    from nanochat.common import UserError
    from scripts import base_train
    with pytest.raises(UserError, match="tokenizer"):
        base_train.main([*TINY, "--num-iterations=1"])


@pytest.mark.parametrize("module,argv", [
    ("base_train", [*TINY, "--num-iterations=1"]),
    ("mid_train", ["--device-type=cpu"]),
    ("chat_sft", ["--device-type=cpu", "--model-tag=x"]),
])
def test_every_training_script_prints_its_world_once(base_dir, monkeypatch, capsys, module, argv):
    """All three go through startup.init_run, which prints the line before anything is loaded (here
    the tokenizer, mixture or checkpoint is missing, so each then stops with a UserError)."""
    import importlib
    from nanochat import training
    from nanochat.common import UserError
    monkeypatch.setattr(training, "load_mixture", lambda stage, split, max_examples=None: [])
    script = importlib.import_module(f"scripts.{module}")
    with pytest.raises(UserError):
        script.main(argv)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("world size")]
    assert lines == ["world size 1 (rank 0; device type cpu; backend none, single process)"]
