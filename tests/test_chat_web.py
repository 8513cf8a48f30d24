"""The web chat (scripts/chat_web.py, nanochat/web.py, nanochat/static/index.html) against a real server
process on a tiny random model: the HTTP API, its refusals, the concurrency bound, shutdown, and a
headless Chromium that uses the page as a person would."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import subprocess_env
from test_pipeline import pipe, repo  # noqa: F401  (the Makefile tests' fixtures: a repo copy + fake python)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "tasks"
_spec = importlib.util.spec_from_file_location("tiny_chat", FIX / "tiny_chat.py")
tiny_chat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_chat)


MAX_CHARS = 20000   # the test server's --max-chars
MAX_TOKENS = 48     # its --max-tokens
CONTEXT = 10 * 128  # tiny_chat's model: sequence_len 128, rotary tables 10x that
URL_RE = re.compile(r"nanochat web chat: (http://\S+)")


# ----------------------------------------------------------------------------- the server process

@pytest.fixture(scope="module")
def web_base(tmp_path_factory):
    return tiny_chat.checkpoint_base(tmp_path_factory, "web")


def start_server(base: Path, *flags: str, timeout: float = 120.0, stderr=subprocess.PIPE):
    """Launch scripts.chat_web with --port 0 and return (process, url) once it prints its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", "-g", "tiny", "--device-type", "cpu",
                             "--port", "0", *flags], cwd=ROOT, env=subprocess_env(base),
                            stdout=subprocess.PIPE, stderr=stderr, text=True)
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            m = URL_RE.search(line)
            if m:
                return proc, m.group(1)
        elif proc.poll() is not None:
            break
    proc.kill()
    out, err = proc.communicate()
    if err is None:  # stderr went to a file
        err = Path(stderr.name).read_text()
    pytest.fail(f"server did not start (exit {proc.returncode}):\n{''.join(seen)}{out}\n{err[-3000:]}")


def stop_server(proc, sig=signal.SIGTERM) -> tuple[int, str, str]:
    """Send `sig` once and collect the exit status and output."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def server(web_base):
    proc, url = start_server(web_base, "--max-concurrent", "1", "--max-chars", str(MAX_CHARS),
                             "--max-tokens", str(MAX_TOKENS))
    yield url
    # SIGTERM: a graceful exit, and no traceback logged over everything the tests threw at it
    code, out, err = stop_server(proc)
    assert code == 0 and "SIGTERM: shutting down" in out and out.rstrip().endswith("stopped"), (out, err[-3000:])
    assert "Traceback" not in err and "internal error" not in err, err[-3000:]


# ----------------------------------------------------------------------------- HTTP helpers

def http(url: str, path: str, body=None, method: str | None = None, timeout: float = 60.0,
         headers: dict | None = None):
    """-> (status, content type, body bytes); HTTP errors are results, not exceptions. `headers` add to
    (or, with None values, drop) the defaults: urllib's Host, and Content-Type: application/json with a body."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if data is not None else {}
    sent.update(headers or {})
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,
                                 headers={k: v for k, v in sent.items() if v is not None})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, res.headers.get("Content-Type", ""), res.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def events(raw: bytes) -> list[dict]:
    """Server-Sent Events' data payloads, in order."""
    out = []
    for block in raw.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                out.append(json.loads(line[len("data: "):]))
    return out


def complete(url, messages, **params):
    status, ctype, raw = http(url, "/chat/completions", {"messages": messages, **params})
    assert status == 200, raw[:500]
    assert ctype.startswith("text/event-stream")
    evs = events(raw)
    assert evs and evs[-1].get("done") is True, evs[-3:]
    return [e for e in evs[:-1]], evs[-1]


def text_of(pieces) -> str:
    return "".join(p["token"] for p in pieces if p["kind"] == "text")


def health(url) -> dict:
    status, ctype, raw = http(url, "/health")
    assert status == 200 and ctype.startswith("application/json")
    return json.loads(raw)


