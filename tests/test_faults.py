"""Faults: real `make speedrun` runs killed mid-flight resume to the uninterrupted result, and a full
disk during a checkpoint write costs nothing that was already saved.

The soak driver is bench/fault_soak.py (`python -m bench.fault_soak --trials 50 --seed 0`; last result
in docs/FAULTS.md). Here: one reference run plus three trials (two forced to hit a training stage with
a checkpoint on disk, one drawn from the seed), then the disk-full cases.

The reference is the session's one shared pipeline run (tests/conftest.py::trained_base, which also
says where the PyPI archives come from and when the make-driven tests skip). The fast suite keeps the
SIGKILL-mid-pretrain trial; the other two trials are `slow` (`make test-all`).
"""
from __future__ import annotations

import errno
import random
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, subprocess_env

from bench import fault_soak  # part of the repo: broken, it must fail, not skip


@pytest.fixture(scope="module")
def soak_env(trained_base, tmp_path_factory):
    """The session's shared uninterrupted run (conftest.trained_base) is the trials' reference."""
    return tmp_path_factory.mktemp("soak"), trained_base.wheelhouse, trained_base.secs, trained_base.fingerprint


def _trial(soak_env, index, force=None, seed=0):
    workdir, wheelhouse, ref_s, ref_fp = soak_env
    t = fault_soak.run_trial(index, random.Random(seed), workdir, wheelhouse, ref_s, ref_fp, force=force)
    assert t.survived, "\n".join(t.problems) + f"\n{t}"
    return t


def test_sigkill_mid_pretrain_resumes_and_matches_reference(soak_env):
    t = _trial(soak_env, 0, force=("pretrain-step", signal.SIGKILL))
    assert t.fired and t.stage_at_kill == "pretrain", t
    assert t.ckpts_at_kill["pretrain"]["complete"], t          # step 2 was on disk ...
    assert any(r.startswith("pretrain@") for r in t.resumed), t  # ... and the rerun continued from it


@pytest.mark.slow   # a whole kill + rerun; the SIGKILL-mid-pretrain trial covers the class fast
def test_sigint_mid_midtrain_resumes_and_matches_reference(soak_env):
    t = _trial(soak_env, 1, force=("after-mid-ckpt", signal.SIGINT))
    assert t.fired and t.stage_at_kill == "midtrain", t
    assert "pretrain" in t.stamps_at_kill and t.ckpts_at_kill["midtrain"]["complete"], t
    assert any(r.startswith("midtrain@") for r in t.resumed), t


@pytest.mark.slow   # a whole kill + rerun; the SIGKILL-mid-pretrain trial covers the class fast
def test_seeded_random_fault(soak_env):
    _trial(soak_env, 2, seed=20240601)


# ----------------------------------------------------------------------------- disk full

# base_train under run_main with torch.save failing like a full disk from its Nth call on: half of
# the temp file is written, then OSError(ENOSPC) -- what a real full file system does mid-write.
ENOSPC_AFTER = r"""
import errno, sys, torch
from nanochat.common import run_main
from scripts import base_train
real_save, calls = torch.save, {"n": 0}
limit = int(sys.argv[1])

def save(obj, f, *a, **k):
    calls["n"] += 1
    if calls["n"] <= limit:
        return real_save(obj, f, *a, **k)
    import io
    buf = io.BytesIO()
    real_save(obj, buf)
    with open(f, "wb") as fh:
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    raise OSError(errno.ENOSPC, "No space left on device", str(f))

torch.save = save
sys.argv = ["base_train"] + sys.argv[2:]
run_main(base_train.main)
"""

TINY = ["--depth=1", "--head-dim=64", "--aspect-ratio=64", "--max-seq-len=64", "--device-batch-size=4",
        "--total-batch-size=256", "--eval-tokens=512", "--eval-every=-1", "--sample-every=-1",
        "--device-type=cpu", "--num-iterations=4", "--save-every=2", "--model-tag=d1"]


@pytest.fixture(scope="module")
def tok_base(tmp_path_factory):
    from test_bad_input import write_corpus
    base = tmp_path_factory.mktemp("diskfull") / "base"
    write_corpus(base / "base_data")
    res = subprocess.run([sys.executable, "-m", "scripts.tok_train", "--vocab-size=512", "--max-chars=200000"],
                         cwd=ROOT, env=subprocess_env(base), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return base


def _assert_previous_step_intact(base: Path, stderr: str):
    from nanochat import checkpoint_manager as ckm
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: disk full") and "Traceback" not in stderr, stderr
    d = base / "base_checkpoints" / "d1"
    assert ckm.complete_steps(d) == [2], sorted(p.name for p in d.iterdir())
    model, optim, meta = ckm.load_checkpoint(d, 2, "cpu", load_optimizer=True)
    assert meta["step"] == 2 and model and optim
    assert not list(d.glob("*.tmp")) and not list(d.glob(".*.tmp")), sorted(p.name for p in d.iterdir())
    assert not (d / "meta_000004.json").exists()


def test_disk_full_during_checkpoint_write_simulated(tok_base, tmp_path):
    """ENOSPC in the middle of step 4's first file: one line, step 2 intact and loadable, no temp file."""
    base = tmp_path / "base"
    shutil.copytree(tok_base, base)
    res = subprocess.run([sys.executable, "-c", ENOSPC_AFTER, "2", *TINY], cwd=ROOT, env=subprocess_env(base),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr
    _assert_previous_step_intact(base, res.stderr)
    # and the disk "freed": the same command resumes from step 2 and finishes
    res = subprocess.run([sys.executable, "-m", "scripts.base_train", *TINY], cwd=ROOT, env=subprocess_env(base),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "resuming from step 2" in res.stdout, res.stdout[-2000:] + res.stderr


def test_disk_full_during_checkpoint_write_tmpfs(tok_base, tmp_path):
    """The same with a real size-limited file system under base_checkpoints (needs mount rights)."""
    base = tmp_path / "base"
    shutil.copytree(tok_base, base)
    mnt = base / "base_checkpoints"
    mnt.mkdir()
    # one step of this model is ~1.4 MB (weights + optimizer): 2 MB holds step 2 but not step 4
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", f"nanochat-test-{uuid.uuid4().hex[:8]}", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}); the simulated "
                    f"ENOSPC test covers the same path")
    try:
        res = subprocess.run([sys.executable, "-m", "scripts.base_train", *TINY], cwd=ROOT,
                             env=subprocess_env(base), capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stdout[-2000:] + res.stderr
        _assert_previous_step_intact(base, res.stderr)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
