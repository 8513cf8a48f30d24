"""`torchrun` for a PyTorch built without libuv.

Usage (exactly the arguments of `torchrun`; nothing is added, removed or reinterpreted):

    python -m nanochat.torchrun_no_libuv --standalone --nproc_per_node=8 -m scripts.base_train ...
    python -m nanochat.torchrun_no_libuv --nnodes=2 --node_rank=0 --master_addr=10.0.0.1 \
        --master_port=29500 --nproc_per_node=8 -m scripts.base_train ...

Why this exists
---------------
Since PyTorch 2.4 the TCPStore (the key-value store behind torchrun's rendezvous and
`init_process_group("env://")`) defaults to the libuv server. A PyTorch built without libuv
(possible with a from-source build) raises "use_libuv was requested but PyTorch was built without
libuv support" from *every* TCPStore that is created with the default `use_libuv=True`, servers and
clients alike. The `USE_LIBUV=0` environment variable is only honoured by some call sites
(`torch.distributed.rendezvous` for `env://`/`tcp://` URLs, `elastic.utils.distributed`); the
elastic agent's static and c10d rendezvous backends, the dynamic rendezvous' shared store, and the
worker-side client of the agent's store (`TORCHELASTIC_USE_AGENT_STORE=True`) call
`TCPStore(...)` without `use_libuv` and so still ask for libuv.

What it does
------------
* Unless `USE_LIBUV=1` is set explicitly, it sets `USE_LIBUV=0` (inherited by the workers) and, in
  the launcher (elastic agent) process, replaces `torch.distributed.TCPStore` (and the module-level
  copies of that name inside `torch.distributed.*`) by a subclass that always passes
  `use_libuv=False`. Every store is still a real `TCPStore` (isinstance checks keep working).
* Python workers are started as `python -u <this file> --nanochat-nolibuv-worker <script|-m module>
  <args>`: the worker installs the same patch, restores `sys.argv`/`sys.path[0]` exactly as
  `python <script>` / `python -m <module>` would, and runs the target as `__main__` (runpy, like
  torchrun's own `--run-path`). `--run-path` workers are patched in-process. `--no-python`
  workers are started unchanged (we cannot patch an arbitrary executable): they must pass
  `use_libuv=False` themselves; a warning says so.
* With `USE_LIBUV=1` in the environment it is plain `torchrun` (no patch at all).

Decision: the patch is on by default (USE_LIBUV unset or "0") because the whole point of this
launcher is a libuv-less torch; on a torch that does have libuv the legacy store is merely the
pre-2.4 default and works the same (it scales less well beyond a few thousand ranks, irrelevant
here).

`NANOCHAT_TORCHRUN_TRACE=1` prints one line per TCPStore created (pid, address, is_master and the
store's own `libuvBackend` property) to stderr; the tests use it to observe the agent side.
"""
import os
import sys

WORKER_FLAG = "--nanochat-nolibuv-worker"

# When started as a worker (`python -u .../nanochat/torchrun_no_libuv.py FLAG ...`) Python put this
# file's directory (the nanochat package dir) at sys.path[0]. Drop it before anything else is
# imported so that no module of the package can shadow a top-level module name.
if __name__ == "__main__" and sys.argv[1:2] == [WORKER_FLAG]:
    _here = os.path.dirname(os.path.realpath(__file__))
    if sys.path and os.path.realpath(sys.path[0] or os.curdir) == _here:
        del sys.path[0]

import re  # noqa: E402  (after the sys.path fix above, on purpose)
import runpy  # noqa: E402

TRACE_ENV = "NANOCHAT_TORCHRUN_TRACE"
_PATCH_MARK = "_nanochat_no_libuv"

# Modules that bind the name `TCPStore` at import time (`from torch.distributed import TCPStore`)
# or create stores for the launcher. Imported before the rebinding sweep so that their copy of the
# name is replaced too; missing ones (other torch versions) are skipped.
_STORE_MODULES = (
    "torch.distributed.rendezvous",
    "torch.distributed.elastic.rendezvous.static_tcp_rendezvous",
    "torch.distributed.elastic.rendezvous.c10d_rendezvous_backend",
    "torch.distributed.elastic.rendezvous.dynamic_rendezvous",
    "torch.distributed.elastic.utils.distributed",
)


def libuv_disabled(environ=None) -> bool:
    """True unless the user explicitly asked for libuv with USE_LIBUV=1."""
    environ = os.environ if environ is None else environ
    return environ.get("USE_LIBUV", "0").strip() != "1"


def _param_names(cls) -> list:
    """Constructor parameter names of the pybind TCPStore, in order, read from its signature doc."""
    doc = (getattr(cls.__init__, "__doc__", None) or "").strip().splitlines()
    first = doc[0] if doc else ""
    names = re.findall(r"(\w+)\s*:", first[first.find("(") + 1:] if "(" in first else "")
    names = [n for n in names if n != "self"]
    if "use_libuv" in names and "host_name" in names:
        return names
    # fallback: the order used by every PyTorch release that has use_libuv (2.3 .. 2.13)
    return ["host_name", "port", "world_size", "is_master", "timeout", "wait_for_workers",
            "multi_tenant", "master_listen_fd", "use_libuv"]