def wait_until(predicate, timeout=30.0, what="condition"):
    """Poll for a state the server reports (not a timed assertion: it fails only if never reached)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


USER = [{"role": "user", "content": "hello, who are you?"}]


# ----------------------------------------------------------------------------- API

def test_health_reports_the_loaded_checkpoint(server):
    h = health(server)
    assert h["status"] == "ok" and h["model_loaded"] is True
    assert h["checkpoint"] == {"source": "sft", "tag": "tiny", "step": 0}
    assert h["device"] == "cpu" and h["devices"] == ["cpu"] and h["workers"] == 1
    assert h["max_concurrent"] == 1 and h["context_tokens"] == CONTEXT
    assert h["max_chars"] == MAX_CHARS and h["max_tokens"] == MAX_TOKENS and h["in_flight"] == 0


def test_page_is_self_contained(server):
    status, ctype, raw = http(server, "/")
    assert status == 200 and ctype.startswith("text/html")
    page = raw.decode()
    assert 'id="prompt"' in page and 'id="send"' in page and "/chat/completions" in page
    # nothing from outside: the test browser (and many labs) have no internet
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must not load external URLs"


def test_streamed_completion(server):
    pieces, done = complete(server, USER, temperature=0.0, max_tokens=16)
    assert len(pieces) >= 1 and all(set(p) == {"token", "kind", "segment"} for p in pieces)
    assert done["finish_reason"] in ("stop", "length") and 1 <= done["completion_tokens"] <= 16
    assert done["prompt_tokens"] > 0 and done["worker"] == 0
    if isinstance(done["content"], str):  # no tool call: the pieces spell out the whole answer
        assert text_of(pieces) == done["content"]
    # greedy decoding is reproducible, and sampling is reproducible under a seed
    assert complete(server, USER, temperature=0.0, max_tokens=16)[1]["content"] == done["content"]
    a = complete(server, USER, temperature=1.0, top_k=0, max_tokens=16, seed=7)[1]
    b = complete(server, USER, temperature=1.0, top_k=0, max_tokens=16, seed=7)[1]
    assert a["content"] == b["content"]
    # a multi-turn conversation whose assistant turn used the calculator, with a system prompt
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 6*7?"},
               {"role": "assistant", "content": [{"type": "python", "text": "6*7"},
                                                 {"type": "python_output", "text": "42"},
                                                 {"type": "text", "text": "42."}]},
               {"role": "user", "content": "and doubled?"}]
    pieces2, done2 = complete(server, history, max_tokens=8)
    assert done2["prompt_tokens"] > done["prompt_tokens"] and done2["completion_tokens"] >= 1


def _raw_request(url: str, head: bytes, timeout: float = 30.0) -> tuple[int, dict]:
    """Send raw bytes (for requests urllib will not make) -> (status, JSON body)."""
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    status = int(raw.split(b" ", 2)[1])
    return status, json.loads(raw.split(b"\r\n\r\n", 1)[1])


BAD_REQUESTS = [
    ("malformed JSON", b'{"messages": [', 400, "not valid JSON"),
    ("not UTF-8", b"\xff\xfe{}", 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, "JSON object"),
    ("messages not a list", {"messages": "hi"}, 400, "non-empty list"),
    ("no messages", {"messages": []}, 400, "non-empty list"),
    ("message not an object", {"messages": ["hi"]}, 400, "'role' and 'content'"),
    ("content not a string", {"messages": [{"role": "user", "content": 5}]}, 400, "must be a string"),
    ("unknown role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    ("bad assistant part", {"messages": [{"role": "user", "content": "a"},
                                         {"role": "assistant", "content": [{"type": "image", "text": ""}]},
                                         {"role": "user", "content": "b"}]}, 400, "parts"),
    ("empty message", {"messages": [{"role": "user", "content": "   "}]}, 400, "empty"),
    ("no user message", {"messages": [{"role": "assistant", "content": "hi"}]}, 400, "no user message"),
    ("last is not the user's", {"messages": USER + [{"role": "assistant", "content": "hi"}]}, 400, "last message"),
    ("roles out of order", {"messages": USER + USER}, 400, "alternate"),
    ("unknown field", {"messages": USER, "temprature": 1}, 400, "unknown field 'temprature'"),
    ("temperature a string", {"messages": USER, "temperature": "hot"}, 400, "temperature"),
    ("temperature negative", {"messages": USER, "temperature": -0.5}, 400, "temperature"),
    ("temperature too high", {"messages": USER, "temperature": 5}, 400, "temperature"),
    ("top_k negative", {"messages": USER, "top_k": -1}, 400, "top_k"),
    ("top_k above the vocabulary", {"messages": USER, "top_k": 10**6}, 400, "top_k"),
    ("top_k fractional", {"messages": USER, "top_k": 2.5}, 400, "top_k"),
    ("top_k boolean", {"messages": USER, "top_k": True}, 400, "top_k"),
    ("max_tokens zero", {"messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens above --max-tokens", {"messages": USER, "max_tokens": MAX_TOKENS + 1}, 400, "max_tokens"),
    ("seed negative", {"messages": USER, "seed": -3}, 400, "seed"),
    ("longer than --max-chars", {"messages": [{"role": "user", "content": "x" * (MAX_CHARS + 1)}]}, 413,
     "--max-chars"),
    ("longer than the model's context", {"messages": [{"role": "user", "content": "hello world " * 300}]}, 413,
     "context"),
    ("role a list", {"messages": [{"role": ["user"], "content": "hi"}]}, 400, "use system, user or assistant"),
    ("role an object", {"messages": [{"role": {"user": 1}, "content": "hi"}]}, 400, "use system, user or assistant"),
    ("1000 nested [", b'{"messages": ' + b"[" * 1000 + b"]" * 1000 + b"}", 400, "nested too deeply"),
    ("5000 nested [, unclosed", b"[" * 5000, 400, "nested too deeply"),
    ("temperature below the minimum", {"messages": USER, "temperature": 1e-12}, 400,
     "temperature must be 0 (greedy) or a number from 0.01 to 2"),
    ("temperature NaN", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400,
     "temperature"),
    ("top_k a list", {"messages": USER, "top_k": [5]}, 400, "top_k must be an integer from 0"),
    # json.dumps escapes an astral character as two \\uXXXX (12 bytes): the character limit refuses it, not the
    # body limit (which must allow 12 bytes a character)
    ("astral characters past --max-chars", {"messages": [{"role": "user", "content": "\U0001F600" * (MAX_CHARS + 1)}]},
     413, f"has {MAX_CHARS + 1} characters"),
    ("astral characters up to --max-chars", {"messages": [{"role": "user", "content": "\U0001F600" * MAX_CHARS}]},
     413, "the model's context holds"),
]


def test_bad_input_gets_a_json_error_and_the_server_lives_on(server):
    for name, body, want, says in BAD_REQUESTS:
        status, ctype, raw = http(server, "/chat/completions", body)
        assert status == want, (name, status, raw[:300])
        assert ctype.startswith("application/json"), name
        err = json.loads(raw)
        assert set(err) == {"error"} and says in err["error"], (name, err)
        assert "Traceback" not in err["error"]
        assert health(server)["status"] == "ok", name
    for path, method, want in [("/nope", "GET", 404), ("/nope", "POST", 404), ("/chat/completions", "GET", 405),
                               ("/health", "POST", 405), ("/", "DELETE", 501)]:
        status, ctype, raw = http(server, path, b"{}" if method in ("POST", "DELETE") else None, method=method)
        assert status == want and "error" in json.loads(raw), (path, method, status)
    json_post = b"POST /chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    status, err = _raw_request(server, json_post + b"\r\n")
    assert status == 411 and "Content-Length" in err["error"]
    status, err = _raw_request(server, json_post + b"Content-Length: 10000000\r\n\r\n")
    assert status == 413 and "--max-chars" in err["error"]
    for line in (b"GARBAGE", b"GET / HTTP/9"):
        status, err = _raw_request(server, line + b"\r\n\r\n")
        assert status == 400 and "Bad request" in err["error"], line
    status, err = _raw_request(server, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert status == 414 and err["error"]
    # and it still answers
    assert len(complete(server, USER, max_tokens=4)[0]) >= 1


def test_cross_origin_foreign_host_and_non_json_requests_are_refused(server):
    """A page on another site may POST to a local server (text/plain needs no CORS preflight), and a
    DNS-rebound name reaches it with a foreign Host: each is refused before any work is done."""
    port = server.rstrip("/").rsplit(":", 1)[1]
    body = {"messages": USER, "max_tokens": 2, "temperature": 0}
    for name, headers, want, says in [
        ("cross-origin page", {"Origin": "http://evil.example"}, 403, "cross-origin"),
        ("cross-origin, same host other port", {"Origin": "http://127.0.0.1:1"}, 403, "cross-origin"),
        ("opaque origin", {"Origin": "null"}, 403, "cross-origin"),
        ("text/plain", {"Content-Type": "text/plain"}, 415, "application/json"),
        ("form", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ("no Content-Type", {"Content-Type": None}, 415, "application/json"),
        ("DNS rebinding", {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}, 421,
         "--allowed-host"),
        ("foreign Host", {"Host": "evil.example"}, 421, "--allowed-host"),
    ]:
        status, ctype, raw = http(server, "/chat/completions", body, headers=headers)
        assert status == want and ctype.startswith("application/json"), (name, status, raw[:300])
        assert says in json.loads(raw)["error"], (name, raw)
    # the page and /health answer the bound name only, too
    for path in ("/", "/health"):
        assert http(server, path, headers={"Host": "evil.example"})[0] == 421, path
        assert http(server, path, headers={"Origin": "http://evil.example"})[0] == 403, path
    # allowed: no Origin (curl, scripts), the page's own origin, the loopback name, a charset parameter
    for headers in ({}, {"Origin": f"http://127.0.0.1:{port}"},
                    {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"},
                    {"Content-Type": "application/json; charset=utf-8"}):
        status, ctype, raw = http(server, "/chat/completions", body, headers=headers)
        assert status == 200 and events(raw)[-1]["done"] is True, (headers, status, raw[:300])
    assert health(server)["in_flight"] == 0


def test_too_many_concurrent_requests_get_429(server):
    """--max-concurrent 1: a request whose body is still arriving holds the only slot, so a second
    request is refused at once; once the first completes, the slot is free again."""
    body = json.dumps({"messages": USER, "max_tokens": 4, "temperature": 0}).encode()
    host, port = server.split("//")[1].rstrip("/").rsplit(":", 1)
    held = socket.create_connection((host, int(port)), timeout=60)
    try:
        held.sendall(b"POST /chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
        wait_until(lambda: health(server)["in_flight"] == 1, what="the held request to take its slot")
        status, ctype, raw = http(server, "/chat/completions", {"messages": USER, "max_tokens": 4})
        assert status == 429 and "--max-concurrent" in json.loads(raw)["error"]
        assert health(server)["status"] == "ok"
        held.sendall(body[5:])  # let the first request finish: it streams a normal answer
        raw = b""
        while chunk := held.recv(65536):
            raw += chunk
    finally:
        held.close()
    head, _, stream = raw.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"200" and events(stream)[-1]["done"] is True
    wait_until(lambda: health(server)["in_flight"] == 0, what="the slot to be released")
    assert complete(server, USER, max_tokens=4)[1]["done"] is True


def test_flag_errors_and_graceful_shutdown(web_base, server):
    env = subprocess_env(web_base)
    port = server.rstrip("/").rsplit(":", 1)[1]
    # each is refused before any model loads (the address is bound first)
    for flags, says in [(["--port", port], "cannot listen"), (["--num-gpus", "2"], "--num-gpus"),
                        (["--port", "70000"], "--port"), (["--max-tokens", "0"], "--max-tokens")]:
        res = subprocess.run([sys.executable, "-m", "scripts.chat_web", "-g", "tiny", "--device-type", "cpu", *flags],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, (flags, res.stderr[-2000:])
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], (flags, res.stderr)
    # Ctrl-C (SIGTERM is checked when the module's server stops)
    proc, url = start_server(web_base)
    assert health(url)["status"] == "ok"
    code, out, err = stop_server(proc, signal.SIGINT)
    assert code == 0 and "SIGINT: shutting down" in out and out.rstrip().endswith("stopped"), (out, err)
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- a guarded server

PROXY_NAMES = ("chat.example.org", "Proxy.Internal.")   # its --allowed-host values
DEADLINE = 3                                            # its --request-deadline (seconds)


@pytest.fixture(scope="module")
def guarded(web_base, tmp_path_factory):
    """A second server with a short --request-deadline, a reverse proxy's names, and its log in a file."""
    log = tmp_path_factory.mktemp("guarded") / "stderr.log"
    with open(log, "w") as err:
        flags = ["--max-concurrent", "1", "--max-tokens", str(MAX_TOKENS), "--request-deadline", str(DEADLINE)]
        for name in PROXY_NAMES:
            flags += ["--allowed-host", name]
        proc, url = start_server(web_base, *flags, stderr=err)
        yield url, log
        code, out, _ = stop_server(proc)
    assert code == 0 and out.rstrip().endswith("stopped"), (out, log.read_text()[-3000:])
    assert "Traceback" not in log.read_text() and "internal error" not in log.read_text()


