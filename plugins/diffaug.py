"""DiffAugment: differentiable augmentation of reals and fakes alike (Zhao et al., NeurIPS 2020).

Every image D sees, real or fake, in Gmain, Dmain and R1 alike, gets the policy's transforms, each
with a fresh random draw per sample (official ``DiffAugment_pytorch.py``; the Diffusion-GAN paper
compares against 'color,translation,cutout', its Table 1):

* ``color``: brightness ``x + U(-0.5, 0.5)``; saturation ``(x - mean_c) * U(0, 2) + mean_c``; contrast
  ``(x - mean_chw) * U(0.5, 1.5) + mean_chw`` (constants for images in [-1, 1]);
* ``translation``: an integer shift of up to ``ratio * size`` pixels per axis (0.125), filling with
  zeros;
* ``cutout``: zeroing one square of side ``ratio * size`` (0.5) at a random centre.

All transforms are differentiable with respect to the image (translation and cutout are a gather and
a mask), so G learns through them and R1 works through them. Unlike ADA, DiffAugment always applies
every transform of its policy (there is no probability to adapt) and has no state. Random draws use
the global torch RNG of each rank (saved in checkpoints).
"""
from __future__ import annotations

import torch

from ganstack.training.api import Capabilities, Option, OptionValues, Plugin, PluginError, hookimpl

POLICIES = ("color", "translation", "cutout")


def rand_brightness(x):
    return x + (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)


def rand_saturation(x):
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) * 2) + mean


def rand_contrast(x):
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5) + mean


def translate(x, shift_x: torch.Tensor, shift_y: torch.Tensor):
    """Shift every image by integer pixels (``shift_x/y [N]``, positive = content moves right/down),
    filling uncovered pixels with zeros. A gather, so it is differentiable to any order."""
    n, c, h, w = x.shape
    ys = torch.arange(h, device=x.device).view(1, h, 1) - shift_y.view(n, 1, 1)  # source row per output row
    xs = torch.arange(w, device=x.device).view(1, 1, w) - shift_x.view(n, 1, 1)
    valid = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    idx = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).reshape(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, idx).reshape(n, c, h, w)
    return out * valid.unsqueeze(1).to(x.dtype)


def rand_translation(x, ratio: float = 0.125):
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shift_y = torch.randint(-sy, sy + 1, size=[n], device=x.device)
    shift_x = torch.randint(-sx, sx + 1, size=[n], device=x.device)
    return translate(x, shift_x, shift_y)


def rand_cutout(x, ratio: float = 0.5):
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # Centre offsets as in the official code: even sizes may start one pixel outside the image.
    oy = torch.randint(0, h + (1 - ch % 2), size=[n, 1, 1], device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), size=[n, 1, 1], device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    y0, x0 = oy - ch // 2, ox - cw // 2
    inside = (ys >= y0) & (ys < y0 + ch) & (xs >= x0) & (xs < x0 + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


class DiffAugmentPlugin(Plugin):
    """DiffAugment: color, translation and cutout applied to reals and fakes before D."""

    capabilities = Capabilities(data="image")  # augments images; plain D inputs only

    def __init__(self):
        self._setup(OptionValues.defaults(self.add_options()))  # until configure delivers the options

    @hookimpl
    def add_options(self):
        return [
            Option("policy", str, "color,translation,cutout",
                   "comma-separated transforms, applied in this order (official default for unconditional "
                   "and few-shot StyleGAN2: color,translation,cutout)"),
            Option("translation_ratio", float, 0.125, "largest shift as a fraction of the image size (official)",
                   min=0.0, max=1.0),
            Option("cutout_ratio", float, 0.5, "side of the cut-out square as a fraction of the image size "
                   "(official)", min=0.0, max=1.0),
        ]

    @hookimpl
    def configure(self, opts, cfg, stack):
        parts = [p.strip() for p in opts.policy.split(",") if p.strip()]
        bad = [p for p in parts if p not in POLICIES]
        if bad or not parts:
            raise PluginError(f"--diffaug-policy {opts.policy!r} names unknown transform(s) {bad or '(none)'}; "
                              f"use a comma-separated subset of {', '.join(POLICIES)}.")
        self._setup(opts)

    def _setup(self, opts) -> None:
        self.policy = [p.strip() for p in opts.policy.split(",") if p.strip()]
        self.translation_ratio = opts.translation_ratio
        self.cutout_ratio = opts.cutout_ratio

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.policy:
            if part == "color":
                x = rand_contrast(rand_saturation(rand_brightness(x)))
            elif part == "translation":
                x = rand_translation(x, self.translation_ratio)
            else:
                x = rand_cutout(x, self.cutout_ratio)
        return x

    @hookimpl
    def augment_d_input(self, x):
        return x.replace(img=self.augment(x.img))
