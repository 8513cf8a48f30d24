"""nanochat.common: atomic_output (the one temp-file -> check -> chmod -> rename sequence)."""
import os
import stat

import pytest

from nanochat.common import atomic_output, atomic_torch_save, atomic_write_text


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
