"""Test helpers: official StyleGAN2-ADA / StyleGAN3 network pickles written without the official code,
and a reference forward pass computed from the pickled tensors alone.

Nothing here uses ganstack's networks or ops. The layer tree follows the official
``training/networks.py`` (StyleGAN2-ADA-PyTorch) and ``training/networks_stylegan2.py`` (StyleGAN3):
the same classes, constructor arguments, attribute names, parameter/buffer names and the
``torch_utils.persistence`` pickle layout (``_reconstruct_persistent_obj(meta)`` with ``meta`` =
type/version/module_src/class_name/state). Weights are random (biases, noise strengths and ``w_avg``
too), so a tensor that lands in the wrong place changes the output.

The reference forward (:func:`ref_generator`, :func:`ref_discriminator`) is written from the
StyleGAN2 equations with ``torch.nn.functional`` on the flat ``name -> tensor`` dict and the
official constructor arguments, so it checks the importer's mapping (including arguments that leave
no trace in tensor shapes: lr multipliers, conv_clamp, minibatch-std group size, truncation) and
ganstack's networks at the same time.
"""
from __future__ import annotations

import collections
import contextlib
import math
import pickle
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

OD = collections.OrderedDict
SQRT2 = math.sqrt(2)

# Class signatures as in the official modules (bodies omitted). The importer reads defaults such as
# w_avg_beta (0.995 in StyleGAN2-ADA, 0.998 in StyleGAN3) from this source with ast.
_SRC_COMMON = '''
class FullyConnectedLayer(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, activation='linear', lr_multiplier=1, bias_init=0):
        pass
class Conv2dLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation='linear', up=1, down=1,
                 resample_filter=[1,3,3,1], conv_clamp=None, channels_last=False, trainable=True):
        pass
class SynthesisLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation='lrelu', resample_filter=[1,3,3,1], conv_clamp=None, channels_last=False):
        pass
class ToRGBLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        pass
class SynthesisBlock(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture='skip',
                 resample_filter=[1,3,3,1], conv_clamp=None, use_fp16=False, fp16_channels_last=False,
                 **layer_kwargs):
        pass
class SynthesisNetwork(torch.nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_fp16_res=0,
                 **block_kwargs):
        pass
class DiscriminatorBlock(torch.nn.Module):
    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture='resnet', activation='lrelu', resample_filter=[1,3,3,1], conv_clamp=None,
                 use_fp16=False, fp16_channels_last=False, freeze_layers=0):
        pass
class MinibatchStdLayer(torch.nn.Module):
    def __init__(self, group_size, num_channels=1):
        pass
class DiscriminatorEpilogue(torch.nn.Module):
    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture='resnet', mbstd_group_size=4,
                 mbstd_num_channels=1, activation='lrelu', conv_clamp=None):
        pass
class Discriminator(torch.nn.Module):
    def __init__(self, c_dim, img_resolution, img_channels, architecture='resnet', channel_base=32768,
                 channel_max=512, num_fp16_res=0, conv_clamp=None, cmap_dim=None, block_kwargs={},
                 mapping_kwargs={}, epilogue_kwargs={}):
        pass
'''
_SRC_FLAVOR = '''
class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation='lrelu', lr_multiplier=0.01, w_avg_beta={beta}):
        pass
    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, {update}=False):
        pass
class Generator(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={{}}, {synthesis}):
        pass
'''
_SRC_HEAD = 'import numpy as np\nimport torch\nfrom torch_utils import persistence\n'
SRC_ADA = _SRC_HEAD + _SRC_COMMON + _SRC_FLAVOR.format(beta=0.995, update='skip_w_avg_update',
                                                       synthesis='synthesis_kwargs={}')
SRC_SG3 = ('"""Network architectures from the paper\n"Analyzing and Improving the Image Quality of StyleGAN"."""\n'
           + _SRC_HEAD + _SRC_COMMON + _SRC_FLAVOR.format(beta=0.998, update='update_emas',
                                                          synthesis='**synthesis_kwargs'))