def test_allowed_host_admits_a_reverse_proxy(guarded):
    url, _ = guarded
    body = {"messages": USER, "max_tokens": 2, "temperature": 0}
    assert http(url, "/health", headers={"Host": "chat.example.org"})[0] == 200
    assert http(url, "/health", headers={"Host": "proxy.internal:8443"})[0] == 200   # any port, any case
    assert http(url, "/health", headers={"Host": "CHAT.example.org."})[0] == 200
    # the proxy passes the public name through, or rewrites Host to the bound address: both are same-origin
    for headers in ({"Host": "chat.example.org", "Origin": "https://chat.example.org"},
                    {"Origin": "https://chat.example.org"}):
        status, _, raw = http(url, "/chat/completions", body, headers=headers)
        assert status == 200 and events(raw)[-1]["done"] is True, (headers, raw[:300])
    status, _, raw = http(url, "/health", headers={"Host": "evil.example"})
    assert status == 421 and "--allowed-host" in json.loads(raw)["error"]
    status, _, raw = http(url, "/chat/completions", body, headers={"Origin": "https://evil.example"})
    assert status == 403 and "cross-origin" in json.loads(raw)["error"]


def _trickle(url: str, head: bytes, rest: bytes, every: float = 0.5, cap: float = 90.0) -> tuple[bool, bytes]:
    """Send `head`, then `rest` one byte every `every` seconds (each well inside the per-read timeout)
    -> (whether the server ended the connection before all of `rest` was sent, what it answered)."""
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    raw = b""
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        deadline = time.monotonic() + cap
        try:
            for i in range(len(rest)):
                assert time.monotonic() < deadline, "the server never cut the slow client off"
                s.sendall(rest[i:i + 1])
                if select.select([s], [], [], every)[0]:
                    while chunk := s.recv(65536):
                        raw += chunk
                    return True, raw
        except (BrokenPipeError, ConnectionResetError):
            return True, raw   # closed with our last byte unread: a reset may overtake its reply
    return False, raw


