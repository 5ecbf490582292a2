"""The clr plugin (CLR-GAN): latent head, the two loss terms against direct computations, who gets
gradients from which term, the options, and exact resume.

Most checks use the 2-D MLP backbone (deterministic G, fast); the StyleGAN checks evaluate single phases
of the tiny 16x16 model.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_trainer, state_equal
from ganstack.plugins.clr import CLRPlugin, distance
from ganstack.stylegan_base.ops import FullyConnectedLayer
from ganstack.training import checkpoint as ckpt_io
from ganstack.training.api import DInput, PluginError, hookimpl
from ganstack.training.loss import PhaseContext
from ganstack.training.plugin_manager import PluginStack

LAMBDA1, LAMBDA2 = 5.0, 0.5  # paper Sec. 4.1


def _named_grads(module):
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in module.named_parameters()}


def _plus(a, b):
    """Sum of two gradients where None means 'no gradient reached this parameter'."""
    return b if a is None else a if b is None else a + b


def _run_phase(tr, phase, x, c, z, train=("G", "D")):
    """One phase through the real loss with the chosen networks requiring grad; returns (G, D) grads and stats."""
    for name in ("G", "D"):
        net = getattr(tr, name)
        net.requires_grad_(name in train)
        net.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    ctx = PhaseContext(tr.loss, phase, 1, 0, DInput(x, c), z, torch.zeros(len(z), 0))
    tr.loss.accumulate_gradients(ctx)
    out = _named_grads(tr.G), _named_grads(tr.D), tr.stats.end_step()
    tr.G.requires_grad_(False)
    tr.D.requires_grad_(False)
    return out


def _direct_grads(module, loss):
    module.requires_grad_(True)
    module.zero_grad(set_to_none=True)
    loss().backward()
    out = _named_grads(module)
    module.requires_grad_(False)
    return out


def _pair(opts=None, **kw):
    """A vanilla and a clr trainer with identical G and D (the head is built after both)."""
    base = make_trainer([], **kw)
    plug = make_trainer(["clr"], {"clr": opts or {}}, **kw)
    assert state_equal(base.G.state_dict(), plug.G.state_dict())
    d_plug = {k: v for k, v in plug.D.state_dict().items() if not k.startswith("clr_head.")}
    assert state_equal(base.D.state_dict(), d_plug)
    return base, plug


# ---------------------------------------------------------------------------------------------
# The head


def test_head_follows_latent_width_and_lives_in_D():
    # MLP D: the last hidden layer (48 wide) -> affine to z_dim 32.
    tr = make_trainer(["clr"], mlp_hidden=48)
    assert isinstance(tr.D.clr_head, torch.nn.Linear)
    assert (tr.D.clr_head.in_features, tr.D.clr_head.out_features) == (48, tr.G.z_dim) == (48, 32)
    # Equal widths: the official code uses the epilogue features themselves (identity head).
    tr = make_trainer(["clr"], mlp_hidden=32)
    assert isinstance(tr.D.clr_head, torch.nn.Identity)
    tr = make_trainer(["clr"], {"clr": {"head": "affine"}}, mlp_hidden=32)
    assert isinstance(tr.D.clr_head, torch.nn.Linear)
    # StyleGAN D: epilogue fc is 32 wide here (cmax 32).
    tr = make_trainer(["clr"], image=True)
    assert tr.D.feature_dim == 32 and tr.G.z_dim == 16
    assert isinstance(tr.D.clr_head, FullyConnectedLayer)
    assert (tr.D.clr_head.in_features, tr.D.clr_head.out_features) == (32, 16)
    tr = make_trainer(["clr"], image=True, z_dim=32)
    assert isinstance(tr.D.clr_head, torch.nn.Identity)
    tr = make_trainer(["clr"], {"clr": {"target": "w"}}, image=True, w_dim=24)
    assert (tr.D.clr_head.in_features, tr.D.clr_head.out_features) == (32, 24)
    # D's optimizer trains the head, D's checkpoint holds it, G_ema does not carry it.
    assert "clr_head.weight" in tr.D.state_dict()
    opt_params = {id(p) for g in tr.D_opt.param_groups for p in g["params"]}
    assert {id(p) for p in tr.D.clr_head.parameters()} <= opt_params
    assert not any("clr" in k for k in tr.G_ema.state_dict())


def test_w_target_needs_a_mapping_network():
    with pytest.raises(PluginError, match=r"requires 'w_space' \(--clr-target w\).*generator is the core's MLP toy "
                                          r"backbone"):
        make_trainer(["clr"], {"clr": {"target": "w"}})


def test_options_and_refused_stacks():
    stack = PluginStack(["clr"])
    o = stack.options["clr"]
    assert (o.lambda1, o.lambda2, o.dist, o.target, o.head) == (5.0, 0.5, "l1", "z", "auto")
    with pytest.raises(PluginError, match="expected one of l1, mse"):
        PluginStack(["clr"], {"clr": {"dist": "l2"}})
    with pytest.raises(PluginError, match="out of range"):
        PluginStack(["clr"], {"clr": {"lambda1": -1}})
    for other in ("ddgan", "cmgan"):
        with pytest.raises(PluginError, match=f"clr cannot run in this stack: it requires 'one_latent_per_sample'"
                                              f".*generator is replaced by {other}"):
            make_trainer(["clr", other])
    assert CLRPlugin.__doc__.splitlines()[0].startswith("CLR-GAN")


# ---------------------------------------------------------------------------------------------
# The two terms against direct computations


@pytest.mark.parametrize("dist", ["l1", "mse"])
def test_d_term_equals_direct_computation(dist):
    """Dmain: clr's D gradient minus vanilla's == grad of lambda1 * Dist(phi(D(G(z))), z); G gets nothing."""
    base, plug = _pair({"dist": dist}, mlp_hidden=48)
    x, c = next(base.stream)
    z = torch.randn(32, base.G.z_dim)
    _, gd_base, _ = _run_phase(base, "Dmain", x, c, z)
    gg_plug, gd_plug, stats = _run_phase(plug, "Dmain", x, c, z)
    assert all(g is None for g in gg_plug.values())  # G requires grad here, yet the term reaches no G weight
    ref = F.l1_loss if dist == "l1" else F.mse_loss  # paper Eq. 6 / official loss.py, elementwise mean
    fake = plug.G(z, c).detach()
    D = plug.D

    def term():
        return LAMBDA1 * ref(D.clr_head(D(fake, c, return_features=True)[1]), z)
    direct = _direct_grads(D, term)
    for name, g in gd_plug.items():
        expected = direct[name] if name.startswith("clr_head.") else _plus(gd_base[name], direct[name])
        assert torch.allclose(g, expected, atol=1e-6), name
    assert direct["clr_head.weight"].abs().sum() > 0
    with torch.no_grad():
        assert stats["Loss/clr/latent"] == pytest.approx(term().item(), rel=1e-5)
        assert stats["Loss/clr/latent_dist"] == pytest.approx(term().item() / LAMBDA1, rel=1e-5)


@pytest.mark.parametrize("dist", ["l1", "mse"])
def test_g_term_equals_direct_computation(dist):
    """Gmain: clr's G gradient minus vanilla's == grad of lambda2 * Dist(G(phi(D(x))), x); D gets nothing."""
    base, plug = _pair({"dist": dist}, mlp_hidden=48)
    x, c = next(base.stream)
    z = torch.randn(32, base.G.z_dim)
    gg_base, gd_base, _ = _run_phase(base, "Gmain", x, c, z)
    gg_plug, gd_plug, stats = _run_phase(plug, "Gmain", x, c, z)
    # D requires grad in this call, so the adversarial term reaches it; the reconstruction adds nothing.
    for name, g in gd_base.items():
        assert torch.equal(gd_plug[name], g), name
    assert gd_plug["clr_head.weight"] is None
    ref = F.l1_loss if dist == "l1" else F.mse_loss
    with torch.no_grad():
        latent = plug.D.clr_head(plug.D(x, c, return_features=True)[1])

    def term():
        return LAMBDA2 * ref(plug.G(latent, c), x)
    direct = _direct_grads(plug.G, term)
    for name, g in gg_plug.items():
        assert torch.allclose(g, _plus(gg_base[name], direct[name]), atol=1e-6), name
    with torch.no_grad():
        assert stats["Loss/clr/rec"] == pytest.approx(term().item(), rel=1e-5)


def test_l1_and_mse_differ_as_selected():
    a, b = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, -1.0]])
    assert distance(a, b, "l1").item() == pytest.approx((1 + 3) / 2)
    assert distance(a, b, "mse").item() == pytest.approx((1 + 9) / 2)
    _, l1 = _pair({"dist": "l1"})
    _, mse = _pair({"dist": "mse"})
    x, c = next(l1.stream)
    z = torch.randn(32, l1.G.z_dim)
    s1 = _run_phase(l1, "Gmain", x, c, z)[2]
    s2 = _run_phase(mse, "Gmain", x, c, z)[2]
    with torch.no_grad():
        rec = l1.G(l1.D.clr_head(l1.D(x, c, return_features=True)[1]), c)
    assert s1["Loss/clr/rec_dist"] == pytest.approx((rec - x).abs().mean().item(), rel=1e-5)
    assert s2["Loss/clr/rec_dist"] == pytest.approx((rec - x).square().mean().item(), rel=1e-5)


def test_stylegan_reconstruction_goes_through_mapping_with_truncation_one():
    """Image G: the G term is Dist(G(phi(x), c, psi=1, no style mixing), x); with rec_noise const it is exact."""
    base, plug = _pair({"rec_noise": "const"}, image=True)
    plug.G.mapping.w_avg.normal_()  # a truncation other than 1 would now change the result
    base.G.mapping.w_avg.copy_(plug.G.mapping.w_avg)
    x, c = next(base.stream)
    z = torch.randn(4, base.G.z_dim)
    gg_base, _, _ = _run_phase(base, "Gmain", x, c, z, train=("G",))
    gg_plug, _, stats = _run_phase(plug, "Gmain", x, c, z, train=("G",))
    with torch.no_grad():
        latent = plug.D.clr_head(plug.D(x, c, return_features=True)[1])

    def term():
        return LAMBDA2 * (plug.G(latent, c, truncation_psi=1, noise_mode="const") - x).abs().mean()
    direct = _direct_grads(plug.G, term)
    for name, g in gg_plug.items():
        assert torch.allclose(g, _plus(gg_base[name], direct[name]), atol=1e-5, rtol=1e-4), name
    with torch.no_grad():
        assert stats["Loss/clr/rec"] == pytest.approx(term().item(), rel=1e-5)


class CaptureFakeFeatures:
    """Runs before clr in d_loss and keeps what clr's head will see."""

    @hookimpl
    def d_loss(self, ctx, fake):
        self.features = fake.features.detach().clone()
        self.z, self.c = ctx.z.clone(), ctx.c.clone()


