"""Run model-written Python (HumanEval solutions) in a separate process behind an OS-level boundary.

    result = execute(code, timeout=5.0, memory_mb=512)
    result.success, result.stdout, result.stderr, result.error, result.timed_out, result.memory_exceeded,
    result.sandbox ("bwrap" | "landlock" | "none": the boundary the code ran behind)
    sandbox_info()   # which boundary this machine gives, and what it consists of

The boundary is the kernel's, never Python's: in-process guards can be taken apart by the code they
guard (closure cells rewritten through a traceback, sys._getframe, gc, ctypes). One is chosen once per
process (`NANOCHAT_SANDBOX`: auto, the default, takes the first that passes a test run):

1. "bwrap" (bubblewrap, the distribution's package): new mount, pid, net, ipc, uts (cgroup where
   permitted) namespaces; a read-only view holding only the system's libraries and this interpreter's
   installation (no /etc but the loader cache, no /home, /root, /srv or the checkout), read-only
   root, a private 64 MiB tmpfs /sandbox as cwd, HOME and TMPDIR, fresh /dev and /proc; no network
   device but loopback; --die-with-parent, --new-session, no capabilities. Started as root, bwrap keeps
   only CAP_SETUID/CAP_SETGID for the child, which becomes `nobody` before anything else runs (a user
   namespace would leave its files owned by root outside, so root's 0600 files would stay readable).
2. "landlock" (no bwrap, e.g. a GPU container without the package; Linux 5.13+): the child restricts
   itself irrevocably before the code runs: Landlock lets it read only the same view and write only
   its own temporary directory (and, by ABI: no TCP bind/connect, no signals or abstract unix
   sockets outside). It runs as `nobody` when that user can read this interpreter, else as uid 0
   with no capability at all (bounding set emptied, so no exec restores one; Landlock and seccomp,
   not file modes, then keep it off root's files and sockets); as root it is also started in new
   net/ipc/uts/pid namespaces when `unshare` (util-linux) is permitted.
3. none: no bwrap and no Landlock. The code is NOT run (error: "no OS sandbox here ..."; said once
   on stderr), because the remaining layers cannot stop an adversarial program. NANOCHAT_SANDBOX=weak
   opts in to running it anyway, with what is left (nobody/capabilities, unshare, seccomp, rlimits,
   the audit hook); sandbox_info() and result.sandbox then say "none".

Under every boundary, where the machine allows (x86-64, arm64): no_new_privs and a seccomp filter
that refuses socket(), fork/vfork/clone of processes (threads are fine), io_uring, ptrace, unshare/
setns, bpf, perf events and the kernel keyring. Always: a separate process group killed (SIGKILL) on
timeout and after exit (with bwrap or `unshare --pid`, the pid namespace dies with it); rlimits set
before exec (address space = memory_mb, CPU seconds, file size, open files, processes, no core
dumps); a scrubbed environment; capped output. Last, a second layer only: an audit hook in the child
that refuses writes outside its directory, reads outside it and the Python installation, sockets,
subprocesses, ctypes, gc introspection and the like, so ordinary mistakes fail with PermissionError.

NANOCHAT_SANDBOX: auto | bwrap | landlock | weak (bwrap or landlock: that boundary or refuse; weak:
skip both, see 3). NANOCHAT_SANDBOX_RO: extra read-only directories (os.pathsep-separated) for an
interpreter whose libraries live outside /usr and its prefix.
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
import threading
import time
from dataclasses import dataclass, field

try:  # POSIX only; elsewhere execute() runs nothing unless NANOCHAT_SANDBOX=weak
    import resource
except ImportError:  # pragma: no cover
    resource = None

OUTPUT_LIMIT_BYTES = 16 * 1024 * 1024  # RLIMIT_FSIZE: stdout/stderr files and any file the code writes
READ_BACK_BYTES = 64 * 1024            # how much of stdout/stderr is returned
MAX_OPEN_FILES = 64
MAX_PROCESSES = 64                     # RLIMIT_NPROC (per user; ignored for uid 0)
TMPFS_BYTES = 64 * 1024 * 1024         # bwrap's private tmpfs (its pages are not in RLIMIT_AS)
BWRAP_DIR = "/sandbox"                 # inside bwrap: the code's tmpfs (cwd, HOME, TMPDIR), apart from any bound path
MODES = ("auto", "bwrap", "landlock", "weak")


@dataclass
class ExecutionResult:
    success: bool
    stdout: str
    stderr: str
    error: str | None = None
    timed_out: bool = False
    memory_exceeded: bool = False
    returncode: int | None = None
    sandbox: str = ""                   # the boundary it ran behind: "bwrap" | "landlock" | "none"

    def __repr__(self) -> str:
        return (f"ExecutionResult(success={self.success}, sandbox={self.sandbox!r}, timed_out={self.timed_out}, "
                f"memory_exceeded={self.memory_exceeded}, error={self.error!r}, stdout={self.stdout[:200]!r}, "
                f"stderr={self.stderr[-300:]!r})")


# ----------------------------------------------------------------------------- the child's runner
# Runs as `python -I -B -c _RUNNER <json config>`; the code to run arrives on stdin.
_RUNNER = r'''
import sys, os, json, builtins
_cfg = json.loads(sys.argv[1])
_code = sys.stdin.read()
sys.stdin = open(os.devnull)


def _confine(cfg):
    """The kernel's part, before any model code: uid, no_new_privs, capabilities, Landlock, seccomp."""
    if cfg["setuid"]:
        uid, gid = cfg["setuid"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    if not cfg["harden"]:
        return
    import ctypes, struct
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    libc.syscall.restype = ctypes.c_long

    def check(ret, what):
        if ret < 0:
            err = ctypes.get_errno()
            raise OSError(err, "%s: %s" % (what, os.strerror(err)))
        return ret

    check(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if os.geteuid() == 0:  # still uid 0 (nobody cannot run this interpreter): no capability, now or after exec
        try:
            last = int(open("/proc/sys/kernel/cap_last_cap").read())
        except (OSError, ValueError):
            last = 40
        for cap in range(last + 1):
            check(libc.prctl(24, cap, 0, 0, 0), "prctl(PR_CAPBSET_DROP)")
        libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL; kernels before 4.3 have no ambient set
        header = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0), 8)
        check(libc.capset(header, ctypes.create_string_buffer(24)), "capset")
    if cfg["landlock"]:
        _landlock(ctypes, libc, check, cfg["landlock"], cfg["view"], cfg["dir"])
    if cfg["seccomp"]:
        _seccomp(ctypes, libc, check, cfg["seccomp"])
    for name in [m for m in sys.modules if m in ("ctypes", "_ctypes") or m.startswith("ctypes.")]:
        del sys.modules[name]  # a later `import ctypes` goes through the audit hook again


