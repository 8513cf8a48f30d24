"""The CORE metric: in-context-learning accuracy over the DCLM "core" tasks, centred and averaged.

Per task type (data rows as described in `nanochat.core_tasks`):
- multiple_choice: one context, several continuations -> pick the continuation with the lowest mean
  cross-entropy over its own tokens;
- schema: several contexts, one continuation -> pick the context under which the continuation has
  the lowest mean cross-entropy;
- language_modeling: one context + continuation -> correct iff greedy argmax reproduces every
  continuation token.

Prompt = few-shot examples (fully answered, joined by "\\n") + the item, rendered by plain string
concatenation: `context + continuation_delimiter + continuation`. Few-shot examples are drawn from
the same task with a per-item seeded RNG and never include the item itself. Every candidate of one
item goes through the model in the same forward (chunked only if they alone exceed
`device_batch_size`); consecutive items share a forward up to `tokens_per_forward` padded tokens
(an eager model's per-forward overhead dominates short items). Sequences start with BOS and are
cropped from the left (after the BOS) to the model's sequence length; padding is on the right.

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
from nanochat.core_tasks import LM, MC, N_CORE, SCHEMA, Bundle, CoreTask, bundle_dir, load_bundle
from nanochat.eval_bundle import ensure_bundle, how_to_enable

FEWSHOT_SEED = 1234          # few-shot draw for item i uses random.Random(FEWSHOT_SEED + i)
SUBSAMPLE_SEED = 1337        # --max-per-task: shuffle(range(n)) with this seed, take the first N
EXAMPLE_SEPARATOR = "\n"     # between few-shot examples (the ICL convention of the official files)
TOKENS_PER_FORWARD = 8192    # padded tokens per forward when several items share one (logits: x vocab x 4 B)


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


def _ctx(context: str, delimiter: str) -> str:
    """context + delimiter, without doubling the space when the data already carries one."""
    if delimiter.startswith(" "):
        context = context.rstrip(" ")
    return context + delimiter


def _cont(continuation: str, delimiter: str) -> str:
    return continuation.lstrip(" ") if delimiter.endswith(" ") else continuation


def answered_example(task: CoreTask, item: dict) -> str:
    d = task.continuation_delimiter
    if task.task_type == MC:
        return _ctx(item["query"], d) + _cont(item["choices"][item["gold"]], d)
    if task.task_type == SCHEMA:
        return _ctx(item["context_options"][item["gold"]], d) + _cont(item["continuation"], d)
    return _ctx(item["context"], d) + _cont(item["continuation"], d)


def render_requests(task: CoreTask, item: dict, shots: list[dict]) -> tuple[list[tuple[str, str]], int | None]:
    """-> ([(context text, continuation text) per candidate], gold index or None for LM)."""
    prefix = "".join(answered_example(task, s) + EXAMPLE_SEPARATOR for s in shots)
    d = task.continuation_delimiter
    if task.task_type == MC:
        ctx = prefix + _ctx(item["query"], d)
        return [(ctx, _cont(c, d)) for c in item["choices"]], int(item["gold"])
    if task.task_type == SCHEMA:
        cont = _cont(item["continuation"], d)
        return [(prefix + _ctx(c, d), cont) for c in item["context_options"]], int(item["gold"])
    if task.task_type == LM:
        return [(prefix + _ctx(item["context"], d), _cont(item["continuation"], d))], None
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
        inner = getattr(m, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(m, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
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
def _forward_scores(model, seqs: list[tuple[list[int], int, int]], device: torch.device,
                    pad_id: int) -> list[tuple[float, bool]]:
    """One forward over right-padded rows -> [(mean CE of ids[s:e], greedy argmax == ids[s:e])]."""
    B = len(seqs)
    T = max(len(ids) for ids, _, _ in seqs)
    x = torch.full((B, T), pad_id, dtype=torch.long)
    rows, pos = [], []
    for r, (ids, s, e) in enumerate(seqs):
        x[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        rows.extend([r] * max(0, e - s))
        pos.extend(range(s - 1, e - 1))
    x = x.to(device)
    with _autocast(device):
        logits = model(x)
    rows_t = torch.tensor(rows, dtype=torch.long, device=device)
    pos_t = torch.tensor(pos, dtype=torch.long, device=device)
    lg = logits[rows_t, pos_t].float()                     # [N, V]: only the scored positions
    tgt = x[rows_t, pos_t + 1]
    ce = F.cross_entropy(lg, tgt, reduction="none")
    miss = (lg.argmax(dim=-1) != tgt).float()
    zeros = torch.zeros(B, dtype=torch.float32, device=device)
    ce_sum = zeros.index_add(0, rows_t, ce)
    n_tok = zeros.index_add(0, rows_t, torch.ones_like(ce))
    n_miss = zeros.index_add(0, rows_t, miss)
    ce_sum, n_tok, n_miss = ce_sum.tolist(), n_tok.tolist(), n_miss.tolist()
    out = []
    for r in range(B):
        if n_tok[r] == 0:
            out.append((math.inf, False))
        else:
            out.append((ce_sum[r] / n_tok[r], n_miss[r] == 0))
    return out


def score_sequences(model, seqs: list[tuple[list[int], int, int]], device, pad_id: int,
                    batch_size: int | None = None) -> list[tuple[float, bool]]:
    """[(mean cross-entropy of ids[start:end], greedy argmax reproduces ids[start:end])], at most
    batch_size rows per forward (None: all in one)."""
    device = torch.device(device)
    bs = len(seqs) if not batch_size or batch_size <= 0 else int(batch_size)
    out: list[tuple[float, bool]] = []
    for i in range(0, len(seqs), bs):
        out.extend(_forward_scores(model, seqs[i:i + bs], device, pad_id))
    return out


def prepare_item(tokenizer, task: CoreTask, items: list[dict], idx: int, max_len: int | None,
                 bos: int) -> tuple[list[tuple[list[int], int, int]], int | None]:
    """Few-shot prompt -> the item's candidate sequences (BOS-prefixed, left-cropped) and its gold index."""
    shots = [items[j] for j in sample_fewshot(len(items), idx, task.num_fewshot)]
    pairs, gold = render_requests(task, items[idx], shots)
    seqs = [crop_left(ids, s, e, max_len) for ids, s, e in tokenize_requests(tokenizer, pairs, bos)]
    return seqs, gold


