"""ADA: adaptive discriminator augmentation (Karras et al., "Training Generative Adversarial Networks
with Limited Data", NeurIPS 2020), as in StyleGAN2-ADA.

Every image D sees, real or fake, goes through a stochastic, differentiable augmentation pipeline
whose transforms are each applied with probability ``p`` times their multiplier. The default
pipeline is 'bgc' (the ADA paper's default, official ``--augpipe bgc``):

* **b**lit: x-flip, 90-degree rotations, integer translation (up to 0.125 of the image size);
* **g**eometric: isotropic scale (log2 std 0.2), arbitrary rotation (split into a pre- and a post-
  rotation so that P(any rotation) = p), anisotropic scale (log2 std 0.2), fractional translation
  (std 0.125);
* **c**olor: brightness (std 0.2), contrast (log2 std 0.5), luma flip, hue rotation (full circle),
  saturation (log2 std 1).

The longer official pipelines ('bgcf', 'bgcfn', 'bgcfnc': image-space filtering, additive noise,
cutout) and every single group are available through ``--ada-augpipe``. All constants are those of
the official ``training/augment.py``.

**Geometric resampling and R1.** R1 differentiates D's output with respect to the un-augmented real
and then backpropagates that gradient into D, so the geometric warp needs a *double* backward. The
official code shipped a custom op (``grid_sample_gradfix``) because PyTorch's ``grid_sample`` could not
be differentiated twice at the time. Here the warp is built from native ops only: reflect padding, a
2x FIR upsampling with the orthogonal 'sym6' wavelet filter (``ganstack.stylegan_base.ops``), a bilinear
resampling and a 2x FIR downsampling. The bilinear step uses ``F.grid_sample`` when this PyTorch can
differentiate it twice (checked once per device with a tiny probe; PyTorch 2.13 can) and otherwise a
gather-based bilinear sampler written with ``torch.gather``, whose derivatives of every order are
native (``--ada-resample gather`` forces it). ``tests/test_ada.py`` checks both samplers with
``gradgradcheck``, the second derivative through the whole warp against finite differences, and that
both give the same R1 gradients in a real Dreg phase.

**Adaptive p** (paper Sec. 3, official ``training_loop.py``): every ``--ada-interval`` (4) steps the
plugin averages ``r_t = E[sign(D(x_real))]`` (``Loss/signs/real``, all-reduced over GPUs by the loop)
and moves ``p`` by ``sign(r_t - target) * batch * interval / (ada_kimg * 1000)``: ``p`` can go from
0 to 1 in ``ada_kimg`` (500) kimg. ``p`` starts at ``--ada-p`` (0). The official code clamps p only
from below; here it is also clamped at 1, where every transform is already always on. With
``--ada-adaptive false`` p stays at ``--ada-p`` (the paper's fixed-p experiments). p is reported as
``ada/p`` in the status line and in stats.jsonl, and it is part of the checkpoint state together with
the step counter and the partial ``r_t`` accumulator.

At ``p = 0`` the pipeline is skipped entirely, so the input passes through bit-for-bit. Random draws
use the global torch RNG of each rank (saved in checkpoints), as the official pipeline does.

**Stacking.** Pre-D augments run in ``--plugins`` order: ``--plugins ada,diffusion`` augments and then
diffuses (the Diffusion-GAN paper's ``--aug ada``), ``--plugins diffusion,ada`` augments the diffused
sample. With ``diffaug`` both pipelines apply, in the given order (legal, but the two were not designed
to be combined). Only image data can be augmented; point data is refused at start-up.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F

from ganstack.stylegan_base import ops
from ganstack.training.api import Capabilities, Option, OptionValues, Plugin, PluginError, SignController, hookimpl

# Low-pass filters of orthogonal wavelets (coefficients from the official augment.py; facts, not code).
SYM2 = [-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025]
SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]

# Transform groups and the official --augpipe presets (StyleGAN2-ADA train.py).
_GROUPS = {
    "b": dict(xflip=1, rotate90=1, xint=1),
    "g": dict(scale=1, rotate=1, aniso=1, xfrac=1),
    "c": dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
    "f": dict(imgfilter=1),
    "n": dict(noise=1),
    "C": dict(cutout=1),
}
AUGPIPES = {"blit": "b", "geom": "g", "color": "c", "filter": "f", "noise": "n", "cutout": "C",
            "bg": "bg", "bgc": "bgc", "bgcf": "bgcf", "bgcfn": "bgcfn", "bgcfnc": "bgcfnC"}


def pipe_multipliers(augpipe: str) -> dict:
    out = {}
    for g in AUGPIPES[augpipe]:
        out.update(_GROUPS[g])
    return out


# ----------------------------------------------------------------------------------------------
# Batched homogeneous matrices.

def _stack_matrix(rows, n, device):
    """``rows``: nested lists of numbers or ``[n]`` tensors -> ``[n, R, R]`` float32."""
    flat = []
    for row in rows:
        for e in row:
            flat.append(e.to(torch.float32) if torch.is_tensor(e) else torch.full([n], float(e), device=device))
    r = len(rows)
    return torch.stack(flat, dim=-1).reshape(n, r, r)


def translate2d(tx, ty, n, device):
    return _stack_matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], n, device)


def scale2d(sx, sy, n, device):
    return _stack_matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], n, device)


def rotate2d(theta, n, device):
    c, s = torch.cos(theta), torch.sin(theta)
    return _stack_matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], n, device)


def translate3d(tx, ty, tz, n, device):
    return _stack_matrix([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]], n, device)


def scale3d(sx, sy, sz, n, device):
    return _stack_matrix([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]], n, device)


# The luma axis ``v`` of sample_color as Python floats, computed once on the CPU (same float32 values).
_LUMA_AXIS = (torch.tensor([1.0, 1.0, 1.0, 0.0]) / math.sqrt(3)).tolist()


def rotate3d(v, theta, n, device):
    """Rotation by ``theta [n]`` around the unit axis ``v [4]`` (homogeneous)."""
    vx, vy, vz = (float(a) for a in v[:3])
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return _stack_matrix([
        [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
        [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
        [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
        [0, 0, 0, 1]], n, device)


# ----------------------------------------------------------------------------------------------
# Bilinear resampling that can be differentiated twice.

def bilinear_gather(img: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample(img, grid, 'bilinear', 'zeros', align_corners=False)`` written with ``gather``.

    Every op here has native derivatives of all orders (the backward of gather is scatter_add, whose
    backward is gather), so R1 through the warp works on any PyTorch version.
    """
    n, ch, h, w = img.shape
    ho, wo = grid.shape[1], grid.shape[2]
    ix = ((grid[..., 0] + 1) * w - 1) / 2
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    x0, y0 = ix.floor(), iy.floor()
    fx, fy = ix - x0, iy - y0
    flat = img.reshape(n, ch, h * w)
    out = None
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        valid = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).to(torch.int64).reshape(n, 1, ho * wo)
        vals = flat.gather(2, idx.expand(n, ch, ho * wo))
        term = vals * (wgt * valid.to(wgt.dtype)).reshape(n, 1, ho * wo).to(vals.dtype)
        out = term if out is None else out + term
    return out.reshape(n, ch, ho, wo)