def _landlock(ctypes, libc, check, abi, view, rw_dir):
    """Read the view, read/write rw_dir, nothing else; by ABI also no TCP and no signals out of the domain."""
    import stat, struct
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    read, write, truncate = (1 << 2) | (1 << 3), 1 << 1, 1 << 14
    file_rights = 1 | write | (1 << 2) | truncate | (1 << 15)  # the rights a rule on a non-directory may hold
    attr = struct.pack("QQQ", fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)[:8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = check(libc.syscall(ctypes.c_long(444), buf, ctypes.c_long(len(attr)), ctypes.c_long(0)),
                    "landlock_create_ruleset")
    rules = [(p, read) for p in view] + [("/dev/null", read | write | truncate), ("/dev/zero", read),
                                         ("/dev/urandom", read), ("/dev/random", read), (rw_dir, fs)]
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    rights &= file_rights
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights & fs, fd), 12)
                check(libc.syscall(ctypes.c_long(445), ctypes.c_long(ruleset), ctypes.c_long(1), rule,
                                   ctypes.c_long(0)), "landlock_add_rule(%s)" % path)
            finally:
                os.close(fd)
        check(libc.syscall(ctypes.c_long(446), ctypes.c_long(ruleset), ctypes.c_long(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _seccomp(ctypes, libc, check, machine):
    """A filter that answers EPERM to the calls a HumanEval solution never needs (threads stay possible)."""
    import struct
    table = {"x86_64": (0xC000003E, 56, dict(socket=41, fork=57, vfork=58, ptrace=101, add_key=248, request_key=249,
                                              keyctl=250, unshare=272, perf_event_open=298, setns=308,
                                              process_vm_readv=310, process_vm_writev=311, bpf=321,
                                              io_uring_setup=425)),
             "aarch64": (0xC00000B7, 220, dict(socket=198, ptrace=117, add_key=217, request_key=218, keyctl=219,
                                                unshare=97, perf_event_open=241, setns=268, process_vm_readv=270,
                                                process_vm_writev=271, bpf=280, io_uring_setup=425))}
    arch, clone, deny = table[machine]
    prog = [(0x20, 0, 0, 4), (0x15, 0, "deny", arch), (0x20, 0, 0, 0)]  # A = arch (foreign: deny); A = nr
    if machine == "x86_64":
        prog.append((0x35, "deny", 0, 0x40000000))                  # the x32 ABI
    prog += [(0x15, "deny", 0, nr) for nr in deny.values()]
    prog += [(0x15, "nosys", 0, 435),                              # clone3: glibc falls back to clone on ENOSYS
             (0x15, 0, "allow", clone), (0x20, 0, 0, 16),           # clone: A = its flags (low word)
             (0x45, "allow", "deny", 0x10000)]                      # CLONE_THREAD or nothing
    ends = {"allow": 0x7FFF0000, "deny": 0x00050000 | 1, "nosys": 0x00050000 | 38}
    at = {name: len(prog) + i for i, name in enumerate(ends)}
    def jump(i, target):
        return at[target] - i - 1 if isinstance(target, str) else target
    raw = b"".join(struct.pack("HBBI", c, jump(i, jt), jump(i, jf), k) for i, (c, jt, jf, k) in enumerate(prog))
    raw += b"".join(struct.pack("HBBI", 0x06, 0, 0, ret) for ret in ends.values())
    filt = ctypes.create_string_buffer(raw, len(raw))

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Prog(len(raw) // 8, ctypes.addressof(filt))
    check(libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")


def _paths(sandbox, read_roots):
    """Path helpers of the audit hook."""
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


def _read_roots():
    roots = set()
    for p in list(sys.path) + [sys.prefix, sys.base_prefix, sys.exec_prefix]:
        if p and os.path.isdir(p):
            roots.add(os.path.abspath(p))
            roots.add(os.path.realpath(p))
    roots.discard("/")
    return tuple(sorted(roots))



try:
    _confine(_cfg)
except Exception as exc:
    sys.stderr.write("sandbox setup failed: %s\n" % (exc,))
    sys.exit(97)
if _cfg["inprocess"]:
    import gc as _gc_preload  # noqa: F401  (loaded before the hook; `gc.get_*` calls are refused by it)
    _hook, _ready = _make_hook(_cfg["dir"], _read_roots())
    sys.addaudithook(_hook)
    _ready[0] = True
    del _hook, _ready, _gc_preload
del _cfg, _paths, _make_hook, _read_roots, _confine, _landlock, _seccomp
_g = {"__name__": "__main__", "__builtins__": builtins}
_c = compile(_code, "<sandbox>", "exec")
del _code
exec(_c, _g)
'''

# A test run of each candidate boundary, without the audit hook: it must start, import what solutions
# import, write and read its directory, start a thread, and (for a boundary) not read /etc/passwd.
_PROBE = """
import json, os, math, re, collections, itertools, functools, heapq, fractions, decimal, hashlib, string
import typing, bisect, statistics, dataclasses, random, threading
with open("probe.txt", "w") as f:
    f.write("ok")
t = threading.Thread(target=lambda: None)
t.start()
t.join()
def blocked(path):
    try:
        open(path).close()
    except OSError:
        return True
    return False
print(json.dumps({"uid": os.getuid(), "io": open("probe.txt").read(), "outside_blocked": blocked("/etc/passwd")}))
"""

# ----------------------------------------------------------------------------- choosing the boundary


@dataclass(frozen=True)
class _Plan:
    boundary: str                            # "bwrap" | "landlock" | "none"
    prefix: tuple = ()                       # argv before the interpreter (bwrap or unshare)
    setuid: tuple | None = None              # (uid, gid) the child becomes before the code runs
    harden: bool = False                     # child: no_new_privs, no capabilities, then landlock/seccomp
    landlock: int = 0                        # Landlock ABI the child confines itself with (0: none)
    seccomp: str = ""                        # machine whose syscall numbers the filter uses ("": no filter)
    view: tuple = ()                         # what Landlock lets it read
    refused: str | None = None               # why model code is not run (None: it is)
    info: dict = field(default_factory=dict, compare=False)


_PLANS: dict = {}
_WARNED: set = set()
_LOCK = threading.Lock()
_SYSTEM_VIEW = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache")


def _reset_probes() -> None:
    """Forget the chosen boundaries (tests; a machine whose packages changed)."""
    with _LOCK:
        _PLANS.clear()
        _WARNED.clear()


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _find_bwrap() -> str | None:
    return shutil.which("bwrap") if sys.platform.startswith("linux") else None


def _landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none). Asked through ctypes here, in the trusted parent."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        return max(0, int(libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1))))
    except (ImportError, OSError, AttributeError):
        return 0


def _seccomp_machine() -> str:
    machine = os.uname().machine if hasattr(os, "uname") else ""
    return machine if sys.platform.startswith("linux") and machine in ("x86_64", "aarch64") else ""


def _nobody() -> tuple[int, int]:
    try:
        import pwd
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def _view() -> list[tuple[str, str | None]]:
    """(path, symlink target or None): the system's libraries and this interpreter's installation."""
    items, bound = [], []
    for p in _SYSTEM_VIEW:
        if os.path.islink(p):
            items.append((p, os.readlink(p)))
        elif os.path.exists(p):
            items.append((p, None))
            bound.append(p)
    exe = os.path.realpath(sys.executable)
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(exe))}
    if exe.startswith("/nix/store/"):
        roots.add("/nix/store")  # its shared libraries are other store paths
    roots |= set(os.environ.get("NANOCHAT_SANDBOX_RO", "").split(os.pathsep))
    for p in sorted({os.path.realpath(r) for r in roots if r} | {os.path.abspath(r) for r in roots if r}):
        if p != "/" and os.path.exists(p) and not any(p == b or p.startswith(b + "/") for b in bound):
            items.append((p, None))
            bound.append(p)
    return items


def _bwrap_argv(exe: str, root: bool) -> list[str]:
    argv = [exe, "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid", "--unshare-net",
            "--unshare-uts", "--unshare-cgroup-try", "--cap-drop", "ALL"]
    # as root: no user namespace (see the module docstring); the child only needs to become nobody
    argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if root else ["--unshare-user"]
    made = {"/"}
    for path, link in _view():
        parts = path.split("/")
        for i in range(2, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in made:  # bwrap would copy the source's mode (/root: 0700) onto these
                argv += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        argv += ["--symlink", link, path] if link else ["--ro-bind", path, path]
        made.add(path)
    return argv + ["--dev", "/dev", "--proc", "/proc", "--size", str(TMPFS_BYTES), "--perms", "01777", "--tmpfs",
                   BWRAP_DIR, "--remount-ro", "/", "--chdir", BWRAP_DIR, "--"]


def _unshare_prefixes(root: bool) -> list[tuple[tuple, list]]:
    """(argv prefix, namespaces) that start an interpreter here, best first; always ends with ((), [])."""
    found = []
    exe = shutil.which("unshare") if sys.platform.startswith("linux") and root else None
    for flags, ns in ((["--net", "--ipc", "--uts", "--pid", "--fork", "--kill-child"], ["net", "ipc", "uts", "pid"]),
                      (["--net"], ["net"])):
        if exe is None:
            break
        try:
            if subprocess.run([exe, *flags, "--", sys.executable, "-I", "-c", "pass"], capture_output=True,
                              timeout=20).returncode == 0:
                found.append(((exe, *flags, "--"), ns))
                break
        except (OSError, subprocess.TimeoutExpired):
            pass
    return found + [((), [])]


def _probe(plan: _Plan) -> tuple[dict | None, str]:
    res = _run(_PROBE, 20.0, 512, plan, inprocess=False)
    try:
        seen = json.loads(res.stdout.strip().splitlines()[-1])
        if res.success and seen.get("io") == "ok":
            return seen, ""
    except (ValueError, IndexError, AttributeError):
        pass
    return None, res.error or "test run failed"


def _describe(plan: _Plan, seen: dict, base: dict, namespaces: list, filesystem: str, reason: str) -> _Plan:
    network = [n for n, on in (("empty network namespace", "net" in namespaces),
                               ("socket() refused (seccomp)", bool(plan.seccomp) and plan.harden),
                               ("TCP bind/connect refused (Landlock)", plan.landlock >= 4)) if on]
    uid = seen["uid"]
    info = dict(base, boundary=plan.boundary, refused=False, reason=reason, uid=uid,
                privileges="none (uid %d)" % uid if uid != 0 else
                ("uid 0 without capabilities (bounding set empty, no_new_privs)" if plan.harden else "root"),
                namespaces=namespaces, filesystem=filesystem,
                network="; ".join(network) or "open (audit hook only)",
                seccomp=bool(plan.seccomp) and plan.harden, landlock_abi=plan.landlock,
                unshare_net="net" in namespaces, drop_to_nobody=plan.setuid is not None)
    return _Plan(**{**plan.__dict__, "info": info})


def _try_bwrap(base: dict, notes: list) -> _Plan | None:
    exe = _find_bwrap()
    if not exe:
        notes.append("bubblewrap (bwrap) is not installed")
        return None
    argv, ids = tuple(_bwrap_argv(exe, base["root"])), (_nobody() if base["root"] else None)
    error = ""
    for harden in (True, False):  # without ctypes the child cannot add seccomp; bwrap alone still holds
        plan = _Plan("bwrap", argv, ids, harden, 0, _seccomp_machine() if harden else "")
        seen, error = _probe(plan)
        if seen and seen["outside_blocked"] and not (base["root"] and seen["uid"] == 0):
            namespaces = ["mount", "pid", "net", "ipc", "uts"] + ([] if base["root"] else ["user"])
            return _describe(plan, seen, base, namespaces,
                             "read-only view of the system libraries and this Python only; private tmpfs "
                             "(%d MiB) as cwd, HOME and TMPDIR" % (TMPFS_BYTES >> 20), f"bubblewrap ({exe})")
    notes.append(f"bubblewrap did not pass its test run: {error}")
    return None


def _try_landlock(base: dict, notes: list) -> _Plan | None:
    abi = _landlock_abi()
    if abi < 1:
        notes.append("the kernel has no Landlock (Linux 5.13+ with landlock among its LSMs)")
        return None
    view = tuple(p for p, link in _view() if link is None)
    (prefix, namespaces), error = _unshare_prefixes(base["root"])[0], ""
    for ids in ([_nobody(), None] if base["root"] else [None]):  # nobody needs to be able to read this Python
        plan = _Plan("landlock", prefix, ids, True, abi, _seccomp_machine(), view)
        seen, error = _probe(plan)
        if seen and seen["outside_blocked"]:
            why = "" if ids or not base["root"] else " (nobody cannot read this interpreter)"
            return _describe(plan, seen, base, namespaces,
                             "Landlock: read the system libraries and this Python, read/write its own "
                             "temporary directory, nothing else", f"Landlock ABI {abi}, no bubblewrap{why}")
    notes.append(f"Landlock ABI {abi} did not pass its test run: {error}")
    return None


def _try_weak(base: dict) -> _Plan:
    prefix, namespaces = _unshare_prefixes(base["root"])[0]
    machine = _seccomp_machine()
    for ids in ([_nobody(), None] if base["root"] else [None]):
        for harden in (True, False):
            plan = _Plan("none", prefix, ids, harden, 0, machine if harden else "")
            seen, _ = _probe(plan)
            if seen:
                files = "file modes only: uid %d" % seen["uid"]
                files += ", root's files included" if seen["uid"] == 0 else ""
                return _describe(plan, seen, base, namespaces, files,
                                 "NANOCHAT_SANDBOX=weak: bubblewrap and Landlock skipped, no OS boundary")
    return _refuse(base, "NANOCHAT_SANDBOX=weak: even an unconfined test run failed")


def _refuse(base: dict, reason: str) -> _Plan:
    info = dict(base, boundary="none", refused=True, reason=reason, uid=None, privileges=None, namespaces=[],
                filesystem=None, network=None, seccomp=False, landlock_abi=0, unshare_net=False,
                drop_to_nobody=False)
    return _Plan("none", refused=reason, info=info)


def _choose(mode: str) -> _Plan:
    base = {"mode": mode, "root": _is_root()}
    if mode not in MODES:
        return _refuse(base, f"NANOCHAT_SANDBOX={mode!r} is not one of {', '.join(MODES)}")
    if resource is None or not hasattr(os, "killpg"):
        return _refuse(base, "sandboxed execution needs a POSIX system")
    notes: list = []
    if mode in ("auto", "bwrap"):
        plan = _try_bwrap(base, notes)
        if plan:
            return plan
    if mode in ("auto", "landlock"):
        plan = _try_landlock(base, notes)
        if plan:
            return plan
    if mode == "weak":
        return _try_weak(base)
    return _refuse(base, "no OS sandbox here (" + "; ".join(notes) + "), so model code is not run: install "
                   "bubblewrap (apt-get install bubblewrap), or set NANOCHAT_SANDBOX=weak to run it with "
                   "in-process guards only")


def _plan() -> _Plan:
    mode = (os.environ.get("NANOCHAT_SANDBOX") or "auto").strip().lower()
    with _LOCK:
        if mode not in _PLANS:
            _PLANS[mode] = _choose(mode)
        return _PLANS[mode]


def sandbox_info() -> dict:
    """The boundary execute() uses on this machine (for logs and tests): boundary, refused, reason, mode,
    uid (what the code runs as), root (this process), privileges, namespaces, filesystem, network,
    seccomp, landlock_abi (and, as before, unshare_net, drop_to_nobody)."""
    return dict(_plan().info)


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
    """Run `code` (a Python program) behind this machine's boundary; never raises for the code's faults."""
    plan = _plan()
    if plan.refused:
        if plan.refused not in _WARNED:
            _WARNED.add(plan.refused)
            sys.stderr.write(f"nanochat.execution: {plan.refused}\n")
        return ExecutionResult(False, "", "", error=plan.refused, sandbox=plan.boundary)
    return _run(code, timeout, memory_mb, plan)


def _run(code: str, timeout: float, memory_mb: int, plan: _Plan, inprocess: bool = True) -> ExecutionResult:
    """One run under `plan`; inprocess=False leaves out the audit hook (probes, and tests of the OS layer)."""
    bwrap = plan.boundary == "bwrap"
    sandbox = BWRAP_DIR if bwrap else os.path.realpath(tempfile.mkdtemp(prefix="nanochat-sbx-"))
    private = tempfile.mkdtemp(prefix="nanochat-sbx-io-")  # 0700: code file and output files
    try:
        if not bwrap:
            if plan.setuid is not None:
                os.chown(sandbox, plan.setuid[0], plan.setuid[1])
            os.chmod(sandbox, 0o700)
        cfg = {"dir": sandbox, "setuid": plan.setuid, "harden": plan.harden, "landlock": plan.landlock,
               "seccomp": plan.seccomp, "view": list(plan.view), "inprocess": inprocess}
        env = {"PATH": "/usr/bin:/bin", "HOME": sandbox, "TMPDIR": sandbox, "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        cmd = list(plan.prefix) + [sys.executable, "-I", "-B", "-c", _RUNNER, json.dumps(cfg)]
        with open(os.path.join(private, "code.py"), "w+b") as fin, \
                open(os.path.join(private, "stdout"), "w+b") as fout, \
                open(os.path.join(private, "stderr"), "w+b") as ferr:
            fin.write(code.encode("utf-8", errors="replace"))
            fin.flush()
            fin.seek(0)
            timed_out = False
            try:
                proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=private if bwrap else sandbox,
                                        env=env, start_new_session=True, preexec_fn=_limits(timeout, memory_mb),
                                        close_fds=True)
            except OSError as exc:
                return ExecutionResult(False, "", "", error=f"could not start the sandbox: {exc}",
                                       sandbox=plan.boundary)
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
                               memory_exceeded=memory, returncode=rc, sandbox=plan.boundary)
    finally:
        if not bwrap:  # (bwrap's directory is its own tmpfs, gone with it)
            shutil.rmtree(sandbox, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


__all__ = ["ExecutionResult", "execute", "sandbox_info"]
