"""Pure-PyTorch building blocks for StyleGAN2: FIR resampling, bias+activation,
resampling convolutions, modulated convolutions and equalized-learning-rate layers.

Everything here is written with native differentiable ops only, so

* gradients of any order work (R1 and path-length regularisation take
  ``create_graph=True`` gradients through every op),
* ``torch.autocast`` (bfloat16 / float16) and ``torch.compile`` work without
  special cases, and
* there is nothing to build: no custom CUDA extension.

Semantics follow the StyleGAN2-ADA reference ops (``upfirdn2d``, ``bias_act``,
``conv2d_resample``, ``modulated_conv2d``) so networks built from them behave like
the official ones and can share checkpoints' parameter layout.

Speed notes (why the code looks the way it does):

* ``upfirdn2d`` never materialises a zero-inserted image. Upsampling is a grouped
  ``conv_transpose2d`` with stride ``up`` whose output is cropped in place through
  the transposed-conv ``padding`` argument; downsampling is a strided depthwise
  ``conv2d`` that only computes the pixels that are kept.
* In eager mode every FIR is an autograd.Function whose backward is the adjoint FIR, so R1's and
  path length's gradients of gradients run FIR forwards too: PyTorch's own double backward of a
  grouped conv loops over the groups (one conv launch per channel, 512 per FIR layer at 32x32).
* Inside ``torch.compile`` the up=1 FIR (which is what the heavy layers use: the
  filter after every upsampling conv and before every downsampling conv) is
  written as a weighted sum of shifted slices. Inductor fuses that into one
  kernel together with the neighbouring demodulation, noise, bias and activation,
  which a depthwise convolution call would block. Select explicitly with
  :func:`set_fir_impl`.
* Non-fused modulated convolution computes the demodulation coefficients with a
  single ``[N, I] x [I, O]`` matmul instead of building the ``[N, O, I, k, k]``
  per-sample weight tensor.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ganstack.stylegan_base.errors import GanstackError

__all__ = [
    'setup_filter', 'upfirdn2d', 'upfirdn2d_ref', 'upsample2d', 'downsample2d', 'filter2d',
    'bias_act', 'activation_funcs', 'conv2d_resample', 'modulated_conv2d',
    'normalize_2nd_moment', 'FullyConnectedLayer', 'Conv2dLayer', 'MinibatchStdLayer',
    'set_fir_impl', 'get_fir_impl', 'reference_ops', 'BackboneConfigError',
]


class BackboneConfigError(GanstackError, ValueError):
    """A network was configured or called in a way a user setting can cause (resolution,
    architecture, minibatch-std group vs batch size). A ValueError too, so plain callers can catch it."""

# ---------------------------------------------------------------------------
# Implementation selection.

_FIR_IMPLS = ('auto', 'fold', 'conv', 'taps', 'ref')
_fir_impl = 'auto'


def set_fir_impl(impl: str) -> None:
    """Choose how ``upfirdn2d`` runs when called with ``impl='auto'``.

    ``'auto'`` (default): depthwise conv in eager mode, shifted-slice taps inside ``torch.compile``
    for up=1. ``'conv'``: a depthwise (grouped) conv or transposed conv. ``'fold'``: the channels
    folded into the batch, one single-channel (groups=1) conv (6-12x slower than ``'conv'`` on a CPU;
    for measurement on GPUs). ``'taps'``: a weighted sum of shifted slices (up=1). ``'ref'``: the slow
    zero-insertion reference (for comparisons).
    """
    if impl not in _FIR_IMPLS:
        raise ValueError(f'fir impl must be one of {_FIR_IMPLS}, got {impl!r}')
    global _fir_impl
    _fir_impl = impl


def get_fir_impl() -> str:
    return _fir_impl


_reference_mode = False


@contextlib.contextmanager
def reference_ops(enabled: bool = True):
    """Route all ops through the straightforward reference formulations.

    Inside this context ``upfirdn2d`` uses zero-insertion + full depthwise conv and
    ``modulated_conv2d`` builds the per-sample ``[N, O, I, k, k]`` weights to get the
    demodulation coefficients, i.e. what the official code's pure-PyTorch fallback
    does. Used by tests (fast == reference) and by ``benchmarks/bench_ops.py``.
    """
    global _reference_mode
    prev = _reference_mode
    _reference_mode = bool(enabled)
    try:
        yield
    finally:
        _reference_mode = prev


def _is_compiling() -> bool:
    fn = getattr(getattr(torch, 'compiler', None), 'is_compiling', None)
    return bool(fn()) if fn is not None else False


# ---------------------------------------------------------------------------
# Argument parsing.

def _parse_scaling(scaling) -> Tuple[int, int]:
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    sx, sy = (int(s) for s in scaling)
    if sx < 1 or sy < 1:
        raise ValueError(f'scaling factors must be >= 1, got {scaling}')
    return sx, sy


def _parse_padding(padding) -> Tuple[int, int, int, int]:
    if isinstance(padding, int):
        padding = [padding, padding]
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        return px, px, py, py
    if len(padding) != 4:
        raise ValueError(f'padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding}')
    px0, px1, py0, py1 = padding
    return px0, px1, py0, py1


def _get_filter_size(f: Optional[torch.Tensor]) -> Tuple[int, int]:
    """Returns (width, height) of a filter; 1-D filters are separable (same taps both ways)."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f'filter must be 1-D (separable) or 2-D, got shape {tuple(f.shape)}')
    return int(f.shape[-1]), int(f.shape[0])


