"""Checks of the Nix flake that need no network, no GPU and no real nixpkgs.

* Always: flake.lock is a well-formed version-7 lock whose nixpkgs node is the revision flake.nix
  and docs/nix.md name; no unknown hash is left in nix/; the check's source keeps every repo path
  the test files read; the host-driver shell snippet links only driver libraries (run with bash
  against fake driver directories, WSL's included).
* With the package index reachable: the rustbpe sdist's sha256 is the one nix/rustbpe.nix pins, and
  nix/rustbpe-Cargo.lock is byte-identical to the Cargo.lock inside it.
* With `nix-instantiate`/`nix` on PATH (Debian's nix-bin 2.8 is enough): every .nix file parses;
  `nix flake metadata` reads the lock offline and `nix flake lock --no-update-lock-file` finds it
  complete; the unfree predicate decides by licence (NVIDIA's CUDA licences only) on real package
  names and licences of the CUDA 13.2 and 13.3 sets; the check's source filter, evaluated, keeps
  every path the suite needs.
* STRUCTURAL CHECK (not a build, not an evaluation of real nixpkgs): the flake's outputs are
  evaluated with nixpkgs replaced by the stub in tests/fixtures/fake-nixpkgs
  (`--override-input nixpkgs path:...`). This checks our own wiring: shell names and env vars,
  the Python package list, that the CUDA config and the cudaPackages_13 overlay reach torch, that
  the torch-src input switches torch's source, that checks/packages exist with the right schema.
  It cannot check that real nixpkgs attribute names or arguments exist, nor any hash.

Nix flakes only see files tracked by git, so the repository (tracked + untracked, non-ignored
files) is copied into a temporary git repository first: the tests work on uncommitted files.
"""
import ast
import base64
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLAKE = ROOT / "flake.nix"
LOCK = ROOT / "flake.lock"
STUB = "tests/fixtures/fake-nixpkgs"
NIXFLAGS = ["--extra-experimental-features", "nix-command flakes"]



