"""One source of truth per default: the Makefile's knobs against the scripts' argparse defaults.

The Makefile declares each stage's knobs once, as words `flag=VAR` in `<cmd>_flags` (store-true
flags in `<cmd>_switches`), <cmd> being the module the stage runs. For every such word:
- the flag exists in that script's parser;
- the variable's default (as `make help` prints it) IS the flag's argparse default, unless the preset
  sets the variable, and then the preset must CHANGE it (a preset restating a default would be a
  second source of truth);
- a changed value reaches the command (`make -n`) and the stamp record (`make status`), while
  spelling out the current values reruns nothing.
"""
import argparse
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the Makefile and the machinery it includes
MAKEFILE = "\n".join(p.read_text() for p in [ROOT / "Makefile", *sorted((ROOT / "mk").glob("*.mk"))])
PRESETS = ("tiny", "speedrun", "run1000")
MODULE = {"dataset": "nanochat.dataset"}  # every other <cmd> is scripts.<cmd>


def logical_lines(text):
    return text.replace("\\\n", " ").splitlines()


def flag_lists() -> dict[str, list[tuple[str, str, bool]]]:
    """{cmd: [(flag, VAR, is_switch)]} from the Makefile's `<cmd>_flags` / `<cmd>_switches`."""
    out: dict[str, list] = {}
    for line in logical_lines(MAKEFILE):
        m = re.match(r"^([a-z_]+)_(flags|switches)\s*:=(.*)$", line)
        if m:
            for word in m.group(3).split():
                flag, var = word.split("=")
                out.setdefault(m.group(1), []).append((flag, var, m.group(2) == "switches"))
    return out


FLAGS = flag_lists()


def preset_sets(preset: str) -> set[str]:
    """The variables the preset's block assigns."""
    names, inside = set(), False
    for line in MAKEFILE.splitlines():
        m = re.match(r"^(?:else )?ifeq \(\$\(PRESET\),(\w+)\)", line)
        if m:
            inside = m.group(1) == preset
        elif line.startswith(("else", "endif")):
            inside = False
        elif inside and (v := re.match(r"^\s+([A-Z][A-Z0-9_]*)\s*\?=", line)):
            names.add(v.group(1))
    return names


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_", "MAKE"))}
    for k in {var for lst in FLAGS.values() for _, var, _ in lst} | {
            "PRESET", "NPROC", "NNODES", "DEVICE_TYPE", "DEVICE_BATCH_SIZE", "IN_NIX_SHELL", "RL"}:
        env.pop(k, None)
    env.update(extra)
    return env


def make_values(preset: str, tmp_path) -> dict[str, str]:
    """Every variable `make help` prints, with its value under this preset."""
    res = subprocess.run(["make", "--no-print-directory", "help", f"PRESET={preset}"], cwd=ROOT, text=True,
                         capture_output=True, env=clean_env(NANOCHAT_BASE_DIR=str(tmp_path / "base")), timeout=60)
    assert res.returncode == 0, res.stderr
    return {m.group(1): m.group(2) for m in re.finditer(r"^  ([A-Z][A-Z0-9_]*) +(.*?) *$", res.stdout, re.M)}


class Captured(Exception):
    pass


def parser_of(cmd: str) -> argparse.ArgumentParser:
    """The parser the module's main() builds (captured at its parse_args call, nothing runs)."""
    mod = importlib.import_module(MODULE.get(cmd, f"scripts.{cmd}"))
    seen = []

    def capture(self, *a, **k):
        seen.append(self)
        raise Captured

    orig, argv = argparse.ArgumentParser.parse_args, sys.argv
    argparse.ArgumentParser.parse_args = capture
    sys.argv = [cmd]
    try:
        with pytest.raises(Captured):
            mod.main()
    finally:
        argparse.ArgumentParser.parse_args, sys.argv = orig, argv
    return seen[0]


@pytest.fixture(scope="module")
def parsers():
    return {cmd: parser_of(cmd) for cmd in FLAGS}


