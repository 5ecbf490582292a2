"""StyleGAN2 generator and discriminator (as in StyleGAN2-ADA) plus a toy MLP backbone.

Module and parameter names mirror the official ``training/networks.py`` (e.g.
``mapping.fc0.weight``, ``synthesis.b4.const``, ``b32.conv1.affine.weight``), so the
state-dict layout is the familiar one.

Every G/D class carries ``is_image`` so callers can tell image models from the 2-D
point models used in toy experiments.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ganstack.stylegan_base.ops import (BackboneConfigError, Conv2dLayer, FullyConnectedLayer, MinibatchStdLayer, bias_act,
                               downsample2d, modulated_conv2d, normalize_2nd_moment, setup_filter,
                               upsample2d, _act_spec)

__all__ = [
    'MappingNetwork', 'SynthesisLayer', 'ToRGBLayer', 'SynthesisBlock', 'SynthesisNetwork', 'Generator',
    'DiscriminatorBlock', 'DiscriminatorEpilogue', 'Discriminator', 'MLPGenerator', 'MLPDiscriminator',
]

_NOISE_MODES = ('random', 'const', 'none')
_ARCHITECTURES = ('orig', 'skip', 'resnet')


def _check_resolution(img_resolution: int) -> int:
    if not isinstance(img_resolution, int) or img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise BackboneConfigError(f'img_resolution must be a power of two >= 4 (4, 8, 16, ...), '
                                  f'got {img_resolution!r}; resize the images to a power-of-two square.')
    return int(math.log2(img_resolution))


def _check_architecture(architecture: str) -> None:
    if architecture not in _ARCHITECTURES:
        raise BackboneConfigError(f'architecture must be one of {_ARCHITECTURES}, got {architecture!r}.')


def _check_c(c: Optional[torch.Tensor], c_dim: int, batch: Optional[int], who: str) -> None:
    """c must be [N, c_dim]; with c_dim == 0 it may be None or [N, 0]."""
    if c is None:
        if c_dim > 0:
            raise ValueError(f'{who} has c_dim={c_dim} but got c=None')
        return
    if c.ndim != 2 or c.shape[1] != c_dim or (batch is not None and c.shape[0] != batch):
        raise ValueError(f'{who} expects c of shape [{batch if batch is not None else "N"}, {c_dim}], '
                         f'got {tuple(c.shape)} (if conditioning was extended, grow c_dim accordingly)')


def _low_precision(use_fp16: bool, force_fp32: bool, device: torch.device, dtype=None) -> torch.dtype:
    # fp16 blocks only on CUDA: CPU runs stay in fp32. ``dtype`` (a block's ``lowp_dtype``, set by
    # training/speed.py for --mp-dtype) may ask for bfloat16 instead, which also runs on a CPU.
    dtype = torch.float16 if dtype is None else dtype
    if not use_fp16 or force_fp32 or (device.type != 'cuda' and dtype != torch.bfloat16):
        return torch.float32
    return dtype


# ---------------------------------------------------------------------------
# Mapping network.

class MappingNetwork(torch.nn.Module):
    """z (and/or c) -> w. ``z_dim=0`` gives the discriminator's label mapping.

    forward returns [N, num_ws, w_dim], or [N, w_dim] when ``num_ws`` is None.
    ``w_avg`` (a buffer, present when ``w_avg_beta`` is not None) tracks the mean w
    and is updated only when ``update_emas=True``.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: Optional[int], num_layers: int = 8,
                 embed_features: Optional[int] = None, layer_features: Optional[int] = None,
                 activation: str = 'lrelu', lr_multiplier: float = 0.01, w_avg_beta: Optional[float] = 0.995):
        super().__init__()
        if z_dim < 0 or c_dim < 0 or (z_dim == 0 and c_dim == 0):
            raise BackboneConfigError(f'MappingNetwork needs z_dim > 0 or c_dim > 0, got z_dim={z_dim}, c_dim={c_dim}.')
        if num_layers < 0:
            raise ValueError(f'num_layers must be >= 0, got {num_layers}')
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if num_layers == 0 and features[0] != w_dim:  # official: no layers = the normalised input itself
            raise ValueError(f'num_layers=0 needs z_dim + embed_features == w_dim, got {features[0]} != {w_dim}')

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f'fc{idx}', FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                                          lr_multiplier=lr_multiplier))
        if w_avg_beta is not None:
            self.register_buffer('w_avg', torch.zeros([w_dim]))

    def forward(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor], truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, update_emas: bool = False) -> torch.Tensor:
        x = None
        batch = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f'mapping expects z of shape [N, {self.z_dim}], '
                                 f'got {None if z is None else tuple(z.shape)}')
            batch = z.shape[0]
            x = normalize_2nd_moment(z.to(torch.float32))
        _check_c(c, self.c_dim, batch, 'MappingNetwork')
        if self.c_dim > 0:
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y.to(x.dtype)], dim=1) if x is not None else y

        for idx in range(self.num_layers):
            x = getattr(self, f'fc{idx}')(x)

        if update_emas and self.w_avg_beta is not None:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])

        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError('truncation needs w_avg tracking (w_avg_beta is None)')
            w_avg = self.w_avg.to(x.dtype)
            if self.num_ws is None or truncation_cutoff is None:
                x = w_avg.lerp(x, truncation_psi)
            else:
                head = w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f'z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}'


