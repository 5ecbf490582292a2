"""The `diffusion` plugin (Diffusion-GAN): q_sample, t_epl, adaptive T, t-conditioning, order, resume."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import make_config, make_trainer, state_equal
from ganstack.plugins.diffusion import (DiffusionPlugin, T_EPL_SIZE, T_EPL_ZEROS, embed_t, linear_schedule, q_sample,
                               sample_t_epl)
from ganstack.stylegan_base.datasets import open_dataset
from ganstack.training import distributed
from ganstack.training.api import DInput, PluginError, hookimpl
from ganstack.training.config import resolve
from ganstack.training.loop import LoopState
from ganstack.training.loss import PhaseContext
from ganstack.training.nets import build_networks
from ganstack.training.plugin_manager import PluginStack


def _plugin(**opts) -> DiffusionPlugin:
    stack = PluginStack(["diffusion"], {"diffusion": opts})
    stack.configure(make_config())
    return stack.plugins["diffusion"]


def _fake_state(batch=64):
    return LoopState(step=0, cur_nimg=0, batch_size=batch, G=None, D=None, G_ema=None, cfg=None, device="cpu")


def test_t0_leaves_the_batch_unchanged():
    plugin = _plugin(t_min=0, p=0.0, adaptive=False)  # T = 0: every t_epl entry is 0
    assert plugin.T == 0 and plugin.t_epl == [0] * T_EPL_SIZE
    x = DInput(img=torch.randn(8, 3, 8, 8), c=torch.zeros(8, 0))
    y = plugin.augment_d_input(x=x, is_real=True)
    assert torch.equal(y.img, x.img)
    assert torch.equal(y.c, embed_t(torch.zeros(8, dtype=torch.long), "sincos", 16))
    # and q_sample at t = 0 is the identity for any T
    abar = linear_schedule(50, 1e-4, 0.02)
    assert torch.equal(q_sample(x.img, torch.zeros(8, dtype=torch.long), abar, 0.05), x.img)


def test_schedule_and_q_sample_moments_match_the_formula():
    T, sigma = 200, 0.05
    abar = linear_schedule(T, 1e-4, 0.02)
    betas = np.linspace(1e-4, 0.02, T)
    expected = np.concatenate([[1.0], np.cumprod(1 - betas)])
    assert np.allclose(abar.numpy(), expected, rtol=1e-12)
    torch.manual_seed(0)
    n = 200_000
    x = torch.full([n, 2], 0.8)
    for t in (1, 37, T):
        y = q_sample(x, torch.full([n], t, dtype=torch.long), abar.float(), sigma)
        mean, std = math.sqrt(expected[t]) * 0.8, math.sqrt(1 - expected[t]) * sigma
        assert y.mean().item() == pytest.approx(mean, abs=5 * std / math.sqrt(2 * n) + 1e-6)
        assert y.std().item() == pytest.approx(std, rel=0.01)


def test_gradient_through_the_diffusion_is_sqrt_abar():
    plugin = _plugin(p=1.0, adaptive=False, t_max=300)  # T = 300
    torch.manual_seed(1)
    x = torch.randn(64, 2, requires_grad=True)
    w = torch.randn(64, 2)
    t = plugin.draw_t(64, "cpu")
    y = plugin.diffuse(x, t)
    (gx,) = torch.autograd.grad((y * w).sum(), x)
    assert torch.allclose(gx, w * plugin.abar[t].sqrt().float()[:, None], atol=1e-6)
    assert (t == 0).any() and (t > 0).any()  # a mixture of clean and diffused samples


def test_gradients_reach_G_through_diffusion():
    tr = make_trainer(["diffusion"], options={"diffusion": {"p": 1.0, "adaptive": False}})
    x, c = next(tr.stream)
    tr.G.requires_grad_(True)
    ctx = PhaseContext(tr.loss, "Gmain", 0, 0, DInput(x, c), torch.randn(32, tr.G.z_dim), torch.zeros(32, 0))
    tr.loss.accumulate_gradients(ctx)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.G.parameters())


def test_t_epl_composition_and_p_pi():
    gen = torch.Generator().manual_seed(0)
    for dist in ("priority", "uniform"):
        epl = sample_t_epl(40, dist, gen)
        assert len(epl) == 64 == T_EPL_SIZE and epl[:T_EPL_ZEROS] == [0] * 32
        assert all(1 <= t <= 40 for t in epl[32:])
    T, lists = 10, 4000
    draws = np.concatenate([sample_t_epl(T, "priority", gen)[32:] for _ in range(lists)])
    freq = np.bincount(draws, minlength=T + 1)[1:] / len(draws)
    assert np.allclose(freq, np.arange(1, T + 1) / (T * (T + 1) / 2), atol=0.01)  # P(t) ∝ t (Eq. 6)
    draws = np.concatenate([sample_t_epl(T, "uniform", gen)[32:] for _ in range(lists)])
    freq = np.bincount(draws, minlength=T + 1)[1:] / len(draws)
    assert np.allclose(freq, 1 / T, atol=0.01)


def test_T_moves_up_when_D_overfits_and_down_otherwise():
    plugin = _plugin(ada_kimg=1.0, t_min=5, t_max=500)  # fast: p moves by 64*4/1000 per update
    state = _fake_state(batch=64)
    step_p = 64 * 4 / 1000
    epl = list(plugin.t_epl)
    for i in range(3):  # no update before the 4th step; t_epl stays fixed
        plugin.after_step(state=state, stats={"Loss/signs/real": 0.9})
        assert plugin.T == 5 and plugin.t_epl == epl
    plugin.after_step(state=state, stats={"Loss/signs/real": 0.9})
    assert plugin.p == pytest.approx(step_p) and plugin.r_d == pytest.approx(0.9)
    assert plugin.T == 5 + round(step_p * 495) and plugin.t_epl != epl
    assert max(plugin.t_epl) <= plugin.T
    for _ in range(4 * 10):  # r_d above target: T climbs to T_max and is clipped there
        plugin.after_step(state=state, stats={"Loss/signs/real": 0.7})
    assert plugin.p == 1.0 and plugin.T == 500
    for _ in range(4):  # r_d below target: T goes down again
        plugin.after_step(state=state, stats={"Loss/signs/real": 0.2})
    assert plugin.p == pytest.approx(1 - step_p) and plugin.T == 5 + round((1 - step_p) * 495)
    for _ in range(4 * 10):
        plugin.after_step(state=state, stats={"Loss/signs/real": -0.5})
    assert plugin.p == 0.0 and plugin.T == 5
    # r_d is the mean over the interval, not the last value
    for v in (0.9, 0.9, 0.1, 0.1):
        plugin.after_step(state=state, stats={"Loss/signs/real": v})
    assert plugin.r_d == pytest.approx(0.5) and plugin.T == 5
    fixed = _plugin(adaptive=False, p=0.5)
    for _ in range(8):
        fixed.after_step(state=state, stats={"Loss/signs/real": 1.0})
    assert fixed.T == 5 + round(0.5 * 995)  # T_max 1000: the default pairs with priority t-sampling


def test_t_max_and_sigma_defaults_follow_table5_and_the_data_scale():
    from ganstack.plugins.diffusion import IMAGE_SIGMA, SIGMA_PER_STD, resolve_sigma
    from ganstack.stylegan_base.datasets import open_dataset

    assert _plugin().o["t_max"] == 1000 and _plugin(ts_dist="uniform").o["t_max"] == 500  # Table 5
    assert _plugin(ts_dist="uniform", t_max=800).o["t_max"] == 800
    assert resolve_sigma(0.0, {"kind": "image"}) == IMAGE_SIGMA == 0.05  # App. G, pixels in [-1, 1]
    assert resolve_sigma(0.2, {"kind": "points", "data_std": 3.0}) == 0.2  # the user's value wins
    # Point data: sigma scales with the data, so a .npy at another spacing gets the same relative noise.
    toy = open_dataset("toy:gaussians25?n=4096").info()
    assert resolve_sigma(0.0, toy) == pytest.approx(SIGMA_PER_STD * 2.83, rel=0.01)
    assert resolve_sigma(0.0, dict(toy, data_std=100 * toy["data_std"])) == pytest.approx(100 * resolve_sigma(0.0, toy))


def test_options_are_checked():
    with pytest.raises(PluginError, match="t_min <= t_max"):
        _plugin(t_min=50, t_max=10)
    with pytest.raises(PluginError, match="must be even"):
        _plugin(t_dim=7)
    with pytest.raises(PluginError, match="out of range"):
        _plugin(t_max=5000)


class Spy:
    """Records what D is shown after the plugins before it in --plugins."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def augment_d_input(self, x, is_real):
        self.seen.append((is_real, x.img.detach().clone(), x.c.detach().clone()))


