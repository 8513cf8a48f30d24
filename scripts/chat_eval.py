"""Evaluate a chat model (mid / sft / rl / base checkpoint) on the chat tasks and write the
"Chat evaluation <source>" report section.

    python -m scripts.chat_eval -i sft -g d20 -s 650
    python -m scripts.chat_eval -i mid -a "GSM8K|HumanEval" -x 100
    torchrun --nproc_per_node=8 -m scripts.chat_eval -i sft -g d20 -s 650

Categorical tasks (MMLU, ARC-Easy, ARC-Challenge): the prompt ends with <|assistant_start|>; the
prediction is the answer letter whose token has the highest logit at that position (only the letter
tokens compete). Generative tasks (GSM8K, HumanEval, SpellingBee): completions are sampled with the
Engine (calculator tool enabled); a problem passes if any of the -n samples passes (pass@n).
HumanEval code runs only in nanochat.execution's sandbox.

ChatCORE = mean over the evaluated tasks of (accuracy - baseline) / (1 - baseline), baseline 0.25 for
the 4-way multiple-choice tasks and 0 for the generative ones. A task whose data is unavailable is
reported as such (with the reason) and left out of ChatCORE, whose task count is reported.
Problems are dealt out over ranks under torchrun and the counts all-reduced.
"""
from __future__ import annotations

import argparse
import contextlib
import time

from nanochat.common import UserError, compute_cleanup, compute_init, print0, run_main