def install() -> type:
    """Make every TCPStore created from now on in this process use the non-libuv backend.

    Idempotent. Returns the class now bound to `torch.distributed.TCPStore`.
    """
    import importlib

    import torch.distributed as dist

    current = dist.TCPStore
    if getattr(current, _PATCH_MARK, False):
        return current
    base = current
    names = _param_names(base)
    libuv_pos = names.index("use_libuv")
    trace = os.environ.get(TRACE_ENV, "") not in ("", "0")

    class TCPStoreNoLibuv(base):
        """torch.distributed.TCPStore that never asks for the libuv backend."""

        def __init__(self, *args, **kwargs):
            if len(args) > libuv_pos:
                args = args[:libuv_pos] + (False,) + args[libuv_pos + 1:]
                kwargs.pop("use_libuv", None)
            else:
                kwargs["use_libuv"] = False
            super().__init__(*args, **kwargs)
            if trace:
                bound = dict(zip(names, args))
                bound.update(kwargs)
                # one write() with the newline: several processes share this stderr pipe, and an
                # unbuffered print() writes the text and its newline separately, so lines interleaved
                sys.stderr.write(f"torchrun_no_libuv: pid={os.getpid()} TCPStore({bound.get('host_name')}:"
                                 f"{self.port}, is_master={bool(bound.get('is_master', False))}) "
                                 f"libuvBackend={self.libuvBackend}\n")
                sys.stderr.flush()

    setattr(TCPStoreNoLibuv, _PATCH_MARK, True)
    TCPStoreNoLibuv.__module__ = __name__ if __name__ != "__main__" else "nanochat.torchrun_no_libuv"

    dist.TCPStore = TCPStoreNoLibuv
    for name in _STORE_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # not present in this torch version
            pass
    for name, mod in list(sys.modules.items()):
        if name.startswith("torch.distributed") and mod is not None:
            if getattr(mod, "TCPStore", None) is base:
                setattr(mod, "TCPStore", TCPStoreNoLibuv)
    return TCPStoreNoLibuv


# ----------------------------------------------------------------------------- workers

def _worker(argv: list) -> None:
    """Run `<script> args` or `-m <module> args` as `python` would, with the patch installed."""
    if not argv:
        raise SystemExit(f"{WORKER_FLAG}: missing script or -m module")
    install()
    if argv[0] == "-m":
        if len(argv) < 2:
            raise SystemExit(f"{WORKER_FLAG}: -m needs a module name")
        module = argv[1]
        sys.argv = [module] + argv[2:]  # run_module(alter_sys=True) sets argv[0] to the file
        sys.path.insert(0, os.getcwd())  # `python -m` puts the cwd first
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script = argv[0]
        sys.argv = [script] + argv[1:]
        sys.path.insert(0, os.path.dirname(os.path.realpath(script)))  # as `python script`
        runpy.run_path(script, run_name="__main__")


def run_script_path_no_libuv(training_script: str, *training_script_args: str):
    """Replacement for torchrun's `--run-path` entrypoint (runs inside a spawned process)."""
    install()
    from torch.distributed.run import run_script_path

    return run_script_path(training_script, *training_script_args)


def route_workers(cmd, cmd_args: list, args) -> tuple:
    """Rewrite torchrun's worker command so that Python workers install the patch first."""
    if getattr(args, "run_path", False) or callable(cmd):
        return run_script_path_no_libuv, list(cmd_args)
    if getattr(args, "no_python", False) or cmd_args[:1] != ["-u"]:
        print(f"torchrun_no_libuv: warning: workers run as `{cmd} ...` (not `python -u`) are "
              "started unchanged; they must create their TCPStores with use_libuv=False "
              "themselves", file=sys.stderr, flush=True)
        return cmd, list(cmd_args)
    this_file = os.path.realpath(__file__)
    return cmd, ["-u", this_file, WORKER_FLAG] + list(cmd_args[1:])


# ----------------------------------------------------------------------------- launcher

def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [WORKER_FLAG]:
        _worker(argv[1:])
        return

    import torch.distributed.run as torchrun

    if not libuv_disabled():
        torchrun.main(argv)  # USE_LIBUV=1: plain torchrun
        return

    os.environ["USE_LIBUV"] = "0"  # env:// init and elastic.utils in the workers read it
    install()
    original = torchrun.config_from_args

    def config_from_args(args):
        config, cmd, cmd_args = original(args)
        cmd, cmd_args = route_workers(cmd, cmd_args, args)
        return config, cmd, cmd_args

    torchrun.config_from_args = config_from_args  # `run()` looks the name up at call time
    torchrun.main(argv)


if __name__ == "__main__":
    main()