def test_reals_and_fakes_get_independent_t_and_noise_and_D_sees_t():
    tr = make_trainer(["diffusion", "spy"], extra_plugins={"spy": Spy},
                      options={"diffusion": {"p": 1.0, "adaptive": False}})
    assert tr.D.c_dim == 16 and tr.G.c_dim == 0
    tr.step()
    seen = tr.stack.plugins["spy"].seen
    real = [s for s in seen if s[0]]
    fake = [s for s in seen if not s[0]]
    assert real and fake
    c_real, c_fake = real[0][2], fake[0][2]
    assert c_real.shape == (32, 16)
    assert len({tuple(r.tolist()) for r in c_real}) > 3  # t differs between samples of one batch
    assert not torch.equal(c_real, c_fake)  # reals and fakes draw their own t
    # D's output depends on t through the conditioning path
    img = torch.randn(4, 2)
    t_a, t_b = torch.zeros(4, dtype=torch.long), torch.full([4], 300)
    assert not torch.allclose(tr.D(img, embed_t(t_a, "sincos", 16)), tr.D(img, embed_t(t_b, "sincos", 16)))


def test_conditional_image_D_gets_labels_then_t():
    cfg = make_config(data="shapes16?n=64&labels=1", cond=True)
    ds = open_dataset(cfg.data, use_labels=True)
    resolve(cfg, ds.info(), distributed.world_size())
    stack = PluginStack(["diffusion"], {"diffusion": {"t_embed": "raw", "p": 1.0}})
    stack.configure(cfg)
    nets = build_networks(stack, cfg, ds.info())
    label_dim = ds.info()["label_dim"]
    assert label_dim > 0 and nets.D.c_dim == label_dim + 1 and nets.G.c_dim == label_dim
    labels = torch.eye(label_dim)[torch.arange(4) % label_dim]
    x = DInput(img=torch.randn(4, 3, 16, 16), c=labels)
    y = stack.hooks.augment_d_input(x, ctx=None, is_real=True)
    assert torch.equal(y.c[:, :label_dim], labels)
    assert set(y.c[:, label_dim].tolist()) <= set(map(float, stack.plugins["diffusion"].t_epl))
    logits = nets.D(y.img, y.c)
    assert logits.shape == (4, 1) and torch.isfinite(logits).all()