# ---------------------------------------------------------------------------
# Synthesis network.

class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling) + noise + bias + activation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = 'lrelu', resample_filter=(1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, channels_last: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = _act_spec(activation).def_gain

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        if use_noise:
            self.register_buffer('noise_const', torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = 'random', fused_modconv: bool = True,
                gain: float = 1) -> torch.Tensor:
        if noise_mode not in _NOISE_MODES:
            raise ValueError(f'noise_mode must be one of {_NOISE_MODES}, got {noise_mode!r}')
        styles = self.affine(w)

        noise = None
        if self.use_noise and noise_mode == 'random':
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device,
                                dtype=x.dtype) * self.noise_strength.to(x.dtype)
        elif self.use_noise and noise_mode == 'const':
            noise = self.noise_const.to(x.dtype) * self.noise_strength.to(x.dtype)

        flip_weight = (self.up == 1)
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=flip_weight,
                             fused_modconv=fused_modconv)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, '
                f'resolution={self.resolution}, up={self.up}, activation={self.activation}')


class ToRGBLayer(torch.nn.Module):
    """Modulated (not demodulated) 1x1 conv to image channels."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: Optional[float] = None, channels_last: bool = False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network ('orig', 'skip' or 'resnet')."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = 'skip', resample_filter=(1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, use_fp16: bool = False, fp16_channels_last: bool = False,
                 channels_last: Optional[bool] = None, **layer_kwargs):
        _check_architecture(architecture)
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = (use_fp16 and fp16_channels_last) if channels_last is None else bool(channels_last)
        self.register_buffer('resample_filter', setup_filter(list(resample_filter)))
        self.num_conv = 0
        self.num_torgb = 0

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == 'skip':
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == 'resnet':
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], ws: torch.Tensor,
                force_fp32: bool = False, fused_modconv: Optional[bool] = None, noise_mode: str = 'random'):
        w_iter = iter(ws.unbind(dim=1))
        dtype = _low_precision(self.use_fp16, force_fp32, ws.device, getattr(self, 'lowp_dtype', None))
        memory_format = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format
        if fused_modconv is None:
            # Fused (grouped) modconv is only a win for inference; training uses the shared conv.
            fused_modconv = (not self.training) and (dtype == torch.float32 or ws.shape[0] == 1)

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = x.to(memory_format=memory_format)
        else:
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode)
        elif self.architecture == 'resnet':
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode, gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, noise_mode=noise_mode)

        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == 'skip':
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R].

    Channels per resolution: ``min(channel_base // res, channel_max)``. The
    ``num_fp16_res`` highest resolutions run in float16 on CUDA (use
    ``conv_clamp=256`` with it, as the official configs do).
    """

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, conv_clamp: Optional[float] = None,
                 architecture: str = 'skip', **block_kwargs):
        log2 = _check_resolution(img_resolution)
        _check_architecture(architecture)
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = log2
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            is_last = (res == img_resolution)
            block = SynthesisBlock(in_channels, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, architecture=architecture,
                                   conv_clamp=conv_clamp, use_fp16=(res >= fp16_resolution), **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f'b{res}', block)

    def forward(self, ws: torch.Tensor, noise_mode: str = 'random', fused_modconv: Optional[bool] = None,
                force_fp32: bool = False, update_emas: bool = False) -> torch.Tensor:
        del update_emas  # nothing to track in StyleGAN2 synthesis; accepted for API parity
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f'synthesis expects ws of shape [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}')
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f'b{res}')
            # Consecutive blocks share one w: a block's ToRGB uses the next block's first w.
            cur_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, cur_ws, force_fp32=force_fp32, fused_modconv=fused_modconv,
                           noise_mode=noise_mode)
        return img


