"""Checks of the Nix flake that need no network, no GPU and no real nixpkgs.

* Always: flake.lock is a well-formed version-7 lock whose nixpkgs node is the revision flake.nix
  and docs/nix.md name (torch-src: the same tree, as a real input); no unknown hash is left in
  nix/; the check's source keeps every repo path the test files read; the host-driver shell
  snippet links only driver libraries and names them for Triton (run with bash against fake
  driver directories, WSL's included).
* With the package index reachable: the rustbpe sdist's sha256 is the one nix/rustbpe.nix pins, and
  nix/rustbpe-Cargo.lock is byte-identical to the Cargo.lock inside it.
* With `nix-instantiate`/`nix` on PATH (Debian's nix-bin 2.8 is enough): every .nix file parses;
  `nix flake metadata` reads the lock offline and `nix flake lock --no-update-lock-file` finds it
  complete; the unfree predicates decide by licence on nixpkgs' licence shapes (compound ones
  included); the check's source filter, evaluated, keeps every path the suite needs.
* AGAINST A STUB NIXPKGS (tests/fixtures/fake-nixpkgs, `--override-input nixpkgs path:...`), not a
  build: the stub keeps the refusals of the real nixpkgs the flake must get past (unfree licences
  through allowUnfreePredicate for every package of a closure, broken packages and meta.problems,
  meta.platforms, torch-bin 2.13 refused below cuda-bindings 13.0.3, default cudaPackages 12.9),
  each piece naming the nixpkgs file it mirrors, and the stub's own behaviour is pinned by a test.
  Against it: every output of every system instantiates, no package of any shell is refused,
  `nix flake check --no-build` passes, and the wiring is right (shell names and env vars, the
  Python package list, CUDA config and cudaPackages_13 reaching torch, the wheel set on CUDA 13
  without cudaSupport, no wheel shell on aarch64-linux, torch-src reaching only the CUDA source
  builds). It cannot check nixpkgs' real attribute names or arguments at the pin, nor any hash:
  docs/nix.md lists the commands that settle those on a real machine. With
  NANOCHAT_TEST_NIXPKGS_LIB=<nixpkgs>/lib the stub's lib is also compared with the real one.

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
    assert root_inputs == {"nixpkgs": "nixpkgs", "torch-src": "torch-src"}
    assert set(lock["nodes"]) == {"root", "nixpkgs", "torch-src"}
    owner, repo, rev = _flake_pin()
    node = lock["nodes"]["nixpkgs"]
    assert node["original"] == {"owner": owner, "repo": repo, "rev": rev, "type": "github"}
    # torch-src is a real input (no `follows`: Lix would keep following under --override-input)
    # whose default is the very same tree: same rev and narHash, so the same store path, which the
    # flake reads as "no checkout given"
    assert lock["nodes"]["torch-src"] == {"flake": False, "locked": node["locked"], "original": node["original"]}
    assert re.search(r'torch-src = \{\s*url = "github:%s/%s/%s";\s*flake = false;' % (owner, repo, rev),
                     FLAKE.read_text()), "flake.nix: torch-src must name the nixpkgs pin, flake = false"
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
              'printf "%s\\n%s\\n%s\\n" "$LD_LIBRARY_PATH" "$NANOCHAT_HOST_DRIVER_LINKED" "$TRITON_LIBCUDA_PATH"')
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ld, linked, triton = out.stdout.splitlines()
    linked = Path(linked)
    assert linked.parent == tmp_path / "cache" / "nanochat" / "host-driver"
    assert ld == f"{linked}:/already/there"  # prepended once, even when sourced twice
    # Triton finds libcuda there too (it does not go through the loader), under the unversioned
    # name its -lcuda needs, which a driver-only install does not ship
    assert triton == str(linked)
    assert sorted(p.name for p in linked.iterdir()) == [
        "libcuda.so", "libcuda.so.1", "libcuda.so.580.65.06", "libcudadebugger.so.1",
        "libnvidia-ml.so.1", "libnvidia-ml.so.580.65.06"]
    assert os.path.realpath(linked / "libcuda.so") == str(drv / "libcuda.so.580.65.06")
    # no driver anywhere: nothing changes, still exit 0
    env["NANOCHAT_HOST_DRIVER_DIRS"] = str(tmp_path / "missing")
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.splitlines() == ["/already/there", "", ""]


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
# own, _cuda/lib/licenses.nix; nccl is BSD-3). From CUDA 13.3 on, `cuda_cccl` is called `cccl`.
# Licence values are written with the stub's lib.licenses (`l`), which has nixpkgs' shapes.
_CUDA_13_2 = ["cuda_cccl", "cuda_crt", "cuda_cudart", "cuda_cupti", "cuda_nvcc", "cuda_nvml_dev",
              "cuda_nvrtc", "cuda_nvtx", "cuda_profiler_api", "libcublas", "libcufft", "libcufile",
              "libcurand", "libcusolver", "libcusparse", "libnvjitlink", "libnvfatbin", "libnvvm", "libnvshmem"]
_CUDA_13_3 = ["cccl"] + [n for n in _CUDA_13_2 if n != "cuda_cccl"]
_OWN = 'free = false; redistributable = false; licenseType = "simple";'
_ACCEPTED = {n: "l.nvidiaCudaRedist" for n in _CUDA_13_2 + _CUDA_13_3} | {
    "cuda_gdb": "l.nvidiaCuda",
    "cudnn": f'{{ shortName = "cuDNN EULA"; {_OWN} }}',
    "libcusparse_lt": f'{{ shortName = "cuSPARSELt EULA"; {_OWN} }}',
    "cutensor": f'{{ shortName = "cuTENSOR EULA"; {_OWN} }}',
    "nccl": "l.bsd3",
    # compound expressions (lib.licenses operators), decided as lib.licenses.isFree decides them
    "cuda-and-bsd": "l.AND [ l.nvidiaCudaRedist l.bsd3 ]",
    "free-or-other": "l.OR [ l.mit l.unfree ]",
    "cuda-plus": "l.PLUS l.nvidiaCuda",
}
# refused by both predicates: unfree licences that are not NVIDIA's CUDA ones, whatever the name
_REFUSED = {
    "steam": "l.unfreeRedistributable",
    "vscode": "l.unfree",
    "cuda-imposter": "l.unfree",
    "libcublas-plus-other": "[ l.nvidiaCudaRedist l.unfree ]",
    "no-licence": "[ ]",
    "string-licence": '"unfree"',
    "legacy-without-free": '{ shortName = "mystery"; }',
    # a compound licence has no `free` of its own: it must not pass as free (issue 28.8)
    "mit-and-unfree": "l.AND [ l.mit l.unfree ]",
    "cuda-and-unfree": "l.AND [ l.nvidiaCudaRedist l.unfreeRedistributable ]",
    "mit-with-unfree-exception": "l.WITH l.mit l.unfree",
    "list-with-unfree-compound": "[ l.mit (l.AND [ l.mit l.unfree ]) ]",
}
_BINARY = "meta.sourceProvenance = [ lib.sourceTypes.binaryNativeCode ];"
# torch-bin's closure: the three unfreeRedistributable packages, with nixpkgs' licences
# (torch/bin/default.nix, triton/bin.nix, cuda-bindings/default.nix)
_WHEEL_SHELL = {
    "torch": ("[ l.bsd3 l.issl l.unfreeRedistributable ]", _BINARY),
    "triton": ("[ l.unfreeRedistributable l.mit ]", _BINARY),
    "cuda-bindings": ("l.unfreeRedistributable", ""),
}
# ... and what the .#bin shell still refuses under those names
_WHEEL_SHELL_REFUSED = {
    "torch": ("[ l.bsd3 l.issl l.unfreeRedistributable ]", ""),   # same licences, built from source
    "triton": ("[ l.issl l.mit ]", _BINARY),                      # not triton's licence
    "cuda-bindings": ("[ l.unfreeRedistributable l.unfree ]", ""),
}


def _predicate(which: str, packages: dict) -> dict:
    """{name: allowed?} for nix/unfree.nix's predicate `which`, with the stub's nixpkgs lib."""
    items = " ".join(f'{{ name = "{n}"; value = p {{ pname = "{n}"; {extra} meta.license = {lic}; }}; }}'
                     for n, (lic, extra) in packages.items())
    expr = (f"let lib = import {ROOT / STUB / 'lib.nix'}; l = lib.licenses; "
            f"p = (import {ROOT / 'nix' / 'unfree.nix'} {{ inherit lib; }}).{which}; in "
            f"builtins.listToAttrs [ {items} ]")
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@needs_nix
def test_unfree_predicate_decides_by_licence():
    both = {n: (lic, "") for n, lic in {**_ACCEPTED, **_REFUSED}.items()}
    for which in ("cuda", "bin"):
        got = _predicate(which, both)
        assert {n for n, ok in got.items() if ok} == set(_ACCEPTED), which
    # the source shells take none of the wheel shell's unfreeRedistributable packages
    assert not any(_predicate("cuda", _WHEEL_SHELL).values())
    # the .#bin shell takes exactly those, with exactly their licences
    assert all(_predicate("bin", _WHEEL_SHELL).values())
    assert not any(_predicate("bin", _WHEEL_SHELL_REFUSED).values())


def _stub_eval(expr: str, system: str = "x86_64-linux"):
    """Evaluate `expr` with `pkgs = import <stub nixpkgs> { system; config; overlays }` in scope
    (config/overlays given inside expr as `cfg` and `ovl`); (ok, value or error text)."""
    full = (f"let stub = args: import {ROOT / STUB} ({{ system = \"{system}\"; }} // args); "
            f"lib = import {ROOT / STUB / 'lib.nix'}; l = lib.licenses; in {expr}")
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", full],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return False, " ".join(l.strip() for l in out.stderr.splitlines())
    return True, json.loads(out.stdout)


@needs_nix
def test_stub_models_the_nixpkgs_refusals_the_flake_must_pass():
    """The stub's own behaviour, pinned so that it cannot quietly go back to accepting anything.
    Each refusal is nixpkgs' (the stub's files name the nixpkgs file each mirrors)."""
    # pkgs/top-level/all-packages.nix: the default CUDA set is 12.9; cudaPackages_13 is 13.2
    assert _stub_eval("map (p: p.cudaMajorMinorVersion) (let p = stub { }; in [ p.cudaPackages p.cudaPackages_13 ])") \
        == (True, ["12.9", "13.2"])
    # check-meta.nix: an unfree licence is refused unless allowUnfree / allowUnfreePredicate admits it
    ok, err = _stub_eval("(stub { }).cudaPackages.libcublas.drvPath")
    assert not ok and "Refusing to evaluate package 'libcublas-12.9'" in err and "unfree license (‘CUDA EULA’)" in err
    ok, err = _stub_eval("(stub { }).cudaPackages.cudnn.drvPath")
    assert not ok and "unfree license (‘cuDNN EULA’)" in err
    assert _stub_eval("builtins.isString (stub { }).cudaPackages.nccl.drvPath") == (True, True)  # BSD-3
    # the predicate sees the package's attributes and every package of the closure goes through it
    seen = ('let p = stub { config.allowUnfreePredicate = x: x.pname == "cuda_cudart"; }; '
            'in p.python3.withPackages (ps: [ (ps.cuda-bindings) ])')
    ok, err = _stub_eval(f"({seen}).drvPath")
    assert not ok and "python3.14-cuda-bindings-12.9.7" in err and "unfreeRedistributable" in err
    # compound licences: AND needs every part free, OR one; in a list a compound counts as unfree
    pkg = 'p: lic: (p.python3.pkgs.buildPythonPackage { pname = "x"; version = "1"; meta.license = lic; }).drvPath'
    for lic, allowed in (("l.AND [ l.mit l.unfree ]", False), ("l.OR [ l.mit l.unfree ]", True),
                         ("[ l.mit (l.OR [ l.mit l.bsd3 ]) ]", False), ("l.AND [ l.mit l.bsd3 ]", True)):
        ok, _ = _stub_eval(f"builtins.isString (({pkg}) (stub {{ }}) ({lic}))")
        assert ok is allowed, lic
    # torch/bin/default.nix + nixpkgs PR #564686: torch-bin 2.13 is broken while cuda-bindings is
    # older than 13.0.3; overriding torch-bin's own cudaPackages does not move cuda-bindings
    unfree_ok = "config.allowUnfree = true;"
    ok, err = _stub_eval(f"(stub {{ {unfree_ok} }}).python3Packages.torch-bin.drvPath")
    assert not ok and 'unsupported-cuda-version (kind "broken"): cudaPackages is too old (12.9)' in err \
        and "current is 12.9.7" in err
    ok, err = _stub_eval(f"let p = stub {{ {unfree_ok} }}; in "
                         "(p.python3Packages.torch-bin.override { cudaPackages = p.cudaPackages_13; }).drvPath")
    assert not ok and "cudaPackages is too old (13.2)" in err and "current is 12.9.7" in err
    cuda13 = "overlays = [ (final: prev: { cudaPackages = final.cudaPackages_13; }) ];"
    assert _stub_eval(f"builtins.isString (stub {{ {unfree_ok} {cuda13} }}).python3Packages.torch-bin.drvPath") \
        == (True, True)
    # triton/bin.nix: x86_64-linux only
    ok, err = _stub_eval(f"(stub {{ {unfree_ok} }}).python3Packages.triton-bin.drvPath", system="aarch64-linux")
    assert not ok and "not available on the requested hostPlatform" in err
    # torch/bin/binary-hashes.nix: aarch64-linux gets the +cpu wheel
    assert _stub_eval(f"(stub {{ }}).python3Packages.torch-bin.src.url", system="aarch64-linux")[1].count("/cpu/") == 1


def test_wheel_set_is_cuda_13_without_cuda_support(flake_repo):
    """The .#bin package set: cudaPackages is CUDA 13 for the whole set (so cuda-bindings, a
    separate package, is 13.x and nixpkgs accepts torch-bin 2.13), yet config.cudaSupport stays
    off, so nothing else turns into a CUDA build; Triton's wheel prefers TRITON_LIBCUDA_PATH over
    nixpkgs' /run/opengl-driver/lib (non-NixOS hosts, where nix/host-driver.sh sets it)."""
    system = _system()
    if system != "x86_64-linux":
        pytest.skip("the wheel shell exists on x86_64-linux only")
    apply = """l: let p = l.mkPkgs { torch = "bin"; }; t = p.python3Packages.torch; in {
      cudaSupport = p.config.cudaSupport;
      cuda = p.cudaPackages.cudaMajorMinorVersion;
      bindings = p.python3Packages.cuda-bindings.version;
      wheel = t.wheel; wheelCuda = t.wheelCudaMajorVersion;
      tritonFixup = t.triton.postFixup;
    }"""
    out = _nix(flake_repo, "eval", "--json", f".#legacyPackages.{system}", *_stub(flake_repo), "--apply", apply)
    assert out.returncode == 0, out.stderr
    w = json.loads(out.stdout)
    assert (w["cudaSupport"], w["cuda"], w["bindings"], w["wheel"], w["wheelCuda"]) == (False, "13.2", "13.2.0", True, "13")
    nixpkgs_line = '"/run/opengl-driver/lib", '
    ours = ("--replace-warn '\"/run/opengl-driver/lib\"' "
            "'__import__(\"os\").environ.get(\"TRITON_LIBCUDA_PATH\") or \"/run/opengl-driver/lib\"'")
    fixup = w["tritonFixup"]
    assert nixpkgs_line in fixup and ours in fixup and fixup.index(nixpkgs_line) < fixup.index(ours), fixup


