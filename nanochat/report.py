"""The run report: one markdown section per stage, assembled into report/report.md.

Each stage writes its own section file (report/<slug>.md) when it finishes, so a partial rebuild
rewrites only the sections of the stages that reran; `generate` stitches the sections that exist
into report.md with a header describing the toolchain. Only rank 0 writes anything.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from nanochat.common import atomic_write_text, get_base_dir, is_rank0
from nanochat.pipeline import read_stamp

# Section titles in pipeline order: (title, stage that writes it).
SECTIONS = [
    ("Tokenizer training", "tokenizer"),
    ("Tokenizer evaluation", "tokenizer"),
    ("Base model training", "pretrain"),
    ("Base model loss", "pretrain"),
    ("Base model evaluation", "pretrain"),
    ("Midtraining", "midtrain"),
    ("Chat evaluation mid", "midtrain"),
    ("Chat SFT", "sft"),
    ("Chat evaluation sft", "sft"),
    ("Chat RL", "rl"),
    ("Chat evaluation rl", "rl"),
]
# stages a default pipeline does not run (`RL=1` adds rl): their absent sections are not "missing"
OPTIONAL_STAGES = {"rl"}

# Metrics pulled into the summary table: (row label, section title, key in that section).
SUMMARY_METRICS = ["CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "ChatCORE"]


def slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value)


class Report:
    def __init__(self, base_dir: Path | None = None):
        self.dir = Path(base_dir or get_base_dir()) / "report"

    def section_path(self, title: str) -> Path:
        return self.dir / f"{slugify(title)}.md"

    def log(self, section: str, data: list) -> Path | None:
        """Write (replace) one section. `data` items: str (verbatim markdown) or dict (bullet list).

        The metrics are also kept machine-readable in a JSON sidecar for the summary table.
        """
        if not is_rank0():
            return None
        lines = [f"## {section}", f"timestamp: {_dt.datetime.now().strftime('%Y-%m-%d %H:%M:%S')}", ""]
        metrics: dict = {}
        for item in data:
            if isinstance(item, dict):
                for k, v in item.items():
                    lines.append(f"- {k}: {_fmt(v)}")
                    if isinstance(v, (int, float, str, bool)) or v is None:
                        metrics[k] = v
            elif item:
                lines.append(str(item))
        lines.append("")
        path = self.section_path(section)
        atomic_write_text(path, "\n".join(lines))
        atomic_write_text(path.with_suffix(".json"), json.dumps(metrics, indent=1, default=str))
        return path

    def save_curve(self, name: str, xs, ys, title: str = "", ylabel: str = "loss") -> Path | None:
        """A dependency-free SVG line plot (report/<name>.svg)."""
        if not is_rank0() or len(xs) == 0:
            return None
        path = self.dir / f"{name}.svg"
        atomic_write_text(path, svg_line_plot(list(xs), list(ys), title or name, ylabel))
        return path


def svg_line_plot(xs, ys, title, ylabel, width=640, height=360) -> str:
    pad_l, pad_r, pad_t, pad_b = 60, 20, 30, 40
    x0, x1 = min(xs), max(xs)
    finite = [y for y in ys if math.isfinite(y)]
    y0, y1 = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1

    def sx(x):
        return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

    def sy(y):
        return height - pad_b - (y - y0) / (y1 - y0) * (height - pad_t - pad_b)

    pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys) if math.isfinite(y))
    ticks = []
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        ticks.append(f'<text x="{pad_l - 6}" y="{sy(yv) + 4:.1f}" font-size="11" text-anchor="end">{yv:.3g}</text>')
        xv = x0 + (x1 - x0) * i / 4
        ticks.append(f'<text x="{sx(xv):.1f}" y="{height - pad_b + 16}" font-size="11" text-anchor="middle">{xv:.0f}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n'
        f'<text x="{width / 2}" y="18" font-size="14" text-anchor="middle">{title}</text>\n'
        f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" stroke="black"/>\n'
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="black"/>\n'
        + "\n".join(ticks) +
        f'\n<text x="14" y="{height / 2}" font-size="12" transform="rotate(-90 14 {height / 2})" text-anchor="middle">{ylabel}</text>\n'
        f'<text x="{width / 2}" y="{height - 6}" font-size="12" text-anchor="middle">step</text>\n'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{pts}"/>\n</svg>\n'
    )


def get_report() -> Report:
    return Report()


# ----------------------------------------------------------------------------- assembly

def _toolchain() -> list[str]:
    lines = [f"- python: {sys.version.split()[0]} ({sys.executable})", f"- platform: {platform.platform()}"]
    try:
        import torch
        lines.append(f"- torch: {torch.__version__} from {Path(torch.__file__).parent}")
        lines.append(f"- torch CUDA: {torch.version.cuda or 'none (CPU build)'}")
        if torch.cuda.is_available():
            lines.append(f"- torch arch list: {' '.join(torch.cuda.get_arch_list())}")
            for i in range(torch.cuda.device_count()):
                cap = torch.cuda.get_device_capability(i)
                lines.append(f"- GPU {i}: {torch.cuda.get_device_name(i)} (sm_{cap[0]}{cap[1]})")
        else:
            lines.append("- GPU: none")
    except Exception as exc:  # a report must still assemble without torch
        lines.append(f"- torch: unavailable ({exc})")
    if os.environ.get("IN_NIX_SHELL"):
        lines.append(f"- nix shell: {os.environ.get('IN_NIX_SHELL')} (torch store path above)")
    try:
        root = Path(__file__).resolve().parent.parent
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        lines.append(f"- git: {rev or 'unknown'}{' (dirty)' if dirty else ''}")
    except Exception:
        lines.append("- git: unknown")
    return lines


def _stage_params(base: Path) -> list[str]:
    stamps = base / ".stamps"
    out = []
    for stage in ("data", "tokenizer", "pretrain", "midtrain", "sft", "rl"):
        rec = read_stamp(stamps / f"{stage}.done")
        if rec is not None:
            wall = stamps / f"{stage}.wall"
            took = f" ({float(wall.read_text()):.0f} s)" if wall.exists() else ""
            out.append(f"- {stage}{took}: `{rec.params}`")
    return out


def _metrics_table(report: Report) -> list[str]:
    cols = [("BASE", "Base model evaluation"), ("MID", "Chat evaluation mid"), ("SFT", "Chat evaluation sft")]
    if report.section_path("Chat evaluation rl").with_suffix(".json").exists():  # only after an RL stage
        cols.append(("RL", "Chat evaluation rl"))
    data = {}
    for col, title in cols:
        p = report.section_path(title).with_suffix(".json")
        data[col] = json.loads(p.read_text()) if p.exists() else {}
    rows = ["| Metric | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for metric in SUMMARY_METRICS:
        vals = [data[c].get(metric) for c, _ in cols]
        if all(v is None for v in vals):
            continue
        rows.append(f"| {metric} | " + " | ".join("-" if v is None else _fmt(v) for v in vals) + " |")
    return rows if len(rows) > 2 else ["(no evaluation sections yet)"]


def generate(base_dir: Path | None = None) -> Path:
    report = Report(base_dir)
    base = report.dir.parent
    parts = ["# nanochat training report", "", f"generated: {_dt.datetime.now().strftime('%Y-%m-%d %H:%M:%S')}",
             "", "## Toolchain", *_toolchain(), "", "## Stage parameters and wall time (as recorded by the pipeline)",
             *(_stage_params(base) or ["(no stage stamps found)"]), "", "## Summary", *_metrics_table(report), ""]
    missing = []
    for title, stage in SECTIONS:
        p = report.section_path(title)
        if p.exists():
            parts.append(p.read_text())
        elif stage not in OPTIONAL_STAGES:
            missing.append(f"{title} ({stage})")
    curves = sorted(report.dir.glob("*.svg"))
    if curves:
        parts += ["## Loss curves", ""] + [f"![{c.stem}]({c.name})" for c in curves] + [""]
    if missing:
        parts += ["## Missing sections", ""] + [f"- {m}" for m in missing] + [""]
    out = report.dir / "report.md"
    atomic_write_text(out, "\n".join(parts))
    return out


def main() -> None:
    import argparse
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Assemble report/report.md from the per-stage sections")
    parser.add_argument("command", choices=["generate"])
    args = parser.parse_args()
    if args.command == "generate":
        print(generate())


if __name__ == "__main__":
    from nanochat.common import run_main
    run_main(main)
