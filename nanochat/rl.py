"""Reinforcement learning on GSM8K: on-policy, GRPO-style, no KL term, no critic (scripts/chat_rl.py).

One optimizer step:

1. take --examples-per-step training problems (a fixed, seeded order over the train set, epoch after
   epoch); under torchrun each rank takes every world-th of them, so the ranks' rollouts differ;
2. sample --num-samples completions per problem with `nanochat.engine.Engine` (calculator tool on;
   one prefill per problem shared by its samples). Seeds depend on (--seed, step, problem), never on
   the rank or the process count, so a resumed run or another process count draws the same samples
   from the same weights;
3. reward = 1 when the final answer ("#### N") equals the reference (the task's own `evaluate`,
   nanochat.tasks.gsm8k), else 0; advantage = reward - mean reward of the problem's group;
4. loss = -sum(advantage * log p(token)) over the tokens the model SAMPLED (engine mask 1: the
   calculator's forced output tokens and the prompt are excluded), divided by the number of sampled
   tokens of the whole step over all ranks (a token-level mean). Each rank scales its share by the
   world size because nanochat.optim's distributed optimizers average the ranks' gradients (the
   model is not wrapped in DDP), so any process count computes the same gradient. Rows whose
   advantage is 0 contribute exactly nothing and are not run forward at all;
5. the optimizers of SFT (Muon + AdamW from the model's `setup_optimizers`, learning rates scaled
   by --init-lr-frac) take a step; the lr multiplier decays linearly to 0 over the run.

Every --eval-every steps (and at the start and the end) the model is measured on held-out GSM8K test
problems: greedy pass@1 and, from --eval-samples samples at --temperature, the unbiased pass@1 and
pass@k. The loop, its checkpoints (chatrl_checkpoints/<tag>/, same resume policy, semantic config
and atomic layout as the other stages) and the "Chat RL" report section are in scripts/chat_rl.py.

Task data: GSM8K train from NANOCHAT_TASK_DIR or the hub, else the labelled offline substitute
(generated arithmetic word problems); GSM8K test likewise, with the PyPI-shipped test set before a
generated substitute. The report names the source of both.
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist



# ============================================================================ the maths (pure)

def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards [P * G] (G consecutive samples per problem) -> reward minus its group's mean."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)
    return (r - r.mean(dim=1, keepdim=True)).view(-1)


def pack_rollouts(sequences: list[list[int]], masks: list[list[int]], pad_id: int):
    """Token rows (prompt + completion) and their engine masks -> (inputs, targets) [n, T-1].

    targets[i, t] = sequences[i][t+1] where that token was sampled (mask 1), else -1 (prompt,
    tool-forced output, padding): only the model's own decisions are trained on."""
    width = max(len(s) for s in sequences)
    inputs = torch.full((len(sequences), width - 1), pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), width - 1), -1, dtype=torch.long)
    for i, (seq, mask) in enumerate(zip(sequences, masks)):
        if len(seq) != len(mask):
            raise ValueError(f"row {i}: {len(seq)} tokens but {len(mask)} mask entries")
        n = len(seq) - 1
        if n <= 0:
            continue
        row = torch.tensor(seq, dtype=torch.long)
        keep = torch.tensor(mask[1:], dtype=torch.bool)
        inputs[i, :n] = row[:-1]
        targets[i, :n] = torch.where(keep, row[1:], torch.full_like(row[1:], -1))
    return inputs, targets


