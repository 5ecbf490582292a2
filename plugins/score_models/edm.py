"""EDM-preconditioned denoisers (Karras et al. 2022): preconditioning, loss, small networks, EMA.

Numbers from the EDM paper (Table 1) and its official code (NVlabs/edm ``training/networks.py``
``EDMPrecond``, ``training/loss.py`` ``EDMLoss``, ``training/training_loop.py``):

* ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``,
  ``c_in = 1 / sqrt(sigma^2 + sd^2)``, ``c_noise = ln(sigma) / 4``, ``sd = sigma_data = 0.5``;
  ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)``.
* Training: ``ln(sigma) ~ N(P_mean = -1.2, P_std = 1.2)``, weight
  ``(sigma^2 + sd^2) / (sigma sd)^2``, loss ``weight * |D(y + n; sigma) - y|^2``.
* EMA with a half-life in images, ramped up as ``min(half-life, cur_nimg * 0.05)``.

The networks are deliberately small (CPU-trainable): a U-Net in the style of DDPM++ (GroupNorm,
SiLU, residual blocks with an additive noise/label embedding, zero-initialised output) and a
residual MLP for 2-D points.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ganstack.plugins.score_models.base import ScoreModel, sigma_as_tensor
from ganstack.training.nets import ema_beta, update_ema  # noqa: F401  (EDM's EMA is the loop's; re-exported)

SIGMA_DATA = 0.5
P_MEAN = -1.2
P_STD = 1.2


def precond_coefficients(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """EDM's ``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma`` (any shape)."""
    sd2 = sigma_data ** 2
    c_skip = sd2 / (sigma.square() + sd2)
    c_out = sigma * sigma_data / (sigma.square() + sd2).sqrt()
    c_in = 1 / (sd2 + sigma.square()).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


# ------------------------------------------------------------------------------------------------
# Networks F(c_in x, c_noise, labels)

