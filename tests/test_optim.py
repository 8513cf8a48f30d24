"""Optimizer tests (CPU). The distributed ones spawn 2 gloo processes on 127.0.0.1."""
import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanochat.optim import DistAdamW, DistMuon, Muon, lr_multiplier, muon_momentum, orthogonalize


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- schedules


def test_lr_multiplier_key_steps():
    # N=100, warmup 10 steps, warmdown the last 20 steps down to 0.1
    f = lambda s: lr_multiplier(s, 100, warmup_ratio=0.1, warmdown_ratio=0.2, final_lr_frac=0.1)
    assert f(0) == pytest.approx(0.1)       # (0+1)/10: never exactly zero
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == 1.0 and f(50) == 1.0 and f(80) == 1.0
    assert f(90) == pytest.approx(0.5 + 0.5 * 0.1)
    assert f(100) == pytest.approx(0.1)
    # defaults: no warmup, 20% linear warmdown to 0
    assert lr_multiplier(0, 1000) == 1.0
    assert lr_multiplier(800, 1000) == 1.0
    assert lr_multiplier(900, 1000) == pytest.approx(0.5)
    assert lr_multiplier(1000, 1000) == pytest.approx(0.0)
    # no warmdown at all
    assert lr_multiplier(99, 100, warmdown_ratio=0.0) == 1.0


def test_muon_momentum_ramp():
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(150) == pytest.approx(0.90)
    assert muon_momentum(300) == pytest.approx(0.95)
    assert muon_momentum(5000) == pytest.approx(0.95)


# ----------------------------------------------------------------------------- Muon


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (3, 48, 96)])
def test_orthogonalize_gives_near_orthogonal_output(shape):
    torch.manual_seed(0)
    G = torch.randn(*shape)
    O = orthogonalize(G, steps=5)
    assert O.dtype == torch.bfloat16 and O.shape == G.shape
    sv = torch.linalg.svdvals(O.float())
    assert sv.min() > 0.5 and sv.max() < 1.5, (sv.min().item(), sv.max().item())
    # same singular vectors as G: O ~ U V^T up to the spread of the singular values
    U, _, Vh = torch.linalg.svd(G.float(), full_matrices=False)
    cos = torch.nn.functional.cosine_similarity((U @ Vh).flatten(), O.float().flatten(), dim=0)
    assert cos > 0.95


def test_orthogonalize_ill_conditioned():
    """Singular values spread over 20x (1 .. 0.05) all land in [0.5, 1.5]. (Five quintic steps grow a
    tiny singular value by at most ~3.4^5 ~ 490x, so values below ~1e-3 of the Frobenius norm are
    NOT lifted: that is the published trade-off of the fast coefficients.)"""
    torch.manual_seed(0)
    n = 48
    U, _ = torch.linalg.qr(torch.randn(n, n))
    V, _ = torch.linalg.qr(torch.randn(n, n))
    G = U @ torch.diag(torch.logspace(0, -1.3, n)) @ V.T
    sv = torch.linalg.svdvals(orthogonalize(G).float())
    assert sv.min() > 0.5 and sv.max() < 1.5, (sv.min().item(), sv.max().item())


def test_muon_one_step_by_hand():
    torch.manual_seed(0)
    p_tall = torch.nn.Parameter(torch.randn(32, 8))
    p_wide = torch.nn.Parameter(torch.randn(8, 32))
    opt = Muon([p_tall, p_wide], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.5)
    assert len(opt.param_groups) == 2  # one group per shape
    g_tall, g_wide = torch.randn(32, 8), torch.randn(8, 32)
    p_tall.grad, p_wide.grad = g_tall.clone(), g_wide.clone()
    before_tall, before_wide = p_tall.detach().clone(), p_wide.detach().clone()
    opt.step()
    for before, g, p, scale in ((before_tall, g_tall, p_tall, 2.0), (before_wide, g_wide, p_wide, 1.0)):
        buf = 0.1 * g                          # buf = 0.9 * 0 + 0.1 * g
        upd = 0.1 * g + 0.9 * buf              # Nesterov
        expected = before * (1 - 0.1 * 0.5) - 0.1 * scale * orthogonalize(upd).float()
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-6)


def test_muon_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.randn(5))])


