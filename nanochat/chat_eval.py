"""Multiple-choice ("categorical") accuracy of a chat model: the one evaluator behind
scripts/chat_eval.py (ARC, MMLU) and chat_sft's in-training metrics.

A categorical task's conversation carries `letters` (the choices) and its last assistant message
is the right letter. The prompt is the conversation rendered for completion (ending with
<|assistant_start|>), cropped to the model's context from the left (the choices and the answer
cue are at the end). The prediction is the letter whose token has the highest logit at the
prompt's last position; only the letter tokens compete. Prompts go through the model in batches,
padded on the right to a power-of-two width (dataloader.bucket_width: few shapes); with a causal
model the padding cannot change the logits read. Under torchrun each rank takes problems
rank, rank + world, ... and the counts are summed over ranks.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.distributed as dist

from nanochat.tasks.base import last_assistant_text


def completion_prompt(tokenizer, conversation, max_len: int | None) -> list[int]:
    """Token ids of `conversation` rendered for completion, keeping the last `max_len` tokens."""
    ids = tokenizer.render_for_completion(conversation)
    if max_len is not None and len(ids) > max_len:
        ids = ids[-max_len:]
    return ids


@torch.no_grad()
def categorical_counts(model, tokenizer, task, indices, batch_size: int = 8,
                       autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                       ) -> tuple[int, int]:
    """(correct, evaluated) over the problems `indices` of `task` on this process. Problems
    without `letters` are not categorical and are left out. `model` must accept variable shapes
    (pass the uncompiled module); its train/eval mode is restored afterwards."""
    from nanochat.dataloader import bucket_width
    seq_len = model.config.sequence_len
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    letter_ids: dict[str, int] = {}

    def letter_id(letter: str) -> int:
        if letter not in letter_ids:
            letter_ids[letter] = tokenizer.encode(letter)[0]
        return letter_ids[letter]

    correct = total = 0
    indices = list(indices)
    try:
        for s in range(0, len(indices), batch_size):
            convs = [c for c in (task[i] for i in indices[s:s + batch_size]) if c.get("letters")]
            if not convs:
                continue
            rows = [completion_prompt(tokenizer, c, seq_len) for c in convs]
            x = torch.full((len(rows), bucket_width(max(len(r) for r in rows), seq_len)),
                           tokenizer.get_bos_token_id(), dtype=torch.long)
            for r, ids in enumerate(rows):
                x[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            with autocast():
                logits = model(x.to(device))
            for r, (conv, ids) in enumerate(zip(convs, rows)):
                letters = conv["letters"]
                choices = torch.tensor([letter_id(l) for l in letters], device=logits.device)
                pick = letters[int(torch.argmax(logits[r, len(ids) - 1].index_select(0, choices)).item())]
                correct += int(pick == last_assistant_text(conv).strip())
                total += 1
    finally:
        if was_training:
            model.train()
    return correct, total


def all_reduce_counts(correct: int, total: int, device) -> tuple[int, int]:
    """The counts summed over every rank (unchanged without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return correct, total
    t = torch.tensor([correct, total], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t[0].item()), int(t[1].item())


def categorical_accuracy(model, tokenizer, task, rank: int = 0, world: int = 1, max_problems: int = -1,
                         batch_size: int = 8, autocast=contextlib.nullcontext) -> float:
    """Accuracy over the first `max_problems` problems (-1 = all), dealt out over the ranks; NaN
    when no problem was categorical. Every rank must call it (the counts are all-reduced)."""
    n = len(task) if max_problems is None or max_problems < 0 else min(len(task), max_problems)
    device = next(model.parameters()).device
    correct, total = categorical_counts(model, tokenizer, task, range(rank, n, world), batch_size, autocast)
    correct, total = all_reduce_counts(correct, total, device)
    return correct / total if total else float("nan")