def test_slow_loris_is_cut_off_at_the_request_deadline(guarded):
    """A client that sends a byte every half second never trips the per-read timeout; the deadline over
    the whole request (headers + body) ends it, and the slot it held is free again."""
    url, log = guarded
    body = json.dumps({"messages": USER, "max_tokens": 2, "temperature": 0}).encode()
    head = (b"POST /chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    cut, raw = _trickle(url, head, body)
    assert cut, "the whole body went through: the request deadline did not apply"
    if raw:
        assert raw.split(b" ", 2)[1] == b"408" and b"--request-deadline" in raw, raw[:300]
    wait_until(lambda: '"POST /chat/completions HTTP/1.1" 408' in log.read_text(), what="the 408 in the log")
    wait_until(lambda: health(url)["in_flight"] == 0, what="the slot to be released")
    # headers a byte at a time: cut off too (before any slot is taken)
    cut, _ = _trickle(url, b"POST /chat/completions HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n" + b"X-Pad: a\r\n" * 20)
    assert cut, "the headers went through: the request deadline did not apply"
    # and the only slot serves a normal request
    status, _, raw = http(url, "/chat/completions", json.loads(body))
    assert status == 200 and events(raw)[-1]["done"] is True


def test_request_line_is_logged_with_control_characters_escaped(guarded):
    url, log = guarded
    status, _ = _raw_request(url, b"GET /\x1b[2J\x1b]0;owned\x07\x9b HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 404
    wait_until(lambda: "owned" in log.read_text(), what="the request in the log")
    text = log.read_text()
    line = next(x for x in text.splitlines() if "owned" in x)
    assert r'"GET /\x1b[2J\x1b]0;owned\x07\x9b HTTP/1.0" 404' in line, line
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", text), "a raw control character reached the log"


def test_host_policy_names_per_bound_address():
    """Which Host names each binding answers to (a server bound to all interfaces is not started here)."""
    import socket as _socket

    from nanochat.web_request import HostPolicy, host_name
    assert [host_name(h) for h in ("LocalHost:8000", "[::1]:8000", "::1", "chat.example.org.", "1.2.3.4:80")] == \
        ["localhost", "::1", "::1", "chat.example.org", "1.2.3.4"]
    loop = HostPolicy("127.0.0.1")
    assert all(loop.allows(n) for n in ("127.0.0.1", "localhost", "::1"))
    assert not any(loop.allows(n) for n in ("evil.example", "10.0.0.1", _socket.gethostname().lower() + ".x"))
    anywhere = HostPolicy("0.0.0.0", ["chat.example.org"])
    assert all(anywhere.allows(n) for n in ("10.0.0.7", "fe80::1", "localhost", _socket.gethostname().lower(),
                                            "chat.example.org"))
    assert not anywhere.allows("evil.example")   # a rebound name
    assert HostPolicy("::").allows("192.168.1.2") and not HostPolicy("::").allows("evil.example")
    lan = HostPolicy("192.168.1.5")
    assert lan.allows("192.168.1.5") and not lan.allows("localhost") and not lan.allows("192.168.1.6")


# ----------------------------------------------------------------------------- make serve

def test_make_serve_runs_the_recorded_sft_step_and_stales_nothing(pipe):  # noqa: F811
    res = pipe.make("serve")
    assert res.returncode != 0 and "run `make sft` first" in res.stderr and pipe.calls() == []
    pipe.built()
    pipe.make("serve", "PORT=0", "HOST=::1", check=True)
    [args] = pipe.call_args("chat_web")
    step = (pipe.base / ".stamps" / "sft.step").read_text().strip()
    assert args[:3] == ["-i", "sft", "-g"] and args[4:6] == ["-s", step]   # the tag is MODEL_TAG (d<DEPTH>)
    assert args[-4:] == ["--host", "::1", "--port", "0"]
    # PORT and HOST are execution settings: nothing becomes stale
    assert pipe.make("-q", "speedrun", "PORT=1234", "HOST=0.0.0.0").returncode == 0


# ----------------------------------------------------------------------------- shared chat code

def test_reply_pieces_and_terminal_rendering_of_a_tool_call():
    from test_engine import ScriptedModel

    from nanochat.chat import Chat, Reply
    from nanochat.engine import Engine
    tok = tiny_chat.train_tokenizer()
    sp = tok.encode_special
    end = sp("<|assistant_end|>")

    def scripted():
        m = ScriptedModel(tok.get_vocab_size(), [*tok.encode("so"), sp("<|python_start|>"), *tok.encode("6*7"),
                                                 sp("<|python_end|>"), ScriptedModel.WAIT, *tok.encode(" it is 42"),
                                                 end], sp("<|output_end|>"))
        m.fallback = end
        return m

    prompt = tok.render_for_completion({"messages": USER})
    reply = Reply(Engine(scripted(), tok), prompt, max_tokens=40, temperature=0.0)
    pieces = list(reply)
    by_segment = {}
    for p in pieces:
        kind, text = by_segment.get(p.segment, (p.kind, ""))
        assert kind == p.kind
        by_segment[p.segment] = (kind, text + p.text)
    assert [by_segment[s] for s in sorted(by_segment)] == [
        ("text", "so"), ("python", "6*7"), ("text", ""), ("python_output", "42"), ("text", " it is 42")]
    assert reply.finish_reason == "stop"
    assert reply.content() == [{"type": "text", "text": "so"}, {"type": "python", "text": "6*7"},
                               {"type": "python_output", "text": "42"}, {"type": "text", "text": " it is 42"}]
    out = io.StringIO()
    import torch
    chat = Chat(scripted(), tok, torch.device("cpu"), temperature=0.0, max_tokens=40, out=out)
    chat.respond("what is 6*7?")
    assert out.getvalue() == "so[python: 6*7 = 42] it is 42\n"
    assert chat.messages[1]["content"] == reply.content()
    # an answer cut by max_tokens says so
    cut = Reply(Engine(scripted(), tok), prompt, max_tokens=2, temperature=0.0)
    list(cut)
    assert cut.finish_reason == "length" and len(cut.tokens) == 2


# ----------------------------------------------------------------------------- the page, in a browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser_missing() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install 'nanochat[test]')"
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found (apt-get install -y chromium chromium-driver; missing {pkg})"
    return None


needs_browser = pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # the network here is closed: without these Chromium waits on connections it will never get
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1000,720",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    # an explicit driver path: Selenium Manager never tries to download one
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, predicate, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(predicate)


def _set_field(driver, element_id, value):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    field = driver.find_element(By.ID, element_id)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value))


