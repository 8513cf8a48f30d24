"""Run one program in the sandbox's child process under a chosen Plan, and collect its result.

The child (nanochat/sandbox_child.py) starts in its own process group with rlimits set before exec,
a scrubbed environment and output to private files; the whole group is killed (SIGKILL) on timeout
and after exit, and the output read back capped. nanochat/execution.py chooses the Plan.
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
from dataclasses import dataclass, field
from pathlib import Path

try:  # POSIX only
    import resource
except ImportError:  # pragma: no cover
    resource = None

POSIX = resource is not None and hasattr(os, "killpg")  # run() needs rlimits and process groups
OUTPUT_LIMIT_BYTES = 16 * 1024 * 1024  # RLIMIT_FSIZE: stdout/stderr files and any file the code writes
READ_BACK_BYTES = 64 * 1024            # how much of stdout/stderr is returned
MAX_OPEN_FILES = 64
MAX_PROCESSES = 64                     # RLIMIT_NPROC (per user; ignored for uid 0)
BWRAP_DIR = "/sandbox"                 # inside bwrap: the code's tmpfs (cwd, HOME, TMPDIR), apart from any bound path
_RUNNER = Path(__file__).with_name("sandbox_child.py").read_text(encoding="utf-8")


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


@dataclass(frozen=True)
class Plan:
    """How to start the child: the boundary nanochat.execution chose, once per process."""

    boundary: str                            # "bwrap" | "landlock" | "none"
    prefix: tuple = ()                       # argv before the interpreter (bwrap or unshare)
    setuid: tuple | None = None              # (uid, gid) the child becomes before the code runs
    harden: bool = False                     # child: no_new_privs, no capabilities, then landlock/seccomp
    landlock: int = 0                        # Landlock ABI the child confines itself with (0: none)
    seccomp: str = ""                        # machine whose syscall numbers the filter uses ("": no filter)
    view: tuple = ()                         # what Landlock lets it read
    refused: str | None = None               # why model code is not run (None: it is)
    info: dict = field(default_factory=dict, compare=False)


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


def _wait_unreaped(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until `proc` exits WITHOUT reaping it; False if still running after `timeout` s."""
    if not hasattr(os, "waitid"):  # pragma: no cover - no waitid: reap (a tiny pid-reuse window)
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        if info is not None:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.05)


def run(code: str, timeout: float, memory_mb: int, plan: Plan, inprocess: bool = True) -> ExecutionResult:
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
            try:
                proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=private if bwrap else sandbox,
                                        env=env, start_new_session=True, preexec_fn=_limits(timeout, memory_mb),
                                        close_fds=True)
            except OSError as exc:
                return ExecutionResult(False, "", "", error=f"could not start the sandbox: {exc}",
                                       sandbox=plan.boundary)
            timed_out = not _wait_unreaped(proc, timeout)
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
