"""Helpers the Makefile calls: `check` (at parse time: the stale stages), `status` (the same
decision, with reasons), `dag` (Mermaid graph), `lock`, `finish` (write a stage's stamp).

Standard library only (nanochat.common is too) and never imports torch: make runs `check` on every
call and `status` must answer instantly; neither creates or modifies anything under the base dir.

A stage is given as "name|dep1 dep2|k1=v1;k2=v2" -- the same lists and parameter strings the
Makefile's rules use, so there is a single definition of the DAG (the Makefile's) and a single
decision of staleness (`evaluate`, here).

A stamp (`<stage>.done`), written last and only when the stage succeeded, is one line
`<params>|after=<dep>@<id>,...|id=<id>` (the semantic parameters the stage ran with, the ids of the
upstream stamps it was built on, a fresh id of its own), then one line `<size> <hash> <path>` per
file the stage produced (path relative to the base dir). No decision reads an mtime. A file up to
FULL_HASH bytes is hashed whole; a larger one by its size and its first and last EDGE bytes, so a
null `make` never rereads multi-GB checkpoints: truncation, growth and damage to either end (a
parquet footer, a torch zip's directory) are seen, a same-size change in the middle is not.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nanochat.common import UserError, atomic_write_text, ensure_base_dir, fs_error

FULL_HASH = 1 << 20
EDGE = 1 << 16


@dataclass
class Stage:
    name: str
    deps: list[str]
    params: str
    reasons: list[str] = field(default_factory=list)


def parse_stage(spec: str) -> Stage:
    name, deps, params = (spec.split("|", 2) + ["", ""])[:3]
    return Stage(name=name.strip(), deps=deps.split(), params=params)


def split_params(params: str) -> dict[str, str]:
    out = {}
    for item in params.split(";"):
        if item:
            key, _, value = item.partition("=")
            out[key] = value
    return out


def param_changes(recorded: str, requested: str) -> list[str]:
    old, new = split_params(recorded), split_params(requested)
    changes = []
    for key in list(old) + [k for k in new if k not in old]:
        if old.get(key) != new.get(key):
            changes.append(f"{key}: {old.get(key, '(unset)') or '(empty)'} -> {new.get(key, '(unset)') or '(empty)'}")
    return changes


@dataclass
class StampRecord:
    params: str
    after: dict[str, str]   # upstream stage -> the id of its stamp this stage was built on
    id: str
    outputs: list[tuple[int, str, str]] = field(default_factory=list)   # (size, hash, path)


def read_stamp(path: Path) -> StampRecord | None:
    """The parsed stamp, or None when there is none."""
    try:
        head, *lines = path.read_text().strip().split("\n")
    except FileNotFoundError:
        return None
    body, sep, stamp_id = head.rpartition("|id=")
    if not sep:  # not a stamp this version wrote: treated as recording nothing usable
        return StampRecord(params=head, after={}, id="")
    params, _, after = body.rpartition("|after=")
    deps = dict(item.split("@", 1) for item in after.split(",") if "@" in item)
    outputs = [(int(size), digest, rel) for size, digest, rel in (ln.split(" ", 2) for ln in lines if ln.count(" ") >= 2)
               if size.isdigit()]
    return StampRecord(params=params, after=deps, id=stamp_id.strip(), outputs=outputs)


def file_hash(path: Path, size: int) -> str:
    """sha256 of the whole file up to FULL_HASH bytes, else of its first and last EDGE bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH:
            h.update(f.read())
        else:
            h.update(f.read(EDGE))
            f.seek(size - EDGE)
            h.update(f.read(EDGE))
    return h.hexdigest()[:32]


def output_problems(base: Path, outputs) -> list[str]:
    """Why the recorded outputs are not what the stage produced ([] = all there, unchanged)."""
    problems = []
    for size, digest, rel in outputs:
        try:
            now = (base / rel).stat().st_size
            if now != size:
                problems.append(f"output {rel} changed ({size} -> {now} bytes)")
            elif file_hash(base / rel, size) != digest:
                problems.append(f"output {rel} changed (content)")
        except FileNotFoundError:
            problems.append(f"output {rel} missing")
        except OSError as exc:
            problems.append(f"output {rel} unreadable ({exc.strerror})")
    return problems[:3] + ([f"... and {len(problems) - 3} more output(s)"] if len(problems) > 3 else [])