def _answer_texts(driver):
    """Each finished assistant bubble's prose (its text spans, without tool chips)."""
    return driver.execute_script("""
        return [...document.querySelectorAll('.msg.assistant[data-done]')].map(
            el => [...el.querySelectorAll('span.text')].map(s => s.textContent).join(''));""")


@needs_browser
def test_browser_chat_as_a_person(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    browser.get(server)
    _wait(browser, lambda d: "sft/tiny step 0" in d.find_element(By.ID, "model").text)
    _set_field(browser, "temperature", 0)   # greedy, so the answer can be checked against the API
    _set_field(browser, "max_tokens", 12)
    first = "hello, who are you?"
    browser.find_element(By.ID, "prompt").send_keys(first)
    browser.find_element(By.ID, "send").click()
    _wait(browser, lambda d: len(_answer_texts(d)) == 1)
    answer = _answer_texts(browser)[0]
    pieces, done = complete(server, [{"role": "user", "content": first}], temperature=0.0, top_k=50, max_tokens=12)
    assert answer and answer == text_of(pieces)
    # a second turn with Enter: the page sends the whole history
    second = "tell me more"
    browser.find_element(By.ID, "prompt").send_keys(second, Keys.ENTER)
    _wait(browser, lambda d: len(_answer_texts(d)) == 2)
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": done["content"]},
               {"role": "user", "content": second}]
    assert _answer_texts(browser)[1] == text_of(complete(server, history, temperature=0.0, top_k=50,
                                                         max_tokens=12)[0])
    assert [e.get_attribute("class") for e in browser.find_elements(By.CSS_SELECTOR, ".msg")] == \
        ["msg user", "msg assistant", "msg user", "msg assistant"]
    shot = ROOT / "docs" / "img" / "web-chat.png" if os.environ.get("NANOCHAT_UPDATE_SCREENSHOT") == "1" \
        else tmp_path / "web-chat.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    # too long for the server: an error line, and the message is not kept in the history
    browser.execute_script("document.getElementById('prompt').value = arguments[0];", "x" * (MAX_CHARS + 1))
    browser.find_element(By.ID, "send").click()
    err = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".error"))[0]
    assert "413" in err.text and "new conversation" in err.text
    assert len(browser.execute_script("return messages;")) == 4
    # new conversation: empty page and history
    browser.find_element(By.ID, "new").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == [] and browser.execute_script("return messages;") == []