class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal embedding of a scalar per sample (the noise level), as in DDPM++."""

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / max(half - 1, 1)
        freqs = (1 / self.max_positions) ** freqs
        arg = x.float().reshape(-1, 1) * freqs.unsqueeze(0)
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class _Embedding(torch.nn.Module):
    """Noise-level (and label) embedding shared by both networks."""

    def __init__(self, base: int, emb: int, label_dim: int):
        super().__init__()
        self.pos = PositionalEmbedding(base)
        self.fc0 = torch.nn.Linear(base, emb)
        self.fc1 = torch.nn.Linear(emb, emb)
        self.label = torch.nn.Linear(label_dim, emb, bias=False) if label_dim else None

    def forward(self, c_noise, labels):
        e = self.fc0(self.pos(c_noise))
        if self.label is not None:
            e = e + self.label(labels.to(e.dtype)) * math.sqrt(self.label.in_features)
        return self.fc1(F.silu(e))


def _norm(ch: int) -> torch.nn.GroupNorm:
    return torch.nn.GroupNorm(num_groups=min(32, max(ch // 4, 1)), num_channels=ch, eps=1e-6)


class ResBlock(torch.nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, dropout: float = 0.0):
        super().__init__()
        self.norm0 = _norm(cin)
        self.conv0 = torch.nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = torch.nn.Linear(emb, cout)
        self.norm1 = _norm(cout)
        self.dropout = dropout
        self.conv1 = torch.nn.Conv2d(cout, cout, 3, padding=1)
        torch.nn.init.zeros_(self.conv1.weight)
        torch.nn.init.zeros_(self.conv1.bias)
        self.skip = torch.nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):
        h = self.conv0(F.silu(self.norm0(x)))
        h = h + self.affine(emb).unsqueeze(-1).unsqueeze(-1)
        h = F.silu(self.norm1(h))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        return (h + (self.skip(x) if self.skip is not None else x)) * math.sqrt(0.5)


class UNet(torch.nn.Module):
    """A small U-Net ``F(x, c_noise, labels)`` for square images.

    ``channel_mult`` gives the width of each resolution level (``model_channels * mult``); the
    image is halved between levels, so ``img_resolution`` must be divisible by
    ``2 ** (len(channel_mult) - 1)``. ``num_blocks`` residual blocks per level on the way down,
    ``num_blocks + 1`` on the way up (with skip connections).
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, model_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2, 2), num_blocks: int = 2, dropout: float = 0.0):
        super().__init__()
        levels = len(channel_mult)
        if img_resolution % (2 ** (levels - 1)):
            raise ValueError(f"img_resolution {img_resolution} is not divisible by 2^{levels - 1} "
                             f"(channel_mult has {levels} levels)")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        emb = model_channels * 4
        self.embed = _Embedding(model_channels, emb, label_dim)
        self.conv_in = torch.nn.Conv2d(img_channels, model_channels, 3, padding=1)
        self.down = torch.nn.ModuleList()
        skips = [model_channels]
        ch = model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                self.down.append(ResBlock(ch, model_channels * mult, emb, dropout))
                ch = model_channels * mult
                skips.append(ch)
            if level < levels - 1:
                self.down.append(torch.nn.AvgPool2d(2))
                skips.append(ch)
        self.mid = torch.nn.ModuleList([ResBlock(ch, ch, emb, dropout), ResBlock(ch, ch, emb, dropout)])
        self.up = torch.nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), model_channels * mult, emb, dropout))
                ch = model_channels * mult
            if level > 0:
                self.up.append(torch.nn.Upsample(scale_factor=2, mode="nearest"))
        self.norm_out = _norm(ch)
        self.conv_out = torch.nn.Conv2d(ch, img_channels, 3, padding=1)
        torch.nn.init.zeros_(self.conv_out.weight)
        torch.nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, c_noise, labels=None):
        emb = F.silu(self.embed(c_noise, labels))
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class MLPNet(torch.nn.Module):
    """A residual MLP ``F(x, c_noise, labels)`` for points ``[N, point_dim]``."""

    def __init__(self, point_dim: int, label_dim: int = 0, hidden: int = 256, num_layers: int = 4,
                 emb_channels: int = 64):
        super().__init__()
        self.point_dim = point_dim
        self.label_dim = label_dim
        self.embed = _Embedding(emb_channels, hidden, label_dim)
        self.fc_in = torch.nn.Linear(point_dim, hidden)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(hidden, hidden) for _ in range(num_layers)])
        self.emb_proj = torch.nn.ModuleList([torch.nn.Linear(hidden, hidden) for _ in range(num_layers)])
        self.norms = torch.nn.ModuleList([torch.nn.LayerNorm(hidden) for _ in range(num_layers)])
        self.fc_out = torch.nn.Linear(hidden, point_dim)
        torch.nn.init.zeros_(self.fc_out.weight)
        torch.nn.init.zeros_(self.fc_out.bias)

    def forward(self, x, c_noise, labels=None):
        emb = F.silu(self.embed(c_noise, labels))
        h = self.fc_in(x)
        for fc, proj, norm in zip(self.layers, self.emb_proj, self.norms):
            h = h + fc(F.silu(norm(h) + proj(emb)))
        return self.fc_out(F.silu(h))


ARCHS = {"unet": UNet, "mlp": MLPNet}


def build_arch(arch: dict, what: str = "score-network") -> tuple:
    """``(record, net)`` for ``arch = {'name': 'unet' | 'mlp', 'kwargs': {...}}``: the network, and the
    normalised record (tuples for sequences) that a checkpoint stores to rebuild it."""
    name, kwargs = arch["name"], dict(arch["kwargs"])
    if name not in ARCHS:
        raise ValueError(f"unknown {what} architecture {name!r}; expected one of {', '.join(ARCHS)}")
    if "channel_mult" in kwargs:
        kwargs["channel_mult"] = tuple(kwargs["channel_mult"])
    return {"name": name, "kwargs": kwargs}, ARCHS[name](**kwargs)


