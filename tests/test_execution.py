"""nanochat.execution: hostile snippets fail safely and quickly; the test process is unharmed."""
from __future__ import annotations

import os
import socket
import textwrap
import threading
import time

import pytest

from nanochat.execution import ExecutionResult, execute, sandbox_info

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX only")


def run(code: str, **kw) -> tuple[ExecutionResult, float]:
    t0 = time.monotonic()
    res = execute(textwrap.dedent(code), **kw)
    return res, time.monotonic() - t0


def test_ordinary_code_runs():
    res, dt = run("""
        import math, json, collections, re, heapq, itertools, functools, fractions, random, string, typing
        from dataclasses import dataclass
        @dataclass
        class P:
            x: int
        print(math.gcd(12, 18), json.dumps([P(3).x]), sorted(collections.Counter('aab').items()))
    """)
    assert res.success, res
    assert res.stdout == "6 [3] [('a', 2), ('b', 1)]\n"
    assert not res.timed_out and not res.memory_exceeded and res.error is None
    assert dt < 10


def test_exceptions_and_exit_codes_are_failures():
    res, _ = run("assert 1 == 2, 'nope'")
    assert not res.success and "AssertionError: nope" in res.error
    res, _ = run("import sys; sys.exit(3)")
    assert not res.success and res.returncode == 3
    res, _ = run("def f(:\n  pass")
    assert not res.success and "SyntaxError" in res.stderr


def test_infinite_loop_times_out():
    res, dt = run("while True:\n    pass", timeout=1.0)
    assert res.timed_out and not res.success and "timed out" in res.error
    assert dt < 5


def test_sleeping_child_group_killed():
    res, dt = run("import time\ntime.sleep(60)", timeout=0.5)
    assert res.timed_out and dt < 5


def test_fork_bomb_fails_fast():
    for code in ("import os\nwhile True:\n    os.fork()",
                 "import posix\nposix.fork()",
                 "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'pass'])",
                 "import multiprocessing as mp\np = mp.Process(target=print)\np.start(); p.join()",
                 "import os\nos.system('echo hi')",
                 "import sys\ndel sys.modules['posix']\nimport posix\nposix.fork()"):
        res, dt = run(code, timeout=3.0)
        assert not res.success and not res.timed_out, (code, res)
        assert "PermissionError" in res.stderr, (code, res)
        assert dt < 5


def test_memory_bomb():
    res, dt = run("x = bytearray(8 * 1024 ** 3)", memory_mb=256)
    assert not res.success and res.memory_exceeded, res
    res, dt = run("x = []\nwhile True:\n    x.append(bytearray(10 ** 7))", memory_mb=256, timeout=10)
    assert not res.success and res.memory_exceeded and not res.timed_out, res
    assert dt < 10


def test_cannot_write_outside_its_directory(tmp_path):
    target = tmp_path / "outside" / "pwned.txt"
    target.parent.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
                 f"import os\nos.remove({str(victim)!r})",
                 f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
                 f"import os\nopen('a', 'w').close()\nos.rename('a', {str(target)!r})",
                 f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('x')",
                 f"open('../../../../../../..{target}', 'w').write('x')",
                 f"import pathlib\npathlib.Path({str(victim)!r}).write_text('changed')"):
        res, _ = run(code)
        assert not res.success, (code, res)
    assert not target.exists()
    assert victim.read_text() == "keep me"
    # writing (and deleting) inside its own directory works
    res, _ = run("""
        import os, tempfile, shutil
        open('scratch.txt', 'w').write('ok')
        os.makedirs('d/e'); open('d/e/f', 'w').close(); shutil.rmtree('d')
        with tempfile.TemporaryDirectory() as t:
            open(os.path.join(t, 'x'), 'w').close()
        print(open('scratch.txt').read(), os.listdir('.'))
    """)
    assert res.success and res.stdout.strip() == "ok ['scratch.txt']", res


def test_cannot_read_the_users_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    secret = home / ".ssh" / "id_rsa"
    secret.write_text("PRIVATE-KEY-MATERIAL")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NANOCHAT_TEST_SECRET_TOKEN", "hunter2")
    res, _ = run("""
        import os
        print(os.path.expanduser('~'))
        print(sorted(os.environ))
        print(open(os.path.expanduser('~/.ssh/id_rsa')).read())
    """)
    assert not res.success
    assert str(home) not in res.stdout and "hunter2" not in res.stdout + res.stderr
    assert "NANOCHAT_TEST_SECRET_TOKEN" not in res.stdout
    res, _ = run(f"print(open({str(secret)!r}).read())")
    assert not res.success and "PRIVATE-KEY-MATERIAL" not in res.stdout + res.stderr
    res, _ = run(f"import os\nprint(os.listdir({str(home)!r}))")
    assert not res.success and ".ssh" not in res.stdout


def test_no_network():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    got = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                got.append(conn)
            except OSError:
                pass
    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        for code in (f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))",
                     f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
                     f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))",
                     f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)",
                     "import ctypes\nprint(ctypes.CDLL(None))"):
            res, dt = run(code, timeout=4.0)
            assert not res.success, (code, res)
            assert dt < 6
        time.sleep(0.3)
        assert got == [], "the sandbox reached the listener"
    finally:
        stop.set()
        th.join(timeout=2)
        srv.close()
        for c in got:
            c.close()


def test_output_is_capped():
    res, dt = run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", timeout=5)
    assert not res.success and len(res.stdout) <= 70_000 and dt < 6


def test_info_reports_layers():
    info = sandbox_info()
    assert set(info) == {"unshare_net", "drop_to_nobody", "root"}
