"""Helpers the Makefile calls: `status` (why is a stage stale), `dag` (Mermaid graph), `lock`,
`finish` (write a stage's stamp).

Standard library only (nanochat.common is too) and never imports torch: `make status` must
answer instantly and must never create or modify anything under the base dir (it only reads the stamps).

A stage is given to `status`/`dag` as "name|dep1 dep2|k1=v1;k2=v2" — the same lists and parameter
strings the Makefile's rules use, so there is a single definition of the DAG (the Makefile's).

A stamp (`<stage>.done`) is one line, `<params>|after=<dep>@<id>,...|id=<id>`: the semantic
parameters the stage ran with, the ids of the upstream stamps it was built on, and a fresh id of its
own. Staleness is decided on this content alone (never on mtimes), by make at parse time and, with
the same rule, by `evaluate` below.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nanochat.common import UserError, atomic_write_text, ensure_base_dir


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


def read_stamp(path: Path) -> StampRecord | None:
    """The parsed stamp, or None when there is none."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    body, sep, stamp_id = text.rpartition("|id=")
    if not sep:  # not a stamp this version wrote: treated as recording nothing usable
        return StampRecord(params=text, after={}, id="")
    params, _, after = body.rpartition("|after=")
    deps = dict(item.split("@", 1) for item in after.split(",") if "@" in item)
    return StampRecord(params=params, after=deps, id=stamp_id)


def evaluate(stages: list[Stage], stamps: Path, outputs: dict[str, Path] | None = None) -> list[Stage]:
    """Fill in each stage's reasons for being stale, mirroring make's decision (Makefile `is_stale`).

    `outputs` names file targets other than the stamp (the report): missing, make rebuilds them."""
    by_name = {s.name: s for s in stages}
    records = {s.name: read_stamp(stamps / f"{s.name}.done") for s in stages}
    for s in stages:  # stages arrive in DAG order
        rec = records[s.name]
        output = (outputs or {}).get(s.name)
        if output is not None and not output.exists():
            s.reasons.append(f"its output {output} is missing")
        elif rec is None:
            s.reasons.append("started but never finished (failed or interrupted)"
                             if (stamps / f"{s.name}.start").exists() else "never built (no completion stamp)")
        elif rec.params != s.params:
            s.reasons += [f"parameter {c}" for c in param_changes(rec.params, s.params)] or ["parameters changed"]
        for d in s.deps:
            dep, dep_rec = by_name.get(d), records.get(d)
            if dep is not None and dep.reasons:
                s.reasons.append(f"upstream stage '{d}' will rerun")
            elif rec is not None and dep_rec is not None and rec.after.get(d) != dep_rec.id:
                s.reasons.append(f"upstream stage '{d}' was rebuilt since")
    return stages


def cmd_status(args) -> int:
    outputs = dict(item.split("=", 1) for item in args.output)
    stages = evaluate([parse_stage(x) for x in args.stage], Path(args.stamps),
                      {name: Path(path) for name, path in outputs.items()})
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
    stamps = Path(args.stamps)
    start_file = stamps / f"{args.stage}.start"
    try:
        start = float(start_file.read_text())
        (stamps / f"{args.stage}.wall").write_text(f"{time.time() - start:.1f}\n")
    except (OSError, ValueError):
        pass  # timing is informative only: never fail a finished stage over it
    # no final newline: see the Makefile's `stamp_text`
    atomic_write_text(stamps / f"{args.stage}.done", f"{args.record}|id={secrets.token_hex(8)}")
    start_file.unlink(missing_ok=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanochat.pipeline")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("status")
    p.add_argument("--stamps", required=True)
    p.add_argument("--stage", action="append", default=[])
    p.add_argument("--output", action="append", default=[], metavar="STAGE=PATH")
    p = sub.add_parser("dag")
    p.add_argument("--stage", action="append", default=[])
    p = sub.add_parser("lock")
    p.add_argument("base_dir")
    p.add_argument("pid", type=int)
    p.add_argument("--stage", default="")
    p = sub.add_parser("finish")
    p.add_argument("stamps")
    p.add_argument("stage")
    p.add_argument("record", help="the stamp's content less its id (the Makefile's `record`)")
    args = parser.parse_args(argv)
    try:
        return {"status": cmd_status, "dag": cmd_dag, "lock": cmd_lock, "finish": cmd_finish}[args.cmd](args)
    except UserError as exc:  # one line for make's output, like every entry point (common.run_main)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