@pytest.mark.skipif(not os.environ.get("NANOCHAT_TEST_NIXPKGS_LIB"),
                    reason="set NANOCHAT_TEST_NIXPKGS_LIB to a nixpkgs lib/ directory (e.g. from "
                           "github:nix-community/nixpkgs.lib) to compare the stub's lib with the real one")
@needs_nix
def test_stub_lib_agrees_with_real_nixpkgs_lib():
    """The stub's lib pieces (licences and their operators/helpers, genAttrs) give what nixpkgs'
    real lib gives, and nix/unfree.nix decides the test tables the same way with either."""
    real = os.environ["NANOCHAT_TEST_NIXPKGS_LIB"]
    probe = """lib: let l = lib.licenses; pick = x: { inherit (x) shortName free licenseType; }; in {
      simple = map pick (with l; [ asl20 bsd3 mit issl unfree unfreeRedistributable nvidiaCuda nvidiaCudaRedist ]);
      isFree = map l.isFree (with l; [ (AND [ mit unfree ]) (OR [ mit unfree ]) (WITH mit unfree) (PLUS mit) (AND [ mit (OR [ unfree bsd3 ]) ]) ]);
      genAttrs = lib.genAttrs [ "a" "b" ] (n: n + n);
    }"""
    results = []
    for lib in (f"import {ROOT / STUB / 'lib.nix'}", f"import {real}"):
        out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", f"({probe}) ({lib})"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        results.append(json.loads(out.stdout))
    assert results[0] == results[1]
    table = {n: (lic, "") for n, lic in {**_ACCEPTED, **_REFUSED}.items()} | _WHEEL_SHELL
    for which in ("cuda", "bin"):
        got = []
        for lib in (ROOT / STUB / "lib.nix", Path(real)):
            items = " ".join(f'{{ name = "{n}"; value = p {{ pname = "{n}"; {extra} meta.license = {lic}; }}; }}'
                             for n, (lic, extra) in table.items())
            expr = (f"let lib = import {lib}; l = lib.licenses; "
                    f"p = (import {ROOT / 'nix' / 'unfree.nix'} {{ inherit lib; }}).{which}; in builtins.listToAttrs [ {items} ]")
            out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            got.append(json.loads(out.stdout))
        assert got[0] == got[1], which


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