def outputs_of(base: Path, specs: list[str], step: str) -> list[tuple[int, str, str]]:
    """(size, hash, path) of every file a stage produced: each spec is a file or a directory (all the
    files under it) relative to `base`, {step} its final step; what does not exist is not recorded."""
    found = []
    for spec in specs:
        if "{step}" in spec:
            if not step.isdigit():
                continue
            spec = spec.replace("{step}", f"{int(step):06d}")
        p = base / spec
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.endswith(".tmp")) if p.is_dir() else \
            [p] if p.is_file() else []
        for f in files:
            size = f.stat().st_size
            found.append((size, file_hash(f, size), f.relative_to(base).as_posix()))
    return found


def evaluate(stages: list[Stage], base: Path, redo=()) -> list[Stage]:
    """Fill in each stage's reasons for being stale: THE decision (`make` acts on `check`'s answer)."""
    stamps = base / ".stamps"
    by_name = {s.name: s for s in stages}
    records = {s.name: read_stamp(stamps / f"{s.name}.done") for s in stages}
    for s in stages:  # stages arrive in DAG order
        rec = records[s.name]
        if s.name in redo:
            s.reasons.append(f"forced (make redo-{s.name})")
        if rec is None:
            s.reasons.append("started but never finished (failed or interrupted)"
                             if (stamps / f"{s.name}.start").exists() else "never built (no completion stamp)")
        else:
            if rec.params != s.params:
                s.reasons += [f"parameter {c}" for c in param_changes(rec.params, s.params)] or ["parameters changed"]
            if set(rec.after) != set(s.deps):
                s.reasons.append(f"built after {', '.join(sorted(rec.after)) or 'nothing'}, now after "
                                 f"{', '.join(s.deps) or 'nothing'}")
            s.reasons += output_problems(base, rec.outputs)
        for d in s.deps:
            dep, dep_rec = by_name.get(d), records.get(d)
            if dep is not None and dep.reasons:
                s.reasons.append(f"upstream stage '{d}' will rerun")
            elif rec is not None and dep_rec is not None and rec.after.get(d) != dep_rec.id:
                s.reasons.append(f"upstream stage '{d}' was rebuilt since")
    return stages


def refuse_deleting(name: str, path: str, home: str, repo: str) -> None:
    """A deleting verb must never reach /, the home directory or this checkout (or what holds them),
    however the path is spelled (a trailing slash, //, /./, .., a symlink): resolved paths compared."""
    real = os.path.realpath(path or ".")
    for what, keep in (("the file system root", "/"), ("your home directory", home), ("this checkout", repo)):
        kept = os.path.realpath(keep) if keep else None
        if kept and (kept == real or kept.startswith(real.rstrip("/") + "/")):
            raise UserError(f"refusing to delete {name}={path}: it resolves to {real}, which is or holds {what}: "
                            f"point {name} at a directory of its own")


def cmd_check(args) -> int:
    """Parse time: a usable base dir, nothing precious deleted; prints `ok` and the stale stages."""
    base = Path(args.base)
    first = next((p for p in (base, *base.parents) if p.exists()), None)
    if first is not None and not first.is_dir():
        raise UserError(f"NANOCHAT_BASE_DIR={base} is {'a file' if first == base else f'under the file {first}'}, "
                        f"not a directory: point NANOCHAT_BASE_DIR at a directory")
    for item in args.deletes:
        name, _, path = item.partition("=")
        refuse_deleting(name, path, args.home, args.repo)
    stages = evaluate([parse_stage(x) for x in args.stage], base, args.redo.split())
    print(" ".join(["ok"] + [s.name for s in stages if s.reasons]))
    return 0


def cmd_status(args) -> int:
    stages = evaluate([parse_stage(x) for x in args.stage], Path(args.base))
    width = max(len(s.name) for s in stages)
    for s in stages:
        if not s.reasons:
            print(f"{s.name:<{width}}  up to date")
        else:
            print(f"{s.name:<{width}}  STALE: {s.reasons[0]}")
            for r in s.reasons[1:]:
                print(f"{'':<{width}}         {r}")
    return 0


