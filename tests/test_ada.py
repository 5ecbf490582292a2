"""The `ada` plugin: the StyleGAN2-ADA pipeline, double backward through the warp, R1, adaptive p, resume."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_config, make_trainer
from ganstack.plugins.ada import (AugmentPipe, bilinear_gather, grid_sample_double_backward_ok, pipe_multipliers,
                         _grid_sample)
from ganstack.training.api import DInput, PluginError
from ganstack.training.loop import LoopState
from ganstack.training.loss import PhaseContext
from ganstack.training.plugin_manager import PluginStack


def _smooth(n, c, size, seed=0):
    """Band-limited test images (bicubic upsampling of 4x4 noise)."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(n, c, 4, 4, generator=g), size=(size, size), mode="bicubic",
                         align_corners=True)


def _ada(**opts):
    stack = PluginStack(["ada"], {"ada": opts})
    stack.configure(make_config(image=True))
    return stack, stack.plugins["ada"]


def test_p0_passes_the_batch_through_unchanged():
    stack, _ = _ada(p=0.0)
    x = DInput(img=torch.randn(4, 3, 16, 16), c=torch.zeros(4, 0))
    assert stack.hooks.augment_d_input(x, ctx=None, is_real=True).img is x.img
    pipe = AugmentPipe(**pipe_multipliers("bgcfnc"))
    assert pipe(x.img, 0.0) is x.img


def test_bilinear_gather_matches_grid_sample():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, 9, 11, generator=g)
    grid = torch.rand(2, 7, 5, 2, generator=g) * 2.6 - 1.3  # includes samples outside the image (zeros)
    assert torch.allclose(bilinear_gather(img, grid), _grid_sample(img, grid), atol=1e-5)


@pytest.mark.parametrize("sampler", [_grid_sample, bilinear_gather])
def test_bilinear_samplers_have_a_correct_double_backward(sampler):
    """R1 through ADA needs d/dtheta of ||dD/dx||^2: the resampler's backward must itself be differentiable."""
    if sampler is _grid_sample and not grid_sample_double_backward_ok("cpu"):
        pytest.skip("this PyTorch cannot differentiate grid_sample twice; the plugin uses the gather sampler")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=g, requires_grad=True)
    grid = (torch.rand(1, 3, 3, 2, dtype=torch.float64, generator=g) * 2.4 - 1.2)
    assert torch.autograd.gradgradcheck(lambda x: sampler(x, grid).tanh(), (x,))


@pytest.mark.parametrize("resample", ["grid_sample", "gather"])
def test_r1_second_derivative_through_the_full_warp(resample):
    """d/dtheta of an R1-like penalty ||d/dx sum(w tanh(theta warp(x)))||^2, by autograd and by central
    differences, through padding, 2x FIR up/down-sampling and the bilinear warp."""
    if resample == "grid_sample" and not grid_sample_double_backward_ok("cpu"):
        pytest.skip("this PyTorch cannot differentiate grid_sample twice; the plugin uses the gather sampler")
    pipe = AugmentPipe(**pipe_multipliers("bg"), resample=resample)
    torch.manual_seed(3)
    G = pipe.sample_geometric(2, 8, 8, 1.0, "cpu")
    x0 = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    w = torch.randn(2, 1, 8, 8, dtype=torch.float64)

    def penalty(theta):
        x = x0.clone().requires_grad_(True)
        out = (w * torch.tanh(theta * pipe.warp(x, G))).sum()
        (gx,) = torch.autograd.grad(out, x, create_graph=True)
        return gx.square().sum()

    theta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(penalty(theta), theta)
    eps = 1e-5
    numeric = (penalty(torch.tensor(0.7 + eps, dtype=torch.float64))
               - penalty(torch.tensor(0.7 - eps, dtype=torch.float64))) / (2 * eps)
    assert auto.item() == pytest.approx(numeric.item(), rel=1e-5) and abs(auto.item()) > 1e-3