def test_w_target_is_the_mapping_output_and_gives_G_no_gradient():
    tr = make_trainer(["cap", "clr"], {"clr": {"target": "w"}}, extra_plugins={"cap": CaptureFakeFeatures},
                      image=True)
    cap = tr.stack.plugins["cap"]
    x, c = next(tr.stream)
    z = torch.randn(4, tr.G.z_dim)
    gg, gd, stats = _run_phase(tr, "Dmain", x, c, z)  # G requires grad: the w target must not reach it
    assert all(g is None for g in gg.values())
    with torch.no_grad():
        w = tr.G.mapping(cap.z, cap.c, truncation_psi=1)[:, 0]
    head = tr.D.clr_head
    direct = _direct_grads(head, lambda: LAMBDA1 * (head(cap.features) - w).abs().mean())
    assert torch.allclose(gd["clr_head.weight"], direct["weight"], atol=1e-6)
    assert torch.allclose(gd["clr_head.bias"], direct["bias"], atol=1e-6)
    with torch.no_grad():
        assert stats["Loss/clr/latent_dist"] == pytest.approx((head(cap.features) - w).abs().mean().item(), rel=1e-5)


class Shift:
    """A deterministic pre-D augment: D sees x + 0.5."""

    @hookimpl
    def augment_d_input(self, x):
        return x.replace(img=x.img + 0.5)