def _probe_nix() -> str:
    """'' when nix is installed and usable by this user, else the reason to skip."""
    if shutil.which("nix") is None or shutil.which("nix-instantiate") is None:
        return "nix is not installed (apt-get install nix-bin)"
    try:
        out = subprocess.run(["nix-instantiate", "--eval", "-E", "1 + 1"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nix is not usable here: {exc}"
    if out.returncode != 0 or out.stdout.strip() != "2":
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return f"nix is installed but not usable by this user: {last}"
    return ""


NIX_SKIP_REASON = _probe_nix()
HAVE_NIX = not NIX_SKIP_REASON
needs_nix = pytest.mark.skipif(not HAVE_NIX, reason=NIX_SKIP_REASON or "nix available")


# ----------------------------------------------------------------------------- always

def _lock() -> dict:
    return json.loads(LOCK.read_text())


def _flake_pin() -> tuple:
    m = re.search(r'nixpkgs\.url\s*=\s*"github:([^/"]+)/([^/"]+)/([0-9a-f]{40})"', FLAKE.read_text())
    assert m, "flake.nix must pin nixpkgs as github:OWNER/REPO/<40-hex rev>"
    return m.groups()


def test_lock_pins_the_revision_flake_nix_names():
    lock = _lock()
    assert lock["version"] == 7 and lock["root"] == "root"
    root_inputs = lock["nodes"]["root"]["inputs"]
    assert root_inputs["nixpkgs"] == "nixpkgs"
    assert root_inputs["torch-src"] == ["nixpkgs"]  # follows nixpkgs unless overridden
    assert set(lock["nodes"]) == {"root", "nixpkgs"}
    owner, repo, rev = _flake_pin()
    node = lock["nodes"]["nixpkgs"]
    assert node["original"] == {"owner": owner, "repo": repo, "rev": rev, "type": "github"}
    locked = node["locked"]
    assert set(locked) == {"lastModified", "narHash", "owner", "repo", "rev", "type"}
    assert (locked["owner"], locked["repo"], locked["rev"], locked["type"]) == (owner, repo, rev, "github")
    raw = base64.b64decode(locked["narHash"].removeprefix("sha256-"), validate=True)
    assert locked["narHash"].startswith("sha256-") and len(raw) == 32
    # a commit of nixos-unstable with CUDA 13 in torch: after torch 2.12 landed (2026-05), not in the future
    assert 1778000000 < locked["lastModified"] < 1830000000
    # the docs name the same pin (a bump must update them)
    assert rev in (ROOT / "docs" / "nix.md").read_text()


NIX_DIR_FILES = sorted((ROOT / "nix").glob("*.nix"))


@pytest.mark.parametrize("path", NIX_DIR_FILES, ids=lambda p: p.name)
def test_no_unknown_hash_left(path):
    """Every hash in nix/ is a real one: no fake, empty or all-zero placeholder waiting for a first build."""
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())  # code, not comments
    for bad in ("fakeHash", "fakeSha256", "fakeSha512", "cargoHash", "vendorHash"):
        assert bad not in text, f"{path.name} still uses {bad}"
    for value in re.findall(r'(?:hash|sha256)\s*=\s*"([^"]*)"', text):
        assert value and not re.fullmatch(r"(sha256-)?[A0=]*", value), f"{path.name}: placeholder hash {value!r}"


def _rustbpe_pin() -> tuple[str, str]:
    text = (ROOT / "nix" / "rustbpe.nix").read_text()
    version = re.search(r'version = "([^"]+)";', text).group(1)
    sri = re.search(r'src = fetchPypi \{[^}]*hash = "(sha256-[^"]+)";', text, re.S).group(1)
    return version, sri


def test_rustbpe_sdist_and_cargo_lock_match_pypi(tmp_path, monkeypatch):
    """The sdist nix/rustbpe.nix pins is the one the index serves, and the committed Cargo.lock is
    byte-identical to the one inside it (importCargoLock vendors exactly those crates)."""
    from nanochat import offline
    version, sri = _rustbpe_pin()
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    if os.environ.get("NANOCHAT_TEST_WHEELHOUSE"):
        monkeypatch.setenv("NANOCHAT_WHEELHOUSE", os.environ["NANOCHAT_TEST_WHEELHOUSE"])
    try:
        sdist = offline.package_archive("rustbpe", version, sdist=True)
    except offline.OfflineDataUnavailable as exc:
        pytest.skip(f"needs the package index ({offline.index_url()}): {exc}")
    digest = hashlib.sha256(sdist.read_bytes()).digest()
    assert sri == "sha256-" + base64.b64encode(digest).decode(), "nix/rustbpe.nix pins another sdist"
    lock = offline.read_member(sdist, f"rustbpe-{version}/Cargo.lock")
    assert (ROOT / "nix" / "rustbpe-Cargo.lock").read_bytes() == lock
    text = lock.decode()
    assert "version = 4" in text and "git+" not in text  # importCargoLock needs no outputHashes


# ----------------------------------------------------------------------------- the check's source

def _top_level_entries() -> set:
    return {rel.split("/", 1)[0] for rel in _repo_files()}


def _paths_the_suite_reads() -> dict:
    """{top-level repo entry: [why]} read off the test files themselves: string constants that are a
    repo path (or start with one), `-m pkg.mod` / `pkg.mod` module names and imports of the repo's
    packages, and running `make` (the Makefile)."""
    tops = _top_level_entries()
    need: dict = {}
    for py in sorted((ROOT / "tests").rglob("*.py")):
        where = str(py.relative_to(ROOT))
        for node in ast.walk(ast.parse(py.read_text(), where)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                v = node.value
                for t in tops:
                    if v == t or v.startswith(t + "/"):
                        need.setdefault(t, []).append(f"{where}: {v!r}")
                m = re.match(r"(?:-m\s+)?([A-Za-z_]\w*)\.\w", v)
                if m and m.group(1) in tops and (ROOT / m.group(1)).is_dir():
                    need.setdefault(m.group(1), []).append(f"{where}: {v!r}")
                if v == "make":
                    need.setdefault("Makefile", []).append(f"{where}: runs make")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for n in names:
                    if n.split(".")[0] in tops:
                        need.setdefault(n.split(".")[0], []).append(f"{where}: import {n}")
    return need


def _check_source_keep() -> list:
    return re.findall(r'"([^"]+)"', (ROOT / "nix" / "check-source.nix").read_text().split("[", 1)[1])


def test_check_source_keeps_what_the_suite_reads():
    need = _paths_the_suite_reads()
    # the derivation sees the suite's real reads (a regression here would make this test vacuous)
    assert {"Makefile", "bench", "nanochat", "scripts", "tests", "nix", "flake.nix"} <= set(need)
    missing = {t: why[:2] for t, why in need.items() if t not in _check_source_keep()}
    assert not missing, f"nix/check-source.nix drops paths the tests read: {missing}"
    assert (ROOT / "nix" / "checks.nix").read_text().count("import ./check-source.nix") == 1


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_host_driver_links_only_driver_libraries(tmp_path):
    drv = tmp_path / "hostlib"
    drv.mkdir()
    for name in ("libcuda.so.580.65.06", "libnvidia-ml.so.580.65.06", "libcudadebugger.so.1",
                 "libc.so.6", "libstdc++.so.6", "libcudart.so.13", "libz.so.1"):
        (drv / name).write_text("")
    (drv / "libcuda.so.1").symlink_to("libcuda.so.580.65.06")
    (drv / "libnvidia-ml.so.1").symlink_to("libnvidia-ml.so.580.65.06")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "LD_LIBRARY_PATH": "/already/there",
           "NANOCHAT_HOST_DRIVER_DIRS": f"{tmp_path / 'missing'} {drv}"}
    script = (f'. "{ROOT / "nix" / "host-driver.sh"}"; . "{ROOT / "nix" / "host-driver.sh"}"; '
              'printf "%s\\n%s\\n" "$LD_LIBRARY_PATH" "$NANOCHAT_HOST_DRIVER_LINKED"')
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ld, linked = out.stdout.splitlines()
    linked = Path(linked)
    assert linked.parent == tmp_path / "cache" / "nanochat" / "host-driver"
    assert ld == f"{linked}:/already/there"  # prepended once, even when sourced twice
    assert sorted(p.name for p in linked.iterdir()) == [
        "libcuda.so.1", "libcuda.so.580.65.06", "libcudadebugger.so.1",
        "libnvidia-ml.so.1", "libnvidia-ml.so.580.65.06"]
    # no driver anywhere: nothing changes, still exit 0
    env["NANOCHAT_HOST_DRIVER_DIRS"] = str(tmp_path / "missing")
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.splitlines()[0] == "/already/there"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_host_driver_on_wsl_links_libdxcore(tmp_path):
    """WSL 2: libcuda.so.1 in /usr/lib/wsl/lib is a shim that loads libdxcore.so from the same
    directory; the private directory must hold it too (and still nothing that is not the driver's)."""
    wsl = tmp_path / "usr" / "lib" / "wsl" / "lib"
    wsl.mkdir(parents=True)
    for name in ("libcuda.so.1.1", "libdxcore.so", "libd3d12.so", "libd3d12core.so",
                 "libnvidia-ml.so.1", "libnvwgf2umx.so", "nvidia-smi"):
        (wsl / name).write_text("")
    (wsl / "libcuda.so.1").symlink_to("libcuda.so.1.1")
    (wsl / "libcuda.so").symlink_to("libcuda.so.1")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "NANOCHAT_HOST_DRIVER_DIRS": str(wsl)}
    script = f'. "{ROOT / "nix" / "host-driver.sh"}"; printf "%s\\n" "$NANOCHAT_HOST_DRIVER_LINKED"'
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    linked = Path(out.stdout.strip())
    assert sorted(p.name for p in linked.iterdir()) == [
        "libcuda.so", "libcuda.so.1", "libcuda.so.1.1", "libdxcore.so", "libnvidia-ml.so.1"]
    assert os.path.realpath(linked / "libdxcore.so") == str(wsl / "libdxcore.so")