def test_augment_order_follows_plugins():
    cfg = make_config(image=True)
    x = DInput(img=torch.rand(6, 3, 16, 16) * 2 - 1, c=torch.zeros(6, 0))
    for order in (["ada", "diffusion"], ["diffusion", "ada"]):
        stack = PluginStack(order, {"ada": {"p": 1.0, "adaptive": False, "augpipe": "color"},
                                    "diffusion": {"p": 1.0, "adaptive": False}})
        stack.configure(cfg)
        ada, diff = stack.plugins["ada"], stack.plugins["diffusion"]
        calls = []

        def wrap(name, fn):
            def inner(img, *args):
                calls.append((name, img))
                out = fn(img, *args)
                calls.append((name + ":out", out))
                return out
            return inner
        ada.pipe = wrap("ada", ada.pipe)
        diff.diffuse = wrap("diffusion", diff.diffuse)
        out = stack.hooks.augment_d_input(x, ctx=None, is_real=True)
        names = [n for n, _ in calls]
        assert names == [order[0], order[0] + ":out", order[1], order[1] + ":out"]
        assert calls[0][1] is x.img and calls[2][1] is calls[1][1] and out.img is calls[3][1]
        assert out.c.shape == (6, 16)


def test_checkpoint_resume_keeps_T_and_continues_identically(tmp_path):
    # fast (p moves by 32 * 2 / 2000 per update) and from mid-range, so T moves either way within a few steps
    opts = {"diffusion": {"ada_kimg": 2.0, "interval": 2, "p": 0.5}}
    tr = make_trainer(["diffusion"], options=opts)
    for _ in range(5):
        tr.step()
    plugin = tr.stack.plugins["diffusion"]
    ckpt = tr.checkpoint_dict()
    torch.save(ckpt, tmp_path / "c.pt")
    Ts_a = []
    for _ in range(6):  # the uninterrupted run goes on first (both runs use the global RNG)
        tr.step()
        Ts_a.append((plugin.T, plugin.p, tuple(plugin.t_epl)))
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    resumed = make_trainer(["diffusion"], options=opts, resume=loaded)
    rp = resumed.stack.plugins["diffusion"]
    saved = loaded["plugin_state"]["diffusion"]
    assert (rp.T, rp.p, rp.t_epl, rp.ctl.steps) == (saved["T"], saved["p"], saved["t_epl"], saved["steps"]) == (
        ckpt["plugin_state"]["diffusion"]["T"], ckpt["plugin_state"]["diffusion"]["p"],
        ckpt["plugin_state"]["diffusion"]["t_epl"], 5)
    assert torch.equal(rp.gen.get_state(), ckpt["plugin_state"]["diffusion"]["gen"])
    Ts_b = []
    for _ in range(6):
        resumed.step()
        Ts_b.append((rp.T, rp.p, tuple(rp.t_epl)))
    assert Ts_a == Ts_b and len({t for t, _, _ in Ts_a}) > 1  # T moved, identically in both runs
    assert state_equal(tr.D.state_dict(), resumed.D.state_dict())
    assert state_equal(tr.G.state_dict(), resumed.G.state_dict())


