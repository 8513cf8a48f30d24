"""Shared fixtures. Every test runs against its own temporary NANOCHAT_BASE_DIR (hermetic)."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    """A fresh, empty NANOCHAT_BASE_DIR for this test (also exported to subprocesses)."""
    d = tmp_path / "base"
    d.mkdir()
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(d))
    # never let a test talk to a real rank/world from the environment
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    return d


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: with 2 OpenMP threads on a 2-core box that is also busy, spin-waiting makes
    these tests ~50x slower; one thread is fastest and predictable."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def repo_root():
    return ROOT


def subprocess_env(base: Path, **extra) -> dict:
    """Environment for running our scripts in a subprocess against `base`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    env["NANOCHAT_BASE_DIR"] = str(base)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def stage_modules(make_output: str) -> list[str]:
    """Stage modules in the order make echoes (or, under -n, would run) them: the last `-m X` of each line."""
    import re
    mods = []
    for line in make_output.splitlines():
        found = re.findall(r"-m (?:scripts|nanochat)\.(\w+)", line)
        if found and found[-1] not in ("pipeline", "torchrun_no_libuv"):
            mods.append(found[-1])
    return mods