# ---------------------------------------------------------------------------
# FIR filters.

def setup_filter(f=(1, 3, 3, 1), device=torch.device('cpu'), normalize: bool = True,
                 flip_filter: bool = False, gain: float = 1, separable: Optional[bool] = None) -> torch.Tensor:
    """Build a float32 FIR filter for :func:`upfirdn2d`.

    ``f`` is a list/array/tensor of taps (1-D) or a 2-D kernel, a scalar, or None
    (identity). A 1-D input becomes the 2-D outer product unless ``separable``
    (default: separable only for >= 8 taps, as the reference does; a 2-D [4, 4]
    buffer for the default [1,3,3,1] keeps the official state-dict layout).
    ``normalize`` makes the 2-D filter sum to 1.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f.reshape(1)
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f'bad filter shape {tuple(f.shape)}')
    if separable is None:
        separable = (f.ndim == 1 and f.numel() >= 8)
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError('a 2-D filter cannot be made separable')
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def _crop_or_pad(x: torch.Tensor, px0: int, px1: int, py0: int, py1: int) -> torch.Tensor:
    if px0 == 0 and px1 == 0 and py0 == 0 and py1 == 0:
        return x
    return F.pad(x, [px0, px1, py0, py1])  # negative values crop


def _fir_taps(x: torch.Tensor, k: torch.Tensor, downx: int, downy: int) -> torch.Tensor:
    """Correlation of every channel with ``k`` ([kh, kw]) as a sum of shifted slices."""
    kh, kw = int(k.shape[0]), int(k.shape[1])
    H, W = x.shape[2], x.shape[3]
    oh = (H - kh) // downy + 1
    ow = (W - kw) // downx + 1
    y = None
    for a in range(kh):
        for b in range(kw):
            s = x[:, :, a: a + downy * (oh - 1) + 1: downy, b: b + downx * (ow - 1) + 1: downx]
            t = s * k[a, b]
            y = t if y is None else y + t
    return y


_filter_cache: dict = {}  # id(filter) -> (weakref to it, {key: prepared weight}); tensors compare elementwise,
# so they cannot be dictionary keys themselves.


def _prepared_filter(f2: torch.Tensor, dtype, flip: bool, gain: float, channels: int) -> torch.Tensor:
    """``[channels, 1, fh, fw]`` conv weight from the 2-D filter ``f2`` (cast, flipped, scaled).

    The filter is a constant buffer, so eager calls reuse the prepared weight (no cast/flip/repeat
    kernels per call); the cache is keyed on the buffer's identity and version, so an in-place update
    (``load_state_dict``) or another dtype/device prepares it again. Inside torch.compile it is traced.
    """
    def make():
        k = f2.to(dtype)
        if flip:
            k = k.flip([0, 1])
        if gain != 1:
            k = k * gain
        w = k.reshape(1, 1, k.shape[0], k.shape[1])
        return w.repeat(channels, 1, 1, 1) if channels > 1 else w

    if _is_compiling() or f2.requires_grad or torch.is_inference_mode_enabled() or f2._base is not None:
        return make()  # traced, differentiable, inference tensors and per-call views are not cached
    entry = _filter_cache.get(id(f2))
    if entry is None or entry[0]() is not f2:
        if len(_filter_cache) > 512:
            for k_ in [k_ for k_, (r, _) in _filter_cache.items() if r() is None]:
                del _filter_cache[k_]
        entry = _filter_cache[id(f2)] = (weakref.ref(f2), {})
    per = entry[1]
    key = (f2._version, dtype, f2.device, bool(flip), float(gain), int(channels))
    w = per.get(key)
    if w is None:
        if len(per) > 16:
            per.clear()
        with torch.no_grad():
            w = per[key] = make()
    return w


def _upfirdn2d_single(x, f2, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain, impl):
    """upfirdn2d for one 2-D kernel ``f2`` of shape [fh, fw] (fh or fw may be 1)."""
    N, C = x.shape[0], x.shape[1]
    fh, fw = int(f2.shape[0]), int(f2.shape[1])
    fold = impl == 'fold'
    if fold:  # channels -> batch: one groups=1 conv (a view for contiguous x)
        x = x.reshape(N * C, 1, x.shape[2], x.shape[3])

    def unfold(y):
        return y.reshape(N, C, y.shape[2], y.shape[3]) if fold else y

    groups = 1 if fold else C
    if upx == 1 and upy == 1:
        # F.conv2d is a correlation: flip for the (default) true convolution.
        if fh == 1 and fw == 1:
            k = f2.to(x.dtype) * gain if gain != 1 else f2.to(x.dtype)
            return unfold(_crop_or_pad(x, px0, px1, py0, py1)[:, :, ::downy, ::downx] * k[0, 0])
        if impl == 'taps':
            k = f2.to(x.dtype) * gain if gain != 1 else f2.to(x.dtype)
            kc = k if flip_filter else k.flip([0, 1])
            return _fir_taps(_crop_or_pad(x, px0, px1, py0, py1), kc, downx, downy)
        w = _prepared_filter(f2, x.dtype, not flip_filter, gain, groups)
        if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
            # Symmetric zero padding: let the conv pad implicitly (saves a copy each way).
            return unfold(F.conv2d(x, w, stride=(downy, downx), padding=(py0, px0), groups=groups))
        return unfold(F.conv2d(_crop_or_pad(x, px0, px1, py0, py1), w, stride=(downy, downx), groups=groups))

    # Upsampling: out_ct = (zero-inserted x) (*) k has length (H-1)*up + K, and the
    # reference result is out_ct[K-1-p0 : K-1-p0 + H*up + p0 + p1 - K + 1] with zeros
    # outside. Crop symmetrically through conv_transpose2d's own padding (so the
    # cropped pixels are never computed), then fix up the remainder.
    H, W = x.shape[2], x.shape[3]

    def window(n, up, K, p0, p1):
        start = K - 1 - p0
        length = n * up + p0 + p1 - K + 1
        ct_len = (n - 1) * up + K
        after = ct_len - (start + length)
        sym = max(0, min(start, after))
        return sym, -(start - sym), -(after - sym)  # crop by sym, then pad(-)/crop(+) the rest

    symy, ey0, ey1 = window(H, upy, fh, py0, py1)
    symx, ex0, ex1 = window(W, upx, fw, px0, px1)
    w = _prepared_filter(f2, x.dtype, flip_filter, gain, groups)
    x = F.conv_transpose2d(x, w, stride=(upy, upx), padding=(symy, symx), groups=groups)
    x = _crop_or_pad(x, ex0, ex1, ey0, ey1)
    if downx > 1 or downy > 1:
        x = x[:, :, ::downy, ::downx]
    return unfold(x)


def upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up=1, down=1, padding=0,
              flip_filter: bool = False, gain: float = 1, impl: str = 'auto') -> torch.Tensor:
    """Upsample (zero insertion), pad/crop, FIR-filter and downsample every channel.

    Same contract as the StyleGAN2-ADA op: for each channel, 1) insert ``up-1``
    zeros after every pixel, 2) pad by ``padding`` = int | [x, y] | [x0, x1, y0, y1]
    (negative crops), 3) convolve with ``f`` keeping only fully-overlapping outputs
    (``flip_filter=True``: correlate), 4) keep every ``down``-th pixel. ``gain``
    scales the result. ``f`` is 2-D, 1-D (separable) or None (identity).

    ``impl``: 'auto' (see :func:`set_fir_impl`), 'fold', 'conv', 'taps' or 'ref'.
    """
    if x.ndim != 4:
        raise ValueError(f'upfirdn2d expects [N, C, H, W], got shape {tuple(x.shape)}')
    if impl not in _FIR_IMPLS:
        raise ValueError(f'impl must be one of {_FIR_IMPLS}, got {impl!r}')
    if impl == 'auto':
        impl = _fir_impl
    if _reference_mode:
        impl = 'ref'
    if impl == 'ref':
        return upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    compiling = _is_compiling()
    if impl == 'auto':
        impl = 'taps' if compiling and _parse_scaling(up) == (1, 1) else 'conv'
    if impl == 'taps' and _parse_scaling(up) != (1, 1):
        impl = 'conv'  # up > 1 always runs as a transposed conv

    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if f.ndim not in (1, 2):
        raise ValueError(f'filter must be 1-D or 2-D, got shape {tuple(f.shape)}')
    # Eager: an autograd.Function whose backward is the adjoint FIR (itself such a Function), so gradients
    # of any order stay FIR forwards. Autograd's own double backward of a grouped conv (R1 and path
    # length need it) would run one conv per channel. Inside torch.compile the plain ops are traced.
    single = _upfirdn2d_single if (compiling or f.requires_grad) else _FIR.apply
    if f.ndim == 2:
        return single(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain, impl)
    g = math.sqrt(gain)
    x = single(x, f.reshape(1, -1), upx, 1, downx, 1, px0, px1, 0, 0, flip_filter, g, impl)
    x = single(x, f.reshape(-1, 1), 1, upy, 1, downy, 0, 0, py0, py1, flip_filter, g, impl)
    return x


class _FIR(torch.autograd.Function):
    """``_upfirdn2d_single`` with the adjoint FIR as its backward (as the official CUDA op does): the
    gradient of upfirdn(x; up, down, p, f) is upfirdn(dy; down, up, p', flipped f), so every order
    of gradient runs the same fast forward formulation."""

    @staticmethod
    def forward(ctx, x, f2, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain, impl):
        ctx.save_for_backward(f2)
        ctx.args = (upx, upy, downx, downy, px0, py0, flip_filter, gain, impl, x.shape[2], x.shape[3])
        return _upfirdn2d_single(x, f2, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain, impl)

    @staticmethod
    def backward(ctx, dy):
        (f2,) = ctx.saved_tensors
        upx, upy, downx, downy, px0, py0, flip_filter, gain, impl, ih, iw = ctx.args
        fh, fw = int(f2.shape[0]), int(f2.shape[1])
        oh, ow = dy.shape[2], dy.shape[3]
        p = [fw - px0 - 1, iw * upx - ow * downx + px0 - upx + 1,
             fh - py0 - 1, ih * upy - oh * downy + py0 - upy + 1]
        impl_b = 'conv' if impl == 'taps' and (downx > 1 or downy > 1) else impl  # adjoint of down is up
        dx = _FIR.apply(dy, f2, downx, downy, upx, upy, p[0], p[1], p[2], p[3], not flip_filter, gain, impl_b)
        return (dx,) + (None,) * 12


def upfirdn2d_ref(x: torch.Tensor, f: Optional[torch.Tensor], up=1, down=1, padding=0,
                  flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Literal reference: zero insertion, pad, full depthwise conv, subsample."""
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    N, C, H, W = x.shape
    x = x.reshape(N, C, H, 1, W, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(N, C, H * upy, W * upx)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    k = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        k = k.flip(list(range(k.ndim)))
    if k.ndim == 2:
        x = F.conv2d(x, k[None, None].repeat(C, 1, 1, 1), groups=C)
    else:
        x = F.conv2d(x, k.reshape(1, 1, 1, -1).repeat(C, 1, 1, 1), groups=C)
        x = F.conv2d(x, k.reshape(1, 1, -1, 1).repeat(C, 1, 1, 1), groups=C)
    return x[:, :, ::downy, ::downx]


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl='auto'):
    """FIR filter with output the same size as the input (plus ``padding``)."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl='auto'):
    """FIR upsampling; output is ``up`` times the input size (plus ``padding``).

    Runs as one grouped strided ``conv_transpose2d`` (polyphase, no zero insertion).
    """
    upx, upy = _parse_scaling(up)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2,
         py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl='auto'):
    """FIR downsampling; output is ``1/down`` of the input size (plus ``padding``).

    Runs as one strided depthwise conv (only the kept pixels are computed).
    """
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2,
         py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


# ---------------------------------------------------------------------------
# Bias + activation.

class _ActSpec:
    def __init__(self, func, def_alpha, def_gain):
        self.func = func
        self.def_alpha = def_alpha
        self.def_gain = def_gain


_SQRT2 = math.sqrt(2)
activation_funcs = {
    'linear': _ActSpec(lambda x, a: x, 0.0, 1.0),
    'relu': _ActSpec(lambda x, a: F.relu(x), 0.0, _SQRT2),
    'lrelu': _ActSpec(lambda x, a: F.leaky_relu(x, a), 0.2, _SQRT2),
    'tanh': _ActSpec(lambda x, a: torch.tanh(x), 0.0, 1.0),
    'sigmoid': _ActSpec(lambda x, a: torch.sigmoid(x), 0.0, 1.0),
    'elu': _ActSpec(lambda x, a: F.elu(x, a), 1.0, 1.0),
    'selu': _ActSpec(lambda x, a: F.selu(x), 0.0, 1.0),
    'softplus': _ActSpec(lambda x, a: F.softplus(x), 0.0, 1.0),
    'swish': _ActSpec(lambda x, a: F.silu(x), 0.0, _SQRT2),
}


_HOMOGENEOUS = ('linear', 'relu', 'lrelu')  # act(g * t) == g * act(t) for g > 0


def _act_spec(act: str) -> _ActSpec:
    try:
        return activation_funcs[act]
    except KeyError:
        raise ValueError(f'unknown activation {act!r}; choose from {sorted(activation_funcs)}') from None


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = 'linear',
             alpha: Optional[float] = None, gain: Optional[float] = None,
             clamp: Optional[float] = None) -> torch.Tensor:
    """``clamp(act(x + b) * gain, -clamp, clamp)`` with ``b`` broadcast along ``dim``.

    ``alpha``: activation parameter (None = default: 0.2 for lrelu, 1 for elu).
    ``gain``: None = the activation's default (sqrt(2) for relu/lrelu/swish, else 1).
    ``clamp``: None (or negative) disables clamping.
    Written as plain elementwise ops so torch.compile fuses it into one kernel.
    """
    return _bias_act(x, b, dim, act, alpha, gain, clamp)


def _bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, x_gain: float = 1.0,
              b_gain: float = 1.0):
    """:func:`bias_act` of ``x * x_gain`` and ``b * b_gain``: the layers fold their equalized-lr gains in
    here instead of scaling the weight and the bias tensors (two kernels forward, two backward)."""
    spec = _act_spec(act)
    alpha = spec.def_alpha if alpha is None else float(alpha)
    gain = spec.def_gain if gain is None else float(gain)
    if b is not None:
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f'bias shape {tuple(b.shape)} does not match x.shape[{dim}] = {x.shape[dim]}')
        shape = [1] * x.ndim
        shape[dim] = -1
        b = b.to(x.dtype).reshape(shape)

    g = gain * x_gain
    if act in _HOMOGENEOUS and gain > 0 and x_gain > 0 and (b is not None or g != 1) and not _is_compiling():
        # Eager only: act(x + b) * g == act(g*x + g*b) for g > 0, so one add pass plus the
        # activation in place on that fresh tensor (2 memory passes instead of 3). Under
        # torch.compile the plain form below fuses anyway; also, inductor (torch 2.13) drops
        # the alpha of add(bias, matmul, alpha=g) when it folds it into addmm.
        if b is None:
            y = x * g
        else:
            bg = gain * b_gain
            y = torch.add(b * bg if bg != 1 else b, x, alpha=g) if g != 1 else x + (b * bg if bg != 1 else b)
        if act == 'lrelu':
            y = F.leaky_relu_(y, alpha) if alpha > 0 else F.leaky_relu(y, alpha)
        elif act == 'relu':
            y = F.relu_(y)
    else:
        if x_gain != 1:
            x = x * x_gain
        if b is not None:
            y = x + (b * b_gain if b_gain != 1 else b)
        else:
            y = x
        y = spec.func(y, alpha)
        if gain != 1:
            y = y * gain
    if clamp is not None and clamp >= 0:
        y = y.clamp(-clamp, clamp)
    return y


# ---------------------------------------------------------------------------
# Convolution with resampling.

def _conv2d_wrapper(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    kh, kw = w.shape[2], w.shape[3]
    # F.conv2d correlates; flip_weight=False asks for a true convolution.
    if not flip_weight and (kh > 1 or kw > 1):
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor] = None, up: int = 1,
                    down: int = 1, padding=0, groups: int = 1, flip_weight: bool = True,
                    flip_filter: bool = False) -> torch.Tensor:
    """2-D convolution with optional FIR up/downsampling (StyleGAN2-ADA semantics).

    Padding is relative to the upsampled image and applied once. up > 1: strided
    transposed conv followed by the FIR (gain up**2); down > 1: FIR followed by a
    strided conv; 1x1 kernels resample on the cheaper side of the conv.
    """
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError('conv2d_resample expects 4-D x and w')
    if not (isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1):
        raise ValueError(f'up/down must be ints >= 1, got {up}, {down}')
    out_channels, in_channels_per_group, kh, kw = (int(s) for s in w.shape)
    fw, fh = _get_filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)

    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)

    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)

    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d_wrapper(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_channels_per_group, kh, kw)
            w = w.transpose(1, 2)
            w = w.reshape(groups * in_channels_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv2d_wrapper(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True,
                            flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                      flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv2d_wrapper(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # Generic path (negative or asymmetric padding).
    x = upfirdn2d(x, (f if up > 1 else None), up=up, padding=[px0, px1, py0, py1], gain=up ** 2,
                  flip_filter=flip_filter)
    x = _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x


# ---------------------------------------------------------------------------
# Modulated convolution.

def _demod_coefs(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """rsqrt(sum_{i,k} (w[o,i,k] * s[n,i])^2 + 1e-8) -> [N, O], in (at least) float32."""
    dtype = torch.promote_types(torch.promote_types(weight.dtype, styles.dtype), torch.float32)
    weight = weight.to(dtype)
    styles = styles.to(dtype)
    if _reference_mode:
        w = weight.unsqueeze(0) * styles.reshape(styles.shape[0], 1, -1, 1, 1)
        return (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    wsq = weight.square().sum(dim=[2, 3])  # [O, I]
    # Keep this tiny matmul out of autocast: it sets the scale of every output channel.
    dev = styles.device.type
    no_autocast = torch.autocast(device_type=dev, enabled=False) if dev in ('cuda', 'cpu') else contextlib.nullcontext()
    with no_autocast:
        d = torch.mm(styles.square(), wsq.t())  # [N, O]
    return (d + 1e-8).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: Optional[torch.Tensor] = None, up: int = 1, down: int = 1, padding=0,
                     resample_filter: Optional[torch.Tensor] = None, demodulate: bool = True,
                     flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """StyleGAN2 modulated (and demodulated) convolution.

    x: [N, I, H, W]; weight: [O, I, kh, kw]; styles: [N, I]; noise broadcastable to
    the output. fused_modconv=True: one grouped conv with per-sample weights (good
    for inference / small batches). False: scale activations by the styles, shared
    conv, scale by the demodulation coefficients and add noise (good for training).
    """
    N = x.shape[0]
    O, I, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != I:
        raise ValueError(f'x shape {tuple(x.shape)} does not match weight {tuple(weight.shape)}')
    if styles.shape != (N, I):
        raise ValueError(f'styles must be [{N}, {I}], got {tuple(styles.shape)}')

    # Pre-normalise to avoid fp16 overflow; demodulation cancels the scale.
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / math.sqrt(I * kh * kw) / weight.norm(float('inf'), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float('inf'), dim=1, keepdim=True)

    dcoefs = _demod_coefs(weight, styles) if demodulate else None

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(N, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if demodulate and noise is not None:
            x = torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(N, -1, 1, 1))
        elif demodulate:
            x = x * dcoefs.to(x.dtype).reshape(N, -1, 1, 1)
        elif noise is not None:
            x = x + noise.to(x.dtype)
        return x

    w = weight.unsqueeze(0) * styles.reshape(N, 1, -1, 1, 1).to(weight.dtype)  # [N, O, I, kh, kw]
    if demodulate:
        w = w * dcoefs.reshape(N, -1, 1, 1, 1).to(w.dtype)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, I, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                        groups=N, flip_weight=flip_weight)
    x = x.reshape(N, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


# ---------------------------------------------------------------------------
# Layers.

def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class FullyConnectedLayer(torch.nn.Module):
    """Equalized-learning-rate linear layer.

    The stored weight is ``randn / lr_multiplier`` and is multiplied at run time by
    ``lr_multiplier / sqrt(in_features)``, so the effective weight has std
    ``1/sqrt(in_features)`` while Adam steps on the raw parameter are scaled by
    ``lr_multiplier`` relative to the effective weight. Bias gain is ``lr_multiplier``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = 'linear',
                 lr_multiplier: float = 1, bias_init: float = 0):
        super().__init__()
        _act_spec(activation)
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.lr_multiplier = lr_multiplier
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def effective_weight(self, dtype=None) -> torch.Tensor:
        w = self.weight if dtype is None else self.weight.to(dtype)
        return w * self.weight_gain

    def effective_bias(self, dtype=None) -> Optional[torch.Tensor]:
        if self.bias is None:
            return None
        b = self.bias if dtype is None else self.bias.to(dtype)
        return b * self.bias_gain if self.bias_gain != 1 else b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _is_compiling() or x.dtype == torch.float16 or x.ndim != 2:
            w = self.effective_weight(x.dtype)
            b = self.effective_bias(x.dtype)
            if self.activation == 'linear':
                return F.linear(x, w, b)
            return bias_act(F.linear(x, w), b, act=self.activation)
        # Eager: the gains ride on addmm's alpha / the bias-add instead of scaling the parameters.
        w = self.weight.to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        if self.activation == 'linear':
            if b is None:
                return torch.mm(x, w.t()) * self.weight_gain
            return torch.addmm(b * self.bias_gain if self.bias_gain != 1 else b, x, w.t(), alpha=self.weight_gain)
        return _bias_act(torch.mm(x, w.t()), b, act=self.activation, x_gain=self.weight_gain, b_gain=self.bias_gain)

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'activation={self.activation}, lr_multiplier={self.lr_multiplier}')