SRC_SG3_ALIAS_FREE = ('import numpy as np\nimport torch\nfrom torch_utils import persistence\n'
                      'from torch_utils.ops import filtered_lrelu\nclass SynthesisInput(torch.nn.Module):\n'
                      '    def __init__(self, w_dim, channels, size, sampling_rate, bandwidth):\n        pass\n')


# ------------------------------------------------------------------------------------------------
# The official layer tree

class Node:
    """One persistent object: class, constructor arguments, instance attributes, tensors, children."""

    def __init__(self, cls, args=(), kwargs=None, attrs=None, src=SRC_ADA):
        self.cls, self.args, self.kwargs, self.attrs, self.src = cls, tuple(args), dict(kwargs or {}), dict(attrs or {}), src
        self.params, self.buffers, self.modules = OD(), OD(), OD()

    def flat(self, prefix=''):
        out = OD()
        for k, v in list(self.params.items()) + list(self.buffers.items()):
            if v is not None:
                out[prefix + k] = v
        for k, m in self.modules.items():
            out.update(m.flat(prefix + k + '.'))
        return out


class Rand:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, *shape, scale=1.0, shift=0.0):
        return torch.randn(list(shape), generator=self.g) * scale + shift


def setup_filter(taps=(1, 3, 3, 1)):
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def _fc(r, src, in_f, out_f, activation='linear', lr=1.0, bias_init=None, sg3=False):
    kw = {}
    if activation != 'linear':
        kw['activation'] = activation
    if lr != 1:
        kw['lr_multiplier'] = lr
    if bias_init is not None:
        kw['bias_init'] = bias_init
    attrs = dict(activation=activation, weight_gain=np.float64(lr / np.sqrt(in_f)), bias_gain=lr)
    if sg3:
        attrs.update(in_features=in_f, out_features=out_f)
    n = Node('FullyConnectedLayer', (in_f, out_f), kw, attrs, src)
    n.params['weight'] = r(out_f, in_f) / lr
    n.params['bias'] = r(out_f, scale=0.2 / lr, shift=(bias_init or 0) / lr)
    return n


def _conv(r, src, in_c, out_c, k, bias=True, activation='linear', up=1, down=1, conv_clamp=None, sg3=False):
    kw = dict(kernel_size=k, bias=bias, activation=activation, up=up, down=down, conv_clamp=conv_clamp)
    attrs = dict(activation=activation, up=up, down=down, conv_clamp=conv_clamp, padding=k // 2,
                 weight_gain=np.float64(1 / np.sqrt(in_c * k * k)),
                 act_gain=np.float64(np.sqrt(2) if activation == 'lrelu' else 1.0))
    if sg3:
        attrs.update(in_channels=in_c, out_channels=out_c)
    n = Node('Conv2dLayer', (in_c, out_c), kw, attrs, src)
    n.buffers['resample_filter'] = setup_filter()
    n.params['weight'] = r(out_c, in_c, k, k)
    n.params['bias'] = r(out_c, scale=0.2) if bias else None
    return n


def official_mapping(r, src, z_dim, c_dim, w_dim, num_ws, num_layers=8, lr=0.01, w_avg_beta=0.995,
                     sg3=False, extra_kwargs=None):
    kw = dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws, num_layers=num_layers)
    kw.update(extra_kwargs or {})
    n = Node('MappingNetwork', (), kw, dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws,
                                             num_layers=num_layers, w_avg_beta=w_avg_beta), src)
    embed = w_dim if c_dim else 0
    feats = [z_dim + embed] + [w_dim] * (num_layers - 1) + [w_dim]
    if c_dim:
        n.modules['embed'] = _fc(r, src, c_dim, embed, sg3=sg3)
    for i in range(num_layers):
        n.modules[f'fc{i}'] = _fc(r, src, feats[i], feats[i + 1], 'lrelu', lr, sg3=sg3)
    if num_ws is not None and w_avg_beta is not None:
        n.buffers['w_avg'] = r(w_dim, scale=0.5)
    return n


