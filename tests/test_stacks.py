"""Stacks of built-in plugins, above all the user's headline example ``--plugins diffusion,smart,clr``.

The plugins are loaded through their entry-point names, exactly as ``ganstack train --plugins`` does.
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import make_trainer, state_equal
from ganstack.training import checkpoint as ckpt_io
from ganstack.training.api import hookimpl

HEADLINE = ["diffusion", "smart", "clr"]
OPTS = {"smart": {"score": "analytic"}}  # the exact score of the built-in toy mixture


def _steps(tr, n):
    seen = {}
    for _ in range(n):
        for k, v in tr.step().items():
            seen.setdefault(k, []).append(v)
    return seen


def test_diffusion_smart_clr_trains_saves_and_resumes_exactly(tmp_path):
    """10 steps straight == 5 steps, checkpoint, fresh objects, 5 more. The split crosses diffusion's T
    update (every 4 steps) and SMaRt's lazy interval (8)."""
    n = 10
    straight = make_trainer(HEADLINE, OPTS, mlp_hidden=48)
    seen = _steps(straight, n)
    for key in ("Loss/clr/latent", "Loss/clr/rec", "Loss/G/loss", "Loss/D/loss"):
        assert key in seen and all(math.isfinite(v) for v in seen[key]), key
    status = straight.stack.report_stats()
    assert "diffusion/T" in status

    first = make_trainer(HEADLINE, OPTS, mlp_hidden=48)
    _steps(first, n // 2)
    path = tmp_path / "ckpt.pt"
    ckpt_io.atomic_save(first.checkpoint_dict(), str(path))
    del first
    torch.manual_seed(4321)  # resume must restore every RNG it relies on
    resumed = make_trainer(HEADLINE, OPTS, mlp_hidden=48, resume=ckpt_io.load(str(path)))
    _steps(resumed, n - n // 2)
    for key in ("G", "D", "G_ema"):
        assert state_equal(getattr(straight, key).state_dict(), getattr(resumed, key).state_dict()), key
    assert state_equal(straight.G_opt.state_dict(), resumed.G_opt.state_dict())
    assert state_equal(straight.D_opt.state_dict(), resumed.D_opt.state_dict())
    assert state_equal(straight.stack.state_dict(), resumed.stack.state_dict())


def test_every_plugin_of_the_headline_stack_acts():
    """Dropping any one of the three plugins changes G after a few steps (none is silently inert)."""
    def g_after(names):
        tr = make_trainer(names, {k: v for k, v in OPTS.items() if k in names}, mlp_hidden=48)
        _steps(tr, 1)  # step 0 has every term: diffusion noise, clr's terms, SMaRt's lazy Greg phase
        return tr.G.state_dict()
    full = g_after(HEADLINE)
    for drop in HEADLINE:
        assert not state_equal(full, g_after([n for n in HEADLINE if n != drop])), drop


class RecordGmainReals:
    """Sits between diffusion and clr in the augment chain and keeps the real batch D is shown in Gmain."""

    def __init__(self):
        self.last = None

    @hookimpl
    def augment_d_input(self, x, ctx, is_real):
        if is_real and ctx.phase == "Gmain":
            self.last = (ctx.reals.img.clone(), x.img.clone(), x.c.clone())


def test_clr_head_sees_the_diffused_real_with_its_t_columns():
    tr = make_trainer(["diffusion", "rec", "clr"], {"diffusion": {"p": 1.0, "adaptive": False}},
                      extra_plugins={"rec": RecordGmainReals}, mlp_hidden=48)
    stats = tr.step()
    clean, diffused, c = tr.stack.plugins["rec"].last
    assert not torch.equal(clean, diffused)  # T = T_max: the head's input is noisy
    assert c.shape[1] == tr.D.c_dim > 0  # ... and carries diffusion's t conditioning (MLP D: concatenated)
    # Rebuild the term from what D saw, with the weights of the G phase (G and D have stepped since;
    # so recompute with a fresh trainer that has taken no step).
    tr2 = make_trainer(["diffusion", "rec", "clr"], {"diffusion": {"p": 1.0, "adaptive": False}},
                       extra_plugins={"rec": RecordGmainReals}, mlp_hidden=48)
    with torch.no_grad():
        latent = tr2.D.clr_head(tr2.D(diffused, c, return_features=True)[1])
        rec = (tr2.G(latent, torch.zeros(len(clean), 0)) - clean).abs().mean().item()
    assert stats["Loss/clr/rec_dist"] == pytest.approx(rec, rel=1e-5)


def test_clr_stacks_with_image_augments():
    """One step of ada + diffaug + diffusion + clr on the tiny StyleGAN (R1 and path length off to keep it
    short): both clr terms are finite and the head, part of D, is trained."""
    tr = make_trainer(["ada", "diffaug", "diffusion", "clr"],
                      {"ada": {"p": 0.5, "adaptive": False}, "diffusion": {"p": 0.5}},
                      image=True, gamma=0.0, pl_weight=0.0)
    head = tr.D.clr_head.weight.clone()
    stats = tr.step()
    assert math.isfinite(stats["Loss/clr/latent"]) and math.isfinite(stats["Loss/clr/rec"])
    assert not torch.equal(head, tr.D.clr_head.weight)
