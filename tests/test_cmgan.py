"""The cmgan plugin (CM-GAN): f_theta's boundary condition, the Karras grid, the teacher's Heun step, the
weighting lambda(t_n), the CD distance, the target EMA with exact resume, the three modes, sampling, errors."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import make_trainer, state_equal
from ganstack.plugins.cmgan import CMGANPlugin
from ganstack.plugins.cmgan.consistency import (ConsistencyFunction, cd_distance, cd_weighting, consistency_scalings,
                                       karras_grid, multistep_sample, ode_step, parse_sample_ts, update_target)
from ganstack.plugins.score_models import EDMPrecond, GaussianMixtureScore
from ganstack.plugins.score_models import io as score_io
from ganstack.plugins.score_models.edm import karras_sigmas
from ganstack.stylegan_base.errors import CheckpointError
from ganstack.training.api import DInput, PluginError
from ganstack.training.inference import load_model
from ganstack.training.loss import PhaseContext

SMALL = {"channels": 32, "blocks": 2}  # a small residual MLP for the 2-D tests
ANALYTIC = {"cmgan": {"teacher": "analytic", **SMALL}}
TINY_UNET = {"channels": 8, "channel_mult": "1,2", "blocks": 1}


def _randomize(net: torch.nn.Module, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# -------------------------------------------------------------------------------------------------
# f_theta

@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_boundary_condition_holds_exactly(kind):
    if kind == "mlp":
        f = ConsistencyFunction({"name": "mlp", "kwargs": dict(point_dim=2, hidden=16, num_layers=2)}, (2,),
                                sigma_data=0.7)
        x = torch.randn(64, 2) * 3
    else:
        f = ConsistencyFunction({"name": "unet", "kwargs": dict(img_resolution=8, img_channels=1, model_channels=8,
                                                                channel_mult=(1, 2), num_blocks=1)}, (1, 8, 8))
        x = torch.randn(4, 1, 8, 8)
    _randomize(f.net)  # the zero-initialised output layer would make F = 0 trivially
    assert torch.equal(f(x, f.sigma_min), x)
    assert torch.equal(f(x, torch.full([x.shape[0]], f.sigma_min)), x)
    # ... and F matters everywhere else.
    assert (f(x, 0.01) - x).abs().max() > 1e-3
    assert (f(x, 80.0) - x).abs().max() > 1e-3


def test_scalings_are_the_consistency_and_edm_formulas():
    sd, smin = 0.5, 0.002
    s = torch.tensor([0.002, 0.1, 1.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = consistency_scalings(s, smin, sd)
    for i, sig in enumerate(s.tolist()):
        assert c_skip[i].item() == pytest.approx(sd ** 2 / ((sig - smin) ** 2 + sd ** 2), rel=1e-12)
        assert c_out[i].item() == pytest.approx((sig - smin) * sd / math.sqrt(sig ** 2 + sd ** 2), rel=1e-12, abs=0)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(sig ** 2 + sd ** 2), rel=1e-12)   # EDM c_in
        assert c_noise[i].item() == pytest.approx(math.log(sig) / 4, rel=1e-12)             # EDM c_noise
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0


def test_generator_is_f_at_sigma_max_of_scaled_noise():
    f = ConsistencyFunction({"name": "mlp", "kwargs": dict(point_dim=2, hidden=16, num_layers=2)}, (2,))
    _randomize(f.net)
    z = torch.randn(8, 2)
    assert f.z_dim == 2
    torch.testing.assert_close(f.generate(z), f(80.0 * z, 80.0), rtol=0, atol=0)


# -------------------------------------------------------------------------------------------------
# Grid, ODE step, weighting

@pytest.mark.parametrize("n", [2, 18, 40])
def test_karras_grid(n):
    t = karras_grid(n, 0.002, 80.0, 7.0)
    assert t.shape == (n,) and t[0].item() == 0.002 and t[-1].item() == 80.0
    assert bool((t[1:] > t[:-1]).all())
    for i in range(n):
        want = (0.002 ** (1 / 7) + i / (n - 1) * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
        assert t[i].item() == pytest.approx(want, rel=1e-12)
    # The same levels as EDM's sampler grid (descending, trailing zero) and the official CD indices.
    torch.testing.assert_close(t.flip(0), karras_sigmas(n, 0.002, 80.0, 7.0)[:-1], rtol=1e-12, atol=1e-15)
    idx = torch.arange(n - 1, dtype=torch.float64)
    official_t = (80 ** (1 / 7) + idx / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7  # cm/karras_diffusion.py
    torch.testing.assert_close(t.flip(0)[:-1], official_t, rtol=1e-12, atol=0)


def test_heun_step_matches_hand_computation_for_a_gaussian():
    mu, s = 0.7, 0.3
    teacher = GaussianMixtureScore([[mu]], s)  # data N(mu, s^2): D(x; t) = mu + s^2 / (s^2 + t^2) (x - mu)
    D = lambda x, t: mu + s * s / (s * s + t * t) * (x - mu)  # noqa: E731
    x = torch.tensor([[2.5], [-1.0], [0.7]], dtype=torch.float64)
    t1, t0 = 1.3, 0.9
    got = ode_step(teacher.denoise, x, torch.full([3], t1, dtype=torch.float64), t0, solver="heun")
    for i, xi in enumerate(x.flatten().tolist()):
        d1 = (xi - D(xi, t1)) / t1
        xe = xi + (t0 - t1) * d1
        d0 = (xe - D(xe, t0)) / t0
        assert got[i].item() == pytest.approx(xi + (t0 - t1) * (d1 + d0) / 2, rel=1e-12, abs=1e-14)
        euler = ode_step(teacher.denoise, x[i:i + 1], t1, t0, solver="euler").item()
        assert euler == pytest.approx(xe, rel=1e-12, abs=1e-14)

    # Against the exact PF-ODE flow of a Gaussian (x - mu scales by sqrt((s^2 + t0^2) / (s^2 + t1^2))):
    # Heun's local error is third order in the step, Euler's second order.
    def errors(h):
        xs = torch.tensor([[2.5]], dtype=torch.float64)
        exact = mu + (2.5 - mu) * math.sqrt((s * s + (1 - h) ** 2) / (s * s + 1))
        return [abs(ode_step(teacher.denoise, xs, 1.0, 1.0 - h, solver=m).item() - exact) for m in ("heun", "euler")]
    (heun1, euler1), (heun2, euler2) = errors(0.08), errors(0.04)
    assert heun1 < 0.1 * euler1
    assert 5 < heun1 / heun2 < 11 and 3 < euler1 / euler2 < 5


def test_weighting_equals_the_formula():
    T, alpha, gamma = 80.0, 0.025, 0.99995
    t = torch.tensor([0.002, 1.0, 10.0, 79.0, 80.0], dtype=torch.float64)
    for I in (0, 1, 1000, 30000):
        lam = cd_weighting(t, T, alpha, gamma, I)
        for ti, li in zip(t.tolist(), lam.tolist()):
            assert li == pytest.approx(math.exp(alpha * (ti - T) * (1 - gamma ** I)), rel=1e-12)
        assert lam[-1].item() == 1.0                       # t_n = T: always 1
        if I == 0:
            assert torch.equal(lam, torch.ones_like(lam))   # I = 0: the plain CD loss
        else:
            assert bool((lam[:-1] < 1).all()) and bool((lam[1:] >= lam[:-1]).all())
    # It loosens with I towards exp(alpha (t_n - T)), and a larger alpha loosens more.
    assert cd_weighting(0.002, T, alpha, gamma, 10 ** 7).item() == pytest.approx(math.exp(alpha * (0.002 - T)), rel=1e-6)
    assert cd_weighting(1.0, T, 0.25, gamma, 30000) < cd_weighting(1.0, T, 0.025, gamma, 30000)


def test_cd_distance_vanishes_on_the_exact_consistency_function():
    """For Gaussian data the true consistency function is known; the CD distance must (nearly) vanish on it
    when the online and target networks both equal it, and the term must compare the right levels."""
    mu, s, smin = 0.5, 0.4, 0.002
    teacher = GaussianMixtureScore([[mu, mu]], s)

    def exact(x, t, c=None):  # the origin of the PF-ODE trajectory through (x, t), at sigma_min
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
        return mu + (x - mu) * torch.sqrt((s * s + smin * smin) / (s * s + t * t))

    grid = karras_grid(18, smin, 80.0)
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 17, [256], generator=g)
    t_lo, t_hi = grid[k], grid[k + 1]
    x_hi = mu + torch.randn(256, 2, generator=g, dtype=torch.float64) * torch.sqrt(s * s + t_hi * t_hi).reshape(-1, 1)
    heun = cd_distance(exact(x_hi, t_hi), exact, teacher.denoise, x_hi, t_hi, t_lo, solver="heun", norm="mean")
    euler = cd_distance(exact(x_hi, t_hi), exact, teacher.denoise, x_hi, t_hi, t_lo, solver="euler", norm="mean")
    assert heun.mean().item() < 2e-5 and heun.mean().item() < 0.3 * euler.mean().item()  # only ODE-step error left
    # Comparing at the wrong level, or stepping the wrong way, is far off.
    wrong = cd_distance(exact(x_hi, t_hi), lambda x, t, c: exact(x, t_hi), teacher.denoise, x_hi, t_hi, t_lo)
    backwards = cd_distance(exact(x_hi, t_hi), exact, teacher.denoise, x_hi, t_lo, t_hi)
    assert min(wrong.mean().item(), backwards.mean().item()) > 500 * heun.mean().item()
    # Sum vs mean: a factor of the number of values.
    f_wrong = exact(x_hi, t_hi) + 0.1
    torch.testing.assert_close(cd_distance(f_wrong, exact, teacher.denoise, x_hi, t_hi, t_lo, norm="sum"),
                               2 * cd_distance(f_wrong, exact, teacher.denoise, x_hi, t_hi, t_lo, norm="mean"))


# -------------------------------------------------------------------------------------------------
# Through the loop

def _phase(tr, phase="Gmain"):
    x, c = next(tr.stream)
    z = torch.randn(x.shape[0], tr.G.z_dim)
    return PhaseContext(tr.loss, phase, tr.batch_idx, tr.cur_nimg, DInput(x, c), z, c)


def test_g_loss_is_lambda_times_the_cd_distance_and_flows_into_theta_only():
    tr = make_trainer(["cmgan"], ANALYTIC)
    plugin = tr.stack.plugins["cmgan"]
    plugin.iteration = 20000  # lambda < 1
    tr.G.requires_grad_(True)
    ctx = _phase(tr)
    fakes = ctx.sample()
    s = fakes.info["cmgan"]
    assert fakes.from_reals and torch.equal(fakes.c, ctx.reals.c)  # training pairs keep their reals' labels
    assert fakes.img is s["out"]  # cmgan mode: D sees the very output the CD term constrains
    k = s["k"]
    grid = plugin.grid.float()
    torch.testing.assert_close(s["x_hi"], ctx.reals.img + grid[k + 1].reshape(-1, 1) * ctx.z)
    torch.testing.assert_close(s["out"], tr.G(s["x_hi"], grid[k + 1]))
    terms = plugin.g_loss(ctx, fakes)
    x_lo = ode_step(plugin.teacher.denoise, s["x_hi"], grid[k + 1], grid[k], solver="heun")
    direct = (tr.G(s["x_hi"], grid[k + 1]) - plugin.target(x_lo, grid[k])).square().sum(1)  # default cd_norm sum
    # Eq. 6 with t in units of sigma_max / 80: the toy's grid is scaled to its data (std / 0.5).
    unit = float(grid[-1]) / 80.0
    assert unit == pytest.approx(tr.dataset.info()["data_std"] / 0.5) and float(grid[0]) == pytest.approx(0.002 * unit)
    lam = torch.exp(0.025 * (grid[k].double() / unit - 80.0) * (1 - 0.99995 ** 20000)).float()
    torch.testing.assert_close(terms["cd"], lam * direct, rtol=1e-5, atol=1e-7)
    # With sigma_max given as 80 the weighting is Eq. 6 as printed.
    fixed = make_trainer(["cmgan"], {"cmgan": {"teacher": "analytic", "sigma_max": 80.0, "sigma_min": 0.002}})
    fp = fixed.stack.plugins["cmgan"]
    fp.iteration = 20000
    g = fp.grid
    assert float(g[-1]) == 80.0 and float(g[0]) == 0.002
    torch.testing.assert_close(fp._weighting(g[3], 0.025),
                               torch.exp(0.025 * (g[3] - 80.0) * (1 - 0.99995 ** 20000)), rtol=1e-12, atol=0)
    terms["cd"].mean().backward()
    assert all(p.grad is not None for p in tr.G.parameters() if p.numel())
    assert all(p.grad is None for p in plugin.target.parameters())


def test_modes_cd_and_gan():
    # cd: the adversarial loss gives f_theta no gradient, so G's gradient is the CD term's alone.
    tr = make_trainer(["cmgan"], {"cmgan": {"teacher": "analytic", "mode": "cd", **SMALL}})
    tr.G.requires_grad_(True)
    ctx = _phase(tr)
    torch.manual_seed(3)
    tr.loss.accumulate_gradients(ctx)
    full = [p.grad.clone() for p in tr.G.parameters()]
    tr.G.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    ctx2 = PhaseContext(tr.loss, "Gmain", 0, 0, ctx.reals, ctx.z, ctx.c)
    fakes = ctx2.sample()
    assert not fakes.img.requires_grad and fakes.info["cmgan"]["out"].requires_grad
    tr.stack.plugins["cmgan"].g_loss(ctx2, fakes)["cd"].mean().backward()
    for a, p in zip(full, tr.G.parameters()):
        torch.testing.assert_close(a, p.grad)
    # ... with the plain CD loss's uniform weighting, whatever alpha and I are.
    plugin = tr.stack.plugins["cmgan"]
    plugin.iteration = 50000
    torch.manual_seed(4)
    ctx3 = PhaseContext(tr.loss, "Gmain", 0, 0, ctx.reals, ctx.z, ctx.c)
    fakes3 = ctx3.sample()
    s = fakes3.info["cmgan"]
    grid = plugin.grid.float()
    direct = cd_distance(s["out"], plugin.target, plugin.teacher.denoise, s["x_hi"], grid[s["k"] + 1], grid[s["k"]])
    torch.testing.assert_close(plugin.g_loss(ctx3, fakes3)["cd"], direct)
    # gan: fakes come from eps alone (Appendix A): f(T eps, T), whatever the reals; no teacher, no CD term.
    tr = make_trainer(["cmgan"], {"cmgan": {"mode": "gan", **SMALL}})
    plugin = tr.stack.plugins["cmgan"]
    assert plugin.teacher is None
    ctx = _phase(tr)
    fakes = ctx.sample()
    torch.testing.assert_close(fakes.img, tr.G(plugin.sigma_max * ctx.z, plugin.sigma_max))
    assert plugin.g_loss(ctx, fakes) is None
    stats = tr.step()
    assert "Loss/cmgan/cd" not in stats and "Loss/G/loss" in stats


def test_target_ema_update_and_exact_resume(tmp_path):
    opts = {"cmgan": {"teacher": "analytic", "target_ema": 0.9, **SMALL}}
    tr = make_trainer(["cmgan"], opts)
    plugin = tr.stack.plugins["cmgan"]
    assert state_equal(plugin.target.state_dict(), tr.G.state_dict())  # theta_bar starts at theta
    before = {k: v.clone() for k, v in plugin.target.state_dict().items()}
    tr.step()
    for k, v in plugin.target.named_parameters():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * dict(tr.G.named_parameters())[k], rtol=0, atol=1e-7)
    assert not state_equal(before, plugin.target.state_dict())
    assert plugin.iteration == 1 and tr.stack.report_stats()["cmgan/I"] == 1

    steps = 4
    for _ in range(steps - 1):
        tr.step()
    half = make_trainer(["cmgan"], opts)
    for _ in range(steps // 2):
        half.step()
    torch.save(half.checkpoint_dict(), tmp_path / "c.pt")
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    assert ckpt["plugin_state"]["cmgan"]["iteration"] == steps // 2
    resumed = make_trainer(["cmgan"], opts, resume=ckpt)
    rp = resumed.stack.plugins["cmgan"]
    assert rp.iteration == steps // 2
    assert state_equal(rp.target.state_dict(), half.stack.plugins["cmgan"].target.state_dict())
    for _ in range(steps - steps // 2):
        resumed.step()
    assert state_equal(tr.G.state_dict(), resumed.G.state_dict())
    assert state_equal(tr.D.state_dict(), resumed.D.state_dict())
    assert state_equal(plugin.target.state_dict(), rp.target.state_dict())
    assert rp.iteration == plugin.iteration == steps
    # Other grid options cannot resume this state.
    with pytest.raises(CheckpointError, match="noise grid"):
        make_trainer(["cmgan"], {"cmgan": {**opts["cmgan"], "num_steps": 10}}, resume=ckpt)
    # update_target alone, on a tiny module (last: building modules draws from the global RNG)
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    old = a.weight.detach().clone()
    update_target(a, b, 0.95)
    torch.testing.assert_close(a.weight, 0.95 * old + 0.05 * b.weight)


def test_sampler_one_step_and_multistep():
    tr = make_trainer(["cmgan"], {"cmgan": {"teacher": "analytic", "sample_ts": "0,9", **SMALL}})
    _randomize(tr.G_ema.net)
    z = torch.randn(16, 2)
    torch.manual_seed(0)
    two = tr.stack.hooks.sampler(G=tr.G_ema, z=z, c=torch.zeros(16, 0), ctx=None, G_kwargs={})
    torch.manual_seed(0)
    x = tr.G_ema.generate(z)
    smin, smax = tr.G_ema.sigma_min, tr.G_ema.sigma_max
    tau = float(karras_grid(18, smin, smax).flip(0)[9])
    want = tr.G_ema(x + math.sqrt(tau ** 2 - smin ** 2) * torch.randn_like(x), tau)
    torch.testing.assert_close(two.img, want)
    one = multistep_sample(tr.G_ema, z, None, [0], 18)
    torch.testing.assert_close(one, tr.G_ema.generate(z))
    assert parse_sample_ts(None, 18) == [0] and parse_sample_ts("0,22", 40) == [0, 22]
    for bad in ("3", "0,5,5", "0,40", "0,x"):
        with pytest.raises(ValueError):
            parse_sample_ts(bad, 40)
    with pytest.raises(PluginError, match="sample-ts"):
        make_trainer(["cmgan"], {"cmgan": {"teacher": "analytic", "sample_ts": "0,99"}})


def test_points_sigma_data_defaults_to_the_data_std():
    tr = make_trainer(["cmgan"], ANALYTIC)
    # toy:gaussians25: 5x5 grid on {-4..4}, std 0.05 -> per-coordinate std sqrt(8 + 0.0025)
    assert tr.G.sigma_data.item() == pytest.approx(math.sqrt(8.0025), rel=0.03)
    assert tr.G_ema.sigma_data.item() == tr.G.sigma_data.item()
    tr = make_trainer(["cmgan"], {"cmgan": {"teacher": "analytic", "sigma_data": 1.5, **SMALL}})
    assert tr.G.sigma_data.item() == 1.5


def _export_teacher(path, **kw):
    torch.manual_seed(0)
    arch = dict(img_resolution=16, img_channels=3, label_dim=0, model_channels=8, channel_mult=[1, 2], num_blocks=1)
    arch.update(kw)
    model = EDMPrecond({"name": "unet", "kwargs": arch}, sigma_data=0.6)
    _randomize(model.net, 1)
    score_io.export_model(model, str(path))
    return model


def test_image_run_starts_from_the_teacher_and_generates_without_it(tmp_path):
    teacher = _export_teacher(tmp_path / "t.pt")
    opts = {"cmgan": {"teacher": str(tmp_path / "t.pt"), **TINY_UNET}}
    tr = make_trainer(["cmgan"], opts, image=True, run_dir=str(tmp_path), snap=1)
    assert tr.cfg.pl_weight == 0 and tr.cfg.style_mixing == 0 and tuple(tr.cfg.g_betas) == (0.9, 0.999)
    assert tr.cfg.glr == pytest.approx(1e-4)
    for net in (tr.G, tr.G_ema, tr.stack.plugins["cmgan"].target):
        assert state_equal(net.net.state_dict(), teacher.net.state_dict())
        assert net.sigma_data.item() == pytest.approx(0.6)
    stats = tr.step()
    assert stats["Loss/cmgan/cd"] >= 0 and math.isfinite(stats["Loss/G/loss"])
    path = tr.save_checkpoint()
    (tmp_path / "t.pt").unlink()  # generation needs no teacher
    model = load_model(path, device="cpu")
    img = model.sample(torch.randn(2, model.G.z_dim))
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
    assert model.G.sigma_data.item() == pytest.approx(0.6)


def test_errors_say_what_to_do(tmp_path):
    with pytest.raises(PluginError, match="--cmgan-teacher PATH.*mode gan"):
        make_trainer(["cmgan"])
    with pytest.raises(PluginError, match="--pl-weight 0"):
        make_trainer(["cmgan"], ANALYTIC, pl_weight=2.0)
    with pytest.raises(PluginError, match="sigma-min"):
        make_trainer(["cmgan"], {"cmgan": {"teacher": "analytic", "sigma_min": 100.0}})
    with pytest.raises(PluginError, match="clr cannot run in this stack.*one_latent_per_sample.*replaced by cmgan"):
        make_trainer(["cmgan", "clr"], ANALYTIC)
    _export_teacher(tmp_path / "t.pt", model_channels=16)
    with pytest.raises(PluginError, match=r"--cmgan-channels 16 --cmgan-channel-mult 1,2 --cmgan-blocks 1.*random"):
        make_trainer(["cmgan"], {"cmgan": {"teacher": str(tmp_path / "t.pt"), **TINY_UNET}}, image=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        make_trainer(["cmgan"], {"cmgan": {"teacher": str(tmp_path / "nope.pt")}})
    assert CMGANPlugin.__doc__.splitlines()[0].startswith("CM-GAN")
