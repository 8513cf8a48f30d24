"""Run model-written Python (HumanEval solutions) in a separate, restricted process.

    result = execute(code, timeout=5.0, memory_mb=512)
    result.success, result.stdout, result.stderr, result.error, result.timed_out, result.memory_exceeded

This is defence in depth for untrusted-but-not-adversarial code (a small model's attempt at a
function), not a hardened jail. Layers, each useful on its own:

1. a separate process (`sys.executable -I -B`), in its own session/process group that is killed
   (SIGKILL) on timeout and again after it exits; the parent only reads capped output files;
2. resource limits set in the child before exec: address space (memory_mb), CPU seconds, file size,
   open files, no core dumps, and RLIMIT_NPROC (which does not bind root: see 4);
3. a fresh temporary directory as cwd and HOME, a scrubbed environment (no tokens, no proxies);
4. when permitted, `unshare -n` (no network interface but loopback, in a fresh namespace) and, when
   running as root, dropping to the `nobody` user after start-up (only if a probe shows the
   interpreter and stdlib still work as nobody; then file permissions and RLIMIT_NPROC apply);
5. inside the child, before the code runs: an audit hook (sys.addaudithook, cannot be removed)
   that refuses writes outside the sandbox directory, reads outside it and the Python install,
   sockets, subprocesses, fork/exec/spawn/kill, ctypes, gc.get_objects & co, chdir, symlinks,
   rlimit changes and re-importing the patched modules; and a prelude that replaces os.fork/system/
   exec*/spawn*/kill, subprocess.*, socket.* with functions that raise PermissionError, and
   os.remove/unlink/rmdir/rename/replace/chmod/truncate/mkdir/open and shutil.rmtree/move with
   versions that only act inside the sandbox directory (so tempfile and friends still work).
   The two layers share no state: tampering with the prelude's closures does not weaken the hook.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

try:  # POSIX only; on other systems execute() refuses to run anything
    import resource
except ImportError:  # pragma: no cover
    resource = None

OUTPUT_LIMIT_BYTES = 16 * 1024 * 1024  # RLIMIT_FSIZE: stdout/stderr files and any file the code writes
READ_BACK_BYTES = 64 * 1024            # how much of stdout/stderr is returned
MAX_OPEN_FILES = 64
MAX_PROCESSES = 64                     # RLIMIT_NPROC (per user; ignored for root)


@dataclass
class ExecutionResult:
    success: bool
    stdout: str
    stderr: str
    error: str | None = None
    timed_out: bool = False
    memory_exceeded: bool = False
    returncode: int | None = None

    def __repr__(self) -> str:
        return (f"ExecutionResult(success={self.success}, timed_out={self.timed_out}, "
                f"memory_exceeded={self.memory_exceeded}, error={self.error!r}, stdout={self.stdout[:200]!r}, "
                f"stderr={self.stderr[-300:]!r})")


# ----------------------------------------------------------------------------- the child's runner
# Runs as `python -I -B -c _RUNNER <json config>`; the code to run arrives on stdin.
_RUNNER = r'''
import sys, os, json, builtins
_cfg = json.loads(sys.argv[1])
_code = sys.stdin.read()
sys.stdin = open(os.devnull)
if _cfg.get("uid") is not None:
    try:
        os.setgroups([]); os.setgid(_cfg["gid"]); os.setuid(_cfg["uid"])
    except OSError as exc:
        sys.stderr.write("sandbox setup failed: cannot drop privileges: %s\n" % exc); sys.exit(97)


def _paths(sandbox, read_roots):
    """Path helpers. Called once per layer so the layers share no (mutable) closure cells."""
    _isinstance, _str, _bytes, _int, _any, _fspath = isinstance, str, bytes, int, any, os.fspath
    _readlink = os.readlink
    dev_ok = frozenset(["/dev/null", "/dev/urandom", "/dev/random", "/dev/zero"])

    def fd_path(fd):
        try:
            return _readlink("/proc/self/fd/%d" % fd)
        except (OSError, ValueError, TypeError):
            return None

    def norm(p, base=None):
        """Absolute, normalised path as a string, purely lexically (cwd is pinned to the sandbox)."""
        if _isinstance(p, _int):
            return fd_path(p)
        if not _isinstance(p, (_str, _bytes)):
            p = _fspath(p)
        if _isinstance(p, _bytes):
            p = p.decode("utf-8", "surrogateescape")
        if not p.startswith("/"):
            p = (base or sandbox) + "/" + p
        parts = []
        for seg in p.split("/"):
            if seg in ("", "."):
                continue
            if seg == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(seg)
        return "/" + "/".join(parts)

    def inside(p, root):
        return p is not None and (p == root or p.startswith(root + "/"))

    def writable(p):
        return inside(p, sandbox)

    def readable(p):
        return p is not None and (inside(p, sandbox) or p in dev_ok or _any(inside(p, r) for r in read_roots))

    def resolve(path, dir_fd=None):
        base = None
        if _isinstance(dir_fd, _int) and dir_fd >= 0 and not (_isinstance(path, (_str, _bytes)) and
                                                             (path[:1] in ("/", b"/"))):
            base = fd_path(dir_fd)
            if base is None:
                return None
        return norm(path, base)

    return resolve, writable, readable


def _make_hook(sandbox, read_roots):
    resolve, writable, readable = _paths(sandbox, read_roots)
    _isinstance, _str, _bytes, _int, _any, _tuple = isinstance, str, bytes, int, any, tuple
    _stat = os.stat
    import stat as _stat_mod
    _isdir = _stat_mod.S_ISDIR
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    deny_prefixes = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
                     "pty.", "_winapi.", "winreg.", "msvcrt.", "resource.", "sys.remote_exec", "gc.get_")
    deny_events = frozenset(["os.system", "os.kill", "os.killpg", "os.chdir", "os.chroot", "os.symlink", "os.link",
                             "os.mkfifo", "os.mknod", "os.startfile", "os.pidfd_open", "signal.pthread_kill",
                             "os.add_dll_directory"])
    # event -> positions of (path, dir_fd) pairs in its arguments
    path_events = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
                   "os.rename": ((0, 2), (1, 3)), "os.chmod": ((0, 2),), "os.chown": ((0, 3),),
                   "os.truncate": ((0, None),), "os.utime": ((0, 4),), "os.setxattr": ((0, None),),
                   "os.removexattr": ((0, None),), "shutil.rmtree": ((0, None),), "shutil.move": ((0, None), (1, None)),
                   "shutil.copyfile": ((1, None),), "shutil.copymode": ((1, None),), "shutil.copystat": ((1, None),),
                   "shutil.copytree": ((1, None),), "shutil.chown": ((0, None),)}
    list_events = frozenset(["os.listdir", "os.scandir", "glob.glob", "os.listxattr", "os.getxattr"])
    deny_imports = frozenset(["posix", "_posixsubprocess", "_ctypes", "ctypes", "_socket", "socket", "nt",
                              "winreg", "_winapi", "cffi", "_cffi_backend", "resource", "pty", "_testcapi",
                              "_xxsubinterpreters", "_xxinterpchannels", "_interpreters", "gc"])
    ready = [False]

    def deny(what):
        raise PermissionError("sandbox: %s is not allowed" % what)

    def hook(event, args):
        if event == "open":
            path, mode, flags = (_tuple(args) + (None, None, None))[:3]
            if path is None or _isinstance(path, _int):
                return  # an already-open descriptor
            p = resolve(path)
            if writable(p):
                return
            if (_isinstance(mode, _str) and _any(c in mode for c in "wax+")) or \
                    (_isinstance(flags, _int) and (flags & WRITE_FLAGS) != 0):
                deny("writing %s" % p)
            if not readable(p):
                deny("reading %s" % p)
            if mode is None:  # os.open: no descriptors of outside directories (they would serve as dir_fd)
                try:
                    if _isdir(_stat(p).st_mode):
                        deny("os.open of the directory %s" % p)
                except OSError:
                    pass
            return
        if event in deny_events or event.startswith(deny_prefixes):
            deny(event)
        spec = path_events.get(event)
        if spec is not None:
            for pi, fi in spec:
                if pi < len(args) and args[pi] is not None:
                    fd = args[fi] if fi is not None and fi < len(args) else None
                    p = resolve(args[pi], fd)
                    if not writable(p):
                        deny("%s on %s" % (event, p))
            return
        if event in list_events:
            if args and args[0] is not None and not _isinstance(args[0], _int) and not readable(resolve(args[0])):
                deny("%s on %s" % (event, resolve(args[0])))
            return
        if event == "import" and ready[0] and args and args[0] in deny_imports:
            deny("importing %s" % args[0])

    return hook, ready


def _patch(sandbox, read_roots):
    """Second layer: dangerous functions replaced by ones that raise (or check paths first)."""
    import socket, _socket, subprocess, _posixsubprocess, shutil, posix, resource
    resolve, writable, readable = _paths(sandbox, read_roots)
    _isinstance, _int = isinstance, int

    def blocked(name):
        def f(*a, **k):
            raise PermissionError("sandbox: %s is disabled" % name)
        f.__name__ = name.rpartition(".")[2]
        return f

    def confined(name, fn, npaths=1):
        def f(*a, **k):
            fds = [k.get("dir_fd"), k.get("src_dir_fd"), k.get("dst_dir_fd")]
            for i, x in enumerate(a[:npaths]):
                p = resolve(x, fds[i] if fds[i] is not None else fds[0])
                if not writable(p):
                    raise PermissionError("sandbox: %s on %s is not allowed" % (name, p))
            return fn(*a, **k)
        f.__name__ = name.rpartition(".")[2]
        return f

    def guarded_open(fn):
        def f(path, flags, mode=0o777, *, dir_fd=None):
            p = resolve(path, dir_fd)
            w = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
            if not writable(p) and ((flags & w) or not readable(p)):
                raise PermissionError("sandbox: os.open of %s is not allowed" % p)
            return fn(path, flags, mode, dir_fd=dir_fd)
        f.__name__ = "open"
        return f

    for mod, label in ((os, "os"), (posix, "os")):
        for name in ("fork", "forkpty", "system", "popen", "execv", "execve", "execl", "execle", "execlp", "execlpe",
                     "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
                     "spawnvpe", "posix_spawn", "posix_spawnp", "kill", "killpg", "fchmod", "lchmod", "chown",
                     "fchown", "lchown", "link", "symlink", "ftruncate", "chdir", "fchdir", "chroot", "setuid",
                     "setgid", "seteuid", "setegid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
                     "mkfifo", "mknod", "pidfd_open", "plock", "nice", "setsid", "setpgid"):
            if hasattr(mod, name):
                setattr(mod, name, blocked("%s.%s" % (label, name)))
        for name in ("remove", "unlink", "rmdir", "rename", "replace", "chmod", "truncate", "mkdir"):
            if hasattr(mod, name):
                setattr(mod, name, confined("%s.%s" % (label, name), getattr(mod, name),
                                            2 if name in ("rename", "replace") else 1))
        mod.open = guarded_open(mod.open)
    for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, blocked("subprocess." + name))
    _posixsubprocess.fork_exec = blocked("_posixsubprocess.fork_exec")
    for m in (socket, _socket):
        for name in ("socket", "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo",
                     "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
            if hasattr(m, name):
                setattr(m, name, blocked("socket." + name))
    for name in ("rmtree", "move"):
        setattr(shutil, name, confined("shutil." + name, getattr(shutil, name), 2 if name == "move" else 1))
    shutil.chown = blocked("shutil.chown")
    resource.setrlimit = blocked("resource.setrlimit")
    if hasattr(resource, "prlimit"):
        resource.prlimit = blocked("resource.prlimit")
    builtins.help = blocked("help")


def _read_roots():
    roots = set()
    for p in list(sys.path) + [sys.prefix, sys.base_prefix, sys.exec_prefix]:
        if p and os.path.isdir(p):
            roots.add(os.path.abspath(p))
            roots.add(os.path.realpath(p))
    roots.discard("/")
    return tuple(sorted(roots))


import gc as _gc_preload  # noqa: F401  (loaded before the hook; `gc.get_*` calls are refused by it)
_sb, _rr = _cfg["dir"], _read_roots()
_patch(_sb, _rr)
_hook, _ready = _make_hook(_sb, _rr)
sys.addaudithook(_hook)
_ready[0] = True
del _hook, _ready, _sb, _rr, _cfg, _paths, _make_hook, _patch, _read_roots, _gc_preload
_g = {"__name__": "__main__", "__builtins__": builtins}
_c = compile(_code, "<sandbox>", "exec")
del _code
exec(_c, _g)
'''


# ----------------------------------------------------------------------------- capability probes

_PROBES: dict = {}


def _nobody() -> tuple[int, int] | None:
    try:
        import pwd
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except (ImportError, KeyError):
        return None


def _unshare_prefix() -> list[str]:
    """['unshare', '-n', '--'] (or -rn when not root) if it works here, else []."""
    if "unshare" in _PROBES:
        return _PROBES["unshare"]
    prefix: list[str] = []
    exe = shutil.which("unshare")
    if exe and sys.platform.startswith("linux") and os.environ.get("NANOCHAT_SANDBOX_NO_UNSHARE") != "1":
        cand = [exe, "-n", "--"] if os.geteuid() == 0 else [exe, "-rn", "--"]
        try:
            r = subprocess.run(cand + [sys.executable, "-I", "-c", "pass"], capture_output=True, timeout=10)
            if r.returncode == 0:
                prefix = cand
        except (OSError, subprocess.TimeoutExpired):
            pass
    _PROBES["unshare"] = prefix
    return prefix


def _drop_to() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` if we are root and the sandbox works as nobody (probed once)."""
    if "drop" in _PROBES:
        return _PROBES["drop"]
    _PROBES["drop"] = None  # while probing, run without a drop
    ids = _nobody() if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    if ids is not None and os.environ.get("NANOCHAT_SANDBOX_NO_DROP") != "1":
        probe = ("import math, json, re, decimal, heapq, itertools, collections, fractions, typing, string\n"
                 "open('probe.txt', 'w').write('x')\nprint(open('probe.txt').read() + 'ok')\n")
        res = _run(probe, timeout=10.0, memory_mb=512, drop=ids)
        if res.success and res.stdout.strip() == "xok":
            _PROBES["drop"] = ids
    return _PROBES["drop"]