def official_generator(z_dim=12, c_dim=0, w_dim=16, img_resolution=8, img_channels=3, map_layers=2, channel_base=64,
                       channel_max=16, architecture='skip', conv_clamp=None, num_fp16_res=0, flavor='ada', seed=0):
    """The layer tree of an official ``Generator`` (StyleGAN2-ADA, or StyleGAN3's --cfg=stylegan2 one)."""
    sg3 = flavor == 'sg3'
    src = SRC_SG3 if sg3 else SRC_ADA
    r = Rand(seed)
    log2 = int(np.log2(img_resolution))
    res_list = [2 ** i for i in range(2, log2 + 1)]
    ch = {res: min(channel_base // res, channel_max) for res in res_list}
    fp16_res = max(2 ** (log2 + 1 - num_fp16_res), 8)
    syn_kw = dict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res,
                  conv_clamp=conv_clamp, architecture=architecture)
    syn = Node('SynthesisNetwork', (), dict(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                            **syn_kw), dict(w_dim=w_dim, img_resolution=img_resolution,
                                                            img_resolution_log2=log2, img_channels=img_channels,
                                                            block_resolutions=res_list), src)
    num_ws = 0
    for res in res_list:
        in_c = ch[res // 2] if res > 4 else 0
        out_c = ch[res]
        is_last = res == img_resolution
        use_fp16 = res >= fp16_res
        b = Node('SynthesisBlock', (in_c, out_c), dict(w_dim=w_dim, resolution=res, img_channels=img_channels,
                                                        is_last=is_last, use_fp16=use_fp16, architecture=architecture,
                                                        conv_clamp=conv_clamp),
                 dict(in_channels=in_c, w_dim=w_dim, resolution=res, img_channels=img_channels, is_last=is_last,
                      architecture=architecture, use_fp16=use_fp16, channels_last=False), src)
        b.buffers['resample_filter'] = setup_filter()
        nconv = ntorgb = 0
        if in_c == 0:
            b.params['const'] = r(out_c, res, res)

        def layer(i, o, up):
            kwl = dict(w_dim=w_dim, resolution=res, up=up, conv_clamp=conv_clamp, channels_last=False)
            attrs = dict(resolution=res, up=up, use_noise=True, activation='lrelu', conv_clamp=conv_clamp, padding=1,
                         act_gain=np.float64(np.sqrt(2)))
            if sg3:
                attrs.update(in_channels=i, out_channels=o, w_dim=w_dim)
            n = Node('SynthesisLayer', (i, o), kwl, attrs, src)
            n.buffers['resample_filter'] = setup_filter()
            n.modules['affine'] = _fc(r, src, w_dim, i, bias_init=1, sg3=sg3)
            n.params['weight'] = r(o, i, 3, 3)
            n.buffers['noise_const'] = r(res, res)
            n.params['noise_strength'] = r(scale=0.3)
            n.params['bias'] = r(o, scale=0.2)
            return n
        if in_c:
            b.modules['conv0'] = layer(in_c, out_c, 2)
            nconv += 1
        b.modules['conv1'] = layer(out_c, out_c, 1)
        nconv += 1
        if is_last or architecture == 'skip':
            t = Node('ToRGBLayer', (out_c, img_channels), dict(w_dim=w_dim, conv_clamp=conv_clamp, channels_last=False),
                     dict(conv_clamp=conv_clamp, weight_gain=np.float64(1 / np.sqrt(out_c))), src)
            t.modules['affine'] = _fc(r, src, w_dim, out_c, bias_init=1, sg3=sg3)
            t.params['weight'] = r(img_channels, out_c, 1, 1)
            t.params['bias'] = r(img_channels, scale=0.2)
            b.modules['torgb'] = t
            ntorgb += 1
        if in_c and architecture == 'resnet':
            b.modules['skip'] = _conv(r, src, in_c, out_c, 1, bias=False, up=2, sg3=sg3)
        b.attrs.update(num_conv=nconv, num_torgb=ntorgb)
        syn.modules[f'b{res}'] = b
        num_ws += nconv + (ntorgb if is_last else 0)
    syn.attrs['num_ws'] = num_ws
    mapping = official_mapping(r, src, z_dim, c_dim, w_dim, num_ws, map_layers, w_avg_beta=0.998 if sg3 else 0.995,
                               sg3=sg3)
    if sg3:  # StyleGAN3 train.py: G_kwargs hold the synthesis arguments flat, plus fused_modconv_default
        gkw = dict(z_dim=z_dim, w_dim=w_dim, mapping_kwargs=dict(num_layers=map_layers), **syn_kw,
                   fused_modconv_default='inference_only', c_dim=c_dim, img_resolution=img_resolution,
                   img_channels=img_channels)
        syn.kwargs['fused_modconv_default'] = 'inference_only'
    else:
        gkw = dict(z_dim=z_dim, w_dim=w_dim, mapping_kwargs=dict(num_layers=map_layers), synthesis_kwargs=syn_kw,
                   c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels)
    mapping.kwargs.update(dict(num_layers=map_layers))
    G = Node('Generator', (), gkw, dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                        img_channels=img_channels, num_ws=num_ws), src)
    G.modules['synthesis'] = syn
    G.modules['mapping'] = mapping
    return G


def official_discriminator(c_dim=0, img_resolution=8, img_channels=3, architecture='resnet', channel_base=64,
                           channel_max=16, conv_clamp=None, mbstd_group_size=2, num_fp16_res=0, flavor='ada', seed=1):
    sg3 = flavor == 'sg3'
    src = SRC_SG3 if sg3 else SRC_ADA
    r = Rand(seed)
    log2 = int(np.log2(img_resolution))
    res_list = [2 ** i for i in range(log2, 2, -1)]
    ch = {res: min(channel_base // res, channel_max) for res in res_list + [4]}
    fp16_res = max(2 ** (log2 + 1 - num_fp16_res), 8)
    cmap_dim = ch[4] if c_dim else 0
    dkw = dict(c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, architecture=architecture,
               channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
               block_kwargs=dict(freeze_layers=0), mapping_kwargs={},
               epilogue_kwargs=dict(mbstd_group_size=mbstd_group_size))
    D = Node('Discriminator', (), dkw, dict(c_dim=c_dim, img_resolution=img_resolution, img_resolution_log2=log2,
                                            img_channels=img_channels, block_resolutions=res_list), src)
    idx = 0
    for res in res_list:
        in_c = ch[res] if res < img_resolution else 0
        tmp, out = ch[res], ch[res // 2]
        b = Node('DiscriminatorBlock', (in_c, tmp, out), dict(resolution=res, first_layer_idx=idx,
                                                              use_fp16=res >= fp16_res, freeze_layers=0,
                                                              img_channels=img_channels, architecture=architecture,
                                                              conv_clamp=conv_clamp),
                 dict(in_channels=in_c, resolution=res, img_channels=img_channels, first_layer_idx=idx,
                      architecture=architecture, use_fp16=res >= fp16_res, channels_last=False), src)
        b.buffers['resample_filter'] = setup_filter()
        n = 0
        if in_c == 0 or architecture == 'skip':
            b.modules['fromrgb'] = _conv(r, src, img_channels, tmp, 1, activation='lrelu', conv_clamp=conv_clamp, sg3=sg3)
            n += 1
        b.modules['conv0'] = _conv(r, src, tmp, tmp, 3, activation='lrelu', conv_clamp=conv_clamp, sg3=sg3)
        b.modules['conv1'] = _conv(r, src, tmp, out, 3, activation='lrelu', down=2, conv_clamp=conv_clamp, sg3=sg3)
        n += 2
        if architecture == 'resnet':
            b.modules['skip'] = _conv(r, src, tmp, out, 1, bias=False, down=2, sg3=sg3)
            n += 1
        b.attrs['num_layers'] = n
        idx += n
        D.modules[f'b{res}'] = b
    if c_dim:
        D.modules['mapping'] = official_mapping(r, src, 0, c_dim, cmap_dim, None, 8, w_avg_beta=None, sg3=sg3,
                                                extra_kwargs=dict(w_avg_beta=None))
    ep = Node('DiscriminatorEpilogue', (ch[4],), dict(cmap_dim=cmap_dim, resolution=4, img_channels=img_channels,
                                                      architecture=architecture, conv_clamp=conv_clamp,
                                                      mbstd_group_size=mbstd_group_size),
              dict(in_channels=ch[4], cmap_dim=cmap_dim, resolution=4, img_channels=img_channels,
                   architecture=architecture), src)
    if architecture == 'skip':  # the official epilogue's fromrgb has no conv_clamp
        ep.modules['fromrgb'] = _conv(r, src, img_channels, ch[4], 1, activation='lrelu', sg3=sg3)
    ep.modules['mbstd'] = Node('MinibatchStdLayer', (), dict(group_size=mbstd_group_size, num_channels=1),
                               dict(group_size=mbstd_group_size, num_channels=1), src)
    ep.modules['conv'] = _conv(r, src, ch[4] + 1, ch[4], 3, activation='lrelu', conv_clamp=conv_clamp, sg3=sg3)
    ep.modules['fc'] = _fc(r, src, ch[4] * 16, ch[4], 'lrelu', sg3=sg3)
    ep.modules['out'] = _fc(r, src, ch[4], cmap_dim if c_dim else 1, sg3=sg3)
    D.modules['b4'] = ep
    return D


def augment_pipe_node(p=0.25):
    n = Node('AugmentPipe', (), dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1),
             dict(xflip=1.0), src='import torch\nclass AugmentPipe(torch.nn.Module):\n    def __init__(self, xflip=0):\n        pass\n')
    n.buffers['p'] = torch.tensor(p)
    n.buffers['Hz_geom'] = torch.ones(12)
    return n


# ------------------------------------------------------------------------------------------------
# The pickle, in the torch_utils.persistence layout

class EasyDict(dict):
    pass


def _reconstruct_persistent_obj(meta):  # never called: the pickle only names it
    raise AssertionError


class _Persistent:
    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (_reconstruct_persistent_obj, (self.meta,), None)


def _state(node: Node, live):
    state = dict(training=False,
                 _parameters=OD((k, torch.nn.Parameter(v.clone(), requires_grad=False) if v is not None else None)
                                for k, v in node.params.items()),
                 _buffers=OD((k, v.clone()) for k, v in node.buffers.items()),
                 _non_persistent_buffers_set=set(), _backward_hooks=OD(), _forward_hooks=OD(),
                 _forward_pre_hooks=OD(), _state_dict_hooks=OD(), _load_state_dict_pre_hooks=OD(),
                 _modules=OD((k, live(m)) for k, m in node.modules.items()))
    state.update(node.attrs)
    state['_init_args'] = node.args
    state['_init_kwargs'] = EasyDict({k: EasyDict(v) if isinstance(v, dict) else v for k, v in node.kwargs.items()})
    return state


def to_persistent(node: Node):
    def live(n):
        return _Persistent(dict(type='class', version=6, module_src=n.src, class_name=n.cls, state=_state(n, live)))
    return live(node)


@contextlib.contextmanager
def fake_official_modules():
    """``torch_utils.persistence`` and ``dnnlib.util`` as pickle needs to name them while dumping."""
    names = ('torch_utils', 'torch_utils.persistence', 'dnnlib', 'dnnlib.util')
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}
    mods['torch_utils.persistence']._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods['dnnlib.util'].EasyDict = EasyDict
    mods['dnnlib'].EasyDict = EasyDict
    _reconstruct_persistent_obj.__module__ = 'torch_utils.persistence'
    EasyDict.__module__ = 'dnnlib.util'
    sys.modules.update(mods)
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def write_official_pickle(path, G=None, D=None, G_ema=None, augment_p=0.25, training_set_kwargs=None, extra=None):
    """Write ``dict(G, D, G_ema, augment_pipe, training_set_kwargs)`` as an official snapshot does."""
    data = dict(training_set_kwargs=dict(training_set_kwargs or dict(
        class_name='training.dataset.ImageFolderDataset', path='/data/shapes8.zip', use_labels=False,
        max_size=1000, xflip=False, resolution=8)))
    for key, node in (('G', G), ('D', D), ('G_ema', G_ema)):
        if node is not None:
            data[key] = to_persistent(node)
    data['augment_pipe'] = to_persistent(augment_pipe_node(augment_p)) if augment_p is not None else None
    data.update(extra or {})
    with fake_official_modules(), open(path, 'wb') as f:
        pickle.dump(data, f)


# ------------------------------------------------------------------------------------------------
# Reference forward pass (StyleGAN2 equations, torch.nn.functional only)

def _norm2(x):
    return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


def _lrelu(x, gain=1.0, clamp=None):
    x = F.leaky_relu(x, 0.2) * SQRT2 * gain
    return x.clamp(-clamp * gain, clamp * gain) if clamp is not None else x


def _dense(t, name, x, lr=1.0, act=False):
    y = x @ (t[name + '.weight'] * (lr / math.sqrt(x.shape[1]))).t() + t[name + '.bias'] * lr
    return _lrelu(y) if act else y


def _blur(x, f, pad, gain=1.0):
    """Depthwise FIR filter (convolution) after zero padding pad=(left, right, top, bottom)."""
    C = x.shape[1]
    k = (f * gain).flip([0, 1])[None, None].repeat(C, 1, 1, 1)
    return F.conv2d(F.pad(x, pad), k, groups=C)


def _upsample(x, f):
    N, C, H, W = x.shape
    up = torch.zeros(N, C, 2 * H, 2 * W)
    up[:, :, ::2, ::2] = x
    return _blur(up, f, (2, 1, 2, 1), gain=4.0)


def _downsample(x, f):
    return _blur(x, f, (1, 1, 1, 1))[:, :, ::2, ::2]


def _modconv(t, name, x, w, f, up=1, demod=True, noise=None, clamp=None, gain=1.0):
    weight = t[name + '.weight']
    O, I, k, _ = weight.shape
    styles = _dense(t, name + '.affine', w)
    if not demod:
        styles = styles / math.sqrt(I * k * k)
    outs = []
    for n in range(x.shape[0]):
        wn = weight * styles[n].reshape(1, I, 1, 1)
        if demod:
            wn = wn * (wn.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).rsqrt()
        if up == 1:
            y = F.conv2d(x[n:n + 1], wn, padding=k // 2)
        else:  # transposed conv with stride 2 (zero insertion + convolution), then the [1,3,3,1] blur
            y = F.conv_transpose2d(x[n:n + 1], wn.transpose(0, 1), stride=2)
            y = _blur(y, f, (1, 1, 1, 1), gain=4.0)
        outs.append(y)
    y = torch.cat(outs)
    if noise is not None:
        y = y + noise
    y = y + t[name + '.bias'].reshape(1, -1, 1, 1)
    if not demod:
        return y.clamp(-clamp, clamp) if clamp is not None else y
    return _lrelu(y, gain, clamp)


def ref_mapping(t, z, c, num_ws, num_layers, lr=0.01, psi=1.0, prefix='mapping.'):
    x = _norm2(z) if z is not None else None
    if c is not None and c.shape[1]:
        y = _norm2(_dense(t, prefix + 'embed', c))
        x = torch.cat([x, y], dim=1) if x is not None else y
    for i in range(num_layers):
        x = _dense(t, f'{prefix}fc{i}', x, lr, act=True)
    if num_ws is None:
        return x
    x = x.unsqueeze(1).repeat(1, num_ws, 1)
    if psi != 1:
        avg = t[prefix + 'w_avg']
        x = avg + psi * (x - avg)
    return x


def ref_generator(node: Node, z, c, psi=1.0):
    """Images of the official generator ``node`` (float32, noise_mode='const')."""
    t = node.flat()
    syn = node.modules['synthesis']
    arch = syn.kwargs['architecture']
    clamp = syn.kwargs['conv_clamp']
    ws = ref_mapping(t, z, c, syn.attrs['num_ws'], node.modules['mapping'].attrs['num_layers'], psi=psi)
    f = setup_filter()
    x = img = None
    wi = 0
    for res in syn.attrs['block_resolutions']:
        p = f'synthesis.b{res}.'
        b = syn.modules[f'b{res}']
        nconv, ntorgb = b.attrs['num_conv'], b.attrs['num_torgb']
        bw = ws[:, wi: wi + nconv + ntorgb]
        wi += nconv

        def noise(name):
            return t[p + name + '.noise_const'] * t[p + name + '.noise_strength']
        if x is None:
            x = t[p + 'const'].unsqueeze(0).repeat(z.shape[0], 1, 1, 1)
            x = _modconv(t, p + 'conv1', x, bw[:, 0], f, noise=noise('conv1'), clamp=clamp)
            k = 1
        elif arch == 'resnet':
            y = _upsample(F.conv2d(x, t[p + 'skip.weight'] / math.sqrt(x.shape[1])), f) * math.sqrt(0.5)
            x = _modconv(t, p + 'conv0', x, bw[:, 0], f, up=2, noise=noise('conv0'), clamp=clamp)
            x = _modconv(t, p + 'conv1', x, bw[:, 1], f, noise=noise('conv1'), clamp=clamp, gain=math.sqrt(0.5))
            x = y + x
            k = 2
        else:
            x = _modconv(t, p + 'conv0', x, bw[:, 0], f, up=2, noise=noise('conv0'), clamp=clamp)
            x = _modconv(t, p + 'conv1', x, bw[:, 1], f, noise=noise('conv1'), clamp=clamp)
            k = 2
        if img is not None:
            img = _upsample(img, f)
        if 'torgb' in b.modules:
            y = _modconv(t, p + 'torgb', x, bw[:, k], f, demod=False, clamp=clamp)
            img = img + y if img is not None else y
    return img


def _conv_layer(t, name, x, f, down=1, act=True, clamp=None, gain=1.0):
    w = t[name + '.weight']
    w = w / math.sqrt(w[0].numel())
    b = t.get(name + '.bias')
    k = w.shape[-1]
    if down == 1:
        y = F.conv2d(x, w, padding=k // 2)
    elif k == 1:
        y = F.conv2d(_downsample(x, f), w)
    else:  # blur with padding 2, then a strided conv
        y = F.conv2d(_blur(x, f, (2, 2, 2, 2)), w, stride=2)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    if act:
        return _lrelu(y, gain, clamp)
    y = y * gain
    return y.clamp(-clamp * gain, clamp * gain) if clamp is not None else y


def ref_discriminator(node: Node, img, c):
    t = node.flat()
    kw = node.kwargs
    arch, clamp = kw['architecture'], kw['conv_clamp']
    group = kw['epilogue_kwargs']['mbstd_group_size']
    f = setup_filter()
    x = None
    for res in node.attrs['block_resolutions']:
        p = f'b{res}.'
        b = node.modules[f'b{res}']
        if 'fromrgb' in b.modules:
            y = _conv_layer(t, p + 'fromrgb', img, f, clamp=clamp)
            x = x + y if x is not None else y
            img = _downsample(img, f) if arch == 'skip' else None
        if arch == 'resnet':
            y = _conv_layer(t, p + 'skip', x, f, down=2, act=False, gain=math.sqrt(0.5))
            x = _conv_layer(t, p + 'conv0', x, f, clamp=clamp)
            x = _conv_layer(t, p + 'conv1', x, f, down=2, clamp=clamp, gain=math.sqrt(0.5))
            x = y + x
        else:
            x = _conv_layer(t, p + 'conv0', x, f, clamp=clamp)
            x = _conv_layer(t, p + 'conv1', x, f, down=2, clamp=clamp)
    if arch == 'skip':
        x = x + _conv_layer(t, 'b4.fromrgb', img, f)
    N, C, H, W = x.shape
    G = min(group, N) if group is not None else N
    y = x.reshape(G, -1, 1, C, H, W)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, 1, 1, 1)
    x = torch.cat([x, y.repeat(G, 1, H, W)], dim=1)
    x = _conv_layer(t, 'b4.conv', x, f, clamp=clamp)
    x = _dense(t, 'b4.fc', x.flatten(1), act=True)
    x = _dense(t, 'b4.out', x)
    if node.kwargs['c_dim']:
        cmap = ref_mapping(t, None, c, None, 8, prefix='mapping.')
        x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(cmap.shape[1])
    return x