class Generator(torch.nn.Module):
    """StyleGAN2 generator: ``G(z, c) -> img`` in [-1, 1]-ish range (unbounded)."""

    is_image = True

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: dict = {}, synthesis_kwargs: dict = {}):  # noqa: B006 (read-only defaults)
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def mix_styles(self, ws: torch.Tensor, z: torch.Tensor, c: Optional[torch.Tensor], prob: float,
                   truncation_psi: float = 1, truncation_cutoff: Optional[int] = None) -> torch.Tensor:
        """Style mixing regularisation: with probability ``prob`` replace ws[:, cutoff:]
        (cutoff uniform in [1, num_ws)) by the ws of a fresh z. Sync-free (mask, no .item())."""
        if prob <= 0 or self.num_ws < 2:
            return ws
        cutoff = torch.randint(1, self.num_ws, [], device=ws.device)
        cutoff = torch.where(torch.rand([], device=ws.device) < prob, cutoff, torch.full_like(cutoff, self.num_ws))
        ws2 = self.mapping(torch.randn_like(z), c, truncation_psi=truncation_psi,
                           truncation_cutoff=truncation_cutoff, update_emas=False)
        mask = (torch.arange(self.num_ws, device=ws.device) >= cutoff).reshape(1, -1, 1)
        return torch.where(mask, ws2, ws)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor], truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, style_mixing_prob: float = 0.0, update_emas: bool = False,
                noise_mode: str = 'random', return_ws: bool = False, **synthesis_kwargs):
        """``synthesis_kwargs``: ``fused_modconv``, ``force_fp32``. ``return_ws=True``
        returns ``(img, ws)`` with ``ws`` the exact tensor the synthesis consumed."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        ws = self.mix_styles(ws, z, c, style_mixing_prob, truncation_psi, truncation_cutoff)
        img = self.synthesis(ws, noise_mode=noise_mode, update_emas=update_emas, **synthesis_kwargs)
        return (img, ws) if return_ws else img


# ---------------------------------------------------------------------------
# Discriminator.

class DiscriminatorBlock(torch.nn.Module):
    """One resolution of D: (fromrgb) conv0 3x3, conv1 3x3 with 2x downsampling (+ resnet skip)."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 first_layer_idx: int, architecture: str = 'resnet', activation: str = 'lrelu',
                 resample_filter=(1, 3, 3, 1), conv_clamp: Optional[float] = None, use_fp16: bool = False,
                 fp16_channels_last: bool = False, freeze_layers: int = 0, channels_last: Optional[bool] = None):
        _check_architecture(architecture)
        if in_channels not in (0, tmp_channels):
            raise ValueError('in_channels must be 0 (first block) or tmp_channels')
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = (use_fp16 and fp16_channels_last) if channels_last is None else bool(channels_last)
        self.register_buffer('resample_filter', setup_filter(list(resample_filter)))

        self.num_layers = 0

        def trainable() -> bool:  # Freeze-D: the first `freeze_layers` layers get buffers, not parameters
            idx = self.first_layer_idx + self.num_layers
            self.num_layers += 1
            return idx >= freeze_layers

        common = dict(channels_last=self.channels_last)
        if in_channels == 0 or architecture == 'skip':
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       trainable=trainable(), conv_clamp=conv_clamp, **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
                                 trainable=trainable(), conv_clamp=conv_clamp, **common)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 trainable=trainable(), resample_filter=resample_filter, conv_clamp=conv_clamp,
                                 **common)
        if architecture == 'resnet':
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=trainable(), resample_filter=resample_filter, **common)

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], force_fp32: bool = False):
        device = (x if x is not None else img).device
        dtype = _low_precision(self.use_fp16, force_fp32, device, getattr(self, 'lowp_dtype', None))
        memory_format = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format

        if x is not None:
            x = x.to(dtype=dtype, memory_format=memory_format)
        if self.in_channels == 0 or self.architecture == 'skip':
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = downsample2d(img, self.resample_filter) if self.architecture == 'skip' else None

        if self.architecture == 'resnet':
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv0(x)
            x = self.conv1(x)
        return x, img


