"""Tests for stylegan_base.ops: FIR resampling, bias_act, resampling/modulated convs, layers."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ganstack.stylegan_base import ops

# ---------------------------------------------------------------------------
# Straightforward references, written independently of the fast code.


def ref_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Zero-insert, pad/crop, full depthwise convolution, subsample."""
    upx, upy = (up, up) if isinstance(up, int) else up
    downx, downy = (down, down) if isinstance(down, int) else down
    if isinstance(padding, int):
        padding = [padding] * 4
    elif len(padding) == 2:
        padding = [padding[0], padding[0], padding[1], padding[1]]
    px0, px1, py0, py1 = padding
    if f is None:
        f = torch.ones(1, 1)
    if f.ndim == 1:  # separable taps == outer product (each pass gets sqrt(gain))
        f = torch.outer(f, f)
    N, C, H, W = x.shape
    xu = x.new_zeros(N, C, H * upy, W * upx)
    xu[:, :, ::upy, ::upx] = x
    xu = F.pad(xu, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    xu = xu[:, :, max(-py0, 0): xu.shape[2] - max(-py1, 0), max(-px0, 0): xu.shape[3] - max(-px1, 0)]
    k = f.to(x.dtype) * gain
    if not flip_filter:
        k = k.flip([0, 1])
    y = F.conv2d(xu.reshape(N * C, 1, *xu.shape[2:]), k[None, None])
    y = y.reshape(N, C, *y.shape[2:])
    return y[:, :, ::downy, ::downx]


def numpy_upfirdn2d(x, f, up, down, p, flip_filter, gain):
    """Literal loop form of the op's contract (1 channel, 2-D filter)."""
    H, W = x.shape
    fh, fw = f.shape
    px0, px1, py0, py1 = p
    xu = np.zeros((H * up, W * up))
    xu[::up, ::up] = x
    big = np.zeros((H * up + abs(py0) + abs(py1) + 2, W * up + abs(px0) + abs(px1) + 2))
    # place xu so that index (py0, px0) of the padded image is xu[0, 0]
    oy, ox = abs(py0) + 1, abs(px0) + 1
    big[oy: oy + H * up, ox: ox + W * up] = xu
    top, left = oy - py0, ox - px0
    ph, pw = H * up + py0 + py1, W * up + px0 + px1
    xp = big[top: top + ph, left: left + pw]
    kern = f if flip_filter else f[::-1, ::-1]
    oh, ow = ph - fh + 1, pw - fw + 1
    out = np.zeros((oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[i, j] = (xp[i: i + fh, j: j + fw] * kern).sum()
    return out[::down, ::down] * gain


def ref_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight):
    """Generic composition: FIR upsample (gain up^2) with padding, conv, FIR downsample."""
    fw_, fh_ = (1, 1) if f is None else (f.shape[-1], f.shape[0])
    px0, px1, py0, py1 = [padding] * 4
    if up > 1:
        px0 += (fw_ + up - 1) // 2
        px1 += (fw_ - up) // 2
        py0 += (fh_ + up - 1) // 2
        py1 += (fh_ - up) // 2
    if down > 1:
        px0 += (fw_ - down + 1) // 2
        px1 += (fw_ - down) // 2
        py0 += (fh_ - down + 1) // 2
        py1 += (fh_ - down) // 2
    x = ref_upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up ** 2)
    if not flip_weight:
        w = w.flip([2, 3])
    x = F.conv2d(x, w, groups=groups)
    if down > 1:
        x = ref_upfirdn2d(x, f, down=down)
    return x


FIR_CASES = [
    # (shape, up, down, padding, flip, gain, filter)
    ((2, 3, 7, 5), 1, 1, 0, False, 1.0, [1, 3, 3, 1]),
    ((2, 3, 7, 5), 1, 1, [2, 1, 1, 2], True, 2.0, [1, 3, 3, 1]),
    ((1, 2, 8, 8), 2, 1, [2, 1, 2, 1], False, 4.0, [1, 3, 3, 1]),
    ((1, 2, 6, 9), 2, 1, [3, -1, 0, 2], False, 1.0, [1, 2, 1]),
    ((2, 2, 9, 8), 1, 2, [1, 1, 1, 1], False, 1.0, [1, 3, 3, 1]),
    ((2, 2, 9, 8), 1, 2, [-1, 2, 0, -1], True, 1.0, [1, 3, 3, 1]),
    ((1, 3, 5, 5), 3, 2, [1, 2, 3, 0], False, 1.0, [1, 2, 3, 2, 1]),
    ((1, 1, 6, 6), 2, 2, [4, 4, 4, 4], False, 1.0, [1, 3, 3, 1]),
    ((1, 2, 9, 8), 1, 1, [-2, -1, -1, 0], False, 1.0, [1, 4, 6, 4, 1]),
]


def _filter(taps, separable=False):
    return ops.setup_filter(taps, separable=separable)


# ---------------------------------------------------------------------------
# setup_filter


def test_setup_filter_outer_product_and_normalisation():
    f = ops.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    assert torch.allclose(f.sum(), torch.tensor(1.0))
    t = torch.tensor([1.0, 3, 3, 1])
    assert torch.allclose(f, torch.outer(t, t) / 64)
    fs = ops.setup_filter([1, 3, 3, 1], separable=True)
    assert fs.shape == (4,) and torch.allclose(torch.outer(fs, fs), f)
    assert ops.setup_filter([1, 2, 3, 4], normalize=False, flip_filter=True, separable=True).tolist() == [4, 3, 2, 1]
    assert torch.allclose(ops.setup_filter([1, 1], gain=4).sum(), torch.tensor(4.0))
    assert ops.setup_filter(None).shape == (1, 1)
    assert ops.setup_filter([1] * 8).ndim == 1  # long filters default to separable


# ---------------------------------------------------------------------------
# upfirdn2d


@pytest.mark.parametrize('case', range(4))
def test_upfirdn2d_matches_literal_definition(case):
    rng = np.random.default_rng(case)
    up, down, p, flip, gain, taps = [
        (2, 1, (2, 1, 2, 1), False, 4.0, [1, 3, 3, 1]),
        (1, 2, (1, 2, 0, 1), True, 1.0, [1, 3, 3, 1]),
        (3, 2, (-1, 2, 3, -2), False, 2.0, [1, 2, 1]),
        (1, 1, (0, -1, -1, 0), False, 1.0, [1, 4, 6, 4, 1]),
    ][case]
    x = rng.standard_normal((8, 7))
    f = ops.setup_filter(taps).double()
    want = numpy_upfirdn2d(x, f.numpy(), up, down, p, flip, gain)
    for impl in ['fold', 'conv', 'taps', 'ref']:
        got = ops.upfirdn2d(torch.from_numpy(x)[None, None], f, up=up, down=down, padding=list(p),
                            flip_filter=flip, gain=gain, impl=impl)[0, 0].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('case', FIR_CASES)
@pytest.mark.parametrize('impl', ['fold', 'conv', 'taps', 'ref'])
@pytest.mark.parametrize('separable', [False, True])
def test_upfirdn2d_fast_matches_reference_values_and_grads(case, impl, separable):
    shape, up, down, padding, flip, gain, taps = case
    torch.manual_seed(0)
    f = _filter(taps, separable)
    x = torch.randn(shape, requires_grad=True)
    y = ops.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl=impl)
    x2 = x.detach().clone().requires_grad_(True)
    y2 = ref_upfirdn2d(x2, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    assert y.shape == y2.shape
    assert torch.allclose(y, y2, atol=1e-6, rtol=1e-5)
    gy = torch.randn_like(y)
    (g1,) = torch.autograd.grad(y, x, gy)
    (g2,) = torch.autograd.grad(y2, x2, gy)
    assert torch.allclose(g1, g2, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('shape', [(2, 3, 4, 4), (1, 4, 8, 6), (3, 2, 5, 7)])
@pytest.mark.parametrize('padding', [0, 1, [1, 0, 2, -1]])
@pytest.mark.parametrize('separable', [False, True])
def test_resampling_helpers_match_reference(shape, padding, separable):
    torch.manual_seed(1)
    f = _filter([1, 3, 3, 1], separable)
    pad = [padding] * 4 if isinstance(padding, int) else padding
    x = torch.randn(shape, requires_grad=True)
    H, W = shape[2], shape[3]

    cases = [
        ('up', lambda t: ops.upsample2d(t, f, padding=padding),
         lambda t: ref_upfirdn2d(t, f, up=2, padding=[pad[0] + 2, pad[1] + 1, pad[2] + 2, pad[3] + 1], gain=4),
         (2 * H + pad[2] + pad[3], 2 * W + pad[0] + pad[1])),
        ('filter', lambda t: ops.filter2d(t, f, padding=padding),
         lambda t: ref_upfirdn2d(t, f, padding=[pad[0] + 2, pad[1] + 1, pad[2] + 2, pad[3] + 1]),
         (H + pad[2] + pad[3], W + pad[0] + pad[1])),
    ]
    if H % 2 == 0 and W % 2 == 0:
        cases.append(('down', lambda t: ops.downsample2d(t, f, padding=padding),
                      lambda t: ref_upfirdn2d(t, f, down=2, padding=[pad[0] + 1, pad[1] + 1, pad[2] + 1, pad[3] + 1]),
                      ((H + pad[2] + pad[3]) // 2, (W + pad[0] + pad[1]) // 2)))
    for name, fast, ref, hw in cases:
        y = fast(x)
        y2 = ref(x)
        assert tuple(y.shape[2:]) == hw, name
        assert torch.allclose(y, y2, atol=1e-6), name
        gy = torch.randn_like(y)
        (g1,) = torch.autograd.grad(y, x, gy)
        (g2,) = torch.autograd.grad(y2, x, gy)
        assert torch.allclose(g1, g2, atol=1e-6), name


def test_resampling_preserves_constant_signal():
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.ones(1, 1, 8, 8)
    assert torch.allclose(ops.upsample2d(x, f)[:, :, 2:-2, 2:-2], torch.ones(1, 1, 12, 12))
    assert torch.allclose(ops.downsample2d(x, f)[:, :, 1:-1, 1:-1], torch.ones(1, 1, 2, 2))


@pytest.mark.parametrize('impl', ['fold', 'conv', 'taps'])
def test_resampling_gradcheck_and_gradgradcheck(impl):
    torch.manual_seed(2)
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    for fn in (lambda t: ops.upsample2d(t, f, impl=impl),
               lambda t: ops.downsample2d(t, f, impl=impl),
               lambda t: ops.filter2d(t, f, padding=[1, 0, 0, 1], impl=impl)):
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


def test_fir_impl_selection():
    with pytest.raises(ValueError):
        ops.set_fir_impl('cuda')
    assert ops.get_fir_impl() == 'auto'
    x = torch.randn(1, 2, 6, 6)
    f = ops.setup_filter([1, 3, 3, 1])
    try:
        ops.set_fir_impl('taps')
        a = ops.downsample2d(x, f)
    finally:
        ops.set_fir_impl('auto')
    assert torch.allclose(a, ops.downsample2d(x, f, impl='conv'), atol=1e-6)


# ---------------------------------------------------------------------------
# bias_act


def test_bias_act_semantics():
    torch.manual_seed(3)
    x = torch.randn(4, 5, 3, 3)
    b = torch.randn(5)
    xb = x + b.reshape(1, -1, 1, 1)
    assert torch.allclose(ops.bias_act(x, b), xb)
    assert torch.allclose(ops.bias_act(x, b, act='lrelu'), F.leaky_relu(xb, 0.2) * math.sqrt(2))
    assert torch.allclose(ops.bias_act(x, b, act='relu'), F.relu(xb) * math.sqrt(2))
    assert torch.allclose(ops.bias_act(x, b, act='lrelu', alpha=0.1, gain=3), F.leaky_relu(xb, 0.1) * 3)
    assert torch.allclose(ops.bias_act(x, b, act='lrelu', clamp=0.5),
                          (F.leaky_relu(xb, 0.2) * math.sqrt(2)).clamp(-0.5, 0.5))
    assert ops.bias_act(x * 100, act='linear', clamp=1.0).abs().max() <= 1.0
    # bias along another dim
    y = torch.randn(3, 7)
    b7 = torch.randn(7)
    assert torch.allclose(ops.bias_act(y, b7, dim=1, act='tanh'), torch.tanh(y + b7))
    with pytest.raises(ValueError):
        ops.bias_act(x, b, act='gelu6')
    with pytest.raises(ValueError):
        ops.bias_act(x, torch.zeros(4))


@pytest.mark.parametrize('act,use_bias,gain,clamp', [
    ('lrelu', True, None, 1.5), ('lrelu', False, None, None), ('relu', True, 0.5, None),
    ('linear', True, 3.0, None), ('tanh', True, None, 0.5), ('lrelu', True, -1.0, None)])
def test_bias_act_double_backward_and_no_input_mutation(act, use_bias, gain, clamp):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    x0 = x.detach().clone()
    fn = lambda x, b: ops.bias_act(x, b if use_bias else None, act=act, gain=gain, clamp=clamp)  # noqa: E731
    y = fn(x, b)
    assert torch.equal(x.detach(), x0)
    spec = ops.activation_funcs[act]
    want = spec.func(x0 + (b.detach().reshape(1, -1, 1, 1) if use_bias else 0), spec.def_alpha)
    want = want * (spec.def_gain if gain is None else gain)
    if clamp is not None:
        want = want.clamp(-clamp, clamp)
    assert torch.allclose(y, want)
    assert torch.autograd.gradcheck(fn, (x, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=True)


# ---------------------------------------------------------------------------
# conv2d_resample


@pytest.mark.parametrize('up,down,k', [(1, 1, 3), (2, 1, 3), (1, 2, 3), (2, 1, 1), (1, 2, 1), (2, 2, 3)])
@pytest.mark.parametrize('flip_weight', [True, False])
@pytest.mark.parametrize('groups', [1, 2])
def test_conv2d_resample_matches_generic_composition(up, down, k, flip_weight, groups):
    torch.manual_seed(4)
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w = torch.randn(6, 4 // groups, k, k, requires_grad=True)
    y = ops.conv2d_resample(x, w, f=f, up=up, down=down, padding=k // 2, groups=groups, flip_weight=flip_weight)
    y2 = ref_conv2d_resample(x, w, f, up, down, k // 2, groups, flip_weight)
    assert y.shape == (2, 6, 8 * up // down, 8 * up // down)
    assert torch.allclose(y, y2, atol=1e-5)
    gy = torch.randn_like(y)
    g1 = torch.autograd.grad(y, [x, w], gy)
    g2 = torch.autograd.grad(y2, [x, w], gy)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-4)


def test_conv2d_resample_double_backward():
    torch.manual_seed(5)
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w: ops.conv2d_resample(x, w, f=f, down=2, padding=1)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w), fast_mode=True)


# ---------------------------------------------------------------------------
# modulated_conv2d


def direct_modconv(x, weight, styles, demodulate, up, f, flip_weight, noise=None):
    """One sample at a time with an explicitly modulated weight."""
    outs = []
    for n in range(x.shape[0]):
        w = weight * styles[n].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        outs.append(ref_conv2d_resample(x[n: n + 1], w, f, up, 1, weight.shape[-1] // 2, 1, flip_weight))
    y = torch.cat(outs)
    return y + noise if noise is not None else y


@pytest.mark.parametrize('up', [1, 2])
@pytest.mark.parametrize('demodulate', [True, False])
@pytest.mark.parametrize('k', [3, 1])
def test_modulated_conv2d_fused_equals_nonfused_equals_direct(up, demodulate, k):
    torch.manual_seed(6)
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.randn(3, 4, 6, 6)
    weight = torch.randn(5, 4, k, k)
    styles = torch.randn(3, 4) + 1
    noise = torch.randn(3, 1, 6 * up, 6 * up)
    flip_weight = up == 1
    kw = dict(up=up, padding=k // 2, resample_filter=f, demodulate=demodulate, flip_weight=flip_weight, noise=noise)
    a = ops.modulated_conv2d(x, weight, styles, fused_modconv=True, **kw)
    b = ops.modulated_conv2d(x, weight, styles, fused_modconv=False, **kw)
    c = direct_modconv(x, weight, styles, demodulate, up, f, flip_weight, noise)
    assert a.shape == (3, 5, 6 * up, 6 * up)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, c, atol=1e-5)
    with ops.reference_ops():
        d = ops.modulated_conv2d(x, weight, styles, fused_modconv=False, **kw)
    assert torch.allclose(b, d, atol=1e-5)


def test_demodulation_normalises_output_scale():
    torch.manual_seed(7)
    x = torch.randn(8, 64, 8, 8)
    weight = torch.randn(32, 64, 3, 3)
    styles = torch.rand(8, 64) * 5
    y = ops.modulated_conv2d(x, weight, styles, padding=1, fused_modconv=False)
    # Demodulated weights have unit L2 norm per output channel: interior std ~1 for unit input.
    assert 0.85 < y[:, :, 1:-1, 1:-1].std().item() < 1.15


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('up', [1, 2])
def test_modulated_conv2d_gradcheck_and_gradgradcheck(fused, up):
    torch.manual_seed(8)
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    styles = (torch.rand(2, 2, dtype=torch.float64) + 0.5).requires_grad_(True)
    fn = lambda x, w, s: ops.modulated_conv2d(x, w, s, up=up, padding=1, resample_filter=f,  # noqa: E731
                                              flip_weight=(up == 1), fused_modconv=fused)
    assert torch.autograd.gradcheck(fn, (x, weight, styles), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, weight, styles), fast_mode=True)


def test_modulated_conv2d_shape_errors():
    with pytest.raises(ValueError):
        ops.modulated_conv2d(torch.randn(2, 3, 4, 4), torch.randn(4, 5, 3, 3), torch.randn(2, 5))
    with pytest.raises(ValueError):
        ops.modulated_conv2d(torch.randn(2, 3, 4, 4), torch.randn(4, 3, 3, 3), torch.randn(1, 3))


# ---------------------------------------------------------------------------
# Equalized-lr layers


def test_fully_connected_effective_weight_and_forward():
    torch.manual_seed(9)
    layer = ops.FullyConnectedLayer(16, 8, lr_multiplier=0.1, bias_init=0.5)
    gain = 0.1 / math.sqrt(16)
    assert math.isclose(layer.weight_gain, gain)
    assert torch.allclose(layer.effective_weight(), layer.weight * gain)
    assert torch.allclose(layer.effective_bias(), torch.full([8], 0.05))
    x = torch.randn(5, 16)
    assert torch.allclose(layer(x), x @ (layer.weight * gain).t() + layer.bias * 0.1, atol=1e-6)
    act = ops.FullyConnectedLayer(16, 8, activation='lrelu')
    ref = F.leaky_relu(x @ (act.weight / 4).t(), 0.2) * math.sqrt(2)
    assert torch.allclose(act(x), ref, atol=1e-6)


def test_fully_connected_initial_output_std_is_one():
    torch.manual_seed(10)
    layer = ops.FullyConnectedLayer(512, 512, lr_multiplier=0.01)
    y = layer(torch.randn(256, 512))
    assert 0.9 < y.std().item() < 1.1


def test_lr_multiplier_scales_raw_gradient():
    torch.manual_seed(11)
    a = ops.FullyConnectedLayer(32, 16, lr_multiplier=1.0)
    b = ops.FullyConnectedLayer(32, 16, lr_multiplier=0.01)
    with torch.no_grad():  # same effective weight and bias
        b.weight.copy_(a.weight / 0.01)
        b.bias.copy_(a.bias / 0.01)
    x = torch.randn(8, 32)
    ya, yb = a(x), b(x)
    assert torch.allclose(ya, yb, atol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.allclose(b.weight.grad, 0.01 * a.weight.grad, rtol=1e-4, atol=1e-9)
    assert torch.allclose(b.bias.grad, 0.01 * a.bias.grad, rtol=1e-4, atol=1e-9)


def test_conv2d_layer_effective_weight_forward_and_init_std():
    torch.manual_seed(12)
    layer = ops.Conv2dLayer(64, 32, 3)
    gain = 1 / math.sqrt(64 * 9)
    assert math.isclose(layer.weight_gain, gain)
    assert torch.allclose(layer.effective_weight(), layer.weight * gain)
    x = torch.randn(4, 64, 10, 10)
    with torch.no_grad():
        layer.bias.normal_()
    want = F.conv2d(x, layer.weight * gain, layer.bias, padding=1)
    assert torch.allclose(layer(x), want, atol=1e-5)
    y = ops.Conv2dLayer(64, 32, 3)(x)
    assert 0.85 < y[:, :, 1:-1, 1:-1].std().item() < 1.15
    lr = ops.Conv2dLayer(64, 32, 3, activation='lrelu', conv_clamp=0.3)
    assert lr(x).abs().max().item() <= 0.3 + 1e-6
    assert lr(x, gain=2).abs().max().item() <= 0.6 + 1e-6


def test_conv2d_layer_resampling_shapes_and_frozen_weights():
    x = torch.randn(2, 4, 8, 8)
    assert ops.Conv2dLayer(4, 6, 3, down=2)(x).shape == (2, 6, 4, 4)
    assert ops.Conv2dLayer(4, 6, 1, down=2, bias=False)(x).shape == (2, 6, 4, 4)
    assert ops.Conv2dLayer(4, 6, 3, up=2)(x).shape == (2, 6, 16, 16)
    frozen = ops.Conv2dLayer(4, 6, 3, trainable=False)
    assert len(list(frozen.parameters())) == 0 and 'weight' in dict(frozen.named_buffers())
    cl = ops.Conv2dLayer(4, 6, 3, down=2, channels_last=True)
    ref = F.conv2d(ops.upfirdn2d(x, cl.resample_filter, padding=2), cl.weight * cl.weight_gain, cl.bias, stride=2)
    assert torch.allclose(cl(x.to(memory_format=torch.channels_last)), ref, atol=1e-5)


def test_normalize_2nd_moment():
    x = torch.randn(6, 10) * 7
    y = ops.normalize_2nd_moment(x)
    assert torch.allclose(y.square().mean(dim=1), torch.ones(6), atol=1e-5)


# ---------------------------------------------------------------------------
# Minibatch std


def test_minibatch_std_hand_computation():
    x = torch.arange(4 * 2 * 1 * 2, dtype=torch.float32).reshape(4, 2, 1, 2) ** 1.5
    layer = ops.MinibatchStdLayer(group_size=2, num_channels=1)
    y = layer(x)
    assert y.shape == (4, 3, 1, 2)
    assert torch.equal(y[:, :2], x)
    # Groups are strided: with N=4, G=2 the groups are {0, 2} and {1, 3}.
    expect = torch.empty(4)
    for members in ([0, 2], [1, 3]):
        xs = x[members].double()
        std = ((xs - xs.mean(0)).square().mean(0) + 1e-8).sqrt()  # population std per element
        expect[members] = std.mean().float()
    for n in range(4):
        assert torch.allclose(y[n, 2], expect[n].expand(1, 2), atol=1e-5)


def test_minibatch_std_multiple_channels_and_whole_batch():
    torch.manual_seed(13)
    x = torch.randn(3, 4, 2, 2)
    y = ops.MinibatchStdLayer(group_size=None, num_channels=2)(x)
    std = (x.var(dim=0, unbiased=False) + 1e-8).sqrt()  # [4, 2, 2]
    assert torch.allclose(y[0, 4], std[:2].mean().expand(2, 2), atol=1e-6)
    assert torch.allclose(y[2, 5], std[2:].mean().expand(2, 2), atol=1e-6)
    # group larger than the batch falls back to the batch size
    assert ops.MinibatchStdLayer(group_size=8)(x).shape == (3, 5, 2, 2)


def test_minibatch_std_rejects_non_divisible_group():
    with pytest.raises(ValueError, match='divide the batch size'):
        ops.MinibatchStdLayer(group_size=4)(torch.randn(6, 2, 2, 2))
    with pytest.raises(ValueError):
        ops.MinibatchStdLayer(group_size=0)


# ---------------------------------------------------------------------------
# torch.compile


def test_ops_under_torch_compile_match_eager(monkeypatch):
    """Compiled code takes different branches (shifted-slice FIR, plain bias_act); check them."""
    torch.manual_seed(14)
    taps_calls = []
    real_taps = ops._fir_taps

    def counting_taps(*args):
        taps_calls.append(1)
        return real_taps(*args)

    monkeypatch.setattr(ops, '_fir_taps', counting_taps)
    fc = ops.FullyConnectedLayer(8, 4, activation='lrelu', lr_multiplier=0.01)
    conv = ops.Conv2dLayer(4, 4, 3, activation='lrelu', down=2, conv_clamp=0.5)
    f = ops.setup_filter([1, 3, 3, 1])
    weight = torch.randn(4, 4, 3, 3)

    def fn(x, z):
        s = fc(z)
        y = ops.modulated_conv2d(x, weight, s, up=2, padding=1, resample_filter=f, flip_weight=False,
                                 fused_modconv=False)
        y = ops.bias_act(y, torch.ones(4), act='lrelu')
        return conv(y) + ops.downsample2d(y, f), s

    x, z = torch.randn(2, 4, 6, 6), torch.randn(2, 8)
    torch._dynamo.reset()
    # aot_eager runs the traced (compile-time) branches without minutes of C++ codegen on CPU.
    got = torch.compile(fn, backend="aot_eager", dynamic=False)(x, z)
    assert taps_calls, 'compiled trace did not use the shifted-slice FIR'
    n_traced = len(taps_calls)
    want = fn(x, z)
    assert len(taps_calls) == n_traced  # eager uses the depthwise-conv FIR
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)