def action(parser, flag):
    for a in parser._actions:
        if f"--{flag}" in a.option_strings:
            return a
    raise AssertionError(f"--{flag} is not a flag of {parser.prog}")


def test_the_makefile_declares_every_stages_commands():
    assert {"dataset", "tok_train", "base_train", "base_loss", "base_eval", "mid_train", "chat_sft", "chat_rl",
            "chat_eval"} <= set(FLAGS)
    knobs = {var for lst in FLAGS.values() for _, var, _ in lst}
    assert {"DEPTH", "EMBEDDING_LR", "WARMDOWN_RATIO", "FP8", "VOCAB_SIZE", "SFT_EPOCHS", "RL_SAMPLES"} <= knobs
    assert "SCALAR_LR" not in MAKEFILE and "scalar-lr" not in MAKEFILE  # it never acted: the model has no scalars


@pytest.mark.parametrize("preset", PRESETS)
def test_knob_defaults_are_the_scripts_argparse_defaults(preset, parsers, tmp_path):
    values, set_by_preset = make_values(preset, tmp_path), preset_sets(preset)
    problems = []
    for cmd, lst in FLAGS.items():
        for flag, var, switch in lst:
            a = action(parsers[cmd], flag)
            assert var in values, f"`make help` does not list {var}"
            got = values[var]
            if var == "MODEL_TAG":  # base_train's default "" means d<depth>; the later stages need the name
                assert a.default == "" and got == f"d{values['DEPTH']}"
                continue
            if switch:
                assert isinstance(a, argparse._StoreTrueAction) and got in ("0", "1"), (var, got)
                value = got == "1"
            else:
                kind = a.type or str
                value = None if got == "" else kind(got)
            if var in set_by_preset:
                if value == a.default:
                    problems.append(f"PRESET={preset} restates {var}={got}, the default of {cmd} --{flag}: drop it")
            elif value != a.default:
                problems.append(f"{var}={got} but {cmd} --{flag} defaults to {a.default!r}: change one of them")
    assert not problems, "\n".join(problems)


def test_presets_set_only_knobs_or_execution_settings():
    knobs = {var for lst in FLAGS.values() for _, var, _ in lst}
    execution = {"DEVICE_BATCH_SIZE", "SFT_DEVICE_BATCH_SIZE", "RL_DEVICE_BATCH_SIZE"}
    for preset in PRESETS:
        assert preset_sets(preset) <= knobs | execution, preset


def test_base_train_defaults_follow_nanochat(parsers):
    """The values nanochat's own base_train uses (karpathy/nanochat@348fbb3), which `make pretrain` and
    `python -m scripts.base_train` now both train with."""
    p = parsers["base_train"]
    assert action(p, "embedding-lr").default == 0.3 and action(p, "warmdown-ratio").default == 0.5
    assert all("--scalar-lr" not in a.option_strings for a in p._actions)
    for cmd in ("mid_train", "chat_sft", "chat_rl"):  # nanochat's finetuning scripts keep 0.2
        assert action(parsers[cmd], "embedding-lr").default == 0.2


# ----------------------------------------------------------------------------- values reach commands and stamps