class DiscriminatorEpilogue(torch.nn.Module):
    """4x4 head: (fromrgb), minibatch-std, conv, fc (-> features), out (-> logits or cmap projection)."""

    def __init__(self, in_channels: int, cmap_dim: int, resolution: int, img_channels: int,
                 architecture: str = 'resnet', mbstd_group_size: Optional[int] = 4, mbstd_num_channels: int = 1,
                 activation: str = 'lrelu', conv_clamp: Optional[float] = None, is_first: bool = False):
        _check_architecture(architecture)
        super().__init__()
        self.in_channels = in_channels
        self.is_first = is_first  # 4x4 discriminator: the epilogue reads the image itself
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        self.feature_dim = in_channels

        if architecture == 'skip' or is_first:  # no conv_clamp here, as in the official epilogue
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = (MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels)
                      if mbstd_num_channels > 0 else None)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, img: Optional[torch.Tensor], cmap: Optional[torch.Tensor]):
        """Returns (logits [N, 1], features [N, in_channels])."""
        if self.is_first:
            x = self.fromrgb(img.to(dtype=torch.float32, memory_format=torch.contiguous_format))
        else:
            x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            if self.architecture == 'skip':
                x = x + self.fromrgb(img.to(dtype=torch.float32, memory_format=torch.contiguous_format))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        features = self.fc(x.flatten(1))
        x = self.out(features)
        if self.cmap_dim > 0:
            x = (x * cmap.to(x.dtype)).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x, features


class Discriminator(torch.nn.Module):
    """StyleGAN2 discriminator (resnet by default) with projection conditioning.

    ``c`` may hold arbitrary real values (labels, embeddings of a diffusion step, ...):
    when ``c_dim > 0`` it goes through ``MappingNetwork(z_dim=0, c_dim, w_dim=cmap_dim,
    num_ws=None, w_avg_beta=None)`` and the logits are the projection
    ``<out(features), cmap> / sqrt(cmap_dim)``.
    """

    is_image = True

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, architecture: str = 'resnet',
                 channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 0,
                 conv_clamp: Optional[float] = None, cmap_dim: Optional[int] = None, block_kwargs: dict = {},
                 mapping_kwargs: dict = {}, epilogue_kwargs: dict = {}):  # noqa: B006 (read-only defaults)
        log2 = _check_resolution(img_resolution)
        _check_architecture(architecture)
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = log2
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)

        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        self.cmap_dim = cmap_dim

        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        cur_layer_idx = 0
        for res in self.block_resolutions:
            in_channels = channels[res] if res < img_resolution else 0
            block = DiscriminatorBlock(in_channels, channels[res], channels[res // 2], resolution=res,
                                       first_layer_idx=cur_layer_idx, use_fp16=(res >= fp16_resolution),
                                       **block_kwargs, **common)
            setattr(self, f'b{res}', block)
            cur_layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, is_first=(img_resolution == 4),
                                        **epilogue_kwargs, **common)
        self.feature_dim = self.b4.feature_dim

    def forward(self, img: torch.Tensor, c: Optional[torch.Tensor], return_features: bool = False,
                update_emas: bool = False, force_fp32: bool = False):
        """Logits [N, 1]; with ``return_features`` also the epilogue fc output [N, feature_dim].

        ``update_emas`` is accepted (and ignored) for parity with the official loss code.
        """
        del update_emas
        if img.ndim != 4 or tuple(img.shape[1:]) != (self.img_channels, self.img_resolution, self.img_resolution):
            raise ValueError(f'D expects img [N, {self.img_channels}, {self.img_resolution}, {self.img_resolution}], '
                             f'got {tuple(img.shape)}')
        _check_c(c, self.c_dim, img.shape[0], 'Discriminator')
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f'b{res}')(x, img, force_fp32=force_fp32)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        logits, features = self.b4(x, img, cmap)
        return (logits, features) if return_features else logits


# ---------------------------------------------------------------------------
# Toy MLP backbone (2-D experiments of Diffusion-GAN / SMaRt).

MLP_ACTIVATIONS = {'lrelu': lambda: torch.nn.LeakyReLU(0.2), 'relu': torch.nn.ReLU}


