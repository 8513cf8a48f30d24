"""Bad input catalogue: every case fails fast, says in ONE line what is wrong and how to fix it,
and loses nothing that was already built.

Each case runs a real entry point as a subprocess (`python -m scripts.X`, `python -m nanochat.dataset`,
`make ...`) against a private copy of a tiny, fully built base dir (corpus, tokenizer, base checkpoint),
and asserts:

- exit status != 0 within seconds (TIMEOUT);
- stderr holds exactly one non-empty line (make's own "make: *** ... Error" trailer aside), it starts with
  "error:" or names the variable, and no "Traceback";
- every file that existed before the run still exists with the same content (a sha256 snapshot).

Cases already covered elsewhere (in-process or with other assertions) are listed at the end of this
docstring and NOT repeated; where a similar case appears here it goes through a different entry point:

- tests/test_pipeline.py::test_15_*: DEPTH=abc, NPROC=0, PRESET=huge, DEPTH=-2, MATRIX_LR=fast,
  VOCAB_SIZE=1e5, WINDOW_PATTERN=SXL, DEVICE_TYPE=tpu/cuda, NUM_ITERATIONS=ten, redo-nothing,
  unwritable NANOCHAT_BASE_DIR (all at make parse time).
- tests/test_base_train.py: --total-batch-size not a multiple (subprocess), --depth=0, --window-pattern=SXL,
  --warmup-ratio=1.5, --num-iterations=-5, no horizon, --eval-every=0, --matrix-lr=-1, unknown flag,
  --resume=sometimes, --device-type=cuda (in process), missing tokenizer (in process).
- tests/test_chat_train.py: --target-examples-per-step not a multiple, --init-lr-frac=0, no base / mid
  checkpoints (in process).
- tests/test_checkpoint.py: truncated / garbage weights, malicious pickle (model state, in process),
  corrupt meta, missing optimizer shard.
- tests/test_dataset.py: unreachable explicit URL (in process), bad files in --source dir (in process),
  corrupt / column-less / empty shards when reading (in process).
- tests/test_tokenizer.py: truncated / class-referencing tokenizer.pkl, garbage token_bytes.pt (in process).
- tests/test_execution.py: the code-execution sandbox.

NPROC above the number of visible GPUs cannot reach compute_init through a subprocess on a GPU-less
machine (the Makefile rejects DEVICE_TYPE=cuda first), so test_nproc_above_visible_gpus checks
compute_init in process with torch.cuda reporting one GPU.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, subprocess_env

TIMEOUT = 60          # generous ceiling for CI; each case is asserted to finish in FAST seconds
FAST = 30.0
MODEL = ["--model-tag=d1"]
TINY_BASE = ["--depth=1", "--head-dim=64", "--aspect-ratio=64", "--max-seq-len=64", "--device-batch-size=4",
             "--total-batch-size=256", "--eval-tokens=512", "--eval-every=-1", "--sample-every=-1",
             "--device-type=cpu"]

# A wrapper that runs mid_train / chat_sft with a tiny in-memory mixture instead of the PyPI-packaged
# task data (so these cases need no network); everything else is the real script under run_main.
FIXTURE_MIXTURE = r"""
import sys
from nanochat import training
from nanochat.common import run_main
from nanochat.tasks.base import ListTask, TaskMixture

def fixture(stage, split, max_examples=None):
    convs = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                           {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(40)]
    return TaskMixture([ListTask("Fixture", convs, source="test fixture", split=split)], seed=3)

training.load_mixture = fixture
module = __import__("scripts." + sys.argv[1], fromlist=["main"])
sys.argv = [sys.argv[1]] + sys.argv[2:]
run_main(module.main)
"""


# ----------------------------------------------------------------------------- fixtures

WORDS = ("the a of and to in is was it for on with as by at from that this which river stone light "
         "house king queen bird tree water fire earth wind sun moon star old new small great long red "
         "green blue said went came saw made took gave found told asked ran walked spoke").split()


def write_corpus(data_dir: Path, n_docs: int = 160, seed: int = 0) -> None:
    """Two shards (train + val) of deterministic word-salad documents, written with pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = random.Random(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    docs = []
    for _ in range(n_docs):
        sents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
                 for _ in range(rng.randint(10, 30))]
        docs.append(" ".join(sents))
    half = n_docs * 3 // 4
    pq.write_table(pa.table({"text": docs[:half]}), data_dir / "shard_00000.parquet", row_group_size=16)
    pq.write_table(pa.table({"text": docs[half:]}), data_dir / "shard_01822.parquet", row_group_size=16)


