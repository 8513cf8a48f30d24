"""scripts/chat_cli.py's sampling flags: a value outside the sampler's range is one line naming the range,
exit status 2, before any model loads (the chat itself is tested in tests/test_chat_eval.py)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("tiny_chat", ROOT / "tests" / "fixtures" / "tasks" / "tiny_chat.py")
tiny_chat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_chat)


@pytest.fixture(scope="module")
def cli_base(tmp_path_factory):
    """A real tiny checkpoint, so a flag that slipped through would reach the sampler (and show it)."""
    return tiny_chat.checkpoint_base(tmp_path_factory, "cli")


def chat_cli(base: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.chat_cli", "-g", "tiny", "--device-type", "cpu",
                           "-p", "hello", "-m", "4", *flags], cwd=ROOT, env=subprocess_env(base),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flags, says", [
    (["-t", "nan"], "-t/--temperature must be 0 (greedy) or a number from 0.01 to 2"),
    (["-t", "inf"], "-t/--temperature must be 0 (greedy) or a number from 0.01 to 2"),
    (["-t", "1e-300"], "-t/--temperature must be 0 (greedy) or a number from 0.01 to 2"),
    (["-t", "-1"], "-t/--temperature must be 0 (greedy) or a number from 0.01 to 2"),
    (["-t", "3"], "-t/--temperature must be 0 (greedy) or a number from 0.01 to 2"),
    (["-k", "-5"], "-k/--top-k must be an integer >= 0 (0 = no limit)"),
])
def test_bad_sampling_flags_are_one_line_and_exit_2(cli_base, flags, says):
    res = chat_cli(cli_base, *flags)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (flags, res.returncode, res.stdout[-500:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr and len(lines) == 1, (flags, res.stderr[-2000:])
    assert lines[0].startswith("error: ") and says in lines[0] and flags[1] in lines[0], (flags, lines)
    assert res.stdout == "", "refused before the model loads"


def test_the_edges_of_the_range_are_accepted(cli_base):
    for flags in (["-t", "0"], ["-t", "0.01", "-k", "0"], ["-t", "2", "-k", "1"]):
        res = chat_cli(cli_base, *flags)
        assert res.returncode == 0 and res.stdout.startswith("Assistant: "), (flags, res.stderr[-2000:])
