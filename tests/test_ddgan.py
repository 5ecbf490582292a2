"""The ddgan plugin (Denoising Diffusion GAN): schedule, posterior, networks, sampler, presets, conflicts."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from conftest import make_config, make_trainer, state_equal
from ganstack.plugins.ddgan import DDGANPlugin, ema_kimg_for_decay, sample_chain
from ganstack.plugins.ddgan.networks import (DDGANImageDiscriminator, DDGANImageGenerator, DDGANPointDiscriminator,
                                    DDGANPointGenerator)
from ganstack.plugins.ddgan.schedule import VPSchedule, timestep_embedding
from ganstack.training import checkpoint as ckpt_io
from ganstack.stylegan_base.datasets import open_dataset
from ganstack.training.api import Capabilities, DInput, PluginError, hookimpl
from ganstack.training.config import resolve
from ganstack.training.loss import PhaseContext
from ganstack.training.plugin_manager import PluginStack

SMALL_IMAGE = dict(image=True, z_dim=16, map_depth=2)  # keep the tiny 16x16 nets tiny


# -------------------------------------------------------------------------------------------------
# Forward process and posterior

@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_betas_match_eq16(T):
    s = VPSchedule(T, 0.1, 20.0)
    bmin, bmax = 0.1, 20.0
    for t in range(1, T + 1):
        eq16 = 1 - math.exp(-bmin / T - 0.5 * (bmax - bmin) * (2 * t - 1) / T ** 2)
        assert s.betas[t].item() == pytest.approx(eq16, rel=1e-12, abs=1e-15)
        sigma2 = 1 - math.exp(-bmin * t / T - 0.5 * (bmax - bmin) * (t / T) ** 2)
        assert s.alpha_bars[t].item() == pytest.approx(1 - sigma2, rel=1e-12, abs=1e-300)
        assert s.alpha_bars[t].item() == pytest.approx(float(torch.prod(1 - s.betas[1:t + 1])), rel=1e-12)
    assert s.alpha_bars[0].item() == 1.0
    # x_T is essentially pure noise for the paper's constants.
    assert s.alpha_bars[T].item() == pytest.approx(math.exp(-10.05), rel=1e-9)


def test_t_eps_reproduces_the_official_grid():
    s = VPSchedule(4, 0.1, 20.0, t_eps=1e-3)
    tp = 1e-3 + (1 - 1e-3) * np.arange(5) / 4
    abar = np.exp(-0.1 * tp - 0.5 * 19.9 * tp ** 2)
    np.testing.assert_allclose(s.betas[1:].numpy(), 1 - abar[1:] / abar[:-1], rtol=1e-12)


def test_posterior_matches_appendix_a_and_bayes():
    s = VPSchedule(4)
    x0 = torch.tensor([[0.7, -0.3]], dtype=torch.float64)
    xt = torch.tensor([[0.1, 1.2]], dtype=torch.float64)
    for step in range(1, 5):
        t = torch.tensor([step])
        mean, var = s.posterior_mean_var(x0, xt, t)
        ab, ab_prev, beta = s.alpha_bars[step], s.alpha_bars[step - 1], s.betas[step]
        # Eq. 11 as printed.
        mu11 = ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * xt
        torch.testing.assert_close(mean, mu11, rtol=1e-12, atol=1e-12)
        assert var.item() == pytest.approx(((1 - ab_prev) / (1 - ab) * beta).item(), rel=1e-12, abs=1e-300)
        if step > 1:
            # Independent derivation: product of q(x_t|x_{t-1}) and q(x_{t-1}|x_0), completing the square.
            prec = (1 - beta) / beta + 1 / (1 - ab_prev)
            mu = ((1 - beta).sqrt() / beta * xt + ab_prev.sqrt() / (1 - ab_prev) * x0) / prec
            torch.testing.assert_close(mean, mu, rtol=1e-10, atol=1e-12)
            assert var.item() == pytest.approx(1 / prec.item(), rel=1e-10)


def test_pairs_have_the_forward_statistics():
    s = VPSchedule(4)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full([n, 1], 0.8)
    for step in (1, 3):
        t = torch.full([n], step)
        x_prev, x_t = s.q_sample_pairs(x0, t, generator=g)
        ab_prev, ab, beta = (s.alpha_bars[step - 1].item(), s.alpha_bars[step].item(), s.betas[step].item())
        assert x_prev.mean().item() == pytest.approx(math.sqrt(ab_prev) * 0.8, abs=4e-3)  # Eq. 8 at t-1
        assert x_prev.var().item() == pytest.approx(1 - ab_prev, abs=4e-3)
        assert x_t.mean().item() == pytest.approx(math.sqrt(ab) * 0.8, abs=4e-3)  # Eq. 8 at t
        assert x_t.var().item() == pytest.approx(1 - ab, abs=6e-3)
        step_noise = x_t - math.sqrt(1 - beta) * x_prev  # Eq. 1
        assert step_noise.mean().item() == pytest.approx(0, abs=4e-3)
        assert step_noise.var().item() == pytest.approx(beta, rel=2e-2)
    # At t = 1, x_{t-1} is the data itself.
    x0 = torch.randn(5, 3)
    x_prev, _ = s.q_sample_pairs(x0, torch.ones(5, dtype=torch.int64))
    assert torch.equal(x_prev, x0)
    assert torch.equal(s.q_sample(x0, torch.zeros(5, dtype=torch.int64), torch.randn(5, 3)), x0)


def test_last_step_returns_x0_exactly():
    s = VPSchedule(4)
    x0 = torch.randn(6, 3, 8, 8)
    xt = torch.randn(6, 3, 8, 8) * 5
    one = torch.ones(6, dtype=torch.int64)
    assert torch.equal(s.posterior_sample(x0, xt, one), x0)
    # Other steps do add the posterior noise.
    assert not torch.equal(s.posterior_sample(x0, xt, one * 2), s.posterior_mean_var(x0, xt, one * 2)[0])
    # The full chain returns the generator's last x_0 prediction, after T calls.
    G = DDGANPointGenerator(z_dim=4, c_dim=0, out_dim=2, hidden=16)
    out, steps = sample_chain(G, s, torch.randn(5, 4), torch.zeros(5, 0), return_steps=True)
    assert len(steps) == 4 and torch.equal(out, steps[-1])


def test_timestep_embedding_is_sinusoidal():
    e = timestep_embedding(torch.tensor([0, 3]), 8)
    assert e.shape == (2, 8)
    torch.testing.assert_close(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 3)
    torch.testing.assert_close(e[1, :4], torch.sin(3 * freqs))


# -------------------------------------------------------------------------------------------------
# Networks

def test_image_networks_shapes_and_conditioning():
    torch.manual_seed(0)
    G = DDGANImageGenerator(z_dim=8, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, channel_base=256,
                            channel_max=16, map_depth=2)
    D = DDGANImageDiscriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=16,
                                mbstd_group_size=2)
    x_t = torch.randn(4, 3, 16, 16)
    t = torch.tensor([1, 2, 3, 4])
    x0 = G(x_t, torch.randn(4, 8), t)
    assert x0.shape == x_t.shape and x0.abs().max() <= 1  # tanh output, like the official generator
    assert D.fromrgb.weight.shape[1] == 6  # channel concatenation of x_{t-1} and x_t
    logits, feats = D(x0, torch.zeros(4, 0), return_features=True, x_t=x_t, t=t)
    assert logits.shape == (4, 1) and feats.shape == (4, D.feature_dim)
    # D depends on x_t and on t; G on x_t, z and t.
    assert not torch.allclose(D(x0, None, x_t=x_t + 1, t=t), logits)
    assert not torch.allclose(D(x0, None, x_t=x_t, t=t.flip(0)), logits)
    z = torch.randn(4, 8)
    base = G(x_t, z, t)
    for other in (G(x_t * 0.5, z, t), G(x_t, torch.randn(4, 8), t), G(x_t, z, t.flip(0))):
        assert not torch.allclose(other, base)
    with pytest.raises(ValueError, match="needs x_t="):
        D(x0, None)


def test_point_networks_shapes():
    G = DDGANPointGenerator(z_dim=4, c_dim=0, out_dim=2, hidden=16)
    D = DDGANPointDiscriminator(c_dim=0, in_dim=2, hidden=16)
    assert D.body[0].in_features == 2 + 2 + 16 and G.body[0].in_features == 2 + 4 + 16
    t = torch.tensor([1, 4, 2])
    x0 = G(torch.randn(3, 2), torch.randn(3, 4), t)
    logits, feats = D(x0, None, return_features=True, x_t=torch.randn(3, 2), t=t)
    assert x0.shape == (3, 2) and logits.shape == (3, 1) and feats.shape == (3, 16)
    with pytest.raises(ValueError, match="int64"):
        G(torch.randn(3, 2), torch.randn(3, 4), t.float())


# -------------------------------------------------------------------------------------------------
# The plugin in the loop

def _configured(**kw):
    cfg = make_config(**kw)
    resolve(cfg, open_dataset(cfg.data).info())
    PluginStack(["ddgan"]).configure(cfg)
    return cfg


def test_preset_and_user_values():
    cfg = _configured(image=True)  # Appendix C.2 / Table 8 (CIFAR-10), Table 6
    assert (cfg.g_betas, cfg.d_betas, cfg.glr, cfg.dlr, cfg.gamma) == ((0.5, 0.9), (0.5, 0.9), 1.6e-4, 1e-4, 0.05)
    assert (cfg.z_dim, cfg.map_depth) == (256, 3)
    assert _configured(image=True, z_dim=16).z_dim == 16
    tr = make_trainer(["ddgan"])
    cfg = tr.cfg
    assert (cfg.g_betas, cfg.d_betas, cfg.glr, cfg.dlr, cfg.gamma) == ((0.5, 0.9), (0.5, 0.9), 1e-4, 1e-4, 0.05)  # C.5
    assert (cfg.r1_interval, cfg.pl_weight, cfg.style_mixing) == (1, 0.0, 0.0)
    assert list(tr.G_opt.param_groups[0]["betas"]) == [0.5, 0.9]
    tr = make_trainer(["ddgan"], glr=3e-4, r1_interval=4)
    assert tr.cfg.glr == 3e-4 and tr.cfg.r1_interval == 4 and tr.cfg.dlr == 1e-4
    (r1,) = [r for r in tr.regularizers if r.name == "r1"]
    assert r1.interval == 4 and tr.D_opt.param_groups[0]["lr"] == pytest.approx(1e-4 * 4 / 5)  # lazy R1
    with pytest.raises(PluginError, match="path-length"):
        make_trainer(["ddgan"], pl_weight=2.0)


def _per_step_decay(cfg):
    return 0.5 ** (cfg.batch / (cfg.ema_kimg * 1000))


def test_ema_defaults_per_data_kind():
    assert ema_kimg_for_decay(0.9999, 128) == pytest.approx(887.1, abs=0.1)  # Table 8 at the CIFAR batch
    toy_preset = make_config()
    resolve(toy_preset, open_dataset(toy_preset.data).info())
    # Images: Table 8's 0.9999 per step, converted for this batch; the stylegan2 preset has no rampup.
    cfg = _configured(image=True)
    assert _per_step_decay(cfg) == pytest.approx(0.9999, abs=1e-12) and cfg.ema_rampup == 0.05
    # Toy data: Appendix C.5 lists no EMA, so the toy preset's half-life stays (no 1774-kimg half-life).
    cfg = _configured()
    assert (cfg.ema_kimg, cfg.ema_rampup) == (toy_preset.ema_kimg, toy_preset.ema_rampup) == (1, None)
    # An explicit decay applies on any data, with the rampup cap.
    tr = make_trainer(["ddgan"], options={"ddgan": {"ema_decay": 0.999}})
    assert _per_step_decay(tr.cfg) == pytest.approx(0.999) and tr.cfg.ema_rampup == 0.05
    assert tr.stack.plugins["ddgan"].ema_decay == 0.999
    assert make_trainer(["ddgan"], options={"ddgan": {"ema_decay": 0.0}}).cfg.ema_kimg == 0  # G_ema = G
    # The user's --ema always wins, also over an explicit decay.
    tr = make_trainer(["ddgan"], ema_kimg=2.0, options={"ddgan": {"ema_decay": 0.9999}})
    assert (tr.cfg.ema_kimg, tr.cfg.ema_rampup, tr.stack.plugins["ddgan"].ema_decay) == (2.0, None, None)
    with pytest.raises(PluginError, match="ema-decay -0.5 .* -1 for the automatic choice"):
        make_trainer(["ddgan"], options={"ddgan": {"ema_decay": -0.5}})


def _param_dist(a, b):
    return sum((p - q).square().sum() for p, q in zip(a.parameters(), b.parameters())).sqrt().item()


def test_paper_ema_on_a_short_run_follows_G():
    """0.9999/step at batch 32 is a 222-kimg half-life; without the rampup cap, G_ema would stay at init."""
    import copy
    tr = make_trainer(["ddgan"], options={"ddgan": {"ema_decay": 0.9999}}, glr=1e-3)
    init = copy.deepcopy(tr.G_ema)
    for _ in range(3):
        tr.step()
    moved, travelled = _param_dist(tr.G_ema, init), _param_dist(tr.G, init)
    assert travelled > 0 and moved > 0.5 * travelled
    # The same run without the cap (what a plain 0.9999 half-life gives) barely leaves its initialisation.
    tr = make_trainer(["ddgan"], options={"ddgan": {"ema_decay": 0.9999}}, glr=1e-3, ema_rampup=None)
    assert tr.cfg.ema_rampup is None  # the user's choice is kept
    init = copy.deepcopy(tr.G_ema)
    for _ in range(3):
        tr.step()
    assert _param_dist(tr.G_ema, init) < 0.01 * _param_dist(tr.G, init)


def _phase(tr, phase, seed=0):
    torch.manual_seed(seed)
    x, c = next(tr.stream)
    z = torch.randn(len(x), tr.G.z_dim)
    return x, PhaseContext(tr.loss, phase, 0, 0, DInput(x, c), z, torch.zeros(len(x), 0))


def test_reals_become_pairs_and_fakes_share_x_t():
    tr = make_trainer(["ddgan"])
    x0, ctx = _phase(tr, "Dmain")
    real = ctx.reals
    t, x_t = real.extra["t"], real.extra["x_t"]
    assert t.min() >= 1 and t.max() <= 4
    s = tr.stack.plugins["ddgan"].schedule
    torch.testing.assert_close(real.img[t == 1], x0[t == 1])  # x_0 is the t-1 = 0 element
    fakes = ctx.sample()
    assert fakes.extra["x_t"] is x_t and fakes.extra["t"] is t  # the fake branch denoises the same x_t
    assert fakes.from_reals and fakes.c is real.c  # ... and keeps each real's label
    # The fake x_{t-1} is the posterior sample around G's x_0 prediction: exact at t = 1.
    with torch.no_grad():
        x0_pred = tr.G(x_t, ctx.z, t, real.c)
    torch.testing.assert_close(fakes.img[t == 1], x0_pred[t == 1])
    mean, var = s.posterior_mean_var(x0_pred, x_t, t)
    resid = (fakes.img - mean)[t > 1] / var[t > 1].sqrt()
    assert resid.abs().max() < 6 and resid.std() > 0.5


def test_r1_is_taken_on_x_prev_only():
    tr = make_trainer(["ddgan"])
    _, ctx = _phase(tr, "Dmain")
    (r1,) = [r for r in tr.regularizers if r.name == "r1"]
    assert r1.interval == 1
    loss = r1.loss(ctx)
    real = ctx.reals
    img = real.img.detach().requires_grad_(True)
    x_t = real.extra["x_t"].detach().requires_grad_(True)
    out = tr.D(img, real.c, x_t=x_t, t=real.extra["t"])
    g_img, g_xt = torch.autograd.grad(out.sum(), [img, x_t])
    expected = g_img.square().sum(1) * tr.cfg.gamma / 2
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-8)
    assert g_xt.abs().sum() > 0  # D does depend on x_t, yet the penalty leaves it out (Appendix C.2)


def test_class_conditional_model_trains_and_generates(tmp_path):
    from ganstack.training.inference import load_model
    tr = make_trainer(["ddgan"], data="toy:gaussians25?n=2048&labels=1", cond=True)
    assert tr.G.c_dim == tr.D.c_dim == 25
    tr.step()
    path = tmp_path / "cond.pt"
    ckpt_io.atomic_save(tr.checkpoint_dict(), str(path))
    model = load_model(str(path), device="cpu")
    c = torch.nn.functional.one_hot(torch.arange(6) % 25, 25).float()
    assert model.sample(torch.randn(6, model.G.z_dim), c).shape == (6, 2)


def test_generator_gradient_flows_through_the_posterior():
    tr = make_trainer(["ddgan"])
    _, ctx = _phase(tr, "Gmain")
    tr.G.requires_grad_(True)
    tr.loss.accumulate_gradients(ctx)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.G.parameters())
    assert all(p.grad is None for p in tr.D.parameters())


def test_training_steps_report_per_step_d_loss_and_resume_exactly(tmp_path):
    straight = make_trainer(["ddgan"])
    for _ in range(4):
        stats = straight.step()
    assert {f"Loss/ddgan/D_t{k}" for k in range(1, 5)} & set(stats)
    first = make_trainer(["ddgan"])
    for _ in range(2):
        first.step()
    path = tmp_path / "c.pt"
    ckpt_io.atomic_save(first.checkpoint_dict(), str(path))
    torch.manual_seed(777)
    resumed = make_trainer(["ddgan"], resume=ckpt_io.load(str(path)))
    for _ in range(2):
        resumed.step()
    for key in ("G", "D", "G_ema"):
        assert state_equal(getattr(straight, key).state_dict(), getattr(resumed, key).state_dict()), key
    assert ckpt_io.load(str(path))["plugin_state"]["ddgan"]["model"] == "ddgan"


def _count_calls(monkeypatch, cls):
    calls = []
    original = cls.forward

    def counting(self, *args, **kwargs):
        calls.append(args[2].tolist() if len(args) > 2 else kwargs["t"].tolist())
        return original(self, *args, **kwargs)
    monkeypatch.setattr(cls, "forward", counting)
    return calls


@pytest.mark.parametrize("T", [4, 2])
def test_generate_runs_T_generator_calls(tmp_path, monkeypatch, T):
    from ganstack.training.cli import main
    tr = make_trainer(["ddgan"], options={"ddgan": {"steps": T}})
    tr.step()
    path = tmp_path / "net.pt"
    ckpt_io.atomic_save(tr.checkpoint_dict(), str(path))
    calls = _count_calls(monkeypatch, DDGANPointGenerator)
    main(["generate", "--network", str(path), "--n", "50", "--out", str(tmp_path / "x.npy"), "--device", "cpu"])
    assert [steps[0] for steps in calls] == list(range(T, 0, -1))  # one call per step, t = T .. 1
    assert all(len(set(steps)) == 1 and len(steps) == 50 for steps in calls)
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (50, 2) and np.isfinite(x).all()


def test_generate_images_and_snapshots_use_the_chain(tmp_path, monkeypatch):
    from ganstack.training.cli import main
    tr = make_trainer(["ddgan"], **SMALL_IMAGE)
    path = tmp_path / "net.pt"
    ckpt_io.atomic_save(tr.checkpoint_dict(), str(path))
    calls = _count_calls(monkeypatch, DDGANImageGenerator)
    main(["generate", "--network", str(path), "--seeds", "3", "--outdir", str(tmp_path / "out"), "--device", "cpu"])
    assert [steps for steps in calls] == [[4], [3], [2], [1]] and os.path.exists(tmp_path / "out" / "seed0003.png")
    calls.clear()
    img = tr.sample_ema(2)
    assert img.shape == (2, 3, 16, 16) and len(calls) == 4


def test_conflicts_are_refused_with_reasons(monkeypatch):
    class OtherSampler:
        @hookimpl
        def sampler(self, G, z, c, ctx, G_kwargs):
            return DInput(G(z, c), c)

    with pytest.raises(PluginError, match=r"both replace the sampler"):
        PluginStack(["ddgan", "other"], extra_plugins={"other": OtherSampler})
    for name in ("ada", "diffaug", "diffusion"):
        with pytest.raises(PluginError, match=rf"{name} cannot run in this stack: it augments what D sees.*ddgan "
                                              rf"makes D judge 'pair' inputs: pairs \(x_{{t-1}}, x_t\)"):
            make_trainer(["ddgan", name], image=True)
    with pytest.raises(PluginError, match=r"smart cannot run in this stack: it requires 'sample_fakes'"):
        make_trainer(["ddgan", "smart"], {"smart": {"score": "analytic"}})

    class Jitter:
        @hookimpl
        def augment_d_input(self, x):
            return x.replace(img=x.img + 0.01)

    class PairJitter(Jitter):
        capabilities = Capabilities(augments="plain, pair")  # declares that it transforms x_t alike

    registry = {"jitter": Jitter, "pairjitter": PairJitter}
    with pytest.raises(PluginError, match=r"jitter cannot run in this stack: it augments what D sees.*"
                                          r"Capabilities\(augments=...\) with 'pair'"):
        make_trainer(["ddgan", "jitter"], extra_plugins=registry)
    make_trainer(["ddgan", "pairjitter"], extra_plugins=registry).step()


def test_cli_refusal_is_a_clean_error(tmp_path, capsys):
    from ganstack.training.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--plugins", "ddgan,diffaug", "--data", "shapes16?n=32", "--dry-run", "--outdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "diffaug cannot run in this stack" in err and "'pair' inputs" in err


def test_checkpoint_schedule_mismatch_is_an_error():
    p = DDGANPlugin()
    state = p.state_dict()
    other = DDGANPlugin()
    other.schedule = VPSchedule(2)
    with pytest.raises(Exception, match="schedule"):
        other.load_state_dict(state)
