"""nanochat.loss_eval: bits per byte against a hand computation, and the progress lines."""
from __future__ import annotations

import math

import torch

from nanochat.loss_eval import evaluate_loss_bpb


class LossIsInput(torch.nn.Module):
    """A stand-in model whose per-token loss is x / 10 (in float32, hence the 1e-6 tolerances)."""

    def forward(self, x, y, loss_reduction="mean"):
        assert loss_reduction == "none"
        return x.float() / 10


def batches(pairs):
    for x, y in pairs:
        yield torch.tensor(x), torch.tensor(y)


def test_loss_and_bpb_match_a_hand_computation():
    token_bytes = torch.tensor([0, 1, 2, 3], dtype=torch.int32)  # token 0 is special: 0 bytes
    pairs = [([[5, 7, 9]], [[1, 0, -1]]),   # counted: 0.5 (1 byte); 0.7 has 0 bytes; 0.9 is masked
             ([[2, 4, 6]], [[3, 2, 3]])]    # counted: 0.2 (3), 0.4 (2), 0.6 (3)
    m = evaluate_loss_bpb(LossIsInput(), batches(pairs), 2, token_bytes)
    assert m["tokens"] == 5 and m["bytes"] == 9
    assert math.isclose(m["loss"], (0.5 + 0.7 + 0.2 + 0.4 + 0.6) / 5, rel_tol=1e-6)
    assert math.isclose(m["bpb"], (0.5 + 0.2 + 0.4 + 0.6) / (math.log(2) * 9), rel_tol=1e-6)
    no_bytes = evaluate_loss_bpb(LossIsInput(), batches(pairs), 2, None)
    assert math.isnan(no_bytes["bpb"]) and math.isclose(no_bytes["loss"], m["loss"])


def test_progress_lines_only_when_asked(capsys):
    pairs = [([[1, 2]], [[1, 1]])] * 4
    evaluate_loss_bpb(LossIsInput(), batches(pairs), 4, None)
    assert capsys.readouterr().out == ""
    evaluate_loss_bpb(LossIsInput(), batches(pairs), 4, None, progress="val eval", progress_every_s=0)
    lines = capsys.readouterr().out.splitlines()
    # one line per batch but the last (the caller prints the result), each with its fraction
    assert [line.split(" (")[0] for line in lines] == [f"val eval: batch {i}/4" for i in (1, 2, 3)]
    assert lines[1].startswith("val eval: batch 2/4 (50%, ")