def test_muon_minimises_a_quadratic():
    torch.manual_seed(0)
    target = torch.randn(16, 24)
    W = torch.nn.Parameter(torch.zeros(16, 24))
    opt = Muon([W], lr=0.2, momentum=0.9)
    first = None
    for step in range(60):
        loss = ((W - target) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = 0.2 * lr_multiplier(step, 60, warmdown_ratio=0.5)
        opt.step()
    assert ((W - target) ** 2).mean().item() < 0.01 * first


# ----------------------------------------------------------------------------- distributed

# shapes chosen to exercise padding: 3 matrices of one shape (not divisible by 2 ranks), a lone
# matrix (rank 1 owns nothing of that group), 2 square ones; AdamW: first dim divisible by 2
# (sharded on the reduce-scatter path), not divisible (all-reduce fallback), and a vector.
MUON_SHAPES = [(8, 16), (8, 16), (8, 16), (32, 8), (16, 16), (16, 16)]
ADAM_SHAPES = [(10, 4), (3, 5), (7,)]
STEPS = 3


def _init_params(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _grads(shapes, step, rank):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return [torch.randn(s, generator=g) for s in shapes]


def _dist_worker(rank, world, port, reduce_scatter, errors_path):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        muon_p, muon_ref = _init_params(MUON_SHAPES, 1), _init_params(MUON_SHAPES, 1)
        adam_p, adam_ref = _init_params(ADAM_SHAPES, 2), _init_params(ADAM_SHAPES, 2)
        muon = DistMuon(muon_p, lr=0.05, momentum=0.9, weight_decay=0.1, reduce_scatter=reduce_scatter)
        muon_single = Muon(muon_ref, lr=0.05, momentum=0.9, weight_decay=0.1)
        adam_groups = lambda ps: [dict(params=ps[:2], lr=0.01), dict(params=ps[2:], lr=0.03)]
        adam = DistAdamW(adam_groups(adam_p), betas=(0.8, 0.95), eps=1e-10, weight_decay=0.05,
                         reduce_scatter=reduce_scatter)
        adam_single = torch.optim.AdamW(adam_groups(adam_ref), betas=(0.8, 0.95), eps=1e-10, weight_decay=0.05,
                                        foreach=False)
        for step in range(STEPS):
            for params, ref, shapes in ((muon_p, muon_ref, MUON_SHAPES), (adam_p, adam_ref, ADAM_SHAPES)):
                local = _grads(shapes, step, rank)
                per_rank = [_grads(shapes, step, r) for r in range(world)]
                for p, g in zip(params, local):
                    p.grad = g.clone()
                for i, p in enumerate(ref):   # the single-process optimizer sees the averaged gradient
                    p.grad = sum(pr[i] for pr in per_rank) / world
            muon.step()
            muon_single.step()
            adam.step()
            adam_single.step()
            # the local gradients were not modified in place
            for p, g in zip(adam_p, _grads(ADAM_SHAPES, step, rank)):
                assert torch.equal(p.grad, g)
        for a, b in zip(muon_p + adam_p, muon_ref + adam_ref):
            err = (a.detach() - b.detach()).abs().max().item()
            assert err < 1e-5, f"rank {rank} reduce_scatter={reduce_scatter} shape {tuple(a.shape)}: {err}"
        # Muon momentum state lives only on the owner of each matrix: groups (8,16)x3 -> 2+1,
        # (16,16)x2 -> 1+1, (32,8)x1 -> 1+0
        owned = sum(1 for p in muon_p if "momentum_buffer" in muon.state[p])
        assert owned == {0: 4, 1: 2}[rank], owned
        open(f"{errors_path}.ok.{rank}", "w").close()
        dist.barrier()
    except BaseException:  # make the parent's error message useful
        with open(f"{errors_path}.{rank}", "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("reduce_scatter", [False, True])
def test_distributed_optimizers_match_single_process(reduce_scatter, tmp_path, monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    errors = tmp_path / "err"
    try:
        mp.spawn(_dist_worker, args=(2, _free_port(), reduce_scatter, str(errors)), nprocs=2, join=True)
    except Exception as exc:
        # gloo occasionally aborts (SIGABRT, "terminate called without an active exception") while
        # tearing the process group down, after every check has passed: that is not our failure
        if all((tmp_path / f"err.ok.{r}").exists() for r in range(2)):
            return
        msgs = [p.read_text() for p in sorted(tmp_path.glob("err.[0-9]"))]
        pytest.fail(f"distributed worker failed: {exc}; {msgs}")


def test_dist_optimizers_need_a_process_group():
    p = torch.nn.Parameter(torch.randn(4, 4))
    p.grad = torch.randn(4, 4)
    with pytest.raises(RuntimeError, match="torch.distributed"):
        DistMuon([p]).step()