def alternative(var: str, value: str) -> str:
    """Another valid value for `var` (valid together with all the others under PRESET=tiny)."""
    special = {"MODEL_TAG": lambda: "dx", "WINDOW_PATTERN": lambda: "SL", "FP8": lambda: "1",
               "DATA_SOURCE": lambda: "fineweb" if value != "fineweb" else "embedded",
               "MAX_SEQ_LEN": lambda: str(int(value) // 2)}
    if var in special:
        return special[var]()
    if re.fullmatch(r"-?\d+", value):
        return "3" if value == "-1" else str(2 * int(value))
    return repr(float(value) + 0.125)


@pytest.fixture
def built(tmp_path):
    """A private repo copy with a fully built (stubbed: tests/fixtures/fake_py) base dir, rl included."""
    repo = tmp_path / "repo"
    for name in ("nanochat", "scripts"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (repo / "tests" / "fixtures").mkdir(parents=True)
    shutil.copy2(ROOT / "tests" / "fixtures" / "fake_py", repo / "tests" / "fixtures" / "fake_py")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, repo / name)
    shutil.copytree(ROOT / "mk", repo / "mk")
    env = clean_env(NANOCHAT_BASE_DIR=str(tmp_path / "base"))

    def make(*args):
        return subprocess.run(["make", "--no-print-directory", "PY=tests/fixtures/fake_py", "VENV_DEP=", "RL=1", *args],
                              cwd=repo, env=env, text=True, capture_output=True, timeout=120)
    res = make("speedrun")
    assert res.returncode == 0, res.stdout + res.stderr
    return make


def test_a_changed_knob_reaches_its_command_and_its_stamp(built, tmp_path):
    current = make_values("tiny", tmp_path)
    changes = {var: alternative(var, current[var]) for lst in FLAGS.values() for _, var, _ in lst}
    args = [f"{k}={v}" for k, v in changes.items()]
    dry = built("-n", "speedrun", *args)
    assert dry.returncode == 0, dry.stderr
    commands = dry.stdout.replace("\\\n", " ")  # one command per line
    for cmd, lst in FLAGS.items():
        for flag, var, switch in lst:
            want = f"--{flag}" if switch else f"--{flag}={changes[var]}"
            assert re.search(rf"-m {MODULE.get(cmd, 'scripts.' + cmd)} .*{re.escape(want)}(\s|$)", commands, re.M), want
    status = built("status", *args).stdout
    for var, new in changes.items():
        assert f"{var}: {current[var]} -> {new}" in status, var


def test_embedding_lr_example(built):
    dry = built("-n", "pretrain", "EMBEDDING_LR=0.123").stdout
    assert "--embedding-lr=0.123" in dry and "EMBEDDING_LR=0.123" in dry  # the command, and the stamp written
    assert "EMBEDDING_LR: 0.3 -> 0.123" in built("status", "EMBEDDING_LR=0.123").stdout


def test_spelling_out_the_defaults_or_execution_settings_reruns_nothing(built, tmp_path):
    current = make_values("tiny", tmp_path)
    knobs = sorted({var for lst in FLAGS.values() for _, var, _ in lst})
    assert built("-q", "speedrun", *[f"{v}={current[v]}" for v in knobs]).returncode == 0
    res = built("-n", "speedrun", "NPROC=1", "DEVICE_BATCH_SIZE=8", "SFT_DEVICE_BATCH_SIZE=2", "RL_DEVICE_BATCH_SIZE=3",
                "WANDB_RUN=x", "DEVICE_TYPE=cpu")
    assert res.returncode == 0 and "-m scripts." not in res.stdout and "-m nanochat.dataset" not in res.stdout, res.stdout


def test_an_old_stamp_format_costs_one_rerun_and_nothing_else(built, tmp_path):
    """Stamps written before the per-stage layout (keys depth=, lr_scalar=, ...) make their stage rerun once."""
    stamp = tmp_path / "base" / ".stamps" / "pretrain.done"
    text = stamp.read_text()
    after = text[text.index("|after="):]
    stamp.write_text("depth=4;aspect=64;lr_scalar=0.5;lr_emb=0.3" + after)
    res = built("speedrun")
    assert res.returncode == 0, res.stderr
    assert built("-q", "speedrun").returncode == 0


def test_a_checkpoint_that_recorded_the_retired_scalar_lr_still_resumes():
    """--scalar-lr never acted (the model has no scalar parameters) and is gone: a checkpoint whose
    semantic config still has it is compatible with a run that has otherwise the same settings."""
    from nanochat.checkpoint_manager import config_differences
    assert config_differences({"depth": 4, "scalar_lr": 0.5}, {"depth": 4}) == []
    assert config_differences({"depth": 4, "scalar_lr": 0.5}, {"depth": 6}) == ["depth: 4 -> 6"]
