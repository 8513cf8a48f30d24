"""Process-wide plumbing shared by every stage: where outputs live, who is rank 0,
how a user error is reported, how files are written so a crash never leaves half of one.

Everything here is deliberately small and dependency-free apart from torch, so that the
Makefile's cheap probes (`python -m nanochat.common ...`) start fast.
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

# When this process first imported nanochat: for `python -m scripts.X` that is scripts/__init__.py,
# before torch, so "time to first step" counts the imports the way a user waits for them.
PROCESS_START = time.time()


# ----------------------------------------------------------------------------- errors

class UserError(Exception):
    """A problem the user can fix (bad flag, missing file, no GPU...).

    Reported as ONE line on stderr, no traceback, exit status 2. The message should say
    what is wrong and how to fix it, e.g. "no tokenizer in /x/tokenizer: run `make tokenizer`".
    """


def run_main(main: Callable[[], object]) -> None:
    """Entry point wrapper for scripts: user errors become one clean line, not a traceback."""
    # `torchrun ... -m scripts.base_train -- --depth=20` hands the script a leading "--",
    # which argparse would read as "no more options": drop it.
    if len(sys.argv) > 1 and sys.argv[1] == "--":
        del sys.argv[1]
    # argparse's own errors (unknown flag, bad choice) print a usage block: make them one line too
    import argparse

    def _one_line_error(self, message):
        raise UserError(f"{message} (see --help)")
    argparse.ArgumentParser.error = _one_line_error  # type: ignore[assignment]
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        _abort_distributed()
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except OSError as exc:
        if fs_error(exc) is None:
            raise
        print(f"error: {fs_error(exc)}", file=sys.stderr, flush=True)
        _abort_distributed()
        sys.exit(2)


def fs_error(exc: OSError) -> str | None:
    """One line for a file system refusing a write (full, read-only, not permitted); None for others."""
    where = exc.filename or "output"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"disk full while writing {where}: free space under {base_dir_path()} and rerun "
                f"(finished outputs were not touched)")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"cannot write {where} ({exc.strerror}): make {base_dir_path()} writable or point "
                f"NANOCHAT_BASE_DIR at a writable directory, and rerun (finished outputs were not touched)")
    return None


def _abort_distributed() -> None:
    if "torch.distributed" not in sys.modules:  # never imported: no process group, and no 3 s torch import
        return
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass


# ----------------------------------------------------------------------------- paths

def get_base_dir() -> Path:
    """All outputs live under $NANOCHAT_BASE_DIR (default ~/.cache/nanochat), created on first use.
    An existing one is only read here (a published model on a read-only mount must load): a stage
    that writes checks with ensure_base_dir before it starts (training.init_run), and a write that
    fails anyway (read-only remount, full disk) is one line through run_main."""
    path = Path(base_dir_path())
    return path if path.is_dir() else ensure_base_dir(path)


def base_dir_path() -> str:
    """$NANOCHAT_BASE_DIR or its default, neither checked nor created."""
    return os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")


    # child processes (torchrun's workers, inductor's compile pool) read the same cache; the ones
    # that run this function write to it too
    os.environ["PYTHONPYCACHEPREFIX"] = prefix


def ensure_base_dir(raw: str | os.PathLike) -> Path:
    """The base dir, created if needed and writable, or a one-line UserError naming NANOCHAT_BASE_DIR.

    The one place that decides whether a base dir is usable for writing (the stages, and `nanochat.pipeline
    lock` for the Makefile), so a file in the way, a parent that cannot be created, a read-only
    mount or a path under /proc fails here in one line instead of as a traceback at the first write."""
    base = Path(raw)
    fix = "point NANOCHAT_BASE_DIR at a writable directory"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"NANOCHAT_BASE_DIR={base} is a file, not a directory: {fix}") from None
    except OSError as exc:
        raise UserError(f"cannot create NANOCHAT_BASE_DIR={base} ({exc.strerror or exc}): {fix}") from None
    # access() sees read-only mounts and, for non-root users, directory modes; root writes anyway
    # where the mount allows it, which is what access() reports for root too
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"NANOCHAT_BASE_DIR={base} is not writable: {fix}")
    return base


# ----------------------------------------------------------------------------- atomic files

@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: int | None = 0o644, prefix: str | None = None) -> Iterator[Path]:
    """Write `path` all at once or not at all: yields a temp file beside it for the block to write
    (and check: an exception raised inside the block counts as failure). When the block ends
    normally the temp file is fsynced, given `mode` (mkstemp makes 0600; None keeps the file's own
    mode, e.g. for a hard link whose mode is its source's) and renamed over `path`, so a reader, a
    kill or a full disk sees the old file or the new one, never part of one. When the block raises,
    the temp file is removed and `path` is left as it was. `prefix` names the temp file (default
    `.<name>.`; it always ends in `.tmp`, which is how cleaners such as
    checkpoint_manager.remove_temp_files find what a killed writer left)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=prefix or f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save through atomic_output: a kill or a full disk never leaves a partial file."""
    import torch
    path = Path(path)
    with atomic_output(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            # torch's zip writer reports a failed write (e.g. a full disk) as a RuntimeError
            # ("unexpected pos ..."): name a full disk for what it is
            if _free_bytes(path.parent) < 16 * 2 ** 20:
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from exc
            raise


def _free_bytes(directory) -> int:
    try:
        st = os.statvfs(directory)
        return st.f_bavail * st.f_frsize
    except (OSError, AttributeError):
        return 2 ** 62


def one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's message on one line, cut to `limit` characters (for UserError messages)."""
    s = " ".join(str(exc).split())
    return s if len(s) <= limit else s[:limit] + "..."


def unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class IncompleteBody(OSError):
    """An HTTP body shorter (or longer) than its Content-Length: worth retrying."""


def stream_to_file(resp, out, hasher=None, chunk_size: int = 1 << 20) -> int:
    """Copy an HTTP response body into the open binary file `out` in chunks (never all in memory),
    feeding `hasher` if given; flush and fsync, so a completed download survives a crash before the
    caller renames it into place. Returns the bytes written."""
    expected = resp.headers.get("Content-Length")
    written = 0
    while chunk := resp.read(chunk_size):
        out.write(chunk)
        if hasher is not None:
            hasher.update(chunk)
        written += len(chunk)
    out.flush()
    os.fsync(out.fileno())
    if expected is not None and expected.isdigit() and int(expected) != written:
        raise IncompleteBody(f"incomplete body: {written} of {expected} bytes")
    return written


# ----------------------------------------------------------------------------- distributed

def dist_env() -> tuple[bool, int, int, int]:
    """(is_ddp, rank, local_rank, world_size) as torchrun sets them."""
    if all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    return False, 0, 0, 1


def is_rank0() -> bool:
    return dist_env()[1] == 0


def print0(*args, **kwargs) -> None:
    if is_rank0():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def autodetect_device_type() -> str:
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def compute_init(device_type: str = "", seed: int = 42):
    """Validate the device, join the process group if launched by torchrun, seed everything.

    Returns (is_ddp, rank, local_rank, world_size, device).
    """
    import torch
    import torch.distributed as dist

    device_type = device_type or autodetect_device_type()
    if device_type not in ("cuda", "cpu", "mps"):
        raise UserError(f"--device-type={device_type!r} is not one of cuda, cpu, mps")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device-type=cuda but no CUDA GPU is visible: use --device-type=cpu "
                        "(or PRESET=tiny), or check the driver with `make doctor`")
    if device_type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device-type=mps but MPS is not available: use --device-type=cpu")

    is_ddp, rank, local_rank, world_size = dist_env()
    if device_type == "cuda":
        n_gpus = torch.cuda.device_count()
        if is_ddp and int(os.environ.get("LOCAL_WORLD_SIZE", world_size)) > n_gpus:
            raise UserError(f"NPROC={os.environ.get('LOCAL_WORLD_SIZE', world_size)} processes per node but only "
                            f"{n_gpus} GPU(s) visible: set NPROC<={n_gpus}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device(device_type)

    if is_ddp and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device_type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
        dist.barrier()

    random.seed(seed)
    torch.manual_seed(seed)
    if device_type == "cuda":
        torch.cuda.manual_seed(seed)
    return is_ddp, rank, local_rank, world_size, device


def compute_cleanup() -> None:
    """Leave the process group. On a normal exit all ranks first meet at a barrier: a rank that tears
    gloo down while rank 0 is still saving/reporting can abort ("terminate called without an active
    exception"). When an exception is propagating (we are called from a `finally`), no barrier: the
    other ranks may never arrive, and torchrun stops the job anyway."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None:
            try:
                dist.barrier()
            except Exception:
                pass
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- hardware

# Dense bf16 tensor-core peak (FLOP/s, no sparsity) used for MFU. Matched on the device name.
_PEAK_BF16 = [
    ("h100 nvl", 835e12), ("h100 pcie", 756e12), ("h100", 989e12), ("h200", 989e12),
    ("gh200", 989e12), ("b200", 2250e12), ("a100", 312e12), ("l40s", 362e12),
    ("5090", 209.5e12), ("4090", 165.2e12), ("3090", 71e12), ("a6000", 154.8e12),
]


def get_peak_flops(device_name: str) -> float:
    """bf16 dense peak for MFU; inf for unknown devices (so MFU reads 0 rather than lying)."""
    name = device_name.lower()
    for key, flops in _PEAK_BF16:
        if key in name:
            return flops
    return float("inf")


def device_name(device) -> str:
    import torch
    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