# ----------------------------------------------------------------------------- with nix

def _nix_files() -> list:
    return [FLAKE, *sorted((ROOT / "nix").glob("*.nix")), *sorted((ROOT / STUB).glob("*.nix"))]


@needs_nix
@pytest.mark.parametrize("path", _nix_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nix_file_parses(path):
    out = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# Real package names of nixpkgs' CUDA sets that torch's build pulls in, with the licence nixpkgs
# gives each (pkgs/development/cuda-modules: a redistributable without a licence of its own gets
# lib.licenses.nvidiaCudaRedist, shortName "CUDA EULA"; cudnn, libcusparse_lt, cutensor set their
# own; nccl is BSD-3). From CUDA 13.3 on, `cuda_cccl` is called `cccl`.
_CUDA_EULA = '{ shortName = "CUDA EULA"; free = false; redistributable = true; }'
_CUDA_13_2 = ["cuda_cccl", "cuda_cudart", "cuda_cupti", "cuda_nvcc", "cuda_nvml_dev", "cuda_nvrtc",
              "cuda_nvtx", "cuda_profiler_api", "libcublas", "libcufft", "libcufile", "libcurand",
              "libcusolver", "libcusparse", "libnvjitlink", "libnvshmem"]
_CUDA_13_3 = ["cccl"] + [n for n in _CUDA_13_2 if n != "cuda_cccl"]
_OWN_LICENCE = {
    "cudnn": '{ shortName = "cuDNN EULA"; free = false; redistributable = true; }',
    "libcusparse_lt": '{ shortName = "cuSPARSELt EULA"; free = false; redistributable = true; }',
    "cutensor": '{ shortName = "cuTENSOR EULA"; free = false; redistributable = true; }',
    "nccl": '{ shortName = "bsd3"; spdxId = "BSD-3-Clause"; free = true; }',
}
# refused: unfree licences that are not NVIDIA's CUDA ones, whatever the name says
_REFUSED = {
    "steam": '{ shortName = "unfreeRedistributable"; free = false; redistributable = true; }',
    "vscode": '{ shortName = "unfree"; free = false; }',
    "cuda-imposter": '{ shortName = "unfree"; free = false; }',
    "libcublas-plus-other": f'[ {_CUDA_EULA} {{ shortName = "unfree"; free = false; }} ]',
    "no-licence": '[ ]',
}
_TORCH_WHEEL = ('[ { shortName = "bsd3"; free = true; } { shortName = "issl"; free = false; } '
                '{ shortName = "unfreeRedistributable"; free = false; redistributable = true; } ]')


def _predicate(which: str, packages: dict) -> dict:
    items = " ".join(f'{{ name = "{n}"; value = p {{ pname = "{n}"; {extra} meta.license = {lic}; }}; }}'
                     for n, (lic, extra) in packages.items())
    expr = (f"let p = (import {ROOT / 'nix' / 'unfree.nix'}).{which}; in "
            f"builtins.listToAttrs [ {items} ]")
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@needs_nix
def test_unfree_predicate_decides_by_licence():
    accepted = {n: (_CUDA_EULA, "") for n in _CUDA_13_2 + _CUDA_13_3}
    accepted.update({n: (lic, "") for n, lic in _OWN_LICENCE.items()})
    refused = {n: (lic, "") for n, lic in _REFUSED.items()}
    wheel = {"torch": (_TORCH_WHEEL, 'meta.sourceProvenance = [ { shortName = "binaryNativeCode"; } ];')}
    for which in ("cuda", "torchWheel"):
        got = _predicate(which, {**accepted, **refused})
        assert {n for n, ok in got.items() if ok} == set(accepted), which
    # the source shells never take a binary torch; the .#bin shell takes exactly PyTorch's wheel
    assert _predicate("cuda", wheel) == {"torch": False}
    assert _predicate("torchWheel", wheel) == {"torch": True}
    not_a_wheel = {"torch": (_TORCH_WHEEL, "")}  # same licences, but built from source: no reason to allow
    assert _predicate("torchWheel", not_a_wheel) == {"torch": False}


def _repo_files() -> list:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "-co", "--exclude-standard"],
                             capture_output=True, check=True, timeout=60).stdout
        return [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", "result"}
        files = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if d not in skip]
            files += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames]
        return files