def test_head_sees_augmented_inputs_and_target_is_the_clean_real():
    tr = make_trainer(["shift", "clr"], extra_plugins={"shift": Shift}, mlp_hidden=48)
    x, c = next(tr.stream)
    z = torch.randn(32, tr.G.z_dim)
    g_stats = _run_phase(tr, "Gmain", x, c, z, train=("G",))[2]
    d_stats = _run_phase(tr, "Dmain", x, c, z, train=("D",))[2]
    D, G = tr.D, tr.G
    with torch.no_grad():
        phi_real = D.clr_head(D(x + 0.5, c, return_features=True)[1])
        rec = (G(phi_real, c) - x).abs().mean().item()
        phi_fake = D.clr_head(D(G(z, c) + 0.5, c, return_features=True)[1])
        lat = (phi_fake - z).abs().mean().item()
        rec_wrong = (G(phi_real, c) - (x + 0.5)).abs().mean().item()
    assert g_stats["Loss/clr/rec_dist"] == pytest.approx(rec, rel=1e-5)
    assert abs(rec - rec_wrong) > 1e-3  # the check tells the two targets apart
    assert d_stats["Loss/clr/latent_dist"] == pytest.approx(lat, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# In the real loop


class WatchGmain:
    def __init__(self):
        self.d_requires_grad = []

    @hookimpl
    def g_loss(self, ctx):
        self.d_requires_grad.append(any(p.requires_grad for p in ctx.D.parameters()))


def test_training_makes_G_and_D_inverse_to_each_other():
    """Sec. 3.2-3.3 in action (z_dim 2, so z is recoverable from a 2-D sample): within 40 steps D's head
    learns to recover z from G(z) and G learns to reconstruct reals from phi(x); only the head's D moves
    for the D term and D is frozen while G's term is evaluated."""
    tr = make_trainer(["watch", "clr"], extra_plugins={"watch": WatchGmain}, mlp_hidden=48, z_dim=2)
    head0 = tr.D.clr_head.weight.clone()
    lat, rec = [], []
    for _ in range(40):
        s = tr.step()
        lat.append(s["Loss/clr/latent_dist"])
        rec.append(s["Loss/clr/rec_dist"])
    assert not torch.equal(head0, tr.D.clr_head.weight)
    assert tr.stack.plugins["watch"].d_requires_grad and not any(tr.stack.plugins["watch"].d_requires_grad)
    assert np.mean(lat[-10:]) < 0.6 * np.mean(lat[:5]), lat
    assert np.mean(rec[-10:]) < 0.6 * np.mean(rec[:5]), rec


def test_resume_is_bitwise_exact(tmp_path):
    opts = {"clr": {"dist": "mse"}}
    straight = make_trainer(["clr"], opts, mlp_hidden=48)
    for _ in range(6):
        straight.step()
    first = make_trainer(["clr"], opts, mlp_hidden=48)
    for _ in range(3):
        first.step()
    path = tmp_path / "ckpt.pt"
    ckpt_io.atomic_save(first.checkpoint_dict(), str(path))
    del first
    torch.manual_seed(777)
    resumed = make_trainer(["clr"], opts, mlp_hidden=48, resume=ckpt_io.load(str(path)))
    for _ in range(3):
        resumed.step()
    for key in ("G", "D", "G_ema"):
        assert state_equal(getattr(straight, key).state_dict(), getattr(resumed, key).state_dict()), key
    assert state_equal(straight.D_opt.state_dict(), resumed.D_opt.state_dict())
