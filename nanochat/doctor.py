"""Environment probe: which torch is this, what was it built for, and does it fit this machine?

    python -m nanochat.doctor            # full report
    python -m nanochat.doctor --brief    # 2-4 lines (run on `nix develop` entry and by `make doctor`)
    python -m nanochat.doctor --strict   # exit 1 if there is any WARNING

It prints the torch version and the directory it was imported from, the CUDA version torch was
built with, the compiled GPU architecture list, each visible GPU's name and compute capability,
the NVIDIA driver version, and a WARNING line for each mismatch it can detect:

* the GPU's capability is not covered by torch's architecture list (neither a matching cubin nor
  a PTX that can be JIT-compiled for it), e.g. an sm_90-only build on an RTX 5090 (sm_120);
* the driver is older than the build's CUDA major version needs (CUDA 13 needs >= 580);
* a CUDA build of torch that sees no GPU (usually: the host's libcuda.so.1 was not found).

Without --strict it always exits 0: it is a diagnosis, not a gate. It works without a GPU and
without CUDA (it then says "no GPU").
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

# Minimum Linux driver branch for each CUDA major version (CUDA minor-version compatibility:
# any driver of the major's first release runs every minor release of that major).
MIN_DRIVER_FOR_CUDA_MAJOR = {11: 450, 12: 525, 13: 580}


# ----------------------------------------------------------------------------- pure helpers

def min_driver_for_cuda(cuda_version: str | None) -> int | None:
    """Minimum driver major (e.g. 580) for a CUDA version string like "13.0"; None if unknown."""
    if not cuda_version:
        return None
    m = re.match(r"\s*(\d+)", str(cuda_version))
    return MIN_DRIVER_FOR_CUDA_MAJOR.get(int(m.group(1))) if m else None


def driver_major(driver_version: str | None) -> int | None:
    """'580.65.06' -> 580."""
    if not driver_version:
        return None
    m = re.match(r"\s*(\d+)", driver_version)
    return int(m.group(1)) if m else None


def _arch_number(arch: str) -> tuple[str, int, int, str] | None:
    """'sm_120' -> ('sm', 12, 0, ''), 'compute_90' -> ('compute', 9, 0, ''), 'sm_90a' -> (.., 'a')."""
    m = re.fullmatch(r"(sm|compute)_(\d+)(\d)([a-z]?)", arch.strip())
    if not m:
        return None
    return m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)


def arch_support(capability: tuple[int, int], arch_list: list[str]) -> tuple[bool, str]:
    """Can a torch compiled for `arch_list` run kernels on a GPU of `capability`?

    Returns (ok, how): an exact cubin, a cubin of the same major and a lower minor (binary
    compatible), or a PTX of a lower or equal capability that the driver JIT-compiles (slow first
    start). Arch-specific cubins ('sm_90a') only count for exactly that capability.
    """
    major, minor = capability
    exact = f"sm_{major}{minor}"
    for arch in arch_list:
        p = _arch_number(arch)
        if p and p[0] == "sm" and (p[1], p[2]) == (major, minor):
            return True, f"cubin {arch}"
    for arch in arch_list:
        p = _arch_number(arch)
        if p and p[0] == "sm" and not p[3] and p[1] == major and p[2] < minor:
            return True, f"binary-compatible cubin {arch}"
    for arch in arch_list:
        p = _arch_number(arch)
        if p and p[0] == "compute" and not p[3] and (p[1], p[2]) <= (major, minor):
            return True, f"PTX {arch} (JIT-compiled on first use: slow start)"
    return False, f"no {exact} cubin and no PTX <= compute_{major}{minor}"


# ----------------------------------------------------------------------------- probes

def nvidia_smi_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            line = out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""
            if line:
                return line
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    try:
        with open("/proc/driver/nvidia/version") as f:
            m = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?(\d+\.\d+(?:\.\d+)?)", f.read())
            if m:
                return m.group(1)
    except OSError:
        pass
    return None


def loaded_libcuda() -> str | None:
    """Path of the libcuda this process loaded (after CUDA init), from /proc/self/maps."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if line.strip() else ""
                if "/libcuda.so" in path:
                    return os.path.realpath(path)
    except OSError:
        pass
    return None


