"""The StyleGAN2 loss pieces against direct computations."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import make_trainer
from ganstack.stylegan_base import networks
from ganstack.training.api import DInput
from ganstack.training.core import path_length_penalty, r1_penalty
from ganstack.training.optim import base_reg_intervals, lazy_mb_ratio


def test_r1_matches_per_sample_gradient():
    torch.manual_seed(0)
    D = networks.Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=256, channel_max=16,
                               epilogue_kwargs=dict(mbstd_group_size=1))
    x = torch.randn(3, 3, 8, 8)
    penalty, _ = r1_penalty(lambda inp: D(inp.img, inp.c), DInput(x, torch.zeros(3, 0)))
    for i in range(3):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(xi, torch.zeros(1, 0)).sum(), xi)
        assert penalty[i].item() == pytest.approx(g.square().sum().item(), rel=1e-5)
    # The penalty is differentiable with respect to D's parameters (R1 trains D).
    penalty.sum().backward()
    assert all(p.grad is not None for n, p in D.named_parameters() if n.endswith("weight"))


def test_r1_matches_finite_differences():
    torch.manual_seed(1)
    D = networks.MLPDiscriminator(in_dim=2, hidden=16).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    penalty, _ = r1_penalty(lambda inp: D(inp.img, inp.c), DInput(x, torch.zeros(4, 0, dtype=torch.float64)))
    eps = 1e-6
    for i in range(4):
        g = []
        for d in range(2):
            e = torch.zeros(1, 2, dtype=torch.float64)
            e[0, d] = eps
            f = lambda y: D(y, torch.zeros(1, 0, dtype=torch.float64)).item()
            g.append((f(x[i:i + 1] + e) - f(x[i:i + 1] - e)) / (2 * eps))
        assert penalty[i].item() == pytest.approx(sum(v * v for v in g), rel=1e-6)


def test_path_length_matches_explicit_jacobian():
    torch.manual_seed(0)
    G = networks.Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=8, img_channels=1,
                           mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=64, channel_max=8))
    z = torch.randn(2, 4)
    img, ws = G(z, None, return_ws=True, noise_mode="const")
    torch.manual_seed(5)
    penalty, new_mean = path_length_penalty(img, ws, torch.zeros([]), decay=0.01)
    torch.manual_seed(5)
    y = torch.randn_like(img) / math.sqrt(8 * 8)
    lengths = []
    for i in range(2):
        ws_i = ws[i:i + 1].detach()
        J = torch.autograd.functional.jacobian(lambda w: G.synthesis(w, noise_mode="const"), ws_i)
        # J: [1, C, H, W, 1, num_ws, w_dim];  J^T y summed over pixels.
        jty = (J * y[i:i + 1].reshape(1, *y.shape[1:], 1, 1, 1)).sum(dim=(0, 1, 2, 3))[0]
        lengths.append(jty.square().sum(1).mean().sqrt())
    lengths = torch.stack(lengths)
    expected_mean = torch.zeros([]).lerp(lengths.mean(), 0.01)
    assert new_mean.item() == pytest.approx(expected_mean.item(), rel=1e-4)
    assert torch.allclose(penalty, (lengths - expected_mean).square(), rtol=1e-4)


def test_lazy_mb_ratio_and_base_intervals():
    assert lazy_mb_ratio(1) == 1.0
    assert lazy_mb_ratio(16) == pytest.approx(16 / 17)  # StyleGAN2's D
    assert lazy_mb_ratio(4) == pytest.approx(4 / 5)  # StyleGAN2's G
    from conftest import make_config
    # As StyleGAN2-ADA's train.py: G_reg_interval 4 and D_reg_interval 16 even with path length / R1 off.
    cfg = make_config(image=True, pl_weight=0.0, gamma=0.0)
    assert base_reg_intervals(cfg, {"w_space"}, "image") == {"G": 4, "D": 16}
    # The toy MLPs have no W space and no regularizer: no reg phase, no correction.
    toy = make_config(gamma=0.0, pl_weight=0.0)
    assert base_reg_intervals(toy, set(), "points") == {"G": 1, "D": 1}
    assert base_reg_intervals(make_config(gamma=1.0, pl_weight=0.0), set(), "points") == {"G": 1, "D": 16}
    # A G without W space (ddgan, cmgan) has no path-length phase; R1 every step (ddgan) has none either.
    assert base_reg_intervals(make_config(image=True, pl_weight=0.0, r1_interval=1), set(), "image") == {"G": 1, "D": 1}


def test_stylegan2_optimizer_correction_and_phases():
    tr = make_trainer([], image=True)  # stylegan2 preset: R1 every 16, PL every 4
    g, d = tr.G_opt.param_groups[0], tr.D_opt.param_groups[0]
    assert g["lr"] == pytest.approx(tr.cfg.glr * 4 / 5) and d["lr"] == pytest.approx(tr.cfg.dlr * 16 / 17)
    assert g["betas"][1] == pytest.approx(0.99 ** 0.8) and d["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    assert g["eps"] == 1e-8 and g["betas"][0] == 0.0
    names = lambda s: [p for p, _, _ in tr.phases(s)]
    assert names(0) == ["Gmain", "Greg", "Dmain", "Dreg"]
    assert names(4) == ["Gmain", "Greg", "Dmain"]
    assert names(5) == ["Gmain", "Dmain"]
    assert names(16) == ["Gmain", "Greg", "Dmain", "Dreg"]


def test_g_ema_update_follows_half_life():
    tr = make_trainer([], ema_kimg=0.064)  # batch 32: beta = 0.5 ** (32 / 64)
    before = [p.clone() for p in tr.G_ema.parameters()]
    tr.step()
    beta = 0.5 ** (32 / 64)
    for p0, p, pe in zip(before, tr.G.parameters(), tr.G_ema.parameters()):
        assert torch.allclose(pe, p.lerp(p0, beta), atol=1e-7)


def test_rounds_accumulate_to_the_full_batch_gradient():
    """--batch-gpu splits a step into rounds; the gradient is the mean over the whole batch."""
    full = make_trainer([], batch=32)
    split = make_trainer([], batch=32, batch_gpu=8)
    full.step()
    split.step()
    for a, b in zip(full.D.parameters(), split.D.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