@pytest.fixture(scope="module")
def flake_repo(tmp_path_factory):
    """A git repository holding a copy of this working tree (flakes read only git-tracked files)."""
    if not HAVE_NIX:
        pytest.skip(NIX_SKIP_REASON)
    if shutil.which("git") is None:
        pytest.skip("git is needed to present the flake to nix")
    repo = tmp_path_factory.mktemp("flake") / "nanochat"
    for rel in _repo_files():
        src = ROOT / rel
        if src.is_file() and not src.is_symlink():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    env = dict(os.environ, GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)
    probe = _nix(repo, "flake", "metadata", "--json")
    if probe.returncode != 0 and re.search(r"Permission denied|cannot open connection|read-only", probe.stderr):
        pytest.skip(f"this user cannot use the Nix store: {probe.stderr.strip().splitlines()[-1]}")
    return repo


def _nix(repo, *args, timeout=300):
    env = dict(os.environ, XDG_CACHE_HOME=str(repo.parent / "xdg-cache"), NIX_CONFIG="warn-dirty = false")
    return subprocess.run(["nix", *NIXFLAGS, *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _stub(repo) -> list:
    return ["--override-input", "nixpkgs", f"path:{repo / STUB}"]


def _system() -> str:
    if platform.system() != "Linux":
        pytest.skip("the structural checks assume a Linux host")
    return {"x86_64": "x86_64-linux", "amd64": "x86_64-linux", "aarch64": "aarch64-linux",
            "arm64": "aarch64-linux"}.get(platform.machine().lower()) or pytest.skip("unknown CPU")


def test_flake_metadata_reads_lock_offline(flake_repo):
    out = _nix(flake_repo, "flake", "metadata", "--json")
    assert out.returncode == 0, out.stderr
    meta = json.loads(out.stdout)
    assert meta["locks"]["nodes"]["nixpkgs"]["locked"] == _lock()["nodes"]["nixpkgs"]["locked"]
    # the lock covers every input of flake.nix: no fetching, no rewrite
    out = _nix(flake_repo, "flake", "lock", "--no-update-lock-file")
    assert out.returncode == 0, out.stderr
    assert json.loads((flake_repo / "flake.lock").read_text()) == _lock()


SHELL_SUMMARY = """ds: builtins.mapAttrs (n: s: {
  inherit (s) name USE_LIBUV NANOCHAT_IN_NIX NANOCHAT_NIX_SHELL shellHook;
  arch = s.TORCH_CUDA_ARCH_LIST or null;
  cudaHome = s.CUDA_HOME or null;
  packages = map (p: p.name) s.packages;
  pythonIsListed = builtins.elem s.python.name (map (p: p.name) s.packages);
  python = s.python.selectedNames;
  torch = let t = builtins.head (builtins.filter (p: p.pname == "torch") s.python.selected);
          in { inherit (t) cudaSupport cudaCapabilities cudaForwardCompat cudaMajorVersion wheel;
               src = toString t.src; nvshmem = t.withNvshmem or null; triton = t.triton.pname or null; };
}) ds"""


def test_structural_dev_shells_against_stub(flake_repo):
    """STRUCTURAL CHECK against the stub nixpkgs; not a build."""
    system = _system()
    out = _nix(flake_repo, "eval", "--json", f".#devShells.{system}", *_stub(flake_repo),
               "--apply", SHELL_SUMMARY)
    assert out.returncode == 0, out.stderr
    shells = json.loads(out.stdout)
    assert {"default", "sm120", "sm90", "bin", "cpu"} <= set(shells)
    required = {"torch", "tiktoken", "rustbpe", "pyarrow", "numpy", "regex", "datasets", "pytest", "pip"}
    for name, s in shells.items():
        assert s["USE_LIBUV"] == "0" and s["NANOCHAT_IN_NIX"] == "1", name
        assert s["pythonIsListed"] and required <= set(s["python"]), name
        assert any(p.startswith("gnumake-") for p in s["packages"]), name
        assert any(p.startswith("git-") for p in s["packages"]), name
        assert "nanochat.doctor --brief" in s["shellHook"], name
    native = "12.1" if system == "aarch64-linux" else "12.0"
    for name, arch in (("default", native), ("sm120", "12.0"), ("sm90", "9.0")):
        s = shells[name]
        assert s["arch"] == arch and s["cudaHome"], name
        # NVSHMEM off (nanochat never uses it; it drags CUDA builds of MPI & co. into the build)
        assert s["torch"] == {"cudaSupport": True, "cudaCapabilities": [arch], "cudaForwardCompat": False,
                              "cudaMajorVersion": "13", "wheel": False, "src": "nixpkgs-torch-source",
                              "nvshmem": False, "triton": None}, name
        assert "nanochat_link_host_driver" in s["shellHook"], name
    assert shells["default"]["NANOCHAT_NIX_SHELL"] == f"nanochat-cuda13-sm{native.replace('.', '')}"
    # the fast shell: PyTorch's wheel with the prebuilt Triton, nothing compiled against CUDA here,
    # but the host driver is still linked (the wheel needs libcuda.so.1 like any CUDA program)
    b = shells["bin"]
    assert b["torch"]["wheel"] is True and b["torch"]["triton"] == "triton-bin", b["torch"]
    assert b["torch"]["src"] == "torch-wheel" and b["arch"] is None and b["cudaHome"] is None
    assert "nanochat_link_host_driver" in b["shellHook"]
    cpu = shells["cpu"]
    assert cpu["arch"] is None and cpu["cudaHome"] is None
    assert cpu["torch"]["cudaSupport"] is False and cpu["torch"]["cudaMajorVersion"] is None
    assert cpu["torch"]["src"] == "nixpkgs-torch-source" and cpu["torch"]["wheel"] is False
    assert "nanochat_link_host_driver" not in cpu["shellHook"]


def test_structural_packages_checks_and_darwin(flake_repo):
    """STRUCTURAL CHECK against the stub nixpkgs; not a build."""
    system = _system()

    def ev(attr, apply):
        out = _nix(flake_repo, "eval", "--json", f".#{attr}", *_stub(flake_repo), "--apply", apply)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    pk = ev(f"packages.{system}", "p: { names = builtins.attrNames p; default = p.default.pname; "
                                  "vendor = p.rustbpe ? cargoDeps; }")
    assert {"default", "nanochat", "nanochat-cpu", "rustbpe", "torch", "python", "python-cpu",
            "python-sm90", "python-bin"} <= set(pk["names"])
    assert pk["default"] == "nanochat" and pk["vendor"]
    lock = ev(f"packages.{system}.rustbpe", "r: r.cargoDeps.lockFile")
    assert Path(lock).name.endswith("rustbpe-Cargo.lock")
    # other flakes build their own variants through legacyPackages (not an unknown `lib` output)
    mk = ev(f"legacyPackages.{system}", 'l: let t = (l.mkPkgs { cudaCapabilities = [ "8.0" ]; }).python3Packages.torch; '
                                       'in { inherit (t) cudaCapabilities cudaMajorVersion; }')
    assert mk == {"cudaCapabilities": ["8.0"], "cudaMajorVersion": "13"}
    ck = ev(f"checks.{system}", 'c: { names = builtins.attrNames c; '
                               'pytest = builtins.match ".*python -m pytest.*" c.tests.buildCommand != null; }')
    assert ck == {"names": ["tests"], "pytest": True}
    dw = ev("devShells.aarch64-darwin", "d: { names = builtins.attrNames d; "
                                        "default = d.default.NANOCHAT_NIX_SHELL; }")
    assert dw == {"names": ["cpu", "default"], "default": "nanochat-cpu"}


def test_structural_flake_check_schema(flake_repo):
    """`nix flake check --no-build` (schema: every check/package/devShell is a derivation), and no
    warning about outputs it does not know."""
    out = _nix(flake_repo, "flake", "check", "--no-build", *_stub(flake_repo))
    assert out.returncode == 0, out.stderr
    assert "unknown flake output" not in out.stderr, out.stderr


def test_structural_torch_src_override(flake_repo, tmp_path):
    """--override-input torch-src path:<checkout> switches torch's source, takes its version from the
    checkout's version.txt (so PYTORCH_BUILD_VERSION tells the truth), keeps nixpkgs' local patches,
    drops its upstream backports and turns --replace-fail edits into --replace-warn (stub nixpkgs)."""
    system = _system()
    checkout = tmp_path / "pytorch"
    checkout.mkdir()
    (checkout / "setup.py").write_text("# stand-in for a PyTorch checkout\n")
    (checkout / "version.txt").write_text("2.14.0a0\n")
    apply = ('t: { src = toString t.src; inherit (t) version postPatch; build = t.env.PYTORCH_BUILD_VERSION; '
             'patches = map (p: if builtins.isPath p then "path" else "drv") t.patches; '
             'nvshmem = t.withNvshmem; }')
    out = _nix(flake_repo, "eval", "--json", f".#packages.{system}.torch", *_stub(flake_repo),
               "--override-input", "torch-src", f"path:{checkout}", "--apply", apply)
    assert out.returncode == 0, out.stderr
    t = json.loads(out.stdout)
    src = Path(t["src"])
    assert src.name.endswith("-source") and (src / "setup.py").read_text().startswith("# stand-in")
    assert t["version"] == t["build"] == "2.14.0a0"
    assert t["patches"] == ["path"] and t["nvshmem"] is False
    assert "--replace-warn" in t["postPatch"] and "--replace-fail" not in t["postPatch"]
    # not a PyTorch checkout: one clear evaluation error
    (checkout / "version.txt").unlink()
    out = _nix(flake_repo, "eval", "--raw", f".#packages.{system}.torch.version", *_stub(flake_repo),
               "--override-input", "torch-src", f"path:{checkout}")
    assert out.returncode != 0 and "has no version.txt" in out.stderr


@needs_nix
def test_check_source_filter_keeps_what_the_suite_reads():
    """Evaluated by Nix: the check's source (nix/source.nix with nix/check-source.nix) really holds
    every top-level path the suite reads, and the package's narrower source holds what pip needs."""
    expr = ('let s = import ./nix/source.nix; in { check = toString (s { name = "t-check"; '
            'keep = import ./nix/check-source.nix; }); }')
    # --read-write-mode: really copy the filtered tree into the store (plain --eval only hashes it)
    out = subprocess.run(["nix-instantiate", "--eval", "--read-write-mode", "--strict", "--json", "-E", expr],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode != 0 and re.search(r"Permission denied|read-only|cannot open connection", out.stderr):
        pytest.skip(f"this user cannot write the Nix store: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr
    copied = Path(json.loads(out.stdout)["check"])
    present = {p.name for p in copied.iterdir()}
    missing = set(_paths_the_suite_reads()) - present
    assert not missing, f"the check's source lacks {sorted(missing)}"
    assert not (copied / "tests" / "__pycache__").exists()
