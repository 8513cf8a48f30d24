"""nanochat.common: atomic_output (the one temp-file -> check -> chmod -> rename sequence) and the
base dir check (`ensure_base_dir`: one line naming NANOCHAT_BASE_DIR, exit 2, from every entry point)."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from nanochat.common import UserError, atomic_output, atomic_torch_save, atomic_write_text, ensure_base_dir


def _leftovers(directory, name):
    return sorted(p.name for p in directory.iterdir() if p.name != name)


def test_atomic_output_success_renames_the_temp_file_into_place(tmp_path):
    target = tmp_path / "sub" / "out.txt"           # the parent is created
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.txt.") and tmp.name.endswith(".tmp")
        tmp.write_text("new")
        assert not target.exists()                   # nothing visible before the block ends
    assert target.read_text() == "new"
    assert _leftovers(target.parent, "out.txt") == []


def test_atomic_output_replaces_an_existing_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert _leftovers(tmp_path, "out.txt") == []


@pytest.mark.parametrize("existing", [None, "old"])
def test_atomic_output_exception_leaves_no_file_and_no_temp(tmp_path, existing):
    target = tmp_path / "out.txt"
    if existing is not None:
        target.write_text(existing)

    class CheckFailed(Exception):
        pass

    with pytest.raises(CheckFailed):
        with atomic_output(target) as tmp:
            tmp.write_text("half written")
            raise CheckFailed("the written file did not pass its check")
    if existing is None:
        assert not target.exists()
    else:
        assert target.read_text() == existing
    assert _leftovers(tmp_path, "out.txt") == []


def test_atomic_output_permissions(tmp_path):
    old = os.umask(0o077)                             # a strict umask must not leak into outputs
    try:
        with atomic_output(tmp_path / "a") as tmp:
            tmp.write_text("x")
        atomic_write_text(tmp_path / "b", "x")
        src = tmp_path / "src"
        src.write_text("linked")
        os.chmod(src, 0o600)
        with atomic_output(tmp_path / "c", mode=None) as tmp:   # e.g. a hard link: its source's mode stays
            tmp.unlink()
            os.link(src, tmp)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o644
    assert stat.S_IMODE(src.stat().st_mode) == 0o600 and (tmp_path / "c").read_text() == "linked"


def test_atomic_output_custom_prefix(tmp_path):
    seen = []
    with atomic_output(tmp_path / "shard.parquet", prefix=".dl-shard.parquet.") as tmp:
        seen.append(tmp.name)
        tmp.write_bytes(b"1")
    assert seen[0].startswith(".dl-shard.parquet.") and seen[0].endswith(".tmp")


def test_atomic_torch_save_failure_leaves_nothing(tmp_path):
    import torch
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.load(tmp_path / "ok.pt", weights_only=True)["w"].tolist() == [1.0, 1.0]
    with pytest.raises(Exception):
        atomic_torch_save({"f": lambda: None}, tmp_path / "bad.pt")   # a lambda cannot be pickled
    assert _leftovers(tmp_path, "ok.pt") == []


# ----------------------------------------------------------------------------- an unusable base dir

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def _unusable_base_dirs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = {"file in the way": blocker, "file as parent": blocker / "base"}
    if Path("/proc/self").exists():
        cases["under /proc"] = Path("/proc/nanochat-nope")
    return cases


def _one_line_error(res):
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "NANOCHAT_BASE_DIR" in lines[0], res.stderr
    return lines[0]


LOCK = ["-m", "nanochat.pipeline", "lock", "{base}", "1", "--stage", "data"]   # the Makefile's first call


@pytest.mark.parametrize("case,entry", [
    ("file in the way", LOCK), ("file as parent", LOCK), ("under /proc", LOCK),
    # the Python entry points share get_base_dir -> ensure_base_dir (each case once is enough)
    ("under /proc", ["-m", "nanochat.dataset", "-n", "1", "--source", "embedded"]),
    ("file in the way", ["-m", "scripts.tok_train"]),
])
def test_unusable_base_dir_is_one_line_and_exit_2(tmp_path, case, entry):
    cases = _unusable_base_dirs(tmp_path)
    if case not in cases:
        pytest.skip("no /proc on this system")
    base = cases[case]
    cmd = [sys.executable] + [a.replace("{base}", str(base)) for a in entry]
    res = subprocess.run(cmd, env=subprocess_env(base), capture_output=True, text=True, timeout=120)
    assert str(base) in _one_line_error(res)
    assert not (tmp_path / "a-file" / "base").exists()


def test_ensure_base_dir_in_process(tmp_path):
    for case, base in _unusable_base_dirs(tmp_path).items():
        with pytest.raises(UserError, match="NANOCHAT_BASE_DIR"):
            ensure_base_dir(base)
    made = ensure_base_dir(tmp_path / "new" / "base")          # missing parents are created
    assert made.is_dir() and made == tmp_path / "new" / "base"


@pytest.mark.skipif(ROOT_USER, reason="root ignores directory modes, so chmod cannot make a dir read-only for it")
@pytest.mark.parametrize("which", ["the dir itself", "its parent"])
def test_read_only_base_dir_is_one_line_and_exit_2(tmp_path, which):
    ro = tmp_path / "ro"
    ro.mkdir()
    base = ro if which == "the dir itself" else ro / "base"
    os.chmod(ro, 0o555)
    try:
        with pytest.raises(UserError, match="NANOCHAT_BASE_DIR"):
            ensure_base_dir(base)
        res = subprocess.run([sys.executable, "-m", "nanochat.pipeline", "lock", str(base), "1"],
                             env=subprocess_env(base), capture_output=True, text=True, timeout=60)
        assert str(base) in _one_line_error(res)
    finally:
        os.chmod(ro, 0o755)