class Conv2dLayer(torch.nn.Module):
    """Equalized-learning-rate conv with optional FIR up/downsampling, bias, activation, clamp.

    Effective weight = stored weight * 1/sqrt(in_channels * k * k).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = 'linear', up: int = 1, down: int = 1, resample_filter=(1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, channels_last: bool = False, trainable: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer('resample_filter', setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = _act_spec(activation).def_gain

        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        b = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(b) if b is not None else None
        else:
            self.register_buffer('weight', weight)
            if b is not None:
                self.register_buffer('bias', b)
            else:
                self.bias = None

    def effective_weight(self, dtype=None) -> torch.Tensor:
        w = self.weight * self.weight_gain
        return w if dtype is None else w.to(dtype)

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        # The conv is linear in w: conv(x, w * g) = g * conv(x, w), so (eager, and where float16's range
        # is not at stake) the weight gain joins the bias-add's scale instead of costing a weight scaling
        # forward and backward.
        fold = x.dtype != torch.float16 and not _is_compiling()
        w = self.weight.to(x.dtype) if fold else self.effective_weight(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        flip_weight = (self.up == 1)  # lets both conv paths skip the weight flip
        x = conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down, padding=self.padding,
                            flip_weight=flip_weight)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return _bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp,
                         x_gain=self.weight_gain if fold else 1.0)

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, out_channels={self.out_channels}, k={self.kernel_size}, '
                f'activation={self.activation}, up={self.up}, down={self.down}')


class MinibatchStdLayer(torch.nn.Module):
    """Appends ``num_channels`` feature maps holding the minibatch standard deviation.

    The batch is split into groups of ``min(group_size, N)`` samples (``None`` = the
    whole batch); as in the official code, sample ``i`` belongs to group ``i % (N/G)``.
    Channels are split into ``num_channels`` parts; each part gets the mean over its
    channels and pixels of the within-group std.
    """

    def __init__(self, group_size: Optional[int], num_channels: int = 1):
        super().__init__()
        if group_size is not None and group_size < 1:
            raise ValueError(f'group_size must be >= 1 or None, got {group_size}')
        if num_channels < 1:
            raise ValueError(f'num_channels must be >= 1, got {num_channels}')
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        G = N if self.group_size is None else min(self.group_size, N)
        Fc = self.num_channels
        if N % G != 0:
            raise BackboneConfigError(
                f'minibatch-std group size {G} must divide the batch size {N} (group_size={self.group_size}); '
                f'use a per-GPU batch that is a multiple of the group size, or a smaller group.')
        if C % Fc != 0:
            raise ValueError(f'minibatch-std num_channels {Fc} must divide the channel count {C}')
        y = x.reshape(G, -1, Fc, C // Fc, H, W)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])
        y = y.reshape(-1, Fc, 1, 1)
        y = y.repeat(G, 1, H, W)
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def extra_repr(self) -> str:
        return f'group_size={self.group_size}, num_channels={self.num_channels}'