def sandbox_info() -> dict:
    """What protections are active on this machine (for logs and tests)."""
    return {"unshare_net": bool(_unshare_prefix()), "drop_to_nobody": _drop_to() is not None,
            "root": hasattr(os, "geteuid") and os.geteuid() == 0}


# ----------------------------------------------------------------------------- execute

def _limits(timeout: float, memory_mb: int):
    def apply():
        cpu = max(1, int(math.ceil(timeout))) + 1
        mem = int(memory_mb) * 1024 * 1024
        for lim, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_FSIZE, OUTPUT_LIMIT_BYTES), (resource.RLIMIT_NOFILE, MAX_OPEN_FILES),
                         (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, MAX_PROCESSES)):
            try:
                hard = val + 1 if lim == resource.RLIMIT_CPU else val
                resource.setrlimit(lim, (val, hard))
            except (ValueError, OSError):
                pass
    return apply


def _read_capped(f) -> str:
    f.seek(0)
    data = f.read(READ_BACK_BYTES + 1)
    text = data[:READ_BACK_BYTES].decode("utf-8", errors="replace")
    return text + ("\n[output truncated]" if len(data) > READ_BACK_BYTES else "")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait until `pid` exits WITHOUT reaping it; False if still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        if info is not None:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.05)


def execute(code: str, timeout: float = 5.0, memory_mb: int = 512) -> ExecutionResult:
    """Run `code` (a Python program) in a sandboxed subprocess; never raises for the code's faults."""
    if resource is None or not hasattr(os, "killpg"):
        return ExecutionResult(False, "", "", error="sandboxed execution needs a POSIX system")
    return _run(code, timeout, memory_mb, drop=_drop_to())