ALL_TASKS = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee"]
SECTIONS = {"base": "Chat evaluation base", "mid": "Chat evaluation mid", "sft": "Chat evaluation sft",
            "rl": "Chat evaluation rl"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(allow_abbrev=False, description="Evaluate a chat model on ARC, MMLU, GSM8K, HumanEval, SpellingBee")
    ap.add_argument("-i", "--source", choices=["base", "mid", "sft", "rl"], default="sft", help="which checkpoints")
    ap.add_argument("-a", "--task-name", default=None,
                    help=f"tasks separated by | or , (default: all of {', '.join(ALL_TASKS)})")
    ap.add_argument("-x", "--max-problems", type=int, default=-1, help="at most N problems per task (-1 = all)")
    ap.add_argument("-g", "--model-tag", default=None, help="model tag (default: the only one there)")
    ap.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: newest complete)")
    ap.add_argument("-t", "--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    ap.add_argument("-k", "--top-k", type=int, default=50, help="top-k for sampling (0 = no limit)")
    ap.add_argument("-b", "--batch-size", type=int, default=8, help="prompts per forward pass (categorical)")
    ap.add_argument("-n", "--num-samples", type=int, default=1, help="samples per generative problem (pass@n)")
    ap.add_argument("-m", "--max-new-tokens", type=int, default=512, help="generation budget per sample")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device-type", default="", help="cuda|cpu|mps (default: autodetect)")
    ap.add_argument("--no-report", action="store_true", help="do not write the report section")
    return ap


def parse_task_names(spec: str | None) -> list[str]:
    if not spec:
        return list(ALL_TASKS)
    out = []
    for raw in spec.replace(",", "|").split("|"):
        name = raw.strip()
        if not name:
            continue
        match = [t for t in ALL_TASKS if t.lower() == name.lower()]
        if not match:
            raise UserError(f"unknown task {name!r} in -a: choose from {', '.join(ALL_TASKS)}")
        if match[0] not in out:
            out.append(match[0])
    if not out:
        raise UserError("-a names no task")
    return out


class Evaluator:
    """Both kinds of chat task on this rank's share of the problems: categorical through
    nanochat.chat_eval (the evaluator chat_sft's metrics use too), generative with the Engine."""

    def __init__(self, model, tokenizer, device, rank: int = 0, world: int = 1):
        from nanochat.engine import Engine
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.rank, self.world = rank, world
        self.engine = Engine(model, tokenizer)
        self.max_len = model.config.sequence_len

    def autocast(self):
        import torch
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _indices(self, n: int) -> range:
        return range(self.rank, n, self.world)

    def categorical(self, task, n: int, batch_size: int) -> tuple[int, int]:
        from nanochat.chat_eval import categorical_counts
        return categorical_counts(self.model, self.tokenizer, task, self._indices(n), batch_size, self.autocast)

    def generative(self, task, n: int, num_samples: int, max_new_tokens: int, temperature: float,
                   top_k: int | None, seed: int) -> tuple[int, int]:
        from nanochat.chat_eval import completion_prompt
        correct = total = 0
        for i in self._indices(n):
            conv = task[i]
            prompt = completion_prompt(self.tokenizer, conv, self.max_len)
            with self.autocast():
                results, _ = self.engine.generate_batch(prompt, num_samples=num_samples, max_tokens=max_new_tokens,
                                                        temperature=temperature, top_k=top_k, seed=seed + i)
            completions = [self.tokenizer.decode(r[len(prompt):]) for r in results]
            correct += int(any(task.evaluate(conv, c) for c in completions))
            total += 1
        return correct, total


def chatcore(accuracies: dict) -> float | None:
    from nanochat.tasks.mixture import BASELINES
    if not accuracies:
        return None
    centred = [(acc - BASELINES[name]) / (1.0 - BASELINES[name]) for name, acc in accuracies.items()]
    return sum(centred) / len(centred)


def evaluate(args, model, tokenizer, meta, device, rank, world) -> dict:
    from nanochat.chat_eval import all_reduce_counts
    from nanochat.tasks import TaskUnavailable, load_eval_task
    ev = Evaluator(model, tokenizer, device, rank, world)
    top_k = args.top_k if args.top_k and args.top_k > 0 else None
    results: dict = {}
    unavailable: dict = {}
    for name in parse_task_names(args.task_name):
        try:
            task = load_eval_task(name)
        except TaskUnavailable as exc:
            unavailable[name] = str(exc)
            print0(f"{name}: skipped, {exc}")
            continue
        n = len(task) if args.max_problems is None or args.max_problems < 0 else min(len(task), args.max_problems)
        if n == 0:
            unavailable[name] = f"{name}: no problems"
            continue
        t0 = time.time()
        if task.eval_type == "categorical":
            c, t = ev.categorical(task, n, max(1, args.batch_size))
        else:
            c, t = ev.generative(task, n, max(1, args.num_samples), args.max_new_tokens, args.temperature, top_k,
                                 args.seed)
        c, t = all_reduce_counts(c, t, device)
        acc = c / t if t else 0.0
        results[name] = {"accuracy": acc, "correct": c, "total": t, "source": task.source,
                         "type": task.eval_type, "seconds": time.time() - t0}
        print0(f"{name}: {c}/{t} = {100 * acc:.2f}% ({task.eval_type}, {time.time() - t0:.1f}s) "
               f"[source: {task.source}]")
    accs = {k: v["accuracy"] for k, v in results.items()}
    score = chatcore(accs)
    if score is not None:
        print0(f"ChatCORE: {score:.4f} over {len(accs)}/{len(ALL_TASKS)} tasks")
    return {"results": results, "unavailable": unavailable, "ChatCORE": score}


def report_items(args, out: dict, meta: dict) -> list:
    metrics: dict = {"source": args.source, "model tag": args.model_tag or meta.get("model_tag", "?"),
                     "step": meta.get("step", args.step), "max problems": args.max_problems,
                     "temperature": args.temperature, "top-k": args.top_k, "num samples": args.num_samples}
    for name, r in out["results"].items():
        metrics[name] = float(r["accuracy"])
    if out["ChatCORE"] is not None:
        metrics["ChatCORE"] = float(out["ChatCORE"])
        metrics["ChatCORE tasks"] = f"{len(out['results'])}/{len(ALL_TASKS)}"
    lines: list = [metrics]  # (Report.log drops empty strings: blank lines are written as "\n" prefixes)
    if out["results"]:
        lines += ["\n| task | type | accuracy | correct | source |", "|---|---|---|---|---|"]
        for name, r in out["results"].items():
            lines.append(f"| {name} | {r['type']} | {r['accuracy']:.4f} | {r['correct']}/{r['total']} | "
                         f"{r['source']} |")
    if out["unavailable"]:
        lines.append("\nNot evaluated:")
        lines += [f"- {msg}" for msg in out["unavailable"].values()]
    if out["ChatCORE"] is not None and len(out["results"]) < len(ALL_TASKS):
        lines.append(f"\nChatCORE here averages only {', '.join(out['results'])}; it is not comparable with a "
                     f"ChatCORE over all {len(ALL_TASKS)} tasks.")
    return lines


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    parse_task_names(args.task_name)  # validate before loading anything
    if args.num_samples > 1 and args.temperature == 0:
        print0("note: -n > 1 with -t 0 draws identical greedy samples")
    _, rank, _, world, device = compute_init(args.device_type, seed=args.seed)
    try:
        from nanochat.checkpoint_manager import load_model
        model, tokenizer, meta = load_model(args.source, device, "eval", args.model_tag, args.step)
        meta = dict(meta)
        print0(f"evaluating {args.source} model (tag {args.model_tag or 'auto'}, step {meta.get('step')}) on {device}")
        out = evaluate(args, model, tokenizer, meta, device, rank, world)
        if rank == 0 and not args.no_report:
            from nanochat.report import Report
            path = Report().log(SECTIONS[args.source], report_items(args, out, meta))
            print0(f"report section written: {path}")
    finally:
        compute_cleanup()


if __name__ == "__main__":
    run_main(main)
