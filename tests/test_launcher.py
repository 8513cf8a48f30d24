"""nanochat.torchrun_no_libuv (torchrun with the non-libuv TCPStore) and nanochat.doctor, on CPU.

The launcher tests start real multi-process gloo jobs on loopback. What they observe is the
TCPStore's own `libuvBackend` property: in the workers (the store behind the default process
group) and, through NANOCHAT_TORCHRUN_TRACE=1, in the launcher/agent processes.
"""
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available in this torch build", allow_module_level=True)

WORKER = textwrap.dedent("""
    import os, sys
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    assert t.item() == world * (world + 1) / 2, t
    store = dist.distributed_c10d._get_default_store()
    while hasattr(store, "underlying_store"):
        store = store.underlying_store
    print(f"\\nRESULT rank={rank} world={world} sum={t.item():g} libuv={store.libuvBackend} "
          f"argv={sys.argv[1:]} argv0={os.path.basename(sys.argv[0])} "
          f"path0={sys.path[0]}", flush=True)
    dist.destroy_process_group()
""")

# non-greedy, and path0 stops before a following RESULT: two workers' lines may interleave
RESULT = re.compile(r"RESULT rank=(\d+) world=(\d+) sum=(\S+) libuv=(\w+) argv=(.*?) argv0=(\S+?) path0=(\S+?)(?=RESULT|\s|$)")
TRACE = re.compile(r"torchrun_no_libuv: pid=(\d+) TCPStore\((\S+), is_master=(True|False)\) libuvBackend=(True|False)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT", "USE_LIBUV", "TORCHELASTIC_USE_AGENT_STORE")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["NANOCHAT_TORCHRUN_TRACE"] = "1"
    env.update(extra)
    return env


def _launch(args, env, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(procs, timeout=180) -> list:
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, out))
    return outs


def _results(text: str) -> list:
    return [m.groups() for m in RESULT.finditer(text)]


@pytest.fixture
def worker_script(tmp_path):
    script = tmp_path / "allreduce.py"
    script.write_text(WORKER)
    return script


def test_standalone_two_processes_without_libuv(worker_script, tmp_path):
    p = _launch(["nanochat.torchrun_no_libuv", "--standalone", "--nproc_per_node=2",
                 str(worker_script), "--foo", "1"], _env(USE_LIBUV="0"), tmp_path)
    [(rc, out)] = _finish([p])
    assert rc == 0, out
    res = _results(out)
    assert sorted(r[0] for r in res) == ["0", "1"], out
    for rank, world, total, libuv, argv, argv0, path0 in res:
        assert (world, total, libuv) == ("2", "3", "False"), out
        # the worker saw exactly what `python allreduce.py --foo 1` would have given it
        assert argv == "['--foo', '1']" and argv0 == "allreduce.py", out
        assert Path(path0) == worker_script.parent.resolve(), out
    traces = TRACE.findall(out)
    assert traces and all(t[3] == "False" for t in traces), out
    assert any(t[2] == "True" for t in traces), "the agent's store server was not traced:\n" + out


def test_module_mode_and_default_use_libuv_unset(tmp_path):
    """`-m pkg.mod` workers; USE_LIBUV unset means "off" for this launcher."""
    pkg = tmp_path / "jobpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "job.py").write_text(WORKER)
    p = _launch(["nanochat.torchrun_no_libuv", "--standalone", "--nproc_per_node=1",
                 "-m", "jobpkg.job", "--x"], _env(), tmp_path)
    [(rc, out)] = _finish([p])
    assert rc == 0, out
    [(rank, world, total, libuv, argv, argv0, path0)] = _results(out)
    assert (rank, world, total, libuv) == ("0", "1", "1", "False"), out
    assert argv == "['--x']" and argv0 == "job.py", out
    assert Path(path0) == tmp_path.resolve(), out  # `python -m` puts the cwd first


@pytest.mark.parametrize("backend", ["static", "c10d"])
def test_two_nodes_on_loopback(worker_script, tmp_path, backend):
    port = _free_port()
    procs = []
    for node_rank in (0, 1):
        if backend == "static":
            rdzv = [f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}"]
        else:
            rdzv = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=nanochat-test"]
        procs.append(_launch(["nanochat.torchrun_no_libuv", "--nnodes=2", "--nproc_per_node=1",
                              *rdzv, str(worker_script)], _env(USE_LIBUV="0"), tmp_path))
    outs = _finish(procs)
    text = "\n".join(o for _, o in outs)
    # (node 1 may log "Error waiting on exit barrier" when node 0 closes the store first:
    #  a known, harmless torchelastic race, pytorch/pytorch#69520; exit codes stay 0)
    assert [rc for rc, _ in outs] == [0, 0], text
    res = _results(text)
    assert sorted(r[0] for r in res) == ["0", "1"], text
    assert all(r[1:4] == ("2", "3", "False") for r in res), text
    traces = TRACE.findall(text)
    assert traces and all(t[3] == "False" for t in traces), text
    assert any(t[2] == "True" for t in traces), text


def test_control_plain_torchrun_uses_libuv(worker_script, tmp_path):
    """The observable discriminates: plain torchrun's workers do get a libuv store."""
    from nanochat.doctor import libuv_store_available

    if libuv_store_available() != "yes":
        pytest.skip("this torch has no libuv TCPStore backend (plain torchrun would fail outright)")
    p = _launch(["torch.distributed.run", "--standalone", "--nproc_per_node=1", str(worker_script)],
                _env(), tmp_path)
    [(rc, out)] = _finish([p])
    assert rc == 0, out
    [(_, _, _, libuv, *_rest)] = _results(out)
    assert libuv == "True", out


