"""bench.bpb_eval: the codebase-neutral bits-per-byte evaluator (issue 29, item 1).

Scored against an independent computation (log-softmax of the model's own logits), and against a stand-in
reference codebase whose model is uniform over the vocabulary, so the expected number is known exactly and
the test also shows that --ref really imports the other codebase's package."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from bench import bpb_eval
from tests.conftest import subprocess_env


@pytest.fixture
def heldout(trained_base, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(trained_base.base))
    val = sorted((trained_base.base / "base_data").glob("shard_*.parquet"))[-1]
    return bpb_eval.prepare(val, n_docs=6, seq_len=64, out=tmp_path / "heldout.json"), tmp_path / "heldout.json"


def test_each_document_is_scored_whole_from_bos(heldout, trained_base):
    data, _ = heldout
    from nanochat.checkpoint_manager import build_model
    from nanochat.tokenizer import get_tokenizer
    bos = get_tokenizer().get_bos_token_id()
    assert data["docs"] and all(d[0] == bos and 2 <= len(d) <= 65 for d in data["docs"])
    ckpt = next((trained_base.base / "base_checkpoints").iterdir())
    result = bpb_eval.score(data, ckpt, None, "cpu")
    model, _, _ = build_model(ckpt, None, torch.device("cpu"), "eval")
    nats = n_bytes = 0.0
    with torch.no_grad():
        for doc in data["docs"]:
            ids = torch.tensor(doc)
            logp = torch.log_softmax(model(ids[None, :-1]).double(), dim=-1)[0]
            nats -= logp.gather(1, ids[1:, None]).sum().item()
            n_bytes += sum(data["token_bytes"][t] for t in doc[1:])
    assert result["tokens"] == sum(len(d) - 1 for d in data["docs"])
    assert result["bytes"] == n_bytes > 0
    assert result["bpb"] == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-5)


def test_ref_scores_with_the_other_codebase(heldout, trained_base, tmp_path):
    data, path = heldout
    vocab = len(data["token_bytes"])
    fake = tmp_path / "ref" / "nanochat"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "checkpoint_manager.py").write_text(textwrap.dedent(f"""
        import math
        import torch
        class Uniform(torch.nn.Module):
            def forward(self, x, y, loss_reduction="mean"):
                return torch.full(y.shape, math.log({vocab}), dtype=torch.float64)
        def build_model(checkpoint_dir, step, device, phase):
            return Uniform(), None, {{}}
    """))
    out = subprocess.run([sys.executable, "-m", "bench.bpb_eval", "score", "--heldout", str(path), "--device", "cpu",
                          "--checkpoint", str(tmp_path / "any"), "--ref", str(tmp_path / "ref")],
                         capture_output=True, text=True, env=subprocess_env(trained_base.base), timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    n_tokens = sum(len(d) - 1 for d in data["docs"])
    assert result["bpb"] == pytest.approx(n_tokens * math.log2(vocab) / result["bytes"], rel=1e-9)