def libuv_store_available() -> str:
    """'yes' / 'no' / 'n/a': can a TCPStore use the libuv backend in this torch build?"""
    try:
        import torch.distributed as dist
        if not dist.is_available():
            return "n/a (torch.distributed not built)"
        try:
            store = dist.TCPStore("127.0.0.1", 0, 1, True, wait_for_workers=False, use_libuv=True)
            del store
            return "yes"
        except Exception as exc:  # RuntimeError / DistStoreError on a libuv-less build
            return "no" if "libuv" in str(exc) else f"unknown ({type(exc).__name__})"
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def torch_lacks_bytecode() -> bool:
    """True when torch is installed from sources with no bytecode beside them (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    origin = (spec and spec.origin) or ""
    if not origin.endswith(".py") or sys.implementation.cache_tag is None:
        return False
    folder, name = os.path.split(origin)
    return not os.path.exists(os.path.join(folder, "__pycache__", f"{name[:-3]}.{sys.implementation.cache_tag}.pyc"))


def bytecode_status() -> str:
    """Where this interpreter gets torch's Python bytecode (the Makefile's PYCACHE rule sets the prefix)."""
    if sys.pycache_prefix:
        return f"cached under {sys.pycache_prefix} (PYTHONPYCACHEPREFIX)"
    if not torch_lacks_bytecode():
        return "installed with torch"
    if not sys.dont_write_bytecode:
        return "written beside torch's sources on its first import"
    return ("NOT cached (PYTHONDONTWRITEBYTECODE=1 and torch ships none): every process compiles torch from "
            "source, seconds of each start; `make` keeps a cache under the base dir (unless PYCACHE=0)")


def compiled_arch_list(torch) -> list[str]:
    """torch.cuda.get_arch_list(), but also without a usable GPU (that one then returns [])."""
    flags = getattr(torch._C, "_cuda_getArchFlags", None)
    try:
        raw = flags() if flags else None
        if raw:
            return raw.split()
        return list(torch.cuda.get_arch_list())
    except Exception:
        return []


def collect() -> dict:
    """Gather everything; never raises."""
    info: dict = {"warnings": [], "gpus": [], "python": sys.executable}
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install is exactly what we diagnose
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
        info["warnings"].append(f"torch is not importable ({info['torch_error']})")
        return info
    info["torch_version"] = torch.__version__
    info["torch_dir"] = os.path.dirname(os.path.realpath(torch.__file__))
    info["cuda_build"] = torch.version.cuda
    info["hip_build"] = getattr(torch.version, "hip", None)
    info["arch_list"] = compiled_arch_list(torch) if info["cuda_build"] else []
    try:
        available = torch.cuda.is_available()
    except Exception as exc:  # noqa: BLE001
        available = False
        info["cuda_error"] = f"{type(exc).__name__}: {exc}"
    info["cuda_available"] = available
    if available:
        for i in range(torch.cuda.device_count()):
            try:
                cap = tuple(torch.cuda.get_device_capability(i))
                name = torch.cuda.get_device_name(i)
            except Exception as exc:  # noqa: BLE001
                info["warnings"].append(f"cannot query GPU {i}: {exc}")
                continue
            ok, how = arch_support(cap, info["arch_list"])
            info["gpus"].append({"index": i, "name": name, "capability": cap, "ok": ok, "how": how})
        info["libcuda"] = loaded_libcuda()
        try:
            info["cudnn"] = torch.backends.cudnn.version()
        except Exception:
            info["cudnn"] = None
        try:  # which kernel sliding-window layers get (cuDNN's needs the optional nvidia-cudnn-frontend)
            from nanochat.attention import describe_window_kernel
            info["window_kernel"] = describe_window_kernel(torch.device("cuda"))
        except Exception as exc:  # noqa: BLE001
            info["window_kernel"] = f"unknown ({type(exc).__name__}: {exc})"
        try:
            nccl = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        except Exception:
            info["nccl"] = None
    info["driver"] = nvidia_smi_driver()

    # ---- mismatches
    for gpu in info["gpus"]:
        if not gpu["ok"]:
            cap = "%d.%d" % gpu["capability"]
            info["warnings"].append(
                f"GPU {gpu['index']} ({gpu['name']}, capability {cap}) is not in this torch's arch "
                f"list {info['arch_list'] or '[]'}: {gpu['how']}. Kernels will fail with 'no kernel "
                f"image is available'. Use a build for it (nix: devShells.default is 12.0/sm_120, "
                f"devShells.sm90 is 9.0/H100; or mkPkgs {{ cudaCapabilities = [ \"{cap}\" ]; }})")
    need = min_driver_for_cuda(info["cuda_build"])
    have = driver_major(info["driver"])
    if need and have is not None and have < need:
        info["warnings"].append(
            f"NVIDIA driver {info['driver']} is too old for this torch's CUDA {info['cuda_build']}: "
            f"CUDA {str(info['cuda_build']).split('.')[0]} needs driver >= {need}. Upgrade the host "
            f"driver or use a torch built for an older CUDA")
    if info["cuda_build"] and not available:
        hint = ("the host's libcuda.so.1 was not found: inside `nix develop` the shellHook links it "
                "(see docs/nix.md, 'driver not found')" if info["driver"] or os.path.exists("/dev/nvidiactl")
                else "no NVIDIA driver on this machine (fine for CPU work)")
        info["warnings"].append(f"torch is built for CUDA {info['cuda_build']} but no GPU is usable: {hint}")
    return info


# ----------------------------------------------------------------------------- output

def render(info: dict, brief: bool) -> list[str]:
    lines = []
    if "torch_error" in info:
        lines.append(f"nanochat doctor: python {info['python']}: torch NOT importable")
    else:
        build = (f"CUDA {info['cuda_build']}" if info["cuda_build"]
                 else f"ROCm {info['hip_build']}" if info.get("hip_build") else "CPU-only build")
        arch = " ".join(info["arch_list"]) if info["arch_list"] else "-"
        lines.append(f"nanochat doctor: torch {info['torch_version']} from {info['torch_dir']}")
        lines.append(f"  build: {build}; arch list: {arch}; driver: {info['driver'] or 'none found'}")
        if info["gpus"]:
            for g in info["gpus"]:
                lines.append(f"  GPU {g['index']}: {g['name']} (capability {g['capability'][0]}.{g['capability'][1]}; "
                             f"{'supported via ' + g['how'] if g['ok'] else 'NOT supported'})")
        else:
            lines.append("  GPU: no GPU (torch.cuda.is_available() is False)"
                         + (f" [{info['cuda_error']}]" if info.get("cuda_error") else ""))
        if not brief:
            lines.append(f"  python: {info['python']}")
            if info["gpus"]:
                lines.append(f"  libcuda loaded from: {info.get('libcuda') or '?'}")
                lines.append(f"  cuDNN: {info.get('cudnn')}; NCCL: {info.get('nccl')}")
                lines.append(f"  window attention: {info.get('window_kernel')}")
            lines.append(f"  Python bytecode for torch: {bytecode_status()}")
            lines.append(f"  libuv TCPStore backend: {libuv_store_available()} "
                         f"(USE_LIBUV={os.environ.get('USE_LIBUV', '<unset>')}; without libuv launch "
                         f"with `python -m nanochat.torchrun_no_libuv`)")
            for var in ("NANOCHAT_IN_NIX", "NANOCHAT_NIX_SHELL", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME",
                        "NANOCHAT_HOST_DRIVER_LINKED", "LD_LIBRARY_PATH"):
                lines.append(f"  {var}={os.environ.get(var, '<unset>')}")
    for w in info["warnings"]:
        lines.append(f"WARNING: {w}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python -m nanochat.doctor", description=__doc__.splitlines()[0])
    p.add_argument("--brief", action="store_true", help="a few lines only")
    p.add_argument("--strict", action="store_true", help="exit 1 if there is any WARNING")
    args = p.parse_args(argv)
    info = collect()
    print("\n".join(render(info, args.brief)), flush=True)
    return 1 if (args.strict and info["warnings"]) else 0


if __name__ == "__main__":
    sys.exit(main())