def judge(task: CoreTask, scores: list[tuple[float, bool]], gold: int | None) -> bool:
    if task.task_type == LM:
        return scores[0][1]
    losses = [ce for ce, _ in scores]
    pred = min(range(len(losses)), key=lambda j: (losses[j], j))    # ties -> first candidate
    return pred == gold


def evaluate_item(model, tokenizer, task: CoreTask, items: list[dict], idx: int, device, max_len: int | None,
                  bos: int, batch_size: int | None = None) -> bool:
    """One item alone: all its candidates in one forward (chunked by batch_size if given)."""
    seqs, gold = prepare_item(tokenizer, task, items, idx, max_len, bos)
    return judge(task, score_sequences(model, seqs, device, pad_id=bos, batch_size=batch_size), gold)


def item_order(n_items: int, max_per_task: int = -1, seed: int = SUBSAMPLE_SEED) -> list[int]:
    order = list(range(n_items))
    if max_per_task is not None and 0 < max_per_task < n_items:
        random.Random(seed).shuffle(order)
        order = sorted(order[:max_per_task])
    return order


def _pack(prepared, max_rows: int | None, token_budget: int):
    """Group consecutive items into forwards: an item's candidates always share one forward; a group
    grows while rows <= max_rows and rows * longest <= token_budget (a lone oversized item still runs)."""
    group, rows, longest = [], 0, 0
    for entry in prepared:
        seqs = entry[1]
        n, t = len(seqs), max(len(ids) for ids, _, _ in seqs)
        fits = (max_rows is None or rows + n <= max_rows) and (rows + n) * max(longest, t) <= token_budget
        if group and not fits:
            yield group
            group, rows, longest = [], 0, 0
        group.append(entry)
        rows += n
        longest = max(longest, t)
    if group:
        yield group


def _dist():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def evaluate_task(model, tokenizer, task: CoreTask, items: list[dict], device, max_per_task: int = -1,
                  batch_size: int | None = None, max_len: int | None = None,
                  tokens_per_forward: int = TOKENS_PER_FORWARD) -> tuple[int, int]:
    """-> (correct, total) over the (sub-sampled) items, summed over all ranks under DDP.

    Several consecutive items share a forward (up to `tokens_per_forward` padded tokens, and at most
    `batch_size` rows when given); the candidates of one item are never split unless they alone
    exceed `batch_size`.
    """
    dist = _dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    device = torch.device(device)
    bos = tokenizer.get_bos_token_id()
    mine = item_order(len(items), max_per_task)[rank::world]
    correct = 0
    block = 256                      # items tokenized ahead of the forwards
    for b0 in range(0, len(mine), block):
        prepared = [(idx, *prepare_item(tokenizer, task, items, idx, max_len, bos)) for idx in mine[b0:b0 + block]]
        for group in _pack(prepared, batch_size, tokens_per_forward):
            if len(group) == 1:
                _, seqs, gold = group[0]
                correct += int(judge(task, score_sequences(model, seqs, device, bos, batch_size), gold))
                continue
            flat = [sq for _, seqs, _ in group for sq in seqs]
            scores = _forward_scores(model, flat, device, bos)
            k = 0
            for _, seqs, gold in group:
                correct += int(judge(task, scores[k:k + len(seqs)], gold))
                k += len(seqs)
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
                  bundle: Bundle | str | Path | None = None, log=print0,
                  tokens_per_forward: int = TOKENS_PER_FORWARD) -> dict:
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
                                           device_batch_size, max_len, tokens_per_forward)
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
