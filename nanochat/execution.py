"""Run model-written Python (HumanEval solutions) behind an OS boundary, chosen here by test runs.

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
that refuses socket(), fork/vfork/clone of processes (threads are fine), io_uring, ptrace,
unshare/setns, bpf, perf events and the kernel keyring; last, a second layer only, an audit hook
refusing writes outside its directory, reads outside it and the Python installation, sockets,
subprocesses, ctypes, gc introspection and the like, so ordinary mistakes fail with PermissionError
(both set up in the child: nanochat/sandbox_child.py). Always: rlimits (address space = memory_mb,
CPU seconds, file size, open files, processes, no core dumps) and a process group killed on timeout
(with bwrap or `unshare --pid`, the pid namespace dies with it): nanochat/sandbox_run.py.

NANOCHAT_SANDBOX: auto | bwrap | landlock | weak (bwrap or landlock: that boundary or refuse; weak:
skip both, see 3). NANOCHAT_SANDBOX_RO: extra read-only directories (os.pathsep-separated) for an
interpreter whose libraries live outside /usr and its prefix.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

from nanochat.sandbox_run import BWRAP_DIR, POSIX, ExecutionResult, Plan, run

TMPFS_BYTES = 64 * 1024 * 1024         # bwrap's private tmpfs (its pages are not in RLIMIT_AS)
MODES = ("auto", "bwrap", "landlock", "weak")

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

_PLANS: dict = {}
_WARNED: set = set()
_LOCK = threading.Lock()
_SYSTEM_VIEW = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache")


def _reset_probes() -> None:
    """Forget the chosen boundaries (tests; a machine whose packages changed)."""
    with _LOCK:
        _PLANS.clear()
        _WARNED.clear()


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


def _probe(plan: Plan) -> tuple[dict | None, str]:
    res = run(_PROBE, 20.0, 512, plan, inprocess=False)
    try:
        seen = json.loads(res.stdout.strip().splitlines()[-1])
        if res.success and seen.get("io") == "ok":
            return seen, ""
    except (ValueError, IndexError, AttributeError):
        pass
    return None, res.error or "test run failed"


def _describe(plan: Plan, seen: dict, base: dict, namespaces: list, filesystem: str, reason: str) -> Plan:
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
    return Plan(**{**plan.__dict__, "info": info})


def _try_bwrap(base: dict, notes: list) -> Plan | None:
    exe = _find_bwrap()
    if not exe:
        notes.append("bubblewrap (bwrap) is not installed")
        return None
    argv, ids = tuple(_bwrap_argv(exe, base["root"])), (_nobody() if base["root"] else None)
    error = ""
    for harden in (True, False):  # without ctypes the child cannot add seccomp; bwrap alone still holds
        plan = Plan("bwrap", argv, ids, harden, 0, _seccomp_machine() if harden else "")
        seen, error = _probe(plan)
        if seen and seen["outside_blocked"] and not (base["root"] and seen["uid"] == 0):
            namespaces = ["mount", "pid", "net", "ipc", "uts"] + ([] if base["root"] else ["user"])
            return _describe(plan, seen, base, namespaces,
                             "read-only view of the system libraries and this Python only; private tmpfs "
                             "(%d MiB) as cwd, HOME and TMPDIR" % (TMPFS_BYTES >> 20), f"bubblewrap ({exe})")
    notes.append(f"bubblewrap did not pass its test run: {error}")
    return None


def _try_landlock(base: dict, notes: list) -> Plan | None:
    abi = _landlock_abi()
    if abi < 1:
        notes.append("the kernel has no Landlock (Linux 5.13+ with landlock among its LSMs)")
        return None
    view = tuple(p for p, link in _view() if link is None)
    (prefix, namespaces), error = _unshare_prefixes(base["root"])[0], ""
    for ids in ([_nobody(), None] if base["root"] else [None]):  # nobody needs to be able to read this Python
        plan = Plan("landlock", prefix, ids, True, abi, _seccomp_machine(), view)
        seen, error = _probe(plan)
        if seen and seen["outside_blocked"]:
            why = "" if ids or not base["root"] else " (nobody cannot read this interpreter)"
            return _describe(plan, seen, base, namespaces,
                             "Landlock: read the system libraries and this Python, read/write its own "
                             "temporary directory, nothing else", f"Landlock ABI {abi}, no bubblewrap{why}")
    notes.append(f"Landlock ABI {abi} did not pass its test run: {error}")
    return None


def _try_weak(base: dict) -> Plan:
    prefix, namespaces = _unshare_prefixes(base["root"])[0]
    machine = _seccomp_machine()
    for ids in ([_nobody(), None] if base["root"] else [None]):
        for harden in (True, False):
            plan = Plan("none", prefix, ids, harden, 0, machine if harden else "")
            seen, _ = _probe(plan)
            if seen:
                files = "file modes only: uid %d" % seen["uid"]
                files += ", root's files included" if seen["uid"] == 0 else ""
                return _describe(plan, seen, base, namespaces, files,
                                 "NANOCHAT_SANDBOX=weak: bubblewrap and Landlock skipped, no OS boundary")
    return _refuse(base, "NANOCHAT_SANDBOX=weak: even an unconfined test run failed")


def _refuse(base: dict, reason: str) -> Plan:
    info = dict(base, boundary="none", refused=True, reason=reason, uid=None, privileges=None, namespaces=[],
                filesystem=None, network=None, seccomp=False, landlock_abi=0, unshare_net=False,
                drop_to_nobody=False)
    return Plan("none", refused=reason, info=info)


def _choose(mode: str) -> Plan:
    base = {"mode": mode, "root": hasattr(os, "geteuid") and os.geteuid() == 0}
    if mode not in MODES:
        return _refuse(base, f"NANOCHAT_SANDBOX={mode!r} is not one of {', '.join(MODES)}")
    if not POSIX:
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


def _plan() -> Plan:
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


def execute(code: str, timeout: float = 5.0, memory_mb: int = 512) -> ExecutionResult:
    """Run `code` (a Python program) behind this machine's boundary; never raises for the code's faults."""
    plan = _plan()
    if plan.refused:
        if plan.refused not in _WARNED:
            _WARNED.add(plan.refused)
            sys.stderr.write(f"nanochat.execution: {plan.refused}\n")
        return ExecutionResult(False, "", "", error=plan.refused, sandbox=plan.boundary)
    return run(code, timeout, memory_mb, plan)


__all__ = ["execute", "sandbox_info"]
