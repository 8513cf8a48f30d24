"""Checks of the Nix flake that need no network, no GPU and no real nixpkgs.

* Always: flake.lock is a well-formed version-7 lock whose nixpkgs node is the pinned revision and
  matches the url in flake.nix; the rustbpe sdist hash is the one PyPI publishes; the host-driver
  shell snippet links only driver libraries (run with bash against a fake driver directory).
* With `nix-instantiate`/`nix` on PATH (Debian's nix-bin 2.8 is enough): every .nix file parses;
  `nix flake metadata` reads the lock offline and `nix flake lock --no-update-lock-file` finds it
  complete; the unfree predicate accepts NVIDIA packages only.
* STRUCTURAL CHECK (not a build, not an evaluation of real nixpkgs): the flake's outputs are
  evaluated with nixpkgs replaced by the stub in tests/fixtures/fake-nixpkgs
  (`--override-input nixpkgs path:...`). This checks our own wiring: shell names and env vars,
  the Python package list, that the CUDA config and the cudaPackages_13 overlay reach torch, that
  the torch-src input switches torch's source, that checks/packages exist with the right schema.
  It cannot check that real nixpkgs attribute names or arguments exist, nor any hash.

Nix flakes only see files tracked by git, so the repository (tracked + untracked, non-ignored
files) is copied into a temporary git repository first: the tests work on uncommitted files.
"""
import base64
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
PIN_REV = "a7868a727837f3c09cee2ce0ca671c76b1589fed"
PIN_NARHASH = "sha256-KgItSKML8Xvte0B7/uGnBDsYzSnnKHcOaiUbgWBXLXw="
PIN_LASTMODIFIED = 1791048980
RUSTBPE_PYPI_SHA256 = "18765f62ac579a9ff9e89c611f9c9b9e46bd1adde9be3f59c00b6eb4e1f28b3a"
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


def test_lock_pins_nixpkgs():
    lock = _lock()
    assert lock["version"] == 7 and lock["root"] == "root"
    root_inputs = lock["nodes"]["root"]["inputs"]
    assert root_inputs["nixpkgs"] == "nixpkgs"
    assert root_inputs["torch-src"] == ["nixpkgs"]  # follows nixpkgs unless overridden
    node = lock["nodes"][root_inputs["nixpkgs"]]
    assert node["locked"] == {
        "lastModified": PIN_LASTMODIFIED, "narHash": PIN_NARHASH, "owner": "NixOS",
        "repo": "nixpkgs", "rev": PIN_REV, "type": "github"}
    assert set(lock["nodes"]) == {"root", "nixpkgs"}


def test_lock_original_matches_flake_url():
    m = re.search(r'nixpkgs\.url\s*=\s*"github:([^/"]+)/([^/"]+)/([0-9a-f]{40})"', FLAKE.read_text())
    assert m, "flake.nix must pin nixpkgs as github:OWNER/REPO/<40-hex rev>"
    owner, repo, rev = m.groups()
    assert _lock()["nodes"]["nixpkgs"]["original"] == {
        "owner": owner, "repo": repo, "rev": rev, "type": "github"}
    assert rev == PIN_REV


def test_rustbpe_src_hash_is_pypis():
    text = (ROOT / "nix" / "rustbpe.nix").read_text()
    sri = "sha256-" + base64.b64encode(bytes.fromhex(RUSTBPE_PYPI_SHA256)).decode()
    assert f'hash = "{sri}"' in text
    if "lib.fakeHash" in text:  # the one unknown hash must come with its fix
        assert "nix build .#rustbpe" in text


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


# ----------------------------------------------------------------------------- with nix

def _nix_files() -> list:
    return [FLAKE, *sorted((ROOT / "nix").glob("*.nix")), *sorted((ROOT / STUB).glob("*.nix"))]