def test_color_transforms_are_invertible():
    pipe = AugmentPipe(**pipe_multipliers("color"))
    torch.manual_seed(0)
    C = pipe.sample_color(64, 3, 1.0, "cpu").double()
    # Only the first three rows act on RGB (saturation scales the unused [3, 3] entry, as in the official code).
    C[:, 3] = torch.tensor([0.0, 0, 0, 1], dtype=torch.float64)
    assert (C.det().abs() > 1e-6).all()
    x = torch.rand(64, 3, 8, 8, dtype=torch.float64) * 2 - 1
    y = AugmentPipe.apply_color(x, C)
    assert not torch.allclose(y, x)
    assert torch.allclose(AugmentPipe.apply_color(y, torch.linalg.inv(C)), x, atol=1e-9)


def test_blit_and_geometric_transforms_at_p1():
    """x-flips and 90-degree rotations land on the flipped/rotated image (up to the sym6 resampling of
    band-limited content); a warp followed by its inverse warp gives the image back in the interior."""
    x = _smooth(16, 3, 32)
    scale = x.abs().max().item()
    pipe = AugmentPipe(xflip=1, rotate90=1)
    torch.manual_seed(1)
    G = pipe.sample_geometric(16, 32, 32, 1.0, "cpu")
    y = pipe.warp(x, G)
    kinds = set()
    for i in range(16):
        flip = G[i, 0, 0] * G[i, 1, 1] - G[i, 0, 1] * G[i, 1, 0] < 0
        cand = {f"{'f' if f else ''}r{k}": (x[i].flip(2) if f else x[i]).rot90(k, (1, 2))
                for f in (False, True) for k in range(4)}
        best, err = min(((name, (y[i] - v).abs().max().item()) for name, v in cand.items()), key=lambda kv: kv[1])
        assert err < 0.03 * scale, (i, best, err)
        assert best.startswith("f") == bool(flip)
        kinds.add(best)
    assert len(kinds) >= 4  # several different flips/rotations were drawn
    # general geometric transforms (scale, rotation, anisotropy, fractional shift) and their inverse
    pipe = AugmentPipe(**pipe_multipliers("geom"))
    G = pipe.sample_geometric(16, 32, 32, 1.0, "cpu")
    assert not torch.allclose(G, torch.eye(3).expand(16, 3, 3))
    back = pipe.warp(pipe.warp(x, G), torch.linalg.inv(G))
    centre = slice(10, 22)  # pixel centres at -5.5 .. 5.5 in centred coordinates
    err = (back[:, :, centre, centre] - x[:, :, centre, centre]).abs().amax(dim=(1, 2, 3))
    # The round trip can only be exact where the forward warp kept the centre block inside the frame
    # (with a margin for the filters) and did not shrink it much.
    corners = torch.tensor([[-5.5, -5.5, 1], [5.5, -5.5, 1], [5.5, 5.5, 1], [-5.5, 5.5, 1]]).t()
    mapped = torch.linalg.inv(G) @ corners  # where the block lands in the warped image
    inside = mapped[:, :2].abs().amax(dim=(1, 2)) < 15.5 - 4
    det = G[:, :2, :2].det().abs()
    usable = inside & (det > 0.7) & (det < 1.4)
    assert usable.sum() >= 4
    assert (err[usable] < 0.05 * scale).all(), err[usable]


def test_probabilities_scale_with_p():
    n, p = 20000, 0.3
    torch.manual_seed(0)
    G = AugmentPipe(xflip=1).sample_geometric(n, 16, 16, p, "cpu")
    assert (G[:, 0, 0] < 0).float().mean().item() == pytest.approx(p * 0.5, abs=0.01)  # P(applied) * P(flip)
    G = AugmentPipe(rotate=1).sample_geometric(n, 16, 16, p, "cpu")
    rotated = (G[:, 0, 1].abs() > 1e-6).float().mean().item()
    assert rotated == pytest.approx(p, abs=0.015)  # P(pre or post rotation) = p
    C = AugmentPipe(brightness=1).sample_color(n, 3, p, "cpu")
    assert (C[:, 0, 3] != 0).float().mean().item() == pytest.approx(p, abs=0.015)


def test_pipelines_run_on_rgb_and_grayscale():
    for augpipe in ("bgc", "bgcfnc"):
        pipe = AugmentPipe(**pipe_multipliers(augpipe))
        for ch in (1, 3):
            x = _smooth(4, ch, 32)
            y = pipe(x, 1.0)
            assert y.shape == x.shape and torch.isfinite(y).all() and not torch.allclose(y, x)