def test_status_line_reports_T_and_r_d():
    """T, p and (once measured) r_d go to report_stats, which the loop prints and writes to stats.jsonl
    (the generic path is tested in test_hooks.py::test_hook_report_stats)."""
    tr = make_trainer(["diffusion"], options={"diffusion": {"interval": 2}})
    assert set(tr.stack.report_stats()) == {"diffusion/T", "diffusion/p"}  # r_d not measured yet
    for _ in range(2):
        stats = tr.step()
    report = tr.stack.report_stats()
    assert report["diffusion/T"] == tr.stack.plugins["diffusion"].T
    assert report["diffusion/r_d"] == pytest.approx(tr.stack.plugins["diffusion"].r_d)
    assert -1 <= report["diffusion/r_d"] <= 1 and "Loss/signs/real" in stats
    from ganstack.training.run import format_status, tick_fields
    line = format_status(tick_fields(tr.cur_tick, tr.cur_nimg, 1.0, 64, 0.0, 1.0, tr.device), report)
    assert f"diffusion/T {report['diffusion/T']}" in line and "diffusion/r_d " in line


def test_scale_aware_defaults_reach_training_on_a_users_point_file(tmp_path):
    """A user's .npy at another spacing (the 25 Gaussians x 100): diffusion's sigma, SMaRt's t range and
    CM-GAN's noise grid follow the data, so the same shape trains the same way at any scale."""
    import numpy as np

    from conftest import make_trainer
    from ganstack.plugins.diffusion import SIGMA_PER_STD
    from ganstack.stylegan_base.datasets import open_dataset

    pts = open_dataset("toy:gaussians25?n=2048").points.astype(np.float64)
    for scale in (1.0, 100.0):
        path = tmp_path / f"points{scale:g}.npy"
        np.save(path, pts * scale)
        tr = make_trainer(["diffusion", "smart"], {"smart": {"score": "empirical"}}, data=str(path))
        std = tr.dataset.info()["data_std"]
        assert std == pytest.approx(pts.std() * scale)
        assert tr.stack.plugins["diffusion"].sigma == pytest.approx(SIGMA_PER_STD * std)
        smart = tr.stack.plugins["smart"]
        lo, hi = smart.t_range
        ratio = float(smart.schedule.edm_sigmas[lo]) / std
        if scale == 1.0:
            first = ratio
        else:
            assert lo > 40 and ratio == pytest.approx(first, rel=0.05)
        cm = make_trainer(["cmgan"], {"cmgan": {"teacher": "empirical"}}, data=str(path)).stack.plugins["cmgan"]
        assert cm.sigma_max == pytest.approx(80.0 * std / 0.5) and cm.sigma_min == pytest.approx(0.002 * std / 0.5)