def _stub(repo, torch_src=None) -> list:
    """nixpkgs replaced by the stub; torch-src by the same tree (the flake's "no checkout given",
    as the default lock has it: torch-src is the nixpkgs tree) unless a checkout is named."""
    return ["--override-input", "nixpkgs", f"path:{repo / STUB}",
            "--override-input", "torch-src", f"path:{torch_src or repo / STUB}"]


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
               src = t.src.url or (toString t.src); nvshmem = t.withNvshmem or null; triton = t.triton.pname or null; };
}) ds"""


def test_structural_dev_shells_against_stub(flake_repo):
    """STRUCTURAL CHECK against the stub nixpkgs; not a build."""
    system = _system()
    out = _nix(flake_repo, "eval", "--json", f".#devShells.{system}", *_stub(flake_repo),
               "--apply", SHELL_SUMMARY)
    assert out.returncode == 0, out.stderr
    shells = json.loads(out.stdout)
    # the wheel shell only where nixpkgs' torch-bin is PyTorch's CUDA wheel (x86_64-linux)
    assert set(shells) == {"default", "sm120", "sm90", "cpu"} | ({"bin"} if system == "x86_64-linux" else set())
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
    if system == "x86_64-linux":
        b = shells["bin"]
        assert b["torch"]["wheel"] is True and b["torch"]["triton"] == "triton", b["torch"]
        assert "/cu130/" in b["torch"]["src"] and b["arch"] is None and b["cudaHome"] is None
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
    assert set(pk["names"]) == {"default", "nanochat", "nanochat-cpu", "rustbpe", "torch", "python", "python-cpu",
                                "python-sm90"} | ({"python-bin"} if system == "x86_64-linux" else set())
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
    # aarch64-linux: nixpkgs' torch-bin is the +cpu wheel there, so no wheel shell or package
    assert ev("devShells.aarch64-linux", "d: builtins.attrNames d") == ["cpu", "default", "sm120", "sm90"]
    arm = ev("packages.aarch64-linux", "p: builtins.attrNames p")
    assert "python-bin" not in arm and "python-sm90" in arm


def test_structural_flake_check_schema(flake_repo):
    """`nix flake check --no-build` against the stub: every check/package/devShell is a derivation
    that nixpkgs' meta checks (as the stub models them) let through, and no warning about outputs
    it does not know."""
    out = _nix(flake_repo, "flake", "check", "--no-build", *_stub(flake_repo))
    assert out.returncode == 0, out.stderr
    assert "unknown flake output" not in out.stderr, out.stderr


# every output of every system, instantiated (drvPath): "ok" or "refused"
ALL_DRVS = """systems: builtins.mapAttrs (_sys: builtins.mapAttrs (_n: x:
  if (builtins.tryEval x.drvPath).success then "ok" else "refused")) systems"""


def test_every_output_instantiates_against_stub(flake_repo):
    """What `nix flake check` and `nix develop` need first: every devShell, package and check of
    every system instantiates, i.e. the stub's nixpkgs refusals (unfree licences through our
    allowUnfreePredicate, torch-bin below CUDA 13, platforms) pass for each package of each closure.
    A refused output is re-evaluated alone so that the failure names nixpkgs' message."""
    results = {}
    for kind in ("devShells", "packages", "checks"):
        out = _nix(flake_repo, "eval", "--json", f".#{kind}", *_stub(flake_repo), "--apply", ALL_DRVS)
        assert out.returncode == 0, out.stderr
        results[kind] = json.loads(out.stdout)
    refused = [(kind, sys, name) for kind, systems in results.items()
               for sys, names in systems.items() for name, r in names.items() if r != "ok"]
    why = {}
    for kind, sys, name in refused:
        one = _nix(flake_repo, "eval", "--raw", f".#{kind}.{sys}.{name}.drvPath", *_stub(flake_repo))
        why[f"{kind}.{sys}.{name}"] = next((l.strip() for l in one.stderr.splitlines() if "error:" in l),
                                           one.stderr.strip()[-300:])
    assert not refused, "refused by the stub nixpkgs:\n" + "\n".join(f"  {k}: {v}" for k, v in why.items())


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
    out = _nix(flake_repo, "eval", "--json", f".#packages.{system}.torch", *_stub(flake_repo, checkout),
               "--apply", apply)
    assert out.returncode == 0, out.stderr
    t = json.loads(out.stdout)
    src = Path(t["src"])
    assert src.name.endswith("-source") and (src / "setup.py").read_text().startswith("# stand-in")
    assert t["version"] == t["build"] == "2.14.0a0"
    assert t["patches"] == ["path"] and t["nvshmem"] is False
    assert "--replace-warn" in t["postPatch"] and "--replace-fail" not in t["postPatch"]
    # only the source-built CUDA torch takes the checkout: the CPU torch (the CPU shell and the
    # check) and the wheel stay nixpkgs', so overriding torch-src rebuilds nothing of theirs
    pick = 'builtins.head (builtins.filter (p: p.pname or "" == "torch") PY.selected)'
    for attr, py in ((f"devShells.{system}.cpu", "x.python"),
                     (f"checks.{system}.tests", 'builtins.head (builtins.filter (p: p ? selected) x.nativeBuildInputs)')):
        out = _nix(flake_repo, "eval", "--raw", f".#{attr}", *_stub(flake_repo, checkout), "--apply",
                   f"x: let t = {pick.replace('PY', f'({py})')}; in toString (t.src.url or t.src)")
        assert out.returncode == 0, out.stderr
        assert out.stdout == "nixpkgs-torch-source", (attr, out.stdout)
    # not a PyTorch checkout: one clear evaluation error
    (checkout / "version.txt").unlink()
    out = _nix(flake_repo, "eval", "--raw", f".#packages.{system}.torch.version", *_stub(flake_repo, checkout))
    assert out.returncode != 0 and "has no version.txt" in out.stderr


