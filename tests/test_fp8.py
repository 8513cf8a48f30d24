"""fp8 matmuls (nanochat/fp8.py). torch's CPU build implements torch._scaled_mm, so the arithmetic
is checked here against float64 references; speed is measured on the H100 (bench/RESULTS.md)."""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from nanochat.fp8 import E4M3, E5M2, Fp8Linear, convert_to_fp8, fp8_support_problem, quantize
from nanochat.gpt import GPT, GPTConfig


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype,bound", [(E4M3, 0.04), (E5M2, 0.08)])
def test_quantize_round_trip_and_scale(dtype, bound):
    t = torch.randn(64, 48) * 37.0
    q, inv = quantize(t, dtype)
    assert q.dtype == dtype and inv.dtype == torch.float32 and inv.dim() == 0
    back = q.float() * inv
    assert rel(back, t) < bound
    # the largest magnitude lands on the format's largest finite value (full range used)
    assert q.float().abs().max().item() == torch.finfo(dtype).max
    assert torch.isfinite(back).all()


@pytest.mark.parametrize("M,K,N", [(256, 128, 384), (64, 256, 32)])
def test_fp8_linear_matches_float64_forward_and_backward(M, K, N):
    torch.manual_seed(M + K + N)
    x64 = torch.randn(M, K, dtype=torch.float64)
    w64 = torch.randn(N, K, dtype=torch.float64) * 0.05
    gy = torch.randn(M, N)
    lin = Fp8Linear(K, N, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w64.float())
    x = x64.float().requires_grad_(True)
    y = lin(x)
    y.backward(gy)
    assert y.shape == (M, N) and y.dtype == torch.float32
    assert rel(y, x64 @ w64.t()) < 0.05                       # e4m3 operands
    assert rel(x.grad, gy.double() @ w64) < 0.09              # e5m2 gradient
    assert rel(lin.weight.grad, gy.double().t() @ x64) < 0.09
    # and the same function with other inputs: not a memorised answer
    x2 = torch.randn(M, K)
    assert rel(lin(x2).detach(), x2.double() @ w64.t()) < 0.05


def test_rows_not_divisible_by_16_take_the_exact_path():
    lin = Fp8Linear(32, 16, bias=False)
    x = torch.randn(1, 3, 32)      # 3 rows: _scaled_mm cannot take them
    assert torch.equal(lin(x), nn.functional.linear(x, lin.weight))


def test_convert_keeps_parameters_and_state_dict_keys():
    cfg = GPTConfig(sequence_len=32, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    model = GPT(cfg)
    keys = list(model.state_dict().keys())
    params = {id(p) for p in model.parameters()}
    n = convert_to_fp8(model.blocks)
    assert n == 2 * 6   # q, k, v, attention proj, fc, mlp proj per block
    assert all(type(m) is Fp8Linear for b in model.blocks for m in
               (b.attn.c_q, b.attn.c_k, b.attn.c_v, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj))
    assert type(model.lm_head) is nn.Linear           # logits stay in bf16
    assert list(model.state_dict().keys()) == keys
    assert {id(p) for p in model.parameters()} == params
    x = torch.randint(0, 64, (2, 32))
    loss = model(x, x)                                # 64 rows: the fp8 path runs end to end
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.blocks.parameters())


def test_layers_with_odd_sizes_are_left_alone():
    m = nn.Sequential(nn.Linear(32, 24, bias=False), nn.Linear(24, 16, bias=False), nn.Linear(16, 16))
    assert convert_to_fp8(m) == 0


def test_cpu_is_refused_with_the_fix_named():
    msg = fp8_support_problem(torch.device("cpu"))
    assert msg and "drop --fp8" in msg and "\n" not in msg


def test_base_train_fp8_on_cpu_is_a_one_line_error(tmp_path):
    env = {"NANOCHAT_BASE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "scripts.base_train", "--device-type=cpu", "--fp8", "--depth=2",
                           "--num-iterations=1", "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert "drop --fp8" in lines[-1] and "Traceback" not in proc.stderr