def run(base: Path, *cmd, env: dict | None = None, timeout: float = TIMEOUT, script: str | None = None):
    if script is not None:
        full = [sys.executable, "-c", script, *cmd]
    elif cmd and cmd[0] == "make":
        full = list(cmd)
    else:
        full = [sys.executable, "-m", *cmd]
    e = subprocess_env(base, **(env or {}))
    return subprocess.run(full, cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny but complete base dir: corpus, tokenizer (512), base checkpoint d1 (steps 2 and 4)."""
    base = tmp_path_factory.mktemp("built") / "base"
    write_corpus(base / "base_data")
    for cmd in (["scripts.tok_train", "--vocab-size=512", "--max-chars=200000"],
                ["scripts.base_train", *TINY_BASE, "--num-iterations=4", "--save-every=2", *MODEL]):
        res = run(base, *cmd, timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return base


@pytest.fixture
def base(built, tmp_path):
    """A private copy of the built base dir (a case may damage it)."""
    dst = tmp_path / "base"
    shutil.copytree(built, dst)
    return dst


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def expect_failure(base: Path, *cmd, match: str | tuple = (), env=None, script=None, allow_make_trailer=False):
    """Run; assert a fast non-zero exit, one clean stderr line containing every `match`, nothing lost."""
    before = snapshot(base)
    t0 = time.time()
    res = run(base, *cmd, env=env, script=script)
    elapsed = time.time() - t0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    if allow_make_trailer:
        lines = [ln for ln in lines if not ln.startswith(("make: ***", "make[1]: ***"))]
    ctx = f"cmd={cmd}\nrc={res.returncode}\nSTDERR:\n{res.stderr[-3000:]}\nSTDOUT:\n{res.stdout[-1500:]}"
    assert res.returncode != 0, ctx
    assert elapsed < FAST, f"took {elapsed:.1f}s\n{ctx}"
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, ctx
    assert len(lines) == 1, ctx
    for m in (match,) if isinstance(match, str) else match:
        assert m in lines[0], f"{m!r} not in the error line\n{ctx}"
    after = snapshot(base)
    lost = sorted(k for k in before if k not in after)
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    assert not lost and not changed, f"lost {lost}, changed {changed}\n{ctx}"
    return lines[0]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()     # nothing listens there any more: connections are refused at once
    return port


def ckpt(base: Path, stage="base_checkpoints", tag="d1") -> Path:
    return base / stage / tag


# ============================================================================ make variables (parse time)
# (Only values not already in tests/test_pipeline.py::test_15_*; real Makefile, real PY: each fails
# at parse time, so no stage runs and the built base dir is untouched.)

@pytest.mark.parametrize("assign,variable", [
    ("MAX_SEQ_LEN=0", "MAX_SEQ_LEN"),
    ("TOTAL_BATCH_SIZE=512k", "TOTAL_BATCH_SIZE"),
    ("SFT_TARGET_EXAMPLES=-4", "SFT_TARGET_EXAMPLES"),
    ("WARMUP_RATIO=1/2", "WARMUP_RATIO"),
    ("CORE_MAX_PER_TASK=all", "CORE_MAX_PER_TASK"),
    ("BASE_ARGS=--model-tag='x'", "BASE_ARGS"),
    ("WINDOW_PATTERN=", "WINDOW_PATTERN"),
    ("DEPTH=4.5", "DEPTH"),
])
def test_make_variable_rejected_at_parse_time(base, assign, variable):
    expect_failure(base, "make", "--no-print-directory", "speedrun", assign, "PY=false", "VENV_DEP=",
                   match=variable)


def test_make_absurd_depth_fails_in_the_script_not_by_oom(base):
    """DEPTH=100000 is a valid integer for make; base_train must refuse it in one line before
    allocating anything (the model would need ~10^18 parameters)."""
    expect_failure(base, "scripts.base_train", *TINY_BASE, "--depth=100000", "--num-iterations=1",
                   "--model-tag=huge", match="--depth=100000")


def test_nproc_above_visible_gpus(monkeypatch):
    """More processes per node than visible GPUs: compute_init refuses before touching a device, naming
    NPROC. In process, with torch.cuda reporting one GPU: without a real GPU no subprocess gets this far
    (the Makefile rejects DEVICE_TYPE=cuda first, tests/test_pipeline.py::test_15)."""
    import torch
    from nanochat.common import UserError, compute_init
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for var, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(UserError, match=r"^NPROC=2 processes per node but only 1 GPU\(s\) visible: set NPROC<=1$"):
        compute_init("cuda")


# ============================================================================ script flags

def test_mid_total_batch_not_multiple(base):
    expect_failure(base, "mid_train", "--device-type=cpu", *MODEL, "--max-seq-len=64", "--device-batch-size=4",
                   "--total-batch-size=1000", script=FIXTURE_MIXTURE, match=("--total-batch-size=1000", "768 or 1024"))


def test_mid_max_seq_len_above_the_model(base):
    expect_failure(base, "mid_train", "--device-type=cpu", *MODEL, "--max-seq-len=128", "--device-batch-size=2",
                   "--total-batch-size=256", "--num-iterations=1", script=FIXTURE_MIXTURE,
                   match=("--max-seq-len=128", "64"))


def test_sft_max_seq_len_above_the_model(base):
    expect_failure(base, "chat_sft", "--device-type=cpu", "--source=base", *MODEL, "--max-seq-len=4096",
                   "--device-batch-size=2", "--target-examples-per-step=4", "--num-iterations=1",
                   script=FIXTURE_MIXTURE, match=("--max-seq-len=4096", "64"))


def test_mid_nonexistent_model_tag(base):
    expect_failure(base, "mid_train", "--device-type=cpu", "--model-tag=d99", script=FIXTURE_MIXTURE,
                   match=("d99", "d1"))


def test_mid_nonexistent_model_step(base):
    expect_failure(base, "mid_train", "--device-type=cpu", *MODEL, "--model-step=3", script=FIXTURE_MIXTURE,
                   match=("step 3", "2, 4"))


def test_base_loss_nonexistent_model_tag(base):
    expect_failure(base, "scripts.base_loss", "--device-type=cpu", "--model-tag=d7", match=("d7", "make pretrain"))


def test_base_eval_nonexistent_step(base):
    expect_failure(base, "scripts.base_eval", "--device-type=cpu", *MODEL, "--step=5", match=("step 5", "2, 4"))


def test_chat_eval_without_sft_checkpoint(base):
    expect_failure(base, "scripts.chat_eval", "--device-type=cpu", "-i", "sft", "-g", "d1",
                   match=("chatsft_checkpoints", "make sft"))


def test_base_loss_cuda_without_gpu(base):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    expect_failure(base, "scripts.base_loss", "--device-type=cuda", *MODEL, match=("--device-type=cuda", "cpu"))


def test_chat_eval_cuda_without_gpu(base):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    expect_failure(base, "scripts.chat_eval", "--device-type=cuda", "-i", "base", "-g", "d1",
                   match=("--device-type=cuda", "cpu"))


def test_unknown_device_type(base):
    expect_failure(base, "scripts.base_train", *TINY_BASE, "--device-type=tpu", match="tpu")


# the same entry point and the same one-line check per flag: two stay in the fast suite
@pytest.mark.parametrize("flag,match", [
    ("--depth=-3", "--depth=-3"),
    pytest.param("--eval-tokens=-512", "--eval-tokens=-512", marks=pytest.mark.slow),
    pytest.param("--keep-last=-1", "--keep-last=-1", marks=pytest.mark.slow),
    pytest.param("--save-every=0", "--save-every=0", marks=pytest.mark.slow),
    ("--window-pattern=sssl", "--window-pattern='sssl'"),
    pytest.param("--resume-from-step=-7", "--resume-from-step=-7", marks=pytest.mark.slow),
])
def test_base_train_bad_values(base, flag, match):
    expect_failure(base, "scripts.base_train", *TINY_BASE, "--num-iterations=4", *MODEL, flag, match=match)


def test_sft_negative_device_batch(base):
    expect_failure(base, "chat_sft", "--device-type=cpu", "--device-batch-size=-2", script=FIXTURE_MIXTURE,
                   match="--device-batch-size=-2")


def test_tok_train_vocab_too_small(base):
    expect_failure(base, "scripts.tok_train", "--vocab-size=100", "--max-chars=1000", match=("--vocab-size", "100"))


def test_tok_train_without_rustbpe_names_the_install(base, tmp_path):
    shadow = tmp_path / "shadow"  # a rustbpe that cannot be imported, first on the path
    shadow.mkdir()
    (shadow / "rustbpe.py").write_text('raise ImportError("No module named \'rustbpe\'")\n')
    pythonpath = f"{shadow}{os.pathsep}{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    expect_failure(base, "scripts.tok_train", "--vocab-size=512", "--max-chars=1000", env={"PYTHONPATH": pythonpath},
                   match=("rustbpe", "pip install rustbpe"))


def test_dataset_zero_shards(base):
    expect_failure(base, "nanochat.dataset", "-n", "0", "--source", "embedded", match="-n 0")


def test_dataset_unknown_flag_is_one_line(base):
    expect_failure(base, "nanochat.dataset", "--shards=3", match=("--shards=3", "--help"))


def test_tok_train_unknown_flag_is_one_line(base):
    expect_failure(base, "scripts.tok_train", "--vocabulary-size=512", match=("--vocabulary-size=512", "--help"))


def test_flag_prefix_is_not_taken_for_the_flag(base):
    """`--vocab=512` is not `--vocab-size=512`: a typo must not silently pick a flag (allow_abbrev=False)."""
    expect_failure(base, "scripts.tok_train", "--vocab=512", "--max-chars=1000", match=("--vocab=512", "--help"))


def test_chat_eval_bad_source_is_one_line(base):
    expect_failure(base, "scripts.chat_eval", "-i", "ppo", match=("ppo", "--help"))
    expect_failure(base, "scripts.chat_eval", "-i", "rl", match=("no rl checkpoints", "make rl"))


def test_chat_rl_bad_flags_and_missing_sft_are_one_line(base):
    expect_failure(base, "scripts.chat_rl", "--num-samples=1", match="--num-samples>=2")
    expect_failure(base, "scripts.chat_rl", "--temperature=0", match="positive temperature")
    expect_failure(base, "scripts.chat_rl", "--device-type=cpu", match=("no sft checkpoints", "make sft"))


def test_dataset_source_neither_url_nor_dir(base, tmp_path):
    expect_failure(base, "nanochat.dataset", "--source", str(tmp_path / "nowhere"), match="is not an http(s) URL")


# ============================================================================ files

def _shard_dir(tmp_path: Path, bad_name: str, write_bad) -> Path:
    src = tmp_path / "src"
    write_corpus(src, n_docs=16, seed=1)
    write_bad(src / bad_name)
    return src


def _truncated(p: Path):
    data = (p.parent / "shard_00000.parquet").read_bytes()     # a real shard, cut in half
    p.write_bytes(data[: len(data) // 2])


def _not_parquet(p: Path):
    p.write_text("<html>404 Not Found</html>\n")


def _no_text_column(p: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"body": ["some text", "more text"]}), p)


def _empty(p: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": pa.array([], type=pa.string())}), p)


BAD_SHARDS = {"truncated": (_truncated, "not a readable parquet"), "not-parquet": (_not_parquet, "not a readable parquet"),
              "no-text-column": (_no_text_column, "no `text` column"), "empty": (_empty, "is empty")}


def shard_kinds(fast: str) -> list:
    """Every kind of bad shard, all but `fast` marked slow: tests/test_dataset.py checks each kind in
    process (fast); here one kind per entry point stays in the fast suite, `make test-all` runs all."""
    return [k if k == fast else pytest.param(k, marks=pytest.mark.slow) for k in sorted(BAD_SHARDS)]


@pytest.mark.parametrize("kind", shard_kinds("empty"))
def test_dataset_source_dir_with_bad_shard(base, tmp_path, kind):
    """`make data DATA_SOURCE=<dir>` on a fresh base: the bad file is named, nothing is linked."""
    write_bad, why = BAD_SHARDS[kind]
    src = _shard_dir(tmp_path, "shard_00005.parquet", write_bad)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    expect_failure(fresh, "nanochat.dataset", "--source", str(src), match=("shard_00005.parquet", why))
    assert not (fresh / "base_data").exists() or not list((fresh / "base_data").glob("*.parquet"))


@pytest.mark.parametrize("kind", shard_kinds("truncated"))
def test_base_train_on_bad_val_shard(base, kind):
    """A damaged validation shard in base_data: training stops with the shard's name, and the existing
    checkpoints of the same tag are neither resumed into nor deleted."""
    write_bad, why = BAD_SHARDS[kind]
    write_bad(base / "base_data" / "shard_01822.parquet")
    expect_failure(base, "scripts.base_train", *TINY_BASE, "--num-iterations=6", "--save-every=2", *MODEL,
                   match=("shard_01822.parquet", "make data"))


def test_tok_train_on_corrupt_train_shard(base):
    _not_parquet(base / "base_data" / "shard_00000.parquet")
    expect_failure(base, "scripts.tok_train", "--vocab-size=512", "--max-chars=200000",
                   match=("shard_00000.parquet", "make data"))


def test_base_loss_with_corrupt_tokenizer_pkl(base):
    pkl = base / "tokenizer" / "tokenizer.pkl"
    pkl.write_bytes(pkl.read_bytes()[:100])
    expect_failure(base, "scripts.base_loss", "--device-type=cpu", *MODEL, match="make tokenizer")


def test_tok_eval_without_tokenizer(base):
    shutil.rmtree(base / "tokenizer")
    expect_failure(base, "scripts.tok_eval", match="make tokenizer")


def test_base_train_resume_from_step_of_another_config(base):
    """--resume-from-step refuses a checkpoint whose semantic config differs (here: matrix LR)."""
    expect_failure(base, "scripts.base_train", *TINY_BASE, "--num-iterations=4", *MODEL, "--resume-from-step=2",
                   "--matrix-lr=0.03", match=("cannot resume step 2", "matrix_lr", "--resume=fresh"))


def test_base_train_resume_from_incomplete_step(base):
    (ckpt(base) / "meta_000004.json").unlink()      # step 4: weights but no meta = a write that was cut
    expect_failure(base, "scripts.base_train", *TINY_BASE, "--num-iterations=4", *MODEL, "--resume-from-step=4",
                   match=("step 4 is not a complete checkpoint", "2"))


def test_base_loss_on_truncated_weights(base):
    p = ckpt(base) / "model_000004.pt"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    expect_failure(base, "scripts.base_loss", "--device-type=cpu", *MODEL, "--step=4",
                   match=("model_000004.pt", "truncated or corrupt"))


def _malicious(path: Path, marker: Path):
    import torch

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"w": Boom()}, path)


def test_malicious_pickle_as_model_file_via_chat_eval(base, tmp_path):
    marker = tmp_path / "pwned"
    _malicious(ckpt(base) / "model_000004.pt", marker)
    expect_failure(base, "scripts.chat_eval", "--device-type=cpu", "-i", "base", "-g", "d1", "-s", "4",
                   match=("refusing to load", "model_000004.pt"))
    assert not marker.exists()


def test_malicious_pickle_as_optimizer_file_on_resume(base, tmp_path):
    marker = tmp_path / "pwned"
    _malicious(ckpt(base) / "optim_000002_rank0.pt", marker)
    expect_failure(base, "scripts.base_train", *TINY_BASE, "--num-iterations=4", *MODEL, "--resume-from-step=2",
                   match=("refusing to load", "optim_000002_rank0.pt"))
    assert not marker.exists()


def test_garbage_meta_json(base):
    (ckpt(base) / "meta_000004.json").write_text("{not json")
    expect_failure(base, "scripts.base_loss", "--device-type=cpu", *MODEL, "--step=4",
                   match=("meta_000004.json", "unreadable"))


# ============================================================================ environment

def test_no_network_when_a_download_is_needed(base, tmp_path):
    """An explicit URL source on a closed localhost port: one line, no retries for minutes."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    url = f"http://127.0.0.1:{closed_port()}/shards"
    expect_failure(fresh, "nanochat.dataset", "-n", "1", "--source", url, "--retries", "0",
                   env={"NANOCHAT_DATA_URL": url}, match=("cannot reach", "127.0.0.1"))


def test_make_data_with_unreachable_url_keeps_built_data(base):
    """`make data` switching an embedded/dir-built base to an unreachable URL: refused, data kept.
    (The data stamp is stale-by-design and removed by the recipe; everything else stays.)"""
    url = f"http://127.0.0.1:{closed_port()}/x"
    (base / "base_data" / "SOURCE.txt").write_text("kind: embedded\nlocation: PyPI packages (see below)\n")
    before = snapshot(base)
    res = run(base, "make", "--no-print-directory", "data", f"DATA_SOURCE={url}", "DATA_SHARDS=1", "VENV_DEP=",
              f"PY={sys.executable}")
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    errs = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(("make: ***", "make[1]: ***"))]
    assert len(errs) == 1 and "already holds shards from the embedded corpus" in errs[0], res.stderr
    after = snapshot(base)
    assert all(after.get(k) == v for k, v in before.items() if k.startswith("base_data/"))