def test_p_adapts_from_the_real_sign_statistic():
    _, plugin = _ada()
    state = LoopState(step=0, cur_nimg=0, batch_size=64, G=None, D=None, G_ema=None, cfg=None, device="cpu")
    step = 64 * 4 / (500 * 1000)
    for _ in range(3):
        plugin.after_step(state=state, stats={"Loss/signs/real": 0.9})
    assert plugin.p == 0.0  # adjusted every 4 steps only
    plugin.after_step(state=state, stats={"Loss/signs/real": 0.9})
    assert plugin.p == pytest.approx(step)
    for v in (0.5, 0.5, 0.5, 0.5):  # below target: p decreases, clamped at 0
        plugin.after_step(state=state, stats={"Loss/signs/real": v})
    assert plugin.p == 0.0
    for v in (0.9, 0.9, 0.2, 0.2):  # the interval mean 0.55 is below the target 0.6
        plugin.after_step(state=state, stats={"Loss/signs/real": v})
    assert plugin.p == 0.0
    _, fixed = _ada(p=0.25, adaptive=False)
    for _ in range(8):
        fixed.after_step(state=state, stats={"Loss/signs/real": 1.0})
    assert fixed.p == 0.25 and fixed.report_stats() == {"p": 0.25}


def test_refuses_point_data():
    with pytest.raises(PluginError, match="image data only.*use 'diffusion'"):
        make_trainer(["ada"])


@pytest.fixture(scope="module")
def ada_trainer():
    return make_trainer(["ada"], options={"ada": {"p": 1.0, "adaptive": False}}, image=True, gamma=1.0,
                        r1_interval=4)


def test_r1_through_ada_in_a_trainer(ada_trainer):
    """The loop's lazy R1 phase (Dreg) with every ADA transform on. grid_sample and the gather sampler
    give the same R1 and the same D gradients, so grid_sample's double backward is the right one."""
    tr = ada_trainer
    plugin = tr.stack.plugins["ada"]
    x, c = next(tr.stream)
    results = []
    for resample in ("grid_sample", "gather"):
        plugin.pipe.resample = resample
        tr.D.requires_grad_(True)
        tr.D.zero_grad(set_to_none=True)
        torch.manual_seed(5)  # the same augmentation draws for both samplers
        ctx = PhaseContext(tr.loss, "Dreg", 0, 0, DInput(x, c), torch.zeros(4, tr.G.z_dim), torch.zeros(4, 0))
        tr.loss.accumulate_gradients(ctx)
        stats = tr.stats.end_step()
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in tr.D.parameters()]
        results.append((stats["Loss/r1_penalty"], grads))
        tr.D.requires_grad_(False)
    plugin.pipe.resample = "auto"
    (pen_a, g_a), (pen_b, g_b) = results
    assert pen_a > 0 and pen_a == pytest.approx(pen_b, rel=1e-4)
    # float32 and a different summation order (scatter_add vs grid_sample's backward): compare by norm
    assert all((a - b).norm() <= 2e-3 * a.norm() for a, b in zip(g_a, g_b))
    names = [n for n, _ in tr.D.named_parameters()]
    assert all(a.abs().sum() > 0 for n, a in zip(names, g_a) if n.endswith("weight"))  # every weight feels R1


def test_checkpoint_keeps_p(ada_trainer, tmp_path):
    tr = ada_trainer
    plugin = tr.stack.plugins["ada"]
    plugin.ctl.p, plugin.ctl.steps, plugin.ctl.acc_sum, plugin.ctl.acc_n = 0.375, 7, 1.5, 3
    torch.save(tr.checkpoint_dict(), tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    resumed = make_trainer(["ada"], options={"ada": {"p": 1.0, "adaptive": False}}, image=True, gamma=1.0,
                           r1_interval=4, resume=loaded)
    rp = resumed.stack.plugins["ada"]
    assert (rp.p, rp.ctl.steps, rp.ctl.acc_sum, rp.ctl.acc_n) == (0.375, 7, 1.5, 3)