FAKE_STREAM = [{"token": "The answer is ", "kind": "text", "segment": 0}, {"token": "", "kind": "python", "segment": 1},
               {"token": "6*", "kind": "python", "segment": 1}, {"token": "7", "kind": "python", "segment": 1},
               {"token": "", "kind": "text", "segment": 2}, {"token": "", "kind": "python_output", "segment": 3},
               {"token": "42", "kind": "python_output", "segment": 3}, {"token": "", "kind": "text", "segment": 4},
               {"token": ".", "kind": "text", "segment": 4}, {"done": True, "finish_reason": "stop"}]


@needs_browser
def test_browser_shows_calculator_calls_as_chips(server, browser):
    """A random model never calls the calculator, so the page's fetch is stubbed with a tool-call stream."""
    from selenium.webdriver.common.by import By
    browser.get(server)
    browser.execute_script("""
        window.sentBodies = [];
        const sse = arguments[0].map(e => 'data: ' + JSON.stringify(e) + '\\n\\n').join('');
        window.fetch = async (url, opts) => {
            window.sentBodies.push(JSON.parse(opts.body));
            return new Response(sse, {status: 200, headers: {'Content-Type': 'text/event-stream'}});
        };""", FAKE_STREAM)
    browser.find_element(By.ID, "prompt").send_keys("what is 6 times 7?")
    browser.find_element(By.ID, "send").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done]"))
    chip = browser.find_element(By.CSS_SELECTOR, ".msg.assistant .calc")
    assert chip.text == "calc: 6*7 = 42"
    bubble = browser.find_element(By.CSS_SELECTOR, ".msg.assistant")
    assert bubble.get_attribute("textContent") == "The answer is calc: 6*7 = 42."
    assert browser.execute_script("return messages;")[-1] == {"role": "assistant", "content": [
        {"type": "text", "text": "The answer is "}, {"type": "python", "text": "6*7"},
        {"type": "python_output", "text": "42"}, {"type": "text", "text": "."}]}
    sent = browser.execute_script("return window.sentBodies;")
    assert sent[0]["messages"] == [{"role": "user", "content": "what is 6 times 7?"}]
    assert set(sent[0]) == {"messages", "temperature", "top_k", "max_tokens"}