def _mlp(in_dim: int, hidden: int, num_hidden_layers: int, activation: str = 'lrelu',
         batchnorm: bool = False) -> torch.nn.Sequential:
    if activation not in MLP_ACTIVATIONS:
        raise ValueError(f'MLP activation must be one of {sorted(MLP_ACTIVATIONS)}, got {activation!r}')
    layers = []
    d = in_dim
    for _ in range(num_hidden_layers):
        layers += [torch.nn.Linear(d, hidden)] + ([torch.nn.BatchNorm1d(hidden)] if batchnorm else [])
        layers += [MLP_ACTIVATIONS[activation]()]
        d = hidden
    return torch.nn.Sequential(*layers)


class MLPGenerator(torch.nn.Module):
    """Toy point generator ``z [N, z_dim] (+ c) -> x [N, out_dim]``.

    ``num_hidden_layers`` x ``hidden`` units with LeakyReLU(0.2) (``activation='lrelu'``, the
    Diffusion-GAN / SMaRt toy MLP) or ReLU, optionally with BatchNorm after each hidden linear
    layer (``batchnorm=True``: PacGAN / VEEGAN's 2-D generator is 4 x 400 ReLU + BatchNorm), then
    a linear output. Plain ``nn.Linear`` layers with PyTorch's default init (no equalized lr: these
    nets are trained with ordinary Adam settings). With BatchNorm, training mode normalises with the
    batch's statistics and eval mode (G_ema, ``generate``) with the running ones, so a sample
    does not depend on the rest of its batch at inference. Image-only arguments
    (truncation, style mixing, noise_mode, ...) are accepted and ignored;
    ``return_ws=True`` gives ``(x, None)`` (there is no W space, so path-length
    regularisation does not apply).
    """

    is_image = False
    img_resolution = None
    img_channels = None
    num_ws = None
    w_dim = None

    def __init__(self, z_dim: int = 2, c_dim: int = 0, out_dim: int = 2, hidden: int = 128,
                 num_hidden_layers: int = 2, activation: str = 'lrelu', batchnorm: bool = False):
        super().__init__()
        if z_dim < 1 or c_dim < 0 or out_dim < 1 or hidden < 1 or num_hidden_layers < 1:
            raise ValueError('MLPGenerator needs z_dim, out_dim, hidden, num_hidden_layers >= 1 and c_dim >= 0')
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.out_dim = out_dim
        self.hidden = hidden
        self.body = _mlp(z_dim + c_dim, hidden, num_hidden_layers, activation, batchnorm)
        self.out = torch.nn.Linear(hidden, out_dim)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, truncation_psi: float = 1,
                truncation_cutoff: Optional[int] = None, style_mixing_prob: float = 0.0, update_emas: bool = False,
                noise_mode: str = 'random', return_ws: bool = False, **ignored):
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f'MLPGenerator expects z [N, {self.z_dim}], got {tuple(z.shape)}')
        _check_c(c, self.c_dim, z.shape[0], 'MLPGenerator')
        h = torch.cat([z, c.to(z.dtype)], dim=1) if self.c_dim > 0 else z
        x = self.out(self.body(h))
        return (x, None) if return_ws else x


class MLPDiscriminator(torch.nn.Module):
    """Toy point discriminator ``x [N, in_dim] (+ c concatenated) -> logits [N, 1]``.

    Features (``return_features=True``) are the last hidden activations, so
    ``feature_dim == hidden``. Plain ``nn.Linear`` + LeakyReLU(0.2), like the generator.
    """

    is_image = False
    img_resolution = None
    img_channels = None

    def __init__(self, c_dim: int = 0, in_dim: int = 2, hidden: int = 128, num_hidden_layers: int = 2):
        super().__init__()
        if c_dim < 0 or in_dim < 1 or hidden < 1 or num_hidden_layers < 1:
            raise ValueError('MLPDiscriminator needs in_dim, hidden, num_hidden_layers >= 1 and c_dim >= 0')
        self.c_dim = c_dim
        self.in_dim = in_dim
        self.hidden = hidden
        self.feature_dim = hidden
        self.body = _mlp(in_dim + c_dim, hidden, num_hidden_layers)
        self.out = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None, return_features: bool = False,
                update_emas: bool = False):
        del update_emas
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f'MLPDiscriminator expects x [N, {self.in_dim}], got {tuple(x.shape)}')
        _check_c(c, self.c_dim, x.shape[0], 'MLPDiscriminator')
        h = torch.cat([x, c.to(x.dtype)], dim=1) if self.c_dim > 0 else x
        features = self.body(h)
        logits = self.out(features)
        return (logits, features) if return_features else logits
