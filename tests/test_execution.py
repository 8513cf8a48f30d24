"""nanochat.execution: hostile snippets fail safely and quickly; the test process is unharmed.

The escape tests (issue 30.4) first defeat the in-process audit hook the ways a model could (closure
cells rewritten through a traceback, through sys._getframe, found with gc), then try what matters:
write outside, read a root-only file, reach the network, regain root, call libc through ctypes.
They run under each OS boundary this machine offers (bubblewrap, and the Landlock fallback forced).
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from nanochat import execution, sandbox_run
from nanochat.execution import execute, sandbox_info
from nanochat.sandbox_run import ExecutionResult

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


# ----------------------------------------------------------------------------- escapes (issue 30.4)

REPO = Path(__file__).resolve().parent.parent
BOUNDARIES = ("bwrap", "landlock")


@pytest.fixture(params=BOUNDARIES)
def boundary(request, monkeypatch):
    """Run the test under one OS boundary (NANOCHAT_SANDBOX); skip where this machine cannot give it."""
    monkeypatch.setenv("NANOCHAT_SANDBOX", request.param)
    info = sandbox_info()
    if info.get("refused"):
        pytest.skip(f"{request.param} is not available here: {info.get('reason')}")
    return info


# Shared by the exploits: neutralise whatever hook function a frame exposes (its `deny` becomes a
# no-op, the `inside` helper behind writable/readable always says yes). Returns how many it changed.
_REWRITE = r'''
import sys, os, json
def _rewrite(frame):
    n = 0
    loc = frame.f_locals
    d = loc.get("deny")
    if callable(d) and hasattr(d, "__code__"):
        try:
            d.__code__ = (lambda *a, **k: None).__code__
            n += 1
        except Exception:
            pass
    for name in ("writable", "readable"):
        for cell in (getattr(loc.get(name), "__closure__", None) or ()):
            try:
                if getattr(cell.cell_contents, "__name__", "") == "inside":
                    cell.cell_contents = lambda p, r: True
                    n += 1
            except ValueError:
                pass
    return n
'''

DEFEATS = {
    # the exploit of the issue: catch the PermissionError, walk the traceback to the hook's frame
    "traceback": _REWRITE + r'''
def _defeat():
    n = 0
    try:
        open("/etc/hostname")
    except PermissionError as exc:
        tb = exc.__traceback__
        while tb is not None:
            n += _rewrite(tb.tb_frame)
            tb = tb.tb_next
    except OSError:
        pass
    return n
''',
    # run inside the hook (it calls __fspath__ on a path argument) and walk up with sys._getframe
    "getframe": _REWRITE + r'''
_N = [0]
class _P:
    def __fspath__(self):
        f = sys._getframe(1)
        while f is not None:
            _N[0] += _rewrite(f)
            f = f.f_back
        return "x"
def _defeat():
    try:
        sys.audit("shutil.rmtree", _P(), None)
    except Exception:
        pass
    return _N[0]
''',
    # disarm deny() through the traceback, then reach the hook function and its helpers with gc
    "gc": _REWRITE + r'''
import gc
def _defeat():
    n = 0
    try:
        open("/etc/hostname")
    except PermissionError as exc:
        tb = exc.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        hook_frame = tb.tb_frame.f_back
        hook_frame.f_locals["deny"].__code__ = (lambda *a, **k: None).__code__
        n += 1
        for fn in gc.get_referrers(hook_frame.f_code):     # the hook function: empty its rule sets
            for cell in getattr(fn, "__closure__", None) or ():
                if isinstance(cell.cell_contents, (frozenset, dict)):
                    cell.cell_contents = type(cell.cell_contents)()
                    n += 1
    except (OSError, KeyError, AttributeError):
        pass
    for obj in gc.get_objects():
        if callable(obj) and getattr(obj, "__name__", "") in ("writable", "readable"):
            for cell in getattr(obj, "__closure__", None) or ():
                if getattr(cell.cell_contents, "__name__", "") == "inside":
                    cell.cell_contents = lambda p, r: True
                    n += 1
    return n
''',
}

# What an escaped program would do; every attempt is recorded, nothing may succeed.
PAYLOAD = r'''
import json, os
report = {"defeated": _defeat(), "uid": os.getuid(), "euid": os.geteuid()}
def attempt(name, fn):
    try:
        report[name] = fn()
    except BaseException as exc:
        report[name] = "blocked: %s: %s" % (type(exc).__name__, exc)
def write(p):
    with open(p, "w") as f:
        f.write("pwned")
    return "wrote"
def libc():
    import ctypes
    return ctypes, ctypes.CDLL(None, use_errno=True)
def libc_write(p):
    ctypes, c = libc()
    fd = c.open(p.encode(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if fd < 0:
        return "blocked: errno %d" % ctypes.get_errno()
    c.write(fd, b"pwned", 5)
    c.close(fd)
    return "wrote"
def libc_read(p):
    ctypes, c = libc()
    fd = c.open(p.encode(), os.O_RDONLY)
    if fd < 0:
        return "blocked: errno %d" % ctypes.get_errno()
    buf = ctypes.create_string_buffer(4096)
    n = c.read(fd, buf, 4096)
    return buf.raw[:max(n, 0)].decode("latin-1")
def libc_connect(port):
    ctypes, c = libc()
    s = c.socket(2, 1, 0)
    if s < 0:
        return "blocked: errno %d" % ctypes.get_errno()
    addr = (ctypes.c_ubyte * 16)(2, 0, port >> 8, port & 255, 127, 0, 0, 1)
    r = c.connect(s, addr, 16)
    return "connected" if r == 0 else "blocked: errno %d" % ctypes.get_errno()
for i, p in enumerate(TARGETS):
    attempt("write%d" % i, lambda p=p: write(p))
    attempt("libc_write%d" % i, lambda p=p: libc_write(p + ".libc"))
for i, p in enumerate(SECRETS):
    attempt("read%d" % i, lambda p=p: open(p, errors="replace").read())
    attempt("libc_read%d" % i, lambda p=p: libc_read(p))
attempt("setuid0", lambda: (os.setuid(0), os.getuid())[1])
attempt("setuid_other", lambda: (os.setuid(4242), os.getuid())[1])
attempt("connect", lambda: __import__("socket").create_connection(("127.0.0.1", PORT), timeout=2) and "connected")
attempt("libc_connect", lambda: libc_connect(PORT))
print(json.dumps(report))
'''


@pytest.fixture
def victims(tmp_path):
    """Marker paths outside the sandbox (root-owned dir, a world-writable dir, the repo) and root-only secrets."""
    owned = tmp_path / "owned"
    owned.mkdir()
    owned.chmod(0o755)
    world = Path(tempfile.mkdtemp(prefix="nanochat-test-world-"))   # /tmp: reachable by any uid
    world.chmod(0o777)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-0600")
    secret.chmod(0o600)
    targets = [str(owned / "marker"), str(world / "marker"), str(REPO / f".sandbox-escape-{os.getpid()}")]
    secrets = [str(secret), "/etc/passwd", f"/proc/{os.getpid()}/environ"]
    yield targets, secrets
    for t in targets:
        for p in (Path(t), Path(t + ".libc")):
            if p.exists():
                p.unlink()
    for p in world.iterdir():
        p.unlink()
    world.rmdir()


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.1)
    got: list = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                got.append(srv.accept()[0])
            except OSError:
                pass
    th = threading.Thread(target=accept, daemon=True)
    th.start()
    yield srv.getsockname()[1], got
    stop.set()
    th.join(timeout=2)
    srv.close()
    for c in got:
        c.close()


def assert_contained(res: ExecutionResult, targets, secrets, got, info) -> dict:
    assert res.stdout.strip(), res
    report = json.loads(res.stdout.strip().splitlines()[-1])
    for t in targets:
        assert not Path(t).exists() and not Path(t + ".libc").exists(), (t, report)
    for k, v in report.items():
        if k.startswith(("write", "libc_write")) or k in ("connect", "libc_connect", "setuid_other"):
            assert str(v).startswith("blocked"), (k, report)
    out = res.stdout + res.stderr
    assert "TOP-SECRET-0600" not in out, report
    assert "root:x:0:0" not in out and "root:*:0:0" not in out, report
    assert "PATH=" not in out, report
    time.sleep(0.2)
    assert got == [], "the sandbox reached the listener"
    # not root inside when started as root, and no way back; the report matches sandbox_info()
    assert report["uid"] == info["uid"], (report, info)
    if info["uid"] != 0:
        assert str(report["setuid0"]).startswith("blocked"), report
    return report


@pytest.mark.parametrize("defeat", sorted(DEFEATS))
def test_escape_attempts_stay_inside(boundary, defeat, victims, listener):
    targets, secrets = victims
    port, got = listener
    code = f"TARGETS = {targets!r}\nSECRETS = {secrets!r}\nPORT = {port}\n" + DEFEATS[defeat] + PAYLOAD
    res = execute(code, timeout=10)
    report = assert_contained(res, targets, secrets, got, boundary)
    # the exploit did take the in-process layer apart, so what held was the OS boundary
    assert report["defeated"] > 0, report
    assert res.sandbox == boundary["boundary"]


def test_os_layer_alone_contains_the_code(boundary, victims, listener):
    """The in-process layer switched off: ctypes and open() go straight to the kernel."""
    targets, secrets = victims
    port, got = listener
    code = (f"TARGETS = {targets!r}\nSECRETS = {secrets!r}\nPORT = {port}\ndef _defeat():\n    return 0\n"
            + PAYLOAD)
    res = sandbox_run.run(textwrap.dedent(code), 10.0, 512, execution._plan(), inprocess=False)
    assert_contained(res, targets, secrets, got, boundary)


def test_fork_bomb_is_bounded(boundary):
    """Forks through libc (hook out of the way) are refused or capped; nothing outlives the run."""
    tag = f"sbxbomb{os.getpid() % 100000}"
    code = DEFEATS["traceback"] + f'''
_defeat()
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
n = 0
for _ in range(100):
    pid = libc.fork()
    if pid == 0:
        libc.prctl(15, b"{tag}", 0, 0, 0)
        time.sleep(30)
        os._exit(0)
    if pid < 0:
        break
    n += 1
print("forked", n)
'''
    res, dt = run(code, timeout=5)
    assert dt < 8, res
    forked = int(res.stdout.split()[-1]) if res.stdout.startswith("forked") else 0
    assert forked < 100, res
    time.sleep(0.3)
    left = [p for p in os.listdir("/proc") if p.isdigit()
            and Path(f"/proc/{p}/comm").exists() and tag in Path(f"/proc/{p}/comm").read_text(errors="replace")]
    assert left == [], f"{len(left)} forked processes outlived the run"


def test_ordinary_solution_passes_under_each_boundary(boundary):
    res, dt = run('''
        from typing import List
        import math, re, heapq, itertools, functools, collections, string, hashlib, bisect, statistics, threading
        from fractions import Fraction
        from decimal import Decimal

        def has_close_elements(numbers: List[float], threshold: float) -> bool:
            return any(abs(a - b) < threshold for a, b in itertools.combinations(numbers, 2))

        def check(candidate):
            assert candidate([1.0, 2.0, 3.9, 4.0], 0.3) is True
            assert candidate([1.0, 2.0, 3.0], 0.5) is False
        check(has_close_elements)
        t = threading.Thread(target=lambda: None); t.start(); t.join()   # threads still work
        import tempfile, os
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("scratch")
        print("ok", open(f.name).read(), hashlib.sha256(b"x").hexdigest()[:8], os.getcwd() == os.path.expanduser("~"))
    ''')
    assert res.success, res
    assert res.stdout == "ok scratch 2d711642 True\n", res
    assert res.sandbox == boundary["boundary"] and dt < 10
    res, _ = run("while True:\n    pass", timeout=1.0)
    assert res.timed_out and res.sandbox == boundary["boundary"]
    res, _ = run("x = bytearray(4 * 1024 ** 3)", memory_mb=256)
    assert res.memory_exceeded, res


def test_info_says_which_boundary(monkeypatch):
    monkeypatch.delenv("NANOCHAT_SANDBOX", raising=False)
    info = sandbox_info()
    for key in ("boundary", "uid", "root", "mode", "refused", "reason", "namespaces", "filesystem", "network",
                "seccomp", "landlock_abi"):
        assert key in info, (key, info)
    assert info["mode"] == "auto" and info["boundary"] in ("bwrap", "landlock", "none")
    assert info["refused"] == (info["boundary"] == "none")
    if execution._find_bwrap() and info["root"]:
        assert info["boundary"] == "bwrap", info
        assert info["uid"] != 0 and "net" in info["namespaces"] and "mount" in info["namespaces"], info


def test_without_bwrap_auto_falls_back(monkeypatch):
    """`auto` on a machine without bubblewrap (the GPU boxes): Landlock if the kernel has it, else refusal."""
    monkeypatch.delenv("NANOCHAT_SANDBOX", raising=False)
    monkeypatch.setattr(execution, "_find_bwrap", lambda: None)
    execution._reset_probes()
    try:
        info = sandbox_info()
        assert info["boundary"] in ("landlock", "none"), info
        res, _ = run("print(6 * 7)")
        if info["boundary"] == "landlock":
            assert res.success and res.stdout == "42\n" and res.sandbox == "landlock", res
        else:
            assert not res.success and "no OS sandbox" in res.error, res
    finally:
        execution._reset_probes()


def test_no_boundary_refuses_unless_opted_in(monkeypatch, capfd):
    """Neither bubblewrap nor Landlock: model code does not run, unless NANOCHAT_SANDBOX=weak says so."""
    monkeypatch.delenv("NANOCHAT_SANDBOX", raising=False)
    monkeypatch.setattr(execution, "_find_bwrap", lambda: None)
    monkeypatch.setattr(execution, "_landlock_abi", lambda: 0)
    execution._reset_probes()
    try:
        info = sandbox_info()
        assert info["boundary"] == "none" and info["refused"], info
        res, _ = run("open('ran', 'w')\nprint('ran')")
        assert not res.success and res.stdout == "" and res.sandbox == "none", res
        assert "no OS sandbox" in res.error and "NANOCHAT_SANDBOX=weak" in res.error, res
        assert "no OS sandbox" in capfd.readouterr().err      # said once, loudly, on stderr
        monkeypatch.setenv("NANOCHAT_SANDBOX", "weak")
        info = sandbox_info()
        assert info["boundary"] == "none" and not info["refused"] and info["mode"] == "weak", info
        res, _ = run("print('ran')")
        assert res.success and res.stdout == "ran\n" and res.sandbox == "none", res
    finally:
        execution._reset_probes()


def test_unknown_mode_is_refused(monkeypatch):
    monkeypatch.setenv("NANOCHAT_SANDBOX", "bwarp")
    res, _ = run("print(1)")
    assert not res.success and "NANOCHAT_SANDBOX" in res.error, res
