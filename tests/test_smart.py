"""The smart plugin (SMaRt): the loss against a direct computation, the Jacobian-free surrogate, lazy
frequency, frozen score model, stacking with augments, exact resume, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_trainer, state_equal
from ganstack.plugins.score_models import EDMPrecond, GaussianMixtureScore, VPSchedule
from ganstack.plugins.score_models import io as score_io
from ganstack.plugins.smart import smart_loss
from ganstack.stylegan_base.errors import CheckpointError
from ganstack.training.api import Capabilities, DInput, PluginError, hookimpl
from ganstack.training.loss import PhaseContext

GRID = dict(data="toy:grid49?n=2048")
ANALYTIC = {"smart": {"score": "analytic"}}


def _ddpm_alpha_sigma(t):
    """DDPM's linear schedule written out independently: abar_t = prod_{i<=t} (1 - beta_i)."""
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)[np.asarray(t)]
    return np.sqrt(abar), np.sqrt(1 - abar)


def _vp_mixture_eps(x_t, t, centers, std):
    """eps_theta of a Gaussian mixture derived directly in VP form: x_t ~ sum_k N(a mu_k, (a^2 s^2 + s_t^2) I),
    eps = -sigma_t * grad log p_t(x_t)."""
    a, s = _ddpm_alpha_sigma(t)
    a, s = a[:, None, None], s[:, None, None]
    var = a ** 2 * std ** 2 + s ** 2  # [N, 1, 1]
    diff = a * centers[None] - x_t[:, None, :]  # [N, M, D]
    logp = -(diff ** 2).sum(-1, keepdims=True) / (2 * var)
    r = np.exp(logp - logp.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    score = (r * diff / var).sum(1)
    return -s[:, 0] * score


def test_smart_loss_equals_direct_computation():
    rng = np.random.default_rng(0)
    centers = np.array([[-1.0, -1.0], [1.0, 0.5], [0.0, 2.0]])
    model = GaussianMixtureScore(centers, 0.05).double()
    x = torch.from_numpy(rng.normal(size=(12, 2)))
    t = torch.from_numpy(rng.integers(40, 61, size=12))
    eps = torch.from_numpy(rng.normal(size=(12, 2)))
    loss, mse = smart_loss(model, x, t, eps, VPSchedule("linear"), weight=0.01)
    a, s = _ddpm_alpha_sigma(t.numpy())
    x_t = a[:, None] * x.numpy() + s[:, None] * eps.numpy()
    direct = ((_vp_mixture_eps(x_t, t.numpy(), centers, 0.05) - eps.numpy()) ** 2).sum(1)  # Eq. 10: ||.||_2^2
    assert np.allclose(mse.numpy(), direct, rtol=1e-9)
    assert np.allclose(loss.detach().numpy(), 0.01 * direct, rtol=1e-9)


def test_omit_jacobian_gradient_is_the_formula_with_a_frozen_score():
    torch.manual_seed(0)
    model = EDMPrecond({"name": "mlp", "kwargs": dict(point_dim=3, hidden=32, num_layers=2)})
    torch.nn.init.normal_(model.net.fc_out.weight, std=0.5)  # a score net with a non-trivial Jacobian
    model.eval().requires_grad_(False)
    sched = VPSchedule("linear")
    x = torch.randn(16, 3, requires_grad=True)
    t = torch.randint(40, 61, (16,))
    eps = torch.randn(16, 3)
    loss, _ = smart_loss(model, x, t, eps, sched, weight=0.1, omit_jacobian=True)
    (g_sur,) = torch.autograd.grad(loss.sum(), x)
    alpha = sched.alpha(t).unsqueeze(1)
    x_t = alpha * x.detach() + sched.sigma(t).unsqueeze(1) * eps
    with torch.no_grad():
        formula = 2 * 0.1 * (model.eps(x_t, t, schedule=sched) - eps) * alpha  # 2 lambda (eps_pred - eps) dx_t/dG
    assert torch.allclose(g_sur, formula, atol=1e-7)
    cos = torch.nn.functional.cosine_similarity(g_sur.flatten(), formula.flatten(), dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-6)
    # The exact gradient (through the score net's Jacobian) is a different vector.
    loss_full, _ = smart_loss(model, x, t, eps, sched, weight=0.1)
    (g_full,) = torch.autograd.grad(loss_full.sum(), x)
    assert not torch.allclose(g_full, g_sur, atol=1e-4)
    assert all(p.grad is None for p in model.parameters())


class _UnitJacobianScore(torch.nn.Module):
    """eps_theta(x_t) = x_t - b: a score network whose Jacobian is the identity."""

    label_dim = 0

    def __init__(self, b):
        super().__init__()
        self.b = b

    def eps(self, x_t, t, c=None, schedule=None):
        return x_t - self.b


def test_both_modes_give_the_exact_gradient_when_the_jacobian_is_the_identity():
    """--smart-omit-jacobian keeps Eq. 10's factor 2: with J = I its gradient is the exact one, checked
    against central finite differences of the exact loss (so switching modes does not halve lambda)."""
    torch.manual_seed(0)
    n, d, w = 6, 5, 0.3
    sched = VPSchedule("linear")
    model = _UnitJacobianScore(torch.randn(n, d, dtype=torch.float64))
    x0 = torch.randn(n, d, dtype=torch.float64)
    t = torch.randint(40, 61, (n,))
    eps = torch.randn(n, d, dtype=torch.float64)
    grads = {}
    for omit in (False, True):
        x = x0.clone().requires_grad_(True)
        loss, sq = smart_loss(model, x, t, eps, sched, weight=w, omit_jacobian=omit)
        (grads[omit],) = torch.autograd.grad(loss.sum(), x)
    h = 1e-6
    fd = torch.zeros_like(x0)
    for i in range(n):
        for j in range(d):
            up, down = x0.clone(), x0.clone()
            up[i, j] += h
            down[i, j] -= h
            lu, _ = smart_loss(model, up, t, eps, sched, weight=w)
            ld, _ = smart_loss(model, down, t, eps, sched, weight=w)
            fd[i, j] = (lu.sum() - ld.sum()) / (2 * h)
    assert torch.allclose(grads[False], fd, rtol=1e-6, atol=1e-8)
    assert torch.allclose(grads[True], fd, rtol=1e-6, atol=1e-8)
    # Eq. 10 is the squared L2 norm: summed over the sample's values, not averaged.
    x_t = sched.alpha(t).unsqueeze(1) * x0 + sched.sigma(t).unsqueeze(1) * eps
    assert torch.allclose(sq, (x_t - model.b - eps).square().sum(1))


def test_regularity_pulls_points_onto_the_grid():
    """Theorem 3.3 / Eq. 12: descending L_score moves off-manifold points to the data (toy:grid49)."""
    from ganstack.stylegan_base.datasets import open_dataset
    info = open_dataset("toy:grid49?n=490").info()
    model = GaussianMixtureScore.from_data_info(info)
    centers = model.centers.float()
    sched = VPSchedule("linear")
    torch.manual_seed(0)
    for omit in (False, True):
        x = torch.nn.Parameter(torch.rand(128, 2) * 6 - 3)
        opt = torch.optim.Adam([x], lr=0.05)

        def dist():
            return torch.cdist(x.detach(), centers).min(1).values.mean().item()
        before = dist()
        for _ in range(30):
            t = sched.sample_t(128, 40, 60)
            loss, _ = smart_loss(model, x, t, torch.randn_like(x), sched, 1.0, omit_jacobian=omit)
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
        assert before > 0.35 and dist() < 0.35 * before, (omit, before, dist())


# ------------------------------------------------------------------------------------------------
# Through the training loop

def test_lazy_frequency_gain_and_unchanged_optimizer():
    tr = make_trainer(["smart"], ANALYTIC, **GRID)
    vanilla = make_trainer([], **GRID)
    # Enabling smart never changes the base optimizer (issue #11): the same param groups as without it.
    for net in ("G_opt", "D_opt"):
        a, b = getattr(tr, net).param_groups, getattr(vanilla, net).param_groups
        assert [{k: v for k, v in g.items() if k != "params"} for g in a] == \
               [{k: v for k, v in g.items() if k != "params"} for g in b]
    assert tr.mb_ratio == vanilla.mb_ratio == {"G": 1.0, "D": 1.0}
    assert [p for p, _, _ in tr.phases(8)] == ["Gmain", "Dmain"]  # the toy MLP has no reg phase: inside Gmain
    due = [i for i in range(17) if "Loss/smart/score" in tr.step()]
    assert due == [0, 8, 16]
    # interval 3 -> steps 0, 3, 6
    tr = make_trainer(["smart"], {"smart": {"score": "analytic", "interval": 3}}, **GRID)
    assert [i for i in range(7) if "Loss/smart/score" in tr.step()] == [0, 3, 6]
    # interval 1 -> inside Gmain on every step, no gain
    tr = make_trainer(["smart"], {"smart": {"score": "analytic", "interval": 1}}, **GRID)
    assert tr.mb_ratio["G"] == 1.0 and [p for p, _, _ in tr.phases(1)] == ["Gmain", "Dmain"]
    assert all("Loss/smart/score" in tr.step() for _ in range(3))


def test_on_the_stylegan2_presets_smart_runs_in_the_base_greg_phase_and_keeps_the_optimizer(tmp_path):
    """cifar has no path length, yet G keeps StyleGAN2-ADA's lazy correction for interval 4 (lr x 4/5, beta2 ^ 4/5),
    with and without smart; smart's every-8th step is a base reg step, so its term runs in Greg with gain 8."""
    tr = make_trainer(["smart"], {"smart": {"score": _export_unet(tmp_path / "s16.pt", 16)}}, image=True, cfg="cifar",
                      pl_weight=0.0)
    vanilla = make_trainer([], image=True, cfg="cifar", pl_weight=0.0)
    for t in (tr, vanilla):
        g = t.G_opt.param_groups[0]
        assert g["lr"] == pytest.approx(t.cfg.glr * 4 / 5) and g["betas"][1] == pytest.approx(0.99 ** 0.8)
    assert tr.G_opt.param_groups[0]["lr"] == vanilla.G_opt.param_groups[0]["lr"]
    assert [r.name for r in tr.loss.lazy_due("G", 8)] == ["smart"] and tr.loss.lazy_due("G", 4) == []
    assert [p for p, _, _ in tr.phases(8)][:2] == ["Gmain", "Greg"] and "Greg" not in [p for p, _, _ in tr.phases(4)]


def test_main_phase_gradient_gains_interval_times_direct_loss():
    tr = make_trainer(["smart"], ANALYTIC, **GRID)
    G = tr.G.requires_grad_(True)
    z = torch.randn(32, G.z_dim)
    c = torch.zeros(32, 0)
    x, cr = next(tr.stream)
    torch.manual_seed(7)
    ctx = PhaseContext(tr.loss, "Gmain", 8, 0, DInput(x, cr), z, c)
    G.zero_grad(set_to_none=True)
    tr.loss.accumulate_gradients(ctx)
    via_loop = [p.grad.clone() for p in G.parameters()]
    # The same by hand: the adversarial term, then SMaRt's t and eps drawn from the global RNG after seeding.
    torch.manual_seed(7)
    plugin = tr.stack.plugins["smart"]
    img = G(z, c)
    adv = torch.nn.functional.softplus(-tr.D(img, c)).mean()
    t = torch.randint(40, 61, (32,))
    eps = torch.randn_like(img)
    loss, _ = smart_loss(plugin.model, img, t, eps, VPSchedule("linear"), 0.01)
    G.zero_grad(set_to_none=True)
    (adv + loss.mean() * 8).backward()
    for a, b in zip(via_loop, [p.grad for p in G.parameters()]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


class Doubler:
    """A pre-D augment that doubles everything D sees (to prove SMaRt ignores augments)."""

    @hookimpl
    def augment_d_input(self, x):
        return x.replace(img=x.img * 2)


def test_regularizes_g_of_z_not_the_augmented_image_and_stacks():
    losses = []
    for stack in (["smart"], ["dbl", "smart"], ["smart", "dbl"]):
        tr = make_trainer(stack, ANALYTIC, extra_plugins={"dbl": Doubler}, **GRID)
        plugin = tr.stack.plugins["smart"]
        z = torch.randn(32, tr.G.z_dim)
        x, cr = next(tr.stream)
        torch.manual_seed(3)
        ctx = PhaseContext(tr.loss, "Greg", 0, 0, DInput(x, cr), z, torch.zeros(32, 0))
        losses.append(plugin._regularity(ctx).detach())
        torch.manual_seed(3)
        img = tr.G(z, torch.zeros(32, 0))  # un-augmented G(z)
        direct, _ = smart_loss(plugin.model, img, torch.randint(40, 61, (32,)), None or torch.randn_like(img),
                               VPSchedule("linear"), 0.01)
        assert torch.allclose(losses[-1], direct)
        tr.step()
    assert torch.allclose(losses[0], losses[1]) and torch.allclose(losses[0], losses[2])


def test_conditional_gan_passes_labels_to_a_conditional_score():
    tr = make_trainer(["smart"], ANALYTIC, data="toy:grid49?n=2048&labels=1", cond=True)
    plugin = tr.stack.plugins["smart"]
    assert plugin.model.label_dim == 49
    z = torch.randn(8, tr.G.z_dim)
    c = torch.nn.functional.one_hot(torch.arange(8) * 5, 49).float()
    x, cr = next(tr.stream)
    torch.manual_seed(1)
    ctx = PhaseContext(tr.loss, "Greg", 0, 0, DInput(x[:8], cr[:8]), z, c)
    got = plugin._regularity(ctx).detach()
    torch.manual_seed(1)
    img = tr.G(z, c)
    t = torch.randint(40, 61, (8,))
    eps = torch.randn_like(img)
    with_label, _ = smart_loss(plugin.model, img, t, eps, VPSchedule("linear"), 0.01, c=c)
    uncond = GaussianMixtureScore(plugin.model.centers, plugin.model.std)
    without, _ = smart_loss(uncond, img, t, eps, VPSchedule("linear"), 0.01)
    assert torch.allclose(got, with_label) and not torch.allclose(got, without)
    tr.step()


def test_score_model_is_frozen_and_not_saved_and_resume_is_exact(tmp_path):
    steps = 10
    tr = make_trainer(["smart"], ANALYTIC, **GRID)
    plugin = tr.stack.plugins["smart"]
    before = {k: v.clone() for k, v in plugin.model.state_dict().items()}
    for _ in range(steps):
        tr.step()
    assert state_equal(before, plugin.model.state_dict())
    assert not plugin.model.training and not any(p.requires_grad for p in plugin.model.parameters())
    g_names = set(tr.G.state_dict()) | set(tr.D.state_dict())
    assert not any(n.startswith(("centers", "std", "log_weights")) for n in g_names)
    opt_params = {id(p) for g in tr.G_opt.param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for p in plugin.model.parameters())
    ckpt = tr.checkpoint_dict()
    assert "smart" not in ckpt["plugin_state"]
    assert ckpt["plugin_options"]["smart"]["score"] == "analytic"

    half = make_trainer(["smart"], ANALYTIC, **GRID)
    for _ in range(steps // 2):
        half.step()
    torch.save(half.checkpoint_dict(), tmp_path / "c.pt")
    resumed = make_trainer(["smart"], ANALYTIC, resume=torch.load(tmp_path / "c.pt", weights_only=True), **GRID)
    for _ in range(steps - steps // 2):
        resumed.step()
    assert state_equal(tr.G.state_dict(), resumed.G.state_dict())
    assert state_equal(tr.D.state_dict(), resumed.D.state_dict())


def _export_unet(path, res, label_dim=0):
    torch.manual_seed(0)
    model = EDMPrecond({"name": "unet", "kwargs": dict(img_resolution=res, img_channels=3, label_dim=label_dim,
                                                       model_channels=8, channel_mult=[1, 2], num_blocks=1)})
    torch.nn.init.normal_(model.net.conv_out.weight, std=0.05)
    score_io.export_model(model, str(path))
    return str(path)


def test_image_gan_with_a_trained_score_checkpoint(tmp_path):
    path16 = _export_unet(tmp_path / "s16.pt", 16)
    tr = make_trainer(["smart"], {"smart": {"score": path16}}, image=True)
    # path length (every 4) and SMaRt (every 8) share one Greg phase: f = 1/4, mb_ratio 0.8.
    assert tr.mb_ratio["G"] == pytest.approx(0.8)
    tr.batch_idx = 8  # a step where both are due (step 0 would add R1 too, and cost more)
    stats = tr.step()
    assert stats["Loss/smart/score"] > 0 and "Loss/pl_penalty" in stats
    # A model at another resolution is refused unless resizing is explicit.
    path8 = _export_unet(tmp_path / "s8.pt", 8)
    with pytest.raises(CheckpointError, match=r"works at 8x8, but the GAN makes 16x16.*--smart-resize area"):
        make_trainer(["smart"], {"smart": {"score": path8}}, image=True)
    tr = make_trainer(["smart"], {"smart": {"score": path8, "resize": "area", "omit_jacobian": True}}, image=True)
    plugin = tr.stack.plugins["smart"]
    x, c = next(tr.stream)
    z = torch.randn(4, tr.G.z_dim)
    torch.manual_seed(0)
    ctx = PhaseContext(tr.loss, "Greg", 0, 0, DInput(x, c), z, c)
    got = plugin._regularity(ctx)
    torch.manual_seed(0)
    img = torch.nn.functional.avg_pool2d(tr.G(z, c, style_mixing_prob=tr.cfg.style_mixing), 2)  # area = 2x2 box
    t = torch.randint(40, 61, (4,))
    direct, _ = smart_loss(plugin.model, img, t, torch.randn_like(img), VPSchedule("linear"), 0.01, omit_jacobian=True)
    assert torch.allclose(got, direct, atol=1e-6)


def test_errors_say_what_to_do(tmp_path):
    with pytest.raises(PluginError, match="needs a score model.*train-score"):
        make_trainer(["smart"], **GRID)
    with pytest.raises(CheckpointError, match="does not exist"):
        make_trainer(["smart"], {"smart": {"score": str(tmp_path / "nope.pt")}}, **GRID)
    with pytest.raises(PluginError, match=r"t_min <= t_max"):
        make_trainer(["smart"], {"smart": {"score": "analytic", "t_min": 60, "t_max": 40}}, **GRID)
    with pytest.raises(CheckpointError, match="not a built-in Gaussian mixture|is not one"):
        make_trainer(["smart"], ANALYTIC, image=True)
    with pytest.raises(PluginError, match=r"smart cannot run in this stack: it requires 'sample_fakes'.*training "
                                          r"fakes come from ddgan"):
        make_trainer(["smart", "ddgan"], ANALYTIC, **GRID)
    with pytest.raises(PluginError, match="applies to images"):
        make_trainer(["smart"], {"smart": {"score": "analytic", "resize": "area"}}, **GRID)


def test_empirical_score_on_a_point_file(tmp_path):
    pts = np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32)
    np.save(tmp_path / "pts.npy", pts)
    tr = make_trainer(["smart"], {"smart": {"score": "empirical"}}, data=str(tmp_path / "pts.npy"))
    assert tr.stack.plugins["smart"].model.data.shape == (500, 2)
    assert tr.step()["Loss/smart/score"] > 0


def test_stacks_with_ada_and_diffusion_on_images(tmp_path):
    path16 = _export_unet(tmp_path / "s16.pt", 16)
    tr = make_trainer(["ada", "diffusion", "smart"], {"smart": {"score": path16}}, image=True)
    plugin = tr.stack.plugins["smart"]
    x, c = next(tr.stream)
    z = torch.randn(4, tr.G.z_dim)
    torch.manual_seed(0)
    got = plugin._regularity(PhaseContext(tr.loss, "Greg", 8, 0, DInput(x, c), z, c))
    torch.manual_seed(0)
    img = tr.G(z, c, style_mixing_prob=tr.cfg.style_mixing)  # G(z), not what ada/diffusion show D
    direct, _ = smart_loss(plugin.model, img, torch.randint(40, 61, (4,)), torch.randn_like(img),
                           VPSchedule("linear"), 0.01)
    assert torch.allclose(got, direct, atol=1e-6)
    tr.stats.end_step()  # flush what the direct call above reported
    tr.batch_idx = 1  # a step without regularizers: Gmain + Dmain through both augments
    stats = tr.step()
    assert "Loss/G/loss" in stats and "Loss/smart/score" not in stats


def test_the_score_model_gets_the_labels_of_the_samples_the_sampler_made():
    """A sampler may choose its own labels (cmgan uses the reals'); SMaRt must score each sample with them."""
    own = torch.nn.functional.one_hot(torch.arange(8) * 3 % 49, 49).float()

    class OwnLabels:
        capabilities = Capabilities(provides="sample_fakes")  # its fakes are clean samples (smart requires it)

        @hookimpl
        def sampler(self, G, z, c, ctx, G_kwargs):
            return DInput(G(z, own), own)

    tr = make_trainer(["smart", "own"], ANALYTIC, extra_plugins={"own": OwnLabels()},
                      data="toy:grid49?n=2048&labels=1", cond=True)
    plugin = tr.stack.plugins["smart"]
    z = torch.randn(8, tr.G.z_dim)
    phase_c = torch.nn.functional.one_hot(torch.arange(8) * 5, 49).float()  # what the phase drew: not used
    x, cr = next(tr.stream)
    torch.manual_seed(1)
    got = plugin._regularity(PhaseContext(tr.loss, "Greg", 0, 0, DInput(x[:8], cr[:8]), z, phase_c)).detach()
    torch.manual_seed(1)
    img = tr.G(z, own)
    t = torch.randint(40, 61, (8,))
    eps = torch.randn_like(img)
    expected, _ = smart_loss(plugin.model, img, t, eps, VPSchedule("linear"), 0.01, c=own)
    wrong, _ = smart_loss(plugin.model, img, t, eps, VPSchedule("linear"), 0.01, c=phase_c)
    assert torch.allclose(got, expected) and not torch.allclose(got, wrong)


def test_t_range_default_follows_the_data_scale_for_points_and_the_paper_for_images():
    from types import SimpleNamespace

    from ganstack.plugins.smart import resolve_t_range

    auto = SimpleNamespace(t_min=-1, t_max=-1)
    sched = VPSchedule("linear")
    assert resolve_t_range(auto, sched, {"kind": "image"}) == (40, 60)  # CIFAR-10, Sec. 3.4
    assert resolve_t_range(auto, sched, {"kind": "points", "data_std": 2.0}) == (40, 60)  # toy:grid49's scale
    lo, hi = resolve_t_range(auto, sched, {"kind": "points", "data_std": 20.0})
    # Ten times the spacing: the noise sigma_t / alpha_t is ten times the grid49 one.
    for t, ref in ((lo, 40), (hi, 60)):
        assert float(sched.edm_sigmas[t]) == pytest.approx(10 * float(sched.edm_sigmas[ref]), rel=0.03)
    assert resolve_t_range(SimpleNamespace(t_min=25, t_max=35), sched, {"kind": "points", "data_std": 20.0}) == (25, 35)
    with pytest.raises(PluginError, match="t_min"):
        resolve_t_range(SimpleNamespace(t_min=900, t_max=100), sched, {"kind": "points", "data_std": 2.0})
