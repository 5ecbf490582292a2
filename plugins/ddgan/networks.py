"""Generators ``G(x_t, z, t) -> x_0`` and discriminators ``D(x_{t-1}, x_t, t)`` of Denoising Diffusion GAN.

Image models are made of the StyleGAN2 building blocks of ``stylegan_base`` (equalized-lr convs with
FIR resampling, modulated convs, the mapping network, the minibatch-std epilogue):

* **Generator**: a U-Net on ``x_t``. The encoder is a stack of residual down blocks; the decoder
  upsamples with *modulated* convolutions whose styles come from ``w = mapping(z)``, which plays the
  role of the paper's AdaGN (Appendix C.1: the latent goes through a mapping network and sets
  per-channel scales in every decoder layer; the mapping does not see ``t``). The step ``t`` enters
  every block as a learned bias on the features from a sinusoidal embedding (DDPM), and the output is
  squashed by ``tanh`` as in the official code, since it predicts data in [-1, 1].
* **Discriminator**: residual down blocks on the channel concatenation of ``x_{t-1}`` and ``x_t``, with
  the same additive time embedding, then StyleGAN2's epilogue (minibatch std, conv, fc, out; a label
  projection when the model is class-conditional). Appendix C.1 / Table 7.

Point (toy) models are MLPs with LeakyReLU(0.2) that take ``x_t`` and ``t`` by concatenation with the
input (Appendix C.5), sized by the run's ``--mlp-hidden`` like the backbone MLPs so that comparisons
against the one-step GAN use the same capacity.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ganstack.plugins.ddgan.schedule import timestep_embedding
from ganstack.stylegan_base.networks import (DiscriminatorEpilogue, MappingNetwork, SynthesisLayer, ToRGBLayer)
from ganstack.stylegan_base.ops import Conv2dLayer, FullyConnectedLayer

_SQRT_HALF = math.sqrt(0.5)


def _resolutions(img_resolution: int) -> list[int]:
    log2 = int(math.log2(img_resolution)) if img_resolution > 0 else 0
    if 2 ** log2 != img_resolution or img_resolution < 8:
        raise ValueError(f"DDGAN's image networks need a power-of-two resolution >= 8, got {img_resolution}")
    return [2 ** i for i in range(log2, 1, -1)]  # R, R/2, ..., 4


def _check_step(t: Optional[torch.Tensor], n: int, who: str) -> None:
    if t is None or t.dtype != torch.int64 or t.shape != (n,):
        got = None if t is None else f"{t.dtype} {tuple(t.shape)}"
        raise ValueError(f"{who} needs the diffusion step t as an int64 tensor [{n}], got {got}")


class TimeEmbedding(torch.nn.Module):
    """Sinusoidal embedding of the step index, then two fully connected layers (DDPM / NCSN++)."""

    def __init__(self, base_dim: int, out_dim: int):
        super().__init__()
        self.base_dim = base_dim
        self.fc0 = FullyConnectedLayer(base_dim, out_dim, activation="lrelu")
        self.fc1 = FullyConnectedLayer(out_dim, out_dim, activation="lrelu")

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.fc1(self.fc0(timestep_embedding(index, self.base_dim)))


def _time_dims(top_channels: int) -> tuple[int, int]:
    # Appendix C.1: the time embedding has 4x the initial channel count (128 -> 512 on CIFAR-10).
    base = min(top_channels, 128)
    return base, 4 * base


class ResDownBlock(torch.nn.Module):
    """Residual block at one resolution: +time bias, 3x3 conv, 3x3 conv with 2x FIR downsampling."""

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int, conv_clamp=None):
        super().__init__()
        self.temb = FullyConnectedLayer(temb_dim, in_channels)
        self.conv0 = Conv2dLayer(in_channels, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(in_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(in_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        y = self.skip(x, gain=_SQRT_HALF)
        x = self.conv0(x + self.temb(temb)[:, :, None, None])
        return y + self.conv1(x, gain=_SQRT_HALF)


class ModulatedLayer(torch.nn.Module):
    """A StyleGAN2 modulated conv (optionally 2x upsampling) with a time bias on its input."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, temb_dim: int,
                 up: int = 1, conv_clamp=None):
        super().__init__()
        self.temb = FullyConnectedLayer(temb_dim, in_channels)
        self.conv = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=up,
                                   use_noise=False, conv_clamp=conv_clamp)

    def forward(self, x, w, temb, fused_modconv):
        return self.conv(x + self.temb(temb)[:, :, None, None], w, fused_modconv=fused_modconv)