def sampled_logprobs(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target token) [n, T] under `model` (0 where the target is -1)."""
    return -model(inputs, targets, loss_reduction="none")


def policy_gradient_loss(model, inputs: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor,
                         num_tokens: float) -> torch.Tensor:
    """-(sum over sampled tokens of advantage * log p) / num_tokens (a scalar to backpropagate)."""
    logp = sampled_logprobs(model, inputs, targets)
    valid = (targets != -1).to(logp.dtype)
    return -(logp * valid * advantages.to(logp.dtype).unsqueeze(1)).sum() / num_tokens


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def derive_seed(*parts) -> int:
    """A 31-bit seed from its parts, identical in every process (Python's hash() is not)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF


def step_problems(step: int, examples_per_step: int, num_train: int, seed: int, rank: int = 0,
                  world: int = 1) -> list[int]:
    """Train indices of this rank at `step`: the run reads one seeded permutation per epoch, in order;
    rank r gets positions r, r + world, ... of the step's examples_per_step problems."""
    out = []
    for j in range(rank, examples_per_step, world):
        pos = step * examples_per_step + j
        epoch, within = divmod(pos, num_train)
        out.append(_permutation(num_train, seed, epoch)[within])
    return out


_PERMS: dict = {}


def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    key = (n, seed, epoch)
    if key not in _PERMS:
        order = list(range(n))
        random.Random(derive_seed("rl-order", seed, epoch)).shuffle(order)
        _PERMS.clear()  # one epoch at a time is enough
        _PERMS[key] = order
    return _PERMS[key]


# ============================================================================ tasks

@dataclass
class RLTasks:
    train: object
    test: object

    def report_lines(self) -> list[str]:
        return [f"Train: {self.train.describe()} [{source_kind(self.train.source)}]",
                f"Eval: {self.test.describe()} [{source_kind(self.test.source)}]"]


def source_kind(source: str) -> str:
    """Where a task's rows came from, in words (hub / local / PyPI / substitute)."""
    if source.startswith("hf:"):
        return "Hugging Face hub"
    if source.startswith("local:"):
        return "local file (NANOCHAT_TASK_DIR)"
    if source.startswith("offline:"):
        return "offline copy shipped in a PyPI package"
    if source.startswith("substitute:"):
        return "offline substitute, not GSM8K"
    return source.split(":", 1)[0]


def load_tasks() -> RLTasks:
    """GSM8K train (or its labelled substitute) and GSM8K test (or a labelled generated substitute)."""
    from nanochat.tasks.base import TaskUnavailable
    from nanochat.tasks.gsm8k import GSM8K, ArithmeticWordProblems, gsm8k_train_or_substitute
    train = gsm8k_train_or_substitute()
    try:
        test = GSM8K("test")
    except TaskUnavailable as exc:
        test = ArithmeticWordProblems("test", size=400)
        test.source = ("substitute: generated GSM8K-style arithmetic word problems (nanochat templates) for "
                       f"GSM8K test ({exc.reasons[0]})")
    return RLTasks(train, test)


# ============================================================================ rollouts

@dataclass
class Group:
    """The samples of one problem: full token rows (prompt + completion, stop token included when
    the model produced one), their engine masks, the rewards and the generated lengths."""
    sequences: list
    masks: list
    rewards: list
    gen_lengths: list


def completion_text(tokenizer, row: list[int], prompt_len: int) -> str:
    return tokenizer.decode(row[prompt_len:])


def rollout(ctx, engine, tokenizer, task, index: int, num_samples: int, max_new_tokens: int, temperature: float,
            top_k: int | None, seed: int) -> Group:
    conv = task[index]
    prompt = tokenizer.render_for_completion(conv)
    with ctx.autocast():
        # the stop token kept: ending the answer is a sampled decision to train on too
        rows, masks = engine.generate_batch(prompt, num_samples, max_new_tokens, temperature, top_k, seed,
                                            keep_stop=True)
    rewards = [float(task.reward(conv, completion_text(tokenizer, r, len(prompt)))) for r in rows]
    return Group(rows, masks, rewards, [len(r) - len(prompt) for r in rows])


# ============================================================================ evaluation

@torch.no_grad()
def evaluate_pass_at_k(ctx, engine, tokenizer, task, num_examples: int, k: int, max_new_tokens: int,
                       temperature: float, top_k: int | None, seed: int) -> dict:
    """Greedy pass@1 and sampled pass@1 / pass@k over the first num_examples problems of `task`
    (dealt out over ranks, counts all-reduced)."""
    n = min(len(task), num_examples)
    sums = torch.zeros(3, dtype=torch.float64)  # greedy correct, sampled pass@1, sampled pass@k
    for i in range(ctx.rank, n, ctx.world):
        conv = task[i]
        prompt = tokenizer.render_for_completion(conv)
        with ctx.autocast():
            greedy, _ = engine.generate_batch(prompt, num_samples=1, max_tokens=max_new_tokens, temperature=0.0)
            sampled, _ = engine.generate_batch(prompt, num_samples=k, max_tokens=max_new_tokens,
                                               temperature=temperature, top_k=top_k,
                                               seed=derive_seed("rl-eval", seed, i))
        sums[0] += float(task.evaluate(conv, completion_text(tokenizer, greedy[0], len(prompt))))
        c = sum(int(task.evaluate(conv, completion_text(tokenizer, r, len(prompt)))) for r in sampled)
        sums[1] += pass_at_k(k, c, 1)
        sums[2] += pass_at_k(k, c, k)
    sums = _all_reduce_sum(ctx, sums)
    out = {"pass@1 greedy": float(sums[0] / n) if n else float("nan"),
           "pass@1": float(sums[1] / n) if n else float("nan")}
    if k > 1:
        out[f"pass@{k}"] = float(sums[2] / n) if n else float("nan")
    return out


def _all_reduce_sum(ctx, t: torch.Tensor) -> torch.Tensor:
    if not ctx.is_ddp:
        return t
    dev = ctx.device if ctx.device.type != "mps" else torch.device("cpu")
    t = t.to(dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


# ============================================================================ one optimizer step

@dataclass
class StepStats:
    mean_reward: float
    loss: float
    mean_gen_len: float
    sampled_tokens: int      # over all ranks
    groups_with_signal: int  # problems whose samples did not all get the same reward
    groups: int


def backward_rollouts(ctx, model, groups: list[Group], group_size: int, device_batch_size: int, pad_id: int) -> StepStats:
    """Accumulate this rank's policy-gradient gradients for one step (every rank calls it)."""
    rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float32)
    adv = group_advantages(rewards, group_size) if groups else rewards
    rows = [s for g in groups for s in g.sequences]
    masks = [m for g in groups for m in g.masks]
    sampled_local = sum(sum(m[1:]) for m in masks)
    signal_local = sum(int(max(g.rewards) != min(g.rewards)) for g in groups)
    counts = _all_reduce_sum(ctx, torch.tensor([
        float(rewards.sum()), float(rewards.numel()), float(sum(sum(g.gen_lengths) for g in groups)),
        float(sampled_local), float(signal_local), float(len(groups))], dtype=torch.float64))
    total_tokens = max(1.0, float(counts[3]))
    loss_sum = torch.zeros((), dtype=torch.float32, device=ctx.device)
    live = [i for i in range(len(rows)) if adv[i] != 0 and sum(masks[i][1:]) > 0]
    for s in range(0, len(live), device_batch_size):
        chunk = live[s:s + device_batch_size]
        inputs, targets = pack_rollouts([rows[i] for i in chunk], [masks[i] for i in chunk], pad_id)
        with ctx.autocast():
            loss = policy_gradient_loss(model, inputs.to(ctx.device), targets.to(ctx.device),
                                        adv[chunk].to(ctx.device), total_tokens / ctx.world)
        loss.backward()
        loss_sum += loss.detach().float()
    for p in model.parameters():  # a step without signal still steps every optimizer the same way
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    loss_total = float(_all_reduce_sum(ctx, loss_sum.detach().double().cpu().view(1))[0]) / ctx.world
    n = max(1.0, float(counts[1]))
    return StepStats(mean_reward=float(counts[0]) / n, loss=loss_total, mean_gen_len=float(counts[2]) / n,
                     sampled_tokens=int(counts[3]), groups_with_signal=int(counts[4]), groups=int(counts[5]))
