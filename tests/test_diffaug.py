"""The `diffaug` plugin (DiffAugment): each transform against its formula, reals and fakes alike."""
from __future__ import annotations

import pytest
import torch

from conftest import make_config, make_trainer
from ganstack.plugins.diffaug import rand_brightness, rand_contrast, rand_cutout, rand_saturation, rand_translation, translate
from ganstack.training.api import DInput, PluginError, hookimpl
from ganstack.training.loss import PhaseContext
from ganstack.training.plugin_manager import PluginStack


def _draws(seed, n):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 1, 1, generator=g)


def test_color_transforms_follow_the_official_formulas():
    x = torch.rand(5, 3, 6, 6) * 2 - 1
    torch.manual_seed(0)
    u = _draws(0, 5)
    assert torch.allclose(rand_brightness(x), x + (u - 0.5))
    torch.manual_seed(0)
    m = x.mean(dim=1, keepdim=True)
    assert torch.allclose(rand_saturation(x), (x - m) * (u * 2) + m)
    torch.manual_seed(0)
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    assert torch.allclose(rand_contrast(x), (x - m) * (u + 0.5) + m)


def test_translation_is_a_zero_filled_shift():
    x = torch.randn(3, 2, 8, 8)
    sx, sy = torch.tensor([2, -1, 0]), torch.tensor([0, 3, -2])
    y = translate(x, sx, sy)
    for i in range(3):
        ref = torch.zeros_like(x[i])
        dx, dy = int(sx[i]), int(sy[i])
        src = x[i][:, max(0, -dy): 8 - max(0, dy), max(0, -dx): 8 - max(0, dx)]
        ref[:, max(0, dy): 8 - max(0, -dy), max(0, dx): 8 - max(0, -dx)] = src
        assert torch.equal(y[i], ref)
    # gradient: the transpose of the shift (a permutation with zeros), checked numerically
    xd = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: translate(v, torch.tensor([1, -2]), torch.tensor([-1, 0])), (xd,))
    torch.manual_seed(1)
    shifts = set()
    for _ in range(20):
        y = rand_translation(torch.ones(1, 1, 16, 16), 0.125)  # shifts of up to 2 pixels
        zero_cols = int((y[0, 0].sum(0) == 0).sum())
        zero_rows = int((y[0, 0].sum(1) == 0).sum())
        assert zero_cols <= 2 and zero_rows <= 2
        shifts.add((zero_rows, zero_cols))
    assert len(shifts) > 3


def test_cutout_zeros_one_square_per_image():
    torch.manual_seed(0)
    x = torch.ones(200, 3, 16, 16)
    y = rand_cutout(x, 0.5)
    assert torch.equal(y[:, 0], y[:, 1])  # the same mask on every channel
    zero = y[:, 0] == 0
    rows = zero.any(2).sum(1)
    cols = zero.any(1).sum(1)
    assert (zero.sum((1, 2)) == rows * cols).all()  # a single rectangle
    assert rows.max() == 8 and cols.max() == 8 and (rows >= 4).all() and (cols >= 4).all()  # side 8, clipped
    assert (rows < 8).any()  # some squares overlap the border


class Spy:
    def __init__(self):
        self.seen = []

    @hookimpl
    def augment_d_input(self, x, is_real):
        self.seen.append(is_real)


def test_reals_and_fakes_are_augmented_in_the_loop():
    stack = PluginStack(["diffaug"], {"diffaug": {"policy": "translation,cutout"}})
    stack.configure(make_config(image=True))
    x = DInput(img=torch.randn(4, 3, 16, 16), c=torch.zeros(4, 0))
    for is_real in (True, False):
        y = stack.hooks.augment_d_input(x, ctx=None, is_real=is_real)
        assert y.img.shape == x.img.shape and not torch.equal(y.img, x.img)
    # In the loop's Dmain phase, both the fakes and the reals pass through diffaug (then the spy).
    tr = make_trainer(["diffaug", "spy"], extra_plugins={"spy": Spy}, image=True)
    xr, cr = next(tr.stream)
    ctx = PhaseContext(tr.loss, "Dmain", 1, 0, DInput(xr, cr), torch.randn(4, tr.G.z_dim), torch.zeros(4, 0))
    tr.D.requires_grad_(True)
    tr.loss.accumulate_gradients(ctx)
    assert sorted(tr.stack.plugins["spy"].seen) == [False, True]


def test_options_are_checked():
    with pytest.raises(PluginError, match="unknown transform"):
        PluginStack(["diffaug"], {"diffaug": {"policy": "color,flip"}}).configure(make_config(image=True))
    with pytest.raises(PluginError, match="image data only.*use 'diffusion'"):
        make_trainer(["diffaug"])