@needs_nix
@pytest.mark.parametrize("path", _nix_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nix_file_parses(path):
    out = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@needs_nix
def test_unfree_predicate_allows_only_nvidia():
    expr = ("let p = import " + str(ROOT / "nix" / "unfree.nix") + "; in map p [ "
            '{ pname = "cudnn"; } { pname = "cuda_nvcc"; } { pname = "libcublas"; } '
            '{ pname = "libnvjitlink"; } { pname = "nccl"; } { name = "nvidia-x11-580.65.06"; } '
            '{ pname = "steam"; } { pname = "vscode"; } { name = "unrar-7.0"; } ]')
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [True] * 6 + [False] * 3


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
    assert meta["locks"]["nodes"]["nixpkgs"]["locked"]["rev"] == PIN_REV
    assert meta["locks"]["nodes"]["nixpkgs"]["locked"]["narHash"] == PIN_NARHASH
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
          in { inherit (t) cudaSupport cudaCapabilities cudaForwardCompat cudaMajorVersion; src = toString t.src; };
}) ds"""


def test_structural_dev_shells_against_stub(flake_repo):
    """STRUCTURAL CHECK against the stub nixpkgs; not a build."""
    system = _system()
    out = _nix(flake_repo, "eval", "--json", f".#devShells.{system}", *_stub(flake_repo),
               "--apply", SHELL_SUMMARY)
    assert out.returncode == 0, out.stderr
    shells = json.loads(out.stdout)
    assert {"default", "sm120", "sm90", "cpu"} <= set(shells)
    required = {"torch", "tiktoken", "rustbpe", "pyarrow", "numpy", "regex", "datasets", "pytest", "pip"}
    for name, s in shells.items():
        assert s["USE_LIBUV"] == "0" and s["NANOCHAT_IN_NIX"] == "1", name
        assert s["pythonIsListed"] and required <= set(s["python"]), name
        assert any(p.startswith("gnumake-") for p in s["packages"]), name
        assert any(p.startswith("git-") for p in s["packages"]), name
        assert "nanochat.doctor --brief" in s["shellHook"], name
        assert s["torch"]["src"] == "nixpkgs-torch-source", name  # torch-src not overridden
    for name, arch in (("default", "12.0"), ("sm120", "12.0"), ("sm90", "9.0")):
        s = shells[name]
        assert s["arch"] == arch and s["cudaHome"], name
        assert s["torch"] == {"cudaSupport": True, "cudaCapabilities": [arch], "cudaForwardCompat": False,
                              "cudaMajorVersion": "13", "src": "nixpkgs-torch-source"}, name
        assert "nanochat_link_host_driver" in s["shellHook"], name
    cpu = shells["cpu"]
    assert cpu["arch"] is None and cpu["cudaHome"] is None
    assert cpu["torch"]["cudaSupport"] is False and cpu["torch"]["cudaMajorVersion"] is None
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
    assert {"default", "nanochat", "nanochat-cpu", "rustbpe", "torch", "python", "python-cpu"} <= set(pk["names"])
    assert pk["default"] == "nanochat" and pk["vendor"]
    ck = ev(f"checks.{system}", 'c: { names = builtins.attrNames c; '
                               'pytest = builtins.match ".*python -m pytest.*" c.tests.buildCommand != null; }')
    assert ck == {"names": ["tests"], "pytest": True}
    dw = ev("devShells.aarch64-darwin", "d: { names = builtins.attrNames d; "
                                        "default = d.default.NANOCHAT_NIX_SHELL; }")
    assert dw == {"names": ["cpu", "default"], "default": "nanochat-cpu"}


def test_structural_flake_check_schema(flake_repo):
    """`nix flake check --no-build` (schema: every check/package/devShell is a derivation)."""
    out = _nix(flake_repo, "flake", "check", "--no-build", *_stub(flake_repo))
    assert out.returncode == 0, out.stderr


def test_structural_torch_src_override(flake_repo, tmp_path):
    """--override-input torch-src path:<checkout> switches torch's source (stub nixpkgs)."""
    system = _system()
    checkout = tmp_path / "pytorch"
    checkout.mkdir()
    (checkout / "setup.py").write_text("# stand-in for a PyTorch checkout\n")
    out = _nix(flake_repo, "eval", "--raw", f".#packages.{system}.torch.src", *_stub(flake_repo),
               "--override-input", "torch-src", f"path:{checkout}")
    assert out.returncode == 0, out.stderr
    src = Path(out.stdout.strip())
    assert src.name.endswith("-source") and (src / "setup.py").read_text().startswith("# stand-in")