def cmd_dag(args) -> int:
    stages = [parse_stage(x) for x in args.stage]
    print("```mermaid\ngraph LR")
    for s in stages:
        print(f"  {s.name}[{s.name}]")
        for d in s.deps:
            print(f"  {d} --> {s.name}")
    print("  " + " & ".join(s.name for s in stages if not any(s.name in t.deps for t in stages)) + " --> report")
    print("```")
    return 0


# ----------------------------------------------------------------------------- locking

def _process_start(pid: int) -> str | None:
    """Start time of a live process (field 22 of /proc/pid/stat), to survive PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def cmd_lock(args) -> int:
    """Claim the base dir for make process `args.pid`; refuse if another live make holds it."""
    base = ensure_base_dir(args.base_dir)
    (base / ".stamps").mkdir(exist_ok=True)
    lock_file = base / ".lock"
    me = f"{args.pid} {_process_start(args.pid)}"
    fd = os.open(base, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # short critical section: read-check-write of the owner
        try:
            owner = lock_file.read_text().split()
        except OSError:
            owner = []
        if len(owner) == 2 and f"{owner[0]} {owner[1]}" != me and _process_start(int(owner[0])) == owner[1]:
            print(f"error: another make (pid {owner[0]}) is running on {base}: wait for it to finish, "
                  f"or use another NANOCHAT_BASE_DIR", file=sys.stderr)
            return 1
        atomic_write_text(lock_file, me + "\n")
        if args.stage:
            (base / ".stamps" / f"{args.stage}.start").write_text(f"{time.time():.3f}\n")
        return 0
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def cmd_finish(args) -> int:
    """A stage succeeded: record its wall time for the report, then write its stamp atomically.

    The stamp gets a fresh random id, so downstream stamps (which record it) go stale even when a
    redo reran this stage with unchanged parameters."""
    base = Path(args.base)
    stamps = base / ".stamps"
    start_file = stamps / f"{args.stage}.start"
    try:
        start = float(start_file.read_text())
        (stamps / f"{args.stage}.wall").write_text(f"{time.time() - start:.1f}\n")
    except (OSError, ValueError):
        pass  # timing is informative only: never fail a finished stage over it
    after = ",".join(f"{d}@{(read_stamp(stamps / f'{d}.done') or StampRecord('', {}, '')).id}" for d in args.deps.split())
    try:
        step = (stamps / f"{args.stage}.step").read_text().strip()
    except FileNotFoundError:
        step = ""
    lines = [f"{args.params}|after={after}|id={secrets.token_hex(8)}"]
    lines += [f"{size} {digest} {rel}" for size, digest, rel in outputs_of(base, args.outputs.split(), step)]
    atomic_write_text(stamps / f"{args.stage}.done", "\n".join(lines) + "\n")
    start_file.unlink(missing_ok=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanochat.pipeline")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("check", "status", "dag"):
        p = sub.add_parser(name)
        p.add_argument("--base", default="")
        p.add_argument("--stage", action="append", default=[])
    p = sub.choices["check"]
    p.add_argument("--redo", default="", help="the stages forced by redo-<stage> goals")
    p.add_argument("--home", default="")
    p.add_argument("--repo", default="")
    p.add_argument("--deletes", action="append", default=[], metavar="NAME=PATH", help="a path a goal deletes")
    p = sub.add_parser("lock")
    p.add_argument("base_dir")
    p.add_argument("pid", type=int)
    p.add_argument("--stage", default="")
    p = sub.add_parser("finish")
    p.add_argument("base")
    p.add_argument("stage")
    p.add_argument("params", help="the stage's semantic parameters (the Makefile's <stage>_params)")
    p.add_argument("--deps", default="")
    p.add_argument("--outputs", default="", help="files or directories under the base dir; {step}: its final step")
    args = parser.parse_args(argv)
    try:
        return {"check": cmd_check, "status": cmd_status, "dag": cmd_dag, "lock": cmd_lock,
                "finish": cmd_finish}[args.cmd](args)
    except UserError as exc:  # one line for make's output, like every entry point (common.run_main)
        print(exc if args.cmd == "check" else f"error: {exc}", file=sys.stderr, flush=True)  # check: make says it
        return 2
    except OSError as exc:  # a read-only remount or a full disk under the lock or a stamp
        if fs_error(exc) is None:
            raise
        print(f"error: {fs_error(exc)}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