# the packages of a shell's closure (the stub's `inputs`) that nixpkgs' meta check refuses THEMSELVES
CLOSURE = """shell: let
  deps = x: builtins.filter (d: builtins.isAttrs d && d ? stubMetaCheck) (x.inputs or [ ]);
  entry = d: { key = d.name; pkg = d; };
in builtins.genericClosure { startSet = [ (entry shell) ]; operator = e: map entry (deps e.pkg); }"""
REFUSED_IN_CLOSURE = f"""shell: let closure = ({CLOSURE}) shell; in
  map (e: e.key) (builtins.filter (e: !(builtins.tryEval e.pkg.stubMetaCheck).success) closure)"""


def test_no_package_of_any_shell_is_refused(flake_repo):
    """nixpkgs applies allowUnfreePredicate, the broken/problems checks and meta.platforms to every
    package of a shell's closure: none of them, in any shell of any system, may be refused. Lists
    each refused package with nixpkgs' message (the stub's), not just the first one."""
    out = _nix(flake_repo, "eval", "--json", ".#devShells", *_stub(flake_repo), "--apply",
               f"systems: builtins.mapAttrs (_: builtins.mapAttrs (_: {REFUSED_IN_CLOSURE})) systems")
    assert out.returncode == 0, out.stderr
    why = []
    for sys, shells in json.loads(out.stdout).items():
        for shell, keys in shells.items():
            for key in keys:
                one = _nix(flake_repo, "eval", "--raw", f".#devShells.{sys}.{shell}", *_stub(flake_repo),
                           "--apply", f'shell: (builtins.head (builtins.filter (e: e.key == "{key}") '
                                      f'(({CLOSURE}) shell))).pkg.stubMetaCheck')
                msg = " ".join(l.strip() for l in one.stderr.splitlines()
                               if l.strip() and not l.lstrip().startswith(("warning:", "(use", "•", "'", "→")))
                why.append(f"{sys}.{shell}: {key}: {msg}")
    assert not why, "refused by the stub nixpkgs:\n" + "\n".join(why)


@needs_nix
def test_check_source_filter_keeps_what_the_suite_reads():
    """Evaluated by Nix: the check's source (nix/source.nix with nix/check-source.nix) really holds
    every top-level path the suite reads, and the package's narrower source holds what pip needs."""
    # nixpkgs' lib.fileset as the stub models it (tests/fixtures/fake-nixpkgs/lib.nix)
    expr = (f'let s = import ./nix/source.nix; in {{ check = toString (s {{ lib = import ./{STUB}/lib.nix; '
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
