"""The CORE metric: in-context-learning accuracy over the DCLM "core" tasks, centred and averaged.

Per task type (data rows as described in `nanochat.eval_bundle`):
- multiple_choice: one context, several continuations -> pick the continuation with the lowest mean
  cross-entropy over its own tokens;
- schema: several contexts, one continuation -> pick the context under which the continuation has
  the lowest mean cross-entropy;
- language_modeling: one context + continuation -> correct iff greedy argmax reproduces every
  continuation token.

Prompt = few-shot examples (fully answered, joined by "\\n") + the item, rendered by plain string
concatenation: `context + continuation_delimiter + continuation`. Few-shot examples are drawn from
the same task with a per-item seeded RNG and never include the item itself. Every candidate of one
item goes through the model in one forward (chunked by `device_batch_size` if given); sequences start
with BOS and are cropped from the left (after the BOS) to the model's sequence length.

Accuracy is centred on the task's random baseline b (percent): (acc - b/100) / (1 - b/100); CORE is
the mean centred accuracy over the tasks that ran. With fewer than 22 tasks the number is reported as
"CORE over N/22 tasks (not comparable to the official number)".
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nanochat.common import print0
from nanochat.eval_bundle import LM, MC, N_CORE, SCHEMA, Bundle, CoreTask, TaskData, ensure_bundle, how_to_enable, load_bundle

FEWSHOT_SEED = 1234          # few-shot draw for item i uses random.Random(FEWSHOT_SEED + i)
SUBSAMPLE_SEED = 1337        # --max-per-task: shuffle(range(n)) with this seed, take the first N
EXAMPLE_SEPARATOR = "\n"     # between few-shot examples (the ICL convention of the official files)


# ----------------------------------------------------------------------------- maths

def centered(accuracy: float, random_baseline_pct: float) -> float:
    """(acc - b) / (1 - b) with b = baseline/100: 0 at chance, 1 at perfect."""
    b = random_baseline_pct / 100.0
    return (accuracy - b) / (1.0 - b)


def core_score(centered_by_task: dict[str, float]) -> float | None:
    vals = list(centered_by_task.values())
    return sum(vals) / len(vals) if vals else None


# ----------------------------------------------------------------------------- prompts

def sample_fewshot(n_items: int, idx: int, k: int, seed: int = FEWSHOT_SEED) -> list[int]:
    """k distinct item indices != idx, deterministic per (seed, idx); fewer if the task is tiny."""
    k = min(int(k), n_items - 1)
    if k <= 0:
        return []
    rng = random.Random(seed + idx)
    picks = rng.sample(range(n_items - 1), k)       # O(k), no list of n items
    return [p + 1 if p >= idx else p for p in picks]


def answered_example(task: CoreTask, item: dict) -> str:
    d = task.continuation_delimiter
    if task.task_type == MC:
        return item["query"] + d + item["choices"][item["gold"]]
    if task.task_type == SCHEMA:
        return item["context_options"][item["gold"]] + d + item["continuation"]
    return item["context"] + d + item["continuation"]


def render_requests(task: CoreTask, item: dict, shots: list[dict]) -> tuple[list[tuple[str, str]], int | None]:
    """-> ([(context text, continuation text) per candidate], gold index or None for LM)."""
    prefix = "".join(answered_example(task, s) + EXAMPLE_SEPARATOR for s in shots)
    d = task.continuation_delimiter
    if task.task_type == MC:
        return [(prefix + item["query"] + d, c) for c in item["choices"]], int(item["gold"])
    if task.task_type == SCHEMA:
        return [(prefix + c + d, item["continuation"]) for c in item["context_options"]], int(item["gold"])
    if task.task_type == LM:
        return [(prefix + item["context"] + d, item["continuation"])], None
    raise ValueError(f"unknown task type {task.task_type!r}")


def _move_trailing_spaces(context: str, continuation: str) -> tuple[str, str]:
    """'Answer: ' + 'Paris' -> 'Answer:' + ' Paris': BPE vocabularies attach the space to the word."""
    stripped = context.rstrip(" ")
    return stripped, context[len(stripped):] + continuation


def tokenize_requests(tokenizer, pairs: list[tuple[str, str]], bos: int) -> list[tuple[list[int], int, int]]:
    """-> [(ids, start, end)] with ids = [bos] + context + continuation; ids[start:end] = continuation.

    Context and continuation are tokenized separately (so every candidate of a schema item scores the
    very same continuation tokens, and every candidate of a multiple-choice item the same context).
    """
    split = [_move_trailing_spaces(c, x) for c, x in pairs]
    texts = sorted({t for pair in split for t in pair})
    enc = dict(zip(texts, tokenizer.encode(texts)))
    out = []
    for ctx, cont in split:
        c_ids, x_ids = enc[ctx], enc[cont]
        ids = [bos] + list(c_ids) + list(x_ids)
        out.append((ids, 1 + len(c_ids), len(ids)))
    return out


def crop_left(ids: list[int], start: int, end: int, max_len: int | None) -> tuple[list[int], int, int]:
    """Keep the BOS and the last max_len-1 tokens; shift the continuation span accordingly."""
    if max_len is None or len(ids) <= max_len:
        return ids, start, end
    if max_len < 2:
        raise ValueError("max_len must be at least 2 (BOS + one token)")
    drop = len(ids) - max_len
    ids = ids[:1] + ids[1 + drop:]
    return ids, max(1, start - drop), end - drop


# ----------------------------------------------------------------------------- model plumbing

def _unwrap(model):
    """The plain module (no DDP wrapper -- its forward may sync buffers across ranks, and ranks run
    different numbers of forwards here -- and no torch.compile wrapper, which would recompile for
    every sequence length)."""
    m = model
    for _ in range(4):
        inner = getattr(m, "module", None) or getattr(m, "_orig_mod", None)
        if inner is None:
            break
        m = inner
    return m


def model_max_len(model) -> int | None:
    cfg = getattr(_unwrap(model), "config", None)
    n = getattr(cfg, "sequence_len", None)
    return int(n) if n else None


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def score_sequences(model, seqs: list[tuple[list[int], int, int]], device, pad_id: int,
                    batch_size: int | None = None) -> list[tuple[float, bool]]:
    """-> [(mean cross-entropy of ids[start:end], greedy argmax reproduces ids[start:end])]."""
    device = torch.device(device)
    out: list[tuple[float, bool]] = []
    bs = len(seqs) if not batch_size or batch_size <= 0 else int(batch_size)
    for i in range(0, len(seqs), bs):
        chunk = seqs[i:i + bs]
        T = max(len(ids) for ids, _, _ in chunk)
        x = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        for r, (ids, _, _) in enumerate(chunk):
            x[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        x = x.to(device)
        with _autocast(device):
            logits = model(x)
        for r, (ids, s, e) in enumerate(chunk):
            if e <= s:
                out.append((math.inf, False))
                continue
            lg = logits[r, s - 1:e - 1].float()
            tgt = x[r, s:e]
            ce = F.cross_entropy(lg, tgt, reduction="mean").item()
            greedy = bool((lg.argmax(dim=-1) == tgt).all().item())
            out.append((ce, greedy))
    return out


def evaluate_item(model, tokenizer, task: CoreTask, items: list[dict], idx: int, device, max_len: int | None,
                  bos: int, batch_size: int | None = None) -> bool:
    shots = [items[j] for j in sample_fewshot(len(items), idx, task.num_fewshot)]
    pairs, gold = render_requests(task, items[idx], shots)
    seqs = [crop_left(ids, s, e, max_len) for ids, s, e in tokenize_requests(tokenizer, pairs, bos)]
    scores = score_sequences(model, seqs, device, pad_id=bos, batch_size=batch_size)
    if task.task_type == LM:
        return scores[0][1]
    losses = [ce for ce, _ in scores]
    pred = min(range(len(losses)), key=lambda j: (losses[j], j))
    return pred == gold


def item_order(n_items: int, max_per_task: int = -1, seed: int = SUBSAMPLE_SEED) -> list[int]:
    order = list(range(n_items))
    if max_per_task is not None and 0 < max_per_task < n_items:
        random.Random(seed).shuffle(order)
        order = sorted(order[:max_per_task])
    return order


def _dist():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def evaluate_task(model, tokenizer, task: CoreTask, items: list[dict], device, max_per_task: int = -1,
                  batch_size: int | None = None, max_len: int | None = None) -> tuple[int, int]:
    """-> (correct, total) over the (sub-sampled) items, summed over all ranks under DDP."""
    dist = _dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    bos = tokenizer.get_bos_token_id()
    order = item_order(len(items), max_per_task)
    correct = 0
    mine = order[rank::world]
    for idx in mine:
        correct += int(evaluate_item(model, tokenizer, task, items, idx, device, max_len, bos, batch_size))
    if dist:
        t = torch.tensor([correct, len(mine)], dtype=torch.long, device=device)
        dist.all_reduce(t)
        return int(t[0].item()), int(t[1].item())
    return correct, len(mine)


# ----------------------------------------------------------------------------- the metric

def _shared_bundle(log) -> Bundle:
    """Rank 0 fetches/builds the data; every rank then evaluates the same task list."""
    dist = _dist()
    if dist is None:
        return ensure_bundle(log=log)
    b = ensure_bundle(log=log) if dist.get_rank() == 0 else None
    labels = [list(b.tasks) if b is not None else None]
    dist.broadcast_object_list(labels, src=0)
    if b is None:
        from nanochat.eval_bundle import bundle_dir
        b = load_bundle(bundle_dir()) if labels[0] else Bundle(root=None, kind="none", description="no data")
        b.tasks = {k: v for k, v in b.tasks.items() if k in set(labels[0] or [])}
    return b


def coverage_note(n_ran: int, bundle: Bundle, max_per_task: int, any_subset: bool) -> str:
    if n_ran == 0:
        return f"CORE: not available offline ({how_to_enable()})"
    parts = []
    if n_ran < N_CORE:
        parts.append(f"CORE over {n_ran}/{N_CORE} tasks (not comparable to the official number)")
    else:
        parts.append(f"CORE over {n_ran}/{N_CORE} tasks")
    if bundle.kind == "offline":
        parts.append("offline data rendered with nanochat's own prompts")
    if any_subset:
        parts.append("some tasks are subsets")
    if max_per_task is not None and max_per_task > 0:
        parts.append(f"at most {max_per_task} items per task")
    return "; ".join(parts)


def evaluate_core(model, tokenizer, device, max_per_task: int = -1, device_batch_size: int | None = None,
                  bundle: Bundle | str | Path | None = None, log=print0) -> dict:
    """Evaluate every CORE task the available data covers.

    Returns {"CORE": float | None, "centered": {label: float}, "results": {label: {...}},
    "n_tasks", "n_core", "note", "missing": {label: why}, "coverage": [lines], "bundle": description,
    "max_per_task", "seconds"}. Never raises because data is missing: "CORE" is then None and
    "note" says how to enable it.
    """
    t_start = time.time()
    device = torch.device(device)
    if bundle is None:
        bundle = _shared_bundle(log)
    elif not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    net = _unwrap(model)
    max_len = model_max_len(model)
    was_training = net.training
    net.eval()
    results: dict[str, dict] = {}
    cent: dict[str, float] = {}
    try:
        for label, td in bundle.tasks.items():
            t0 = time.time()
            items = td.read_items()
            correct, total = evaluate_task(net, tokenizer, td.task, items, device, max_per_task,
                                           device_batch_size, max_len)
            acc = correct / total if total else 0.0
            c = centered(acc, td.task.random_baseline)
            cent[label] = c
            results[label] = {"accuracy": acc, "centered": c, "correct": correct, "total": total,
                              "items_in_file": len(items), "random_baseline": td.task.random_baseline,
                              "type": td.task.task_type, "shots": td.task.num_fewshot,
                              "source": td.source, "subset": td.subset, "note": td.note,
                              "seconds": time.time() - t0}
            if log:
                log(f"{label:<34} acc {acc:.4f}  centred {c:+.4f}  ({correct}/{total}, {time.time() - t0:.1f}s)")
    finally:
        if was_training:
            net.train()
    core = core_score(cent)
    any_subset = any(r["subset"] for r in results.values())
    note = coverage_note(len(results), bundle, max_per_task, any_subset)
    return {"CORE": core, "centered": cent, "results": results, "n_tasks": len(results), "n_core": N_CORE,
            "note": note, "missing": dict(bundle.missing), "coverage": bundle.coverage_lines(),
            "bundle": bundle.description, "bundle_kind": bundle.kind, "max_per_task": max_per_task,
            "seconds": time.time() - t_start}