# ------------------------------------------------------------------------------------------------
# The preconditioned denoiser

class EDMPrecond(ScoreModel):
    """``D(x; sigma, c) = c_skip x + c_out F(c_in x, c_noise, c)`` around a raw network ``F``.

    ``arch`` records how to rebuild it (``{'name': 'unet' | 'mlp', 'kwargs': {...}}``) so that a
    checkpoint holds only tensors, numbers and strings.
    """

    def __init__(self, arch: dict, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.arch, self.net = build_arch(arch)
        kwargs = self.arch["kwargs"]
        self.sigma_data = float(sigma_data)
        self.label_dim = int(kwargs.get("label_dim", 0))
        if self.arch["name"] == "unet":
            self.kind = "image"
            self.img_resolution = int(kwargs["img_resolution"])
            self.img_channels = int(kwargs["img_channels"])
        else:
            self.kind = "points"
            self.point_dim = int(kwargs["point_dim"])

    def denoise(self, x, sigma, c=None):
        c = self._check_labels(x, c)
        sigma = sigma_as_tensor(sigma, x).to(torch.float32)
        sigma = sigma.expand([x.shape[0]] + [1] * (x.ndim - 1))
        c_skip, c_out, c_in, c_noise = precond_coefficients(sigma, self.sigma_data)
        F_x = self.net((c_in * x).to(torch.float32), c_noise.flatten(), c)
        return (c_skip * x + c_out * F_x.to(torch.float32)).to(x.dtype)


class EDMLoss:
    """EDM's training loss: ``ln sigma ~ N(P_mean, P_std^2)``, weight ``(s^2 + sd^2) / (s sd)^2``.

    ``loss(net, images, labels)`` returns the per-element weighted squared error (average it).
    Draws from the global torch RNG.
    """

    def __init__(self, P_mean: float = P_MEAN, P_std: float = P_STD, sigma_data: float = SIGMA_DATA):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data

    def __call__(self, net: ScoreModel, images: torch.Tensor, labels: Optional[torch.Tensor] = None):
        rnd_normal = torch.randn([images.shape[0]] + [1] * (images.ndim - 1), device=images.device)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma.square() + self.sigma_data ** 2) / (sigma * self.sigma_data).square()
        noise = torch.randn_like(images) * sigma
        denoised = net.denoise(images + noise, sigma, labels)
        return weight * (denoised - images).square()


# ------------------------------------------------------------------------------------------------
# Sampling (for snapshots and sanity checks)

def karras_sigmas(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  device=None) -> torch.Tensor:
    """EDM's noise levels ``(sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
    decreasing, with a final 0 appended (``N + 1`` values)."""
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    s = (sigma_max ** (1 / rho) + i / max(num_steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64, device=device)])


@torch.no_grad()
def edm_sample(model: ScoreModel, latents: torch.Tensor, c: Optional[torch.Tensor] = None, num_steps: int = 18,
               sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Deterministic Heun sampling of the probability-flow ODE (EDM Algorithm 1, ``S_churn = 0``).

    ``latents`` are standard normal; the first state is ``latents * sigma_max``. Costs
    ``2 num_steps - 1`` denoiser evaluations.
    """
    sig = karras_sigmas(num_steps, sigma_min, sigma_max, rho, device=latents.device)
    x = latents.to(torch.float64) * sig[0]
    for i in range(num_steps):
        s_cur, s_next = sig[i], sig[i + 1]
        d_cur = (x - model.denoise(x.float(), s_cur.float().item(), c).double()) / s_cur
        x_next = x + (s_next - s_cur) * d_cur
        if i < num_steps - 1:
            d_next = (x_next - model.denoise(x_next.float(), s_next.float().item(), c).double()) / s_next
            x_next = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.to(latents.dtype)