def test_use_libuv_1_is_plain_torchrun(worker_script, tmp_path):
    from nanochat.doctor import libuv_store_available

    if libuv_store_available() != "yes":
        pytest.skip("this torch has no libuv TCPStore backend")
    p = _launch(["nanochat.torchrun_no_libuv", "--standalone", "--nproc_per_node=1", str(worker_script)],
                _env(USE_LIBUV="1"), tmp_path)
    [(rc, out)] = _finish([p])
    assert rc == 0, out
    [(_, _, _, libuv, *_rest)] = _results(out)
    assert libuv == "True" and not TRACE.search(out), out


def test_patch_in_process_forces_use_libuv_false(tmp_path):
    """install(): positional and keyword use_libuv=True both become False; idempotent; the
    module-level copies of the name inside torch.distributed are rebound."""
    code = textwrap.dedent("""
        import torch.distributed as dist
        import sys
        import torch.distributed.rendezvous
        from nanochat import torchrun_no_libuv as t
        base = dist.TCPStore
        cls = t.install()
        rdzv = sys.modules["torch.distributed.rendezvous"]  # (dist.rendezvous is a function)
        assert t.install() is cls and dist.TCPStore is cls and rdzv.TCPStore is cls
        assert issubclass(cls, base)
        import datetime
        a = dist.TCPStore("127.0.0.1", 0, 1, True, datetime.timedelta(seconds=30), False, False, None, True)
        b = dist.TCPStore("127.0.0.1", 0, 1, True, wait_for_workers=False, use_libuv=True)
        c = base("127.0.0.1", a.port, None, False, use_libuv=False)
        assert isinstance(a, base) and not a.libuvBackend and not b.libuvBackend
        c.set("k", "v"); assert a.get("k") == b"v"
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


def test_route_workers():
    from types import SimpleNamespace

    from nanochat import torchrun_no_libuv as t

    args = SimpleNamespace(run_path=False, no_python=False)
    cmd, cmd_args = t.route_workers("/py", ["-u", "-m", "mod", "--a"], args)
    assert cmd == "/py" and cmd_args[:3] == ["-u", os.path.realpath(t.__file__), t.WORKER_FLAG]
    assert cmd_args[3:] == ["-m", "mod", "--a"]
    cmd, cmd_args = t.route_workers("/bin/job", ["--a"], SimpleNamespace(run_path=False, no_python=True))
    assert (cmd, cmd_args) == ("/bin/job", ["--a"])
    cmd, cmd_args = t.route_workers(print, ["s.py"], SimpleNamespace(run_path=True, no_python=False))
    assert cmd is t.run_script_path_no_libuv and cmd_args == ["s.py"]
    assert t.libuv_disabled({}) and t.libuv_disabled({"USE_LIBUV": "0"})
    assert not t.libuv_disabled({"USE_LIBUV": "1"})


# ----------------------------------------------------------------------------- doctor

def test_doctor_on_cpu_says_no_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    out = subprocess.run([sys.executable, "-m", "nanochat.doctor", "--brief"], cwd=ROOT,
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "no GPU" in out.stdout
    assert f"torch {torch.__version__}" in out.stdout
    assert os.path.dirname(os.path.realpath(torch.__file__)) in out.stdout


def test_doctor_full_and_strict_exit_codes():
    full = subprocess.run([sys.executable, "-m", "nanochat.doctor"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert full.returncode == 0 and "libuv TCPStore backend" in full.stdout
    assert "Python bytecode for torch: " in full.stdout
    strict = subprocess.run([sys.executable, "-m", "nanochat.doctor", "--strict"], cwd=ROOT,
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert strict.returncode == (1 if "WARNING" in strict.stdout else 0), strict.stdout


@pytest.mark.parametrize("prefix,missing,no_write,expect", [
    ("", False, True, "installed with torch"),
    ("", True, False, "written beside"),
    ("", True, True, "NOT cached"),
    ("/some/base/pycache", True, False, "cached under /some/base/pycache"),
])
def test_doctor_says_where_torchs_bytecode_comes_from(monkeypatch, prefix, missing, no_write, expect):
    import nanochat.doctor

    monkeypatch.setattr(nanochat.doctor, "torch_lacks_bytecode", lambda: missing)
    monkeypatch.setattr(sys, "dont_write_bytecode", no_write)
    monkeypatch.setattr(sys, "pycache_prefix", prefix or None)
    assert nanochat.doctor.bytecode_status().startswith(expect)


def test_doctor_rules():
    from nanochat.doctor import arch_support, driver_major, min_driver_for_cuda

    assert arch_support((12, 0), ["sm_120"])[0]
    assert not arch_support((12, 0), ["sm_80", "sm_90"])[0]  # H100 build on an RTX 5090
    assert not arch_support((9, 0), ["sm_120"])[0]  # RTX 5090 build on an H100
    assert arch_support((8, 6), ["sm_80"])[0]  # same major, lower minor: binary compatible
    assert arch_support((9, 0), ["sm_90a"])[0]  # an arch-specific cubin for exactly 9.0 runs
    assert not arch_support((10, 0), ["sm_90a"])[0]
    ok, how = arch_support((12, 0), ["sm_90", "compute_90"])
    assert ok and "PTX" in how
    assert min_driver_for_cuda("13.0") == 580 and min_driver_for_cuda("12.8") == 525
    assert min_driver_for_cuda(None) is None and driver_major("580.65.06") == 580