class DDGANImageGenerator(torch.nn.Module):
    """``G(x_t, z, t, c) -> x_0`` prediction in [-1, 1] (a U-Net conditioned on x_t; z via modulation)."""

    is_image = True
    num_ws = None  # no per-layer W+ (no style mixing / path length for this generator)

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 channel_base: int = 32768, channel_max: int = 512, map_depth: int = 3,
                 conv_clamp: Optional[float] = None, use_tanh: bool = True):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.use_tanh = use_tanh
        self.resolutions = _resolutions(img_resolution)
        ch = {res: min(channel_base // res, channel_max) for res in self.resolutions}
        base, temb_dim = _time_dims(ch[img_resolution])
        self.time = TimeEmbedding(base, temb_dim)
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=None, num_layers=map_depth)
        self.fromrgb = Conv2dLayer(img_channels, ch[img_resolution], 1, activation="lrelu", conv_clamp=conv_clamp)
        self.enc = torch.nn.ModuleList([ResDownBlock(ch[r], ch[r // 2], temb_dim, conv_clamp)
                                        for r in self.resolutions[:-1]])
        self.mid0 = ModulatedLayer(ch[4], ch[4], w_dim, 4, temb_dim, conv_clamp=conv_clamp)
        self.mid1 = ModulatedLayer(ch[4], ch[4], w_dim, 4, temb_dim, conv_clamp=conv_clamp)
        ups, merges = [], []
        for r in reversed(self.resolutions[:-1]):  # 8, 16, ..., R
            ups.append(ModulatedLayer(ch[r // 2], ch[r], w_dim, r, temb_dim, up=2, conv_clamp=conv_clamp))
            merges.append(ModulatedLayer(2 * ch[r], ch[r], w_dim, r, temb_dim, conv_clamp=conv_clamp))
        self.ups = torch.nn.ModuleList(ups)
        self.merges = torch.nn.ModuleList(merges)
        self.torgb = ToRGBLayer(ch[img_resolution], img_channels, w_dim=w_dim, conv_clamp=conv_clamp)

    def forward(self, x_t: torch.Tensor, z: torch.Tensor, t: torch.Tensor, c: Optional[torch.Tensor] = None,
                truncation_psi: float = 1, truncation_cutoff: Optional[int] = None, update_emas: bool = False,
                fused_modconv: Optional[bool] = None, **_ignored) -> torch.Tensor:
        R, C = self.img_resolution, self.img_channels
        if x_t.ndim != 4 or tuple(x_t.shape[1:]) != (C, R, R):
            raise ValueError(f"DDGAN generator expects x_t [N, {C}, {R}, {R}], got {tuple(x_t.shape)}")
        _check_step(t, x_t.shape[0], "DDGAN generator")
        w = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                         update_emas=update_emas)
        if fused_modconv is None:
            fused_modconv = not self.training
        temb = self.time(t - 1)
        h = self.fromrgb(x_t.to(torch.float32))
        skips = [h]
        for block in self.enc:
            h = block(h, temb)
            skips.append(h)
        h = self.mid1(self.mid0(skips.pop(), w, temb, fused_modconv), w, temb, fused_modconv)
        for up, merge in zip(self.ups, self.merges):
            h = up(h, w, temb, fused_modconv)
            h = merge(torch.cat([h, skips.pop()], dim=1), w, temb, fused_modconv)
        img = self.torgb(h, w, fused_modconv=fused_modconv)
        return torch.tanh(img) if self.use_tanh else img


class DDGANImageDiscriminator(torch.nn.Module):
    """``D(x_{t-1}, x_t, t, c)``: residual blocks on the channel concatenation, StyleGAN2 epilogue."""

    is_image = True

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, mbstd_group_size: Optional[int] = 4, conv_clamp: Optional[float] = None,
                 cmap_dim: Optional[int] = None):
        super().__init__()
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.resolutions = _resolutions(img_resolution)
        ch = {res: min(channel_base // res, channel_max) for res in self.resolutions}
        base, temb_dim = _time_dims(ch[img_resolution])
        self.time = TimeEmbedding(base, temb_dim)
        self.fromrgb = Conv2dLayer(2 * img_channels, ch[img_resolution], 1, activation="lrelu", conv_clamp=conv_clamp)
        self.blocks = torch.nn.ModuleList([ResDownBlock(ch[r], ch[r // 2], temb_dim, conv_clamp)
                                           for r in self.resolutions[:-1]])
        cmap_dim = (ch[4] if cmap_dim is None else cmap_dim) if c_dim > 0 else 0
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None)
        self.b4 = DiscriminatorEpilogue(ch[4], cmap_dim=cmap_dim, resolution=4, img_channels=2 * img_channels,
                                        architecture="resnet", mbstd_group_size=mbstd_group_size or None,
                                        mbstd_num_channels=1 if mbstd_group_size else 0, conv_clamp=conv_clamp)
        self.feature_dim = self.b4.feature_dim

    def forward(self, img: torch.Tensor, c: Optional[torch.Tensor], return_features: bool = False,
                x_t: Optional[torch.Tensor] = None, t: Optional[torch.Tensor] = None, update_emas: bool = False,
                **_ignored):
        del update_emas
        if x_t is None or x_t.shape != img.shape:
            raise ValueError(f"DDGAN discriminator needs x_t= of the same shape as x_{{t-1}} {tuple(img.shape)} "
                             f"(got {None if x_t is None else tuple(x_t.shape)}); it judges pairs (x_{{t-1}}, x_t)")
        _check_step(t, img.shape[0], "DDGAN discriminator")
        temb = self.time(t - 1)
        h = self.fromrgb(torch.cat([img, x_t.to(img.dtype)], dim=1))
        for block in self.blocks:
            h = block(h, temb)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        logits, features = self.b4(h, None, cmap)
        return (logits, features) if return_features else logits


# ---------------------------------------------------------------------------------------------
# Point data (2-D mixtures)

POINT_TEMB_DIM = 16


def _mlp(in_dim: int, hidden: int, layers: int) -> torch.nn.Sequential:
    mods, d = [], in_dim
    for _ in range(layers):
        mods += [torch.nn.Linear(d, hidden), torch.nn.LeakyReLU(0.2)]
        d = hidden
    return torch.nn.Sequential(*mods)


class DDGANPointGenerator(torch.nn.Module):
    """``G(x_t, z, t, c) -> x_0``: an MLP on the concatenation ``[x_t, z, emb(t), c]`` (Appendix C.5)."""

    is_image = False
    num_ws = None
    w_dim = None

    def __init__(self, z_dim: int, c_dim: int, out_dim: int, hidden: int = 128, num_hidden_layers: int = 2):
        super().__init__()
        self.z_dim, self.c_dim, self.out_dim = z_dim, c_dim, out_dim
        self.body = _mlp(out_dim + z_dim + POINT_TEMB_DIM + c_dim, hidden, num_hidden_layers)
        self.out = torch.nn.Linear(hidden, out_dim)

    def forward(self, x_t: torch.Tensor, z: torch.Tensor, t: torch.Tensor, c: Optional[torch.Tensor] = None,
                **_ignored) -> torch.Tensor:
        if x_t.ndim != 2 or x_t.shape[1] != self.out_dim or z.shape != (x_t.shape[0], self.z_dim):
            raise ValueError(f"DDGAN point generator expects x_t [N, {self.out_dim}] and z [N, {self.z_dim}], "
                             f"got {tuple(x_t.shape)} and {tuple(z.shape)}")
        _check_step(t, x_t.shape[0], "DDGAN point generator")
        parts = [x_t, z, timestep_embedding(t - 1, POINT_TEMB_DIM).to(x_t.dtype)]
        if self.c_dim:
            parts.append(c.to(x_t.dtype))
        return self.out(self.body(torch.cat(parts, dim=1)))


class DDGANPointDiscriminator(torch.nn.Module):
    """``D(x_{t-1}, x_t, t, c)``: an MLP on ``[x_{t-1}, x_t, emb(t), c]``; features = last hidden layer."""

    is_image = False

    def __init__(self, c_dim: int, in_dim: int, hidden: int = 128, num_hidden_layers: int = 2):
        super().__init__()
        self.c_dim, self.in_dim, self.feature_dim = c_dim, in_dim, hidden
        self.body = _mlp(2 * in_dim + POINT_TEMB_DIM + c_dim, hidden, num_hidden_layers)
        self.out = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None, return_features: bool = False,
                x_t: Optional[torch.Tensor] = None, t: Optional[torch.Tensor] = None, update_emas: bool = False,
                **_ignored):
        if x_t is None or x_t.shape != x.shape or x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"DDGAN point discriminator needs x_{{t-1}} and x_t of shape [N, {self.in_dim}], got "
                             f"{tuple(x.shape)} and {None if x_t is None else tuple(x_t.shape)}")
        _check_step(t, x.shape[0], "DDGAN point discriminator")
        parts = [x, x_t.to(x.dtype), timestep_embedding(t - 1, POINT_TEMB_DIM).to(x.dtype)]
        if self.c_dim:
            parts.append(c.to(x.dtype))
        features = self.body(torch.cat(parts, dim=1))
        logits = self.out(features)
        return (logits, features) if return_features else logits