def _run(code: str, timeout: float, memory_mb: int, drop: tuple[int, int] | None) -> ExecutionResult:
    sandbox = os.path.realpath(tempfile.mkdtemp(prefix="nanochat-sbx-"))
    private = tempfile.mkdtemp(prefix="nanochat-sbx-io-")  # 0700: code file and output files
    try:
        if drop is not None:
            os.chown(sandbox, drop[0], drop[1])
        os.chmod(sandbox, 0o700)
        cfg = {"dir": sandbox, "uid": drop[0] if drop else None, "gid": drop[1] if drop else None}
        env = {"PATH": "/usr/bin:/bin", "HOME": sandbox, "TMPDIR": sandbox, "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        cmd = _unshare_prefix() + [sys.executable, "-I", "-B", "-c", _RUNNER, json.dumps(cfg)]
        with open(os.path.join(private, "code.py"), "w+b") as fin, \
                open(os.path.join(private, "stdout"), "w+b") as fout, \
                open(os.path.join(private, "stderr"), "w+b") as ferr:
            fin.write(code.encode("utf-8", errors="replace"))
            fin.flush()
            fin.seek(0)
            timed_out = False
            try:
                proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=sandbox, env=env,
                                        start_new_session=True, preexec_fn=_limits(timeout, memory_mb),
                                        close_fds=True)
            except OSError as exc:
                return ExecutionResult(False, "", "", error=f"could not start the sandbox: {exc}")
            if hasattr(os, "waitid"):
                timed_out = not _wait_unreaped(proc.pid, timeout)
            else:  # pragma: no cover - platforms without waitid: reap first (tiny pid-reuse window)
                try:
                    proc.wait(timeout=timeout)
                    timed_out = False
                except subprocess.TimeoutExpired:
                    timed_out = True
            # The leader is not reaped yet (a zombie at worst), so its process group id cannot have been
            # reused: killing the group hits only what the code started, including leftovers.
            _kill_group(proc.pid)
            proc.wait()
            stdout, stderr = _read_capped(fout), _read_capped(ferr)
        rc = proc.returncode
        memory = (not timed_out) and rc != 0 and ("MemoryError" in stderr or "Cannot allocate memory" in stderr
                                      or "std::bad_alloc" in stderr)
        success = rc == 0 and not timed_out
        error = None
        if timed_out:
            error = f"timed out after {timeout:g}s"
        elif memory:
            error = f"memory limit exceeded ({memory_mb} MB)"
        elif rc is not None and rc < 0:
            sig = -rc
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            error = {signal.SIGXCPU: "CPU time limit exceeded", signal.SIGXFSZ: "output/file size limit exceeded"
                     }.get(sig, f"killed by signal {name}")
        elif rc == 97:
            error = stderr.strip().splitlines()[-1] if stderr.strip() else "sandbox setup failed"
        elif rc != 0:
            lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
            error = lines[-1] if lines else f"exit status {rc}"
        return ExecutionResult(success, stdout, stderr, error=error, timed_out=timed_out,
                               memory_exceeded=memory, returncode=rc)
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


__all__ = ["ExecutionResult", "execute", "sandbox_info"]