def _grid_sample(img, grid):
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


_DOUBLE_BACKWARD_OK: dict = {}


def grid_sample_double_backward_ok(device) -> bool:
    """Whether ``F.grid_sample`` on this device type supports the double backward R1 needs."""
    key = torch.device(device).type
    if key not in _DOUBLE_BACKWARD_OK:
        try:
            x = torch.randn(1, 1, 4, 4, device=device, requires_grad=True)
            g = torch.rand(1, 3, 3, 2, device=device) * 2 - 1
            w = torch.randn(1, 1, 4, 4, device=device, requires_grad=True)
            (gx,) = torch.autograd.grad(_grid_sample(x * w, g).square().sum(), x, create_graph=True)
            gx.square().sum().backward()
            _DOUBLE_BACKWARD_OK[key] = w.grad is not None and bool(torch.isfinite(w.grad).all())
        except RuntimeError:
            _DOUBLE_BACKWARD_OK[key] = False
    return _DOUBLE_BACKWARD_OK[key]


# ----------------------------------------------------------------------------------------------
# The pipeline.

class AugmentPipe:
    """The StyleGAN2-ADA augmentation pipeline, with per-transform probability multipliers.

    ``pipe(images, p)`` augments ``[N, C, H, W]`` images in [-1, 1]; every transform of a sample is
    applied independently with probability ``multiplier * p``. Constants are the official defaults.
    """

    def __init__(self, xflip=0, rotate90=0, xint=0, xint_max=0.125,
                 scale=0, rotate=0, aniso=0, xfrac=0, scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125,
                 brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0, brightness_std=0.2, contrast_std=0.5,
                 hue_max=1, saturation_std=1, imgfilter=0, imgfilter_bands=(1, 1, 1, 1), imgfilter_std=1,
                 noise=0, cutout=0, noise_std=0.1, cutout_size=0.5, resample="auto"):
        self.xflip, self.rotate90, self.xint, self.xint_max = float(xflip), float(rotate90), float(xint), float(xint_max)
        self.scale, self.rotate, self.aniso, self.xfrac = float(scale), float(rotate), float(aniso), float(xfrac)
        self.scale_std, self.rotate_max = float(scale_std), float(rotate_max)
        self.aniso_std, self.xfrac_std = float(aniso_std), float(xfrac_std)
        self.brightness, self.contrast, self.lumaflip = float(brightness), float(contrast), float(lumaflip)
        self.hue, self.saturation = float(hue), float(saturation)
        self.brightness_std, self.contrast_std = float(brightness_std), float(contrast_std)
        self.hue_max, self.saturation_std = float(hue_max), float(saturation_std)
        self.imgfilter, self.imgfilter_bands, self.imgfilter_std = float(imgfilter), list(imgfilter_bands), float(imgfilter_std)
        self.noise, self.cutout, self.noise_std, self.cutout_size = float(noise), float(cutout), float(noise_std), float(cutout_size)
        if resample not in ("auto", "grid_sample", "gather"):
            raise ValueError(f"resample must be auto, grid_sample or gather, not {resample!r}")
        self.resample = resample
        self._Hz_geom = ops.setup_filter(SYM6)  # separable 12-tap filter, normalized to sum 1
        self._Hz_fbank = torch.as_tensor(self._filter_bank(), dtype=torch.float32)
        self._cache: dict = {}

    @property
    def uses_geom(self) -> bool:
        return any(m > 0 for m in (self.xflip, self.rotate90, self.xint, self.scale, self.rotate, self.aniso, self.xfrac))

    @property
    def uses_color(self) -> bool:
        return any(m > 0 for m in (self.brightness, self.contrast, self.lumaflip, self.hue, self.saturation))

    @property
    def filter_pad(self) -> int:
        return self._Hz_fbank.shape[1] // 2

    @staticmethod
    def _filter_bank() -> np.ndarray:
        """Four band-pass filters built from the 'sym2' wavelet (official construction)."""
        lo = np.asarray(SYM2)
        hi = lo * ((-1) ** np.arange(lo.size))
        lo2 = np.convolve(lo, lo[::-1]) / 2
        hi2 = np.convolve(hi, hi[::-1]) / 2
        bank = np.eye(4, 1)
        for i in range(1, bank.shape[0]):
            bank = np.dstack([bank, np.zeros_like(bank)]).reshape(bank.shape[0], -1)[:, :-1]
            bank = scipy.signal.convolve(bank, [lo2])
            bank[i, (bank.shape[1] - hi2.size) // 2: (bank.shape[1] + hi2.size) // 2] += hi2
        return bank

    def _buffers(self, device):
        key = str(device)
        if key not in self._cache:
            self._cache[key] = (self._Hz_geom.to(device), self._Hz_fbank.to(device))
        return self._cache[key]

    def _sampler(self, device):
        if self.resample == "gather" or (self.resample == "auto" and not grid_sample_double_backward_ok(device)):
            return bilinear_gather
        return _grid_sample

    @staticmethod
    def _where(prob: float, shape, value, identity, device):
        """``value`` where ``U < prob`` (per sample), else ``identity``."""
        keep = torch.rand(shape, device=device) < prob
        return torch.where(keep, value, identity)

    def __call__(self, images: torch.Tensor, p: float) -> torch.Tensor:
        if p <= 0:
            return images
        if images.ndim != 4:
            raise ValueError(f"ADA augments images [N, C, H, W], got shape {tuple(images.shape)}")
        n, ch, h, w = images.shape
        dev = images.device
        if self.uses_geom:
            images = self._geometric(images, p)
        if self.uses_color:
            images = self._color(images, p)
        if self.imgfilter > 0:
            images = self._filter(images, p)
        if self.noise > 0:
            sigma = torch.randn([n, 1, 1, 1], device=dev).abs() * self.noise_std
            sigma = self._where(self.noise * p, [n, 1, 1, 1], sigma, torch.zeros_like(sigma), dev)
            images = images + torch.randn_like(images) * sigma.to(images.dtype)
        if self.cutout > 0:
            size = torch.full([n, 2, 1, 1, 1], self.cutout_size, device=dev)
            size = self._where(self.cutout * p, [n, 1, 1, 1, 1], size, torch.zeros_like(size), dev)
            center = torch.rand([n, 2, 1, 1, 1], device=dev)
            cx = torch.arange(w, device=dev).reshape(1, 1, 1, -1)
            cy = torch.arange(h, device=dev).reshape(1, 1, -1, 1)
            mask_x = ((cx + 0.5) / w - center[:, 0]).abs() >= size[:, 0] / 2
            mask_y = ((cy + 0.5) / h - center[:, 1]).abs() >= size[:, 1] / 2
            images = images * torch.logical_or(mask_x, mask_y).to(images.dtype)
        return images

    # -- geometric -----------------------------------------------------------------------------
    def sample_geometric(self, n: int, h: int, w: int, p: float, device) -> torch.Tensor:
        """Draw the inverse transforms ``G_inv [n, 3, 3]`` (output pixel -> input pixel, centred coords)."""
        G = torch.eye(3, device=device).expand(n, 3, 3)
        ones, zeros = torch.ones(n, device=device), torch.zeros(n, device=device)
        if self.xflip > 0:
            i = torch.floor(torch.rand([n], device=device) * 2)
            i = self._where(self.xflip * p, [n], i, zeros, device)
            G = G @ scale2d(1 - 2 * i, ones, n, device)  # its own inverse
        if self.rotate90 > 0:
            i = torch.floor(torch.rand([n], device=device) * 4)
            i = self._where(self.rotate90 * p, [n], i, zeros, device)
            G = G @ rotate2d(np.pi / 2 * i, n, device)  # inverse of a rotation by -pi/2 i
        if self.xint > 0:
            t = (torch.rand([n, 2], device=device) * 2 - 1) * self.xint_max
            t = self._where(self.xint * p, [n, 1], t, torch.zeros_like(t), device)
            G = G @ translate2d(-torch.round(t[:, 0] * w), -torch.round(t[:, 1] * h), n, device)
        if self.scale > 0:
            s = torch.exp2(torch.randn([n], device=device) * self.scale_std)
            s = self._where(self.scale * p, [n], s, ones, device)
            G = G @ scale2d(1 / s, 1 / s, n, device)
        # P(pre-rotation or post-rotation) = rotate * p.
        p_rot = 1 - math.sqrt(min(max(1 - self.rotate * p, 0.0), 1.0))
        if self.rotate > 0:
            theta = (torch.rand([n], device=device) * 2 - 1) * np.pi * self.rotate_max
            theta = self._where(p_rot, [n], theta, zeros, device)
            G = G @ rotate2d(theta, n, device)  # before anisotropic scaling
        if self.aniso > 0:
            s = torch.exp2(torch.randn([n], device=device) * self.aniso_std)
            s = self._where(self.aniso * p, [n], s, ones, device)
            G = G @ scale2d(1 / s, s, n, device)
        if self.rotate > 0:
            theta = (torch.rand([n], device=device) * 2 - 1) * np.pi * self.rotate_max
            theta = self._where(p_rot, [n], theta, zeros, device)
            G = G @ rotate2d(theta, n, device)  # after anisotropic scaling
        if self.xfrac > 0:
            t = torch.randn([n, 2], device=device) * self.xfrac_std
            t = self._where(self.xfrac * p, [n, 1], t, torch.zeros_like(t), device)
            G = G @ translate2d(-t[:, 0] * w, -t[:, 1] * h, n, device)
        return G

    def warp(self, images: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
        """Apply ``G_inv`` (centred pixel coordinates) with reflect padding and 2x oversampling."""
        n, ch, h, w = images.shape
        dev = images.device
        Hz_geom, _ = self._buffers(dev)
        G_inv = G_inv.to(torch.float32)
        cx, cy = (w - 1) / 2, (h - 1) / 2
        corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], device=dev)
        cp = G_inv @ corners.t()  # [n, 3, 4]
        hz_pad = Hz_geom.shape[0] // 4
        margin = cp[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, n * 4]
        margin = torch.cat([-margin, margin]).max(dim=1).values  # [x0, y0, x1, y1]
        margin = margin + torch.tensor([hz_pad * 2 - cx, hz_pad * 2 - cy] * 2, device=dev)
        margin = margin.clamp(min=0).minimum(torch.tensor([w - 1, h - 1] * 2, device=dev, dtype=margin.dtype))
        mx0, my0, mx1, my1 = (int(v) for v in margin.ceil().tolist())

        images = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
        G_inv = translate2d((mx0 - mx1) / 2, (my0 - my1) / 2, n, dev) @ G_inv
        images = ops.upsample2d(images, Hz_geom, up=2)
        G_inv = scale2d(2, 2, n, dev) @ G_inv @ scale2d(0.5, 0.5, n, dev)
        G_inv = translate2d(-0.5, -0.5, n, dev) @ G_inv @ translate2d(0.5, 0.5, n, dev)
        shape = [n, ch, (h + hz_pad * 2) * 2, (w + hz_pad * 2) * 2]
        G_inv = (scale2d(2 / images.shape[3], 2 / images.shape[2], n, dev) @ G_inv
                 @ scale2d(shape[3] / 2, shape[2] / 2, n, dev))
        grid = F.affine_grid(G_inv[:, :2, :].to(images.dtype), shape, align_corners=False)
        images = self._sampler(dev)(images, grid)
        return ops.downsample2d(images, Hz_geom, down=2, padding=-hz_pad * 2, flip_filter=True)

    def _geometric(self, images, p):
        n, _, h, w = images.shape
        G_inv = self.sample_geometric(n, h, w, p, images.device)
        eye = torch.eye(3, device=images.device)
        if bool((G_inv == eye).all()):  # nothing drawn for this batch: skip the resampling
            return images
        return self.warp(images, G_inv)

    # -- color ---------------------------------------------------------------------------------
    def sample_color(self, n: int, ch: int, p: float, device) -> torch.Tensor:
        """Draw the color transforms ``C [n, 4, 4]`` (homogeneous RGB)."""
        I4 = torch.eye(4, device=device)
        C = I4.expand(n, 4, 4)
        ones, zeros = torch.ones(n, device=device), torch.zeros(n, device=device)
        v = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device) / math.sqrt(3)  # luma axis
        vv = torch.outer(v, v)
        if self.brightness > 0:
            b = torch.randn([n], device=device) * self.brightness_std
            b = self._where(self.brightness * p, [n], b, zeros, device)
            C = translate3d(b, b, b, n, device) @ C
        if self.contrast > 0:
            c = torch.exp2(torch.randn([n], device=device) * self.contrast_std)
            c = self._where(self.contrast * p, [n], c, ones, device)
            C = scale3d(c, c, c, n, device) @ C
        if self.lumaflip > 0:
            i = torch.floor(torch.rand([n, 1, 1], device=device) * 2)
            i = self._where(self.lumaflip * p, [n, 1, 1], i, torch.zeros_like(i), device)
            C = (I4 - 2 * vv * i) @ C  # Householder reflection
        if self.hue > 0 and ch > 1:
            theta = (torch.rand([n], device=device) * 2 - 1) * np.pi * self.hue_max
            theta = self._where(self.hue * p, [n], theta, zeros, device)
            C = rotate3d(_LUMA_AXIS, theta, n, device) @ C  # (v.tolist() would wait for the GPU)
        if self.saturation > 0 and ch > 1:
            s = torch.exp2(torch.randn([n, 1, 1], device=device) * self.saturation_std)
            s = self._where(self.saturation * p, [n, 1, 1], s, torch.ones_like(s), device)
            C = (vv + (I4 - vv) * s) @ C
        return C

    @staticmethod
    def apply_color(images: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        n, ch, h, w = images.shape
        x = images.reshape(n, ch, h * w)
        C = C.to(images.dtype)
        if ch == 3:
            x = C[:, :3, :3] @ x + C[:, :3, 3:]
        elif ch == 1:
            Cm = C[:, :3, :].mean(dim=1, keepdim=True)  # grey: average of the RGB rows
            x = x * Cm[:, :, :3].sum(dim=2, keepdim=True) + Cm[:, :, 3:]
        else:
            raise ValueError(f"ADA's color transforms need 1 or 3 channels, got {ch}")
        return x.reshape(n, ch, h, w)

    def _color(self, images, p):
        C = self.sample_color(images.shape[0], images.shape[1], p, images.device)
        return self.apply_color(images, C)

    # -- image-space filtering -----------------------------------------------------------------
    def _filter(self, images, p):
        n, ch, h, w = images.shape
        dev = images.device
        _, bank = self._buffers(dev)
        bands = bank.shape[0]
        expected_power = torch.tensor([10.0, 1, 1, 1], device=dev) / 13  # 1/f spectrum
        g = torch.ones([n, bands], device=dev)
        for i, band_strength in enumerate(self.imgfilter_bands):
            t_i = torch.exp2(torch.randn([n], device=dev) * self.imgfilter_std)
            t_i = self._where(self.imgfilter * p * band_strength, [n], t_i, torch.ones_like(t_i), dev)
            t = torch.ones([n, bands], device=dev)
            t[:, i] = t_i
            t = t / (expected_power * t.square()).sum(dim=-1, keepdim=True).sqrt()
            g = g * t
        hz = (g @ bank).unsqueeze(1).repeat(1, ch, 1).reshape(n * ch, 1, -1).to(images.dtype)
        pad = bank.shape[1] // 2
        x = images.reshape(1, n * ch, h, w)
        x = F.pad(x, [pad, pad, pad, pad], mode="reflect")
        x = F.conv2d(x, hz.unsqueeze(2), groups=n * ch)
        x = F.conv2d(x, hz.unsqueeze(3), groups=n * ch)
        return x.reshape(n, ch, h, w)


# ----------------------------------------------------------------------------------------------
# The plugin.

class AdaPlugin(Plugin):
    """ADA: StyleGAN2-ADA's adaptive augmentation ('bgc') of reals and fakes before D."""

    capabilities = Capabilities(data="image")  # augments images; plain D inputs only

    def __init__(self):
        self._setup(OptionValues.defaults(self.add_options()).as_dict())  # until configure delivers the options

    @hookimpl
    def add_options(self):
        return [
            Option("augpipe", str, "bgc", "transform groups: b(lit), g(eom), c(olor), f(ilter), n(oise), "
                   "cutout, as StyleGAN2-ADA's --augpipe (default bgc, the paper's choice)",
                   choices=list(AUGPIPES)),
            Option("p", float, 0.0, "initial augmentation probability; the fixed p with --ada-adaptive false",
                   min=0.0, max=1.0),
            Option("adaptive", bool, True, "adapt p from the sign of D's real logits (paper Sec. 3)"),
            Option("target", float, 0.6, "target of r_t = E[sign(D(x_real))] (paper Sec. 3, official default)",
                   min=0.0, max=1.0),
            Option("ada_kimg", float, 500.0, "kimg for p to move by 1 (official default 500)", min=1e-3),
            Option("interval", int, 4, "adjust p every this many steps (official ada_interval)", min=1),
            Option("resample", str, "auto", "bilinear resampler of the geometric warp: grid_sample, gather "
                   "(pure gather, twice differentiable anywhere) or auto (grid_sample where it supports R1's "
                   "double backward)", choices=["auto", "grid_sample", "gather"]),
        ]

    @hookimpl
    def configure(self, opts, cfg, stack):
        self._setup(opts.as_dict())

    def _setup(self, o: dict) -> None:
        self.o = dict(o)
        self.pipe = AugmentPipe(**pipe_multipliers(o["augpipe"]), resample=o["resample"])
        self.ctl = SignController(target=o["target"], interval=o["interval"], speed_kimg=o["ada_kimg"],
                                  adaptive=o["adaptive"], p=float(o["p"]))

    @hookimpl
    def network_kwargs(self, role, kwargs, data_info):
        if role != "D":
            return None
        if self.pipe.uses_color and data_info.get("num_channels") not in (1, 3):
            raise PluginError(f"ADA's color transforms (--ada-augpipe {self.o['augpipe']}) need grayscale or RGB "
                              f"images, but the dataset has {data_info.get('num_channels')} channels. Use "
                              f"--ada-augpipe bg (geometric only).")
        pad = self.pipe.filter_pad
        if self.pipe.imgfilter > 0 and data_info.get("resolution", 0) <= pad:
            raise PluginError(f"ADA's image-space filtering (--ada-augpipe {self.o['augpipe']}) reflect-pads by "
                              f"{pad} pixels and needs images larger than {pad}x{pad}; the dataset is "
                              f"{data_info.get('resolution')}x{data_info.get('resolution')}. Use --ada-augpipe bgc.")
        return None

    @hookimpl
    def augment_d_input(self, x):
        if self.p <= 0:
            return None
        return x.replace(img=self.pipe(x.img, self.p))

    @property
    def p(self) -> float:
        """The augmentation probability, adapted by :class:`ganstack.training.api.SignController`."""
        return self.ctl.p

    @hookimpl
    def after_step(self, state, stats):
        self.ctl.update(stats, state.batch_size)

    @hookimpl
    def report_stats(self):
        return {"p": self.p}

    @hookimpl
    def state_dict(self):
        return self.ctl.state_dict()

    @hookimpl
    def load_state_dict(self, state):
        self.ctl.load_state_dict(state)
