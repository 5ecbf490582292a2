"""Tests for stylegan_base.networks: StyleGAN2 G/D and the toy MLP backbone."""

import math

import pytest
import torch

from ganstack.stylegan_base import ops
from ganstack.stylegan_base.networks import (Discriminator, Generator, MappingNetwork, MLPDiscriminator, MLPGenerator,
                                    SynthesisNetwork)

SMALL_SYN = dict(channel_base=256, channel_max=16)
SMALL_D = dict(channel_base=256, channel_max=16)


def small_G(res=16, c_dim=0, z_dim=8, w_dim=8, map_layers=2, **syn):
    kw = dict(SMALL_SYN)
    kw.update(syn)
    return Generator(z_dim, c_dim, w_dim, res, 3, mapping_kwargs=dict(num_layers=map_layers), synthesis_kwargs=kw)


def small_D(res=16, c_dim=0, **kw):
    args = dict(SMALL_D)
    args.update(kw)
    return Discriminator(c_dim, res, 3, **args)


# ---------------------------------------------------------------------------
# Shapes and basic behaviour


@pytest.mark.parametrize('res', [4, 8, 16, 32])
@pytest.mark.parametrize('c_dim', [0, 3])
def test_generator_and_discriminator_shapes(res, c_dim):
    torch.manual_seed(0)
    G = small_G(res, c_dim)
    D = small_D(res, c_dim)
    z = torch.randn(4, G.z_dim)
    c = torch.randn(4, c_dim)
    img = G(z, c)
    assert img.shape == (4, 3, res, res) and img.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert 0.05 < img.std().item() < 20  # neither dead nor exploding at init
    logits, feats = D(img, c, return_features=True)
    assert logits.shape == (4, 1) and torch.isfinite(logits).all()
    assert feats.shape == (4, D.feature_dim)
    assert G.num_ws == 2 * int(math.log2(res)) - 2
    assert G.is_image and D.is_image
    assert (D.c_dim, D.img_resolution, D.img_channels) == (c_dim, res, 3)


@pytest.mark.parametrize('architecture', ['orig', 'skip', 'resnet'])
def test_all_architectures_run_and_backprop(architecture):
    torch.manual_seed(1)
    G = small_G(16, architecture=architecture)
    D = small_D(16, architecture=architecture)
    img = G(torch.randn(2, 8), None)
    loss = torch.nn.functional.softplus(-D(img, None)).mean()
    loss.backward()
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bad_resolution_and_architecture_raise():
    from ganstack.stylegan_base.errors import GanstackError
    with pytest.raises(GanstackError):  # user-facing: the CLI prints it without a traceback
        small_G(24)
    for res in [12, 2, 0, 48]:
        with pytest.raises(ValueError, match='power of two'):
            small_G(res)
        with pytest.raises(ValueError, match='power of two'):
            small_D(res)
    with pytest.raises(ValueError):
        small_G(8, architecture='unet')
    with pytest.raises(ValueError):
        small_D(8, architecture='unet')


def test_resolution_256_constructs_and_runs():
    G = Generator(512, 0, 512, 256, 3)  # default channel_base 32768
    D = Discriminator(0, 256, 3, channel_base=16384)  # paper256 width
    assert G.num_ws == 14 and G.synthesis.b256.conv1.weight.shape == (128, 128, 3, 3)
    assert D.b256.conv0.weight.shape == (64, 64, 3, 3) and D.b4.fc.weight.shape == (512, 512 * 16)
    g = Generator(8, 0, 8, 256, 1, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=1024, channel_max=4))
    d = Discriminator(0, 256, 1, channel_base=1024, channel_max=4)
    img = g(torch.randn(1, 8), None)
    assert img.shape == (1, 1, 256, 256)
    assert d(img, None).shape == (1, 1)


def test_cifar_config_parameter_counts():
    """cifar preset: z=w=512, 32x32, channel_base 32768, map 2, resnet D, c_dim 10."""
    G = Generator(512, 10, 512, 32, 3, mapping_kwargs=dict(num_layers=2))
    D = Discriminator(10, 32, 3, epilogue_kwargs=dict(mbstd_group_size=32))
    C, w = 512, 512

    def fc(i, o, bias=True):
        return i * o + (o if bias else 0)

    def syn_layer(i, o):
        return fc(w, i) + o * i * 9 + 1 + o  # affine, weight, noise_strength, bias

    def torgb(i):
        return fc(w, i) + 3 * i + 3

    mapping = fc(10, w) + fc(512 + w, w) + fc(w, w)
    synthesis = C * 16 + syn_layer(C, C) + torgb(C) + 3 * (2 * syn_layer(C, C) + torgb(C))
    assert sum(p.numel() for p in G.parameters()) == mapping + synthesis

    def d_block(first):
        return (fc(3, C) if first else 0) + fc(C * 9, C) + fc(C * 9, C) + C * C

    d_mapping = fc(10, C) + 8 * fc(C, C)  # D's label mapping keeps the default 8 layers
    epilogue = fc((C + 1) * 9, C) + fc(C * 16, C) + fc(C, C)
    assert sum(p.numel() for p in D.parameters()) == d_block(True) + 2 * d_block(False) + d_mapping + epilogue
    assert D.feature_dim == 512 and D.b4.mbstd.group_size == 32


# ---------------------------------------------------------------------------
# Mapping network


def test_mapping_shapes_and_validation():
    m = MappingNetwork(4, 3, 8, num_ws=5, num_layers=2)
    assert m(torch.randn(6, 4), torch.randn(6, 3)).shape == (6, 5, 8)
    m2 = MappingNetwork(0, 3, 8, num_ws=None, w_avg_beta=None)
    assert m2(None, torch.randn(6, 3)).shape == (6, 8)
    assert not hasattr(m2, 'w_avg')
    with pytest.raises(ValueError):
        MappingNetwork(0, 0, 8, num_ws=None)
    with pytest.raises(ValueError):
        m(torch.randn(6, 4), torch.randn(6, 2))  # wrong label width
    with pytest.raises(ValueError):
        m(torch.randn(6, 5), torch.randn(6, 3))
    with pytest.raises(ValueError):
        m2(None, torch.randn(6, 3), truncation_psi=0.5)
    for depth in range(2, 9):
        md = MappingNetwork(4, 0, 8, num_ws=1, num_layers=depth)
        assert len([n for n, _ in md.named_children() if n.startswith('fc')]) == depth


def test_truncation_and_w_avg_tracking():
    torch.manual_seed(2)
    m = MappingNetwork(8, 0, 8, num_ws=4, num_layers=2, w_avg_beta=0.9)
    z = torch.randn(16, 8)
    assert torch.equal(m.w_avg, torch.zeros(8))
    m(z, None)  # default update_emas=False: untouched
    m.train()
    m(z, None)
    assert torch.equal(m.w_avg, torch.zeros(8))
    w = m(z, None, update_emas=True)
    assert torch.allclose(m.w_avg, 0.1 * w[:, 0].mean(0), atol=1e-6)
    w_avg = m.w_avg.clone()
    out = m(z, None, truncation_psi=0)
    assert torch.allclose(out, w_avg.expand_as(out))
    half = m(z, None, truncation_psi=0.5)
    assert torch.allclose(half, w_avg + 0.5 * (w - w_avg), atol=1e-6)
    cut = m(z, None, truncation_psi=0, truncation_cutoff=2)
    assert torch.allclose(cut[:, :2], w_avg.expand(16, 2, 8))
    assert torch.allclose(cut[:, 2:], w[:, 2:])


def test_mapping_lr_multiplier_scales_raw_gradients():
    torch.manual_seed(3)
    m1 = MappingNetwork(8, 0, 8, num_ws=None, num_layers=2, lr_multiplier=1.0)
    m2 = MappingNetwork(8, 0, 8, num_ws=None, num_layers=2, lr_multiplier=0.01)
    with torch.no_grad():
        for p1, p2 in zip(m1.parameters(), m2.parameters()):
            p2.copy_(p1 / 0.01)  # identical effective weights
    z = torch.randn(5, 8)
    y1, y2 = m1(z, None), m2(z, None)
    assert torch.allclose(y1, y2, atol=1e-5)
    y1.sum().backward()
    y2.sum().backward()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(p2.grad, 0.01 * p1.grad, rtol=1e-3, atol=1e-8)


# ---------------------------------------------------------------------------
# Generator features


def test_style_mixing_keeps_early_and_changes_late_ws():
    torch.manual_seed(4)
    G = small_G(16)
    z = torch.randn(3, 8)
    base = G.mapping(z, None)
    seen_cutoffs = set()
    for _ in range(12):
        _, ws = G(z, None, style_mixing_prob=1.0, return_ws=True)
        same = torch.isclose(ws, base).all(dim=2).all(dim=0)  # [num_ws]
        cutoff = int((~same).nonzero()[0])
        assert 1 <= cutoff < G.num_ws
        assert same[:cutoff].all() and not same[cutoff:].any()
        # later ws are shared across layers (one fresh z per sample)
        assert torch.allclose(ws[:, cutoff:], ws[:, -1:].expand_as(ws[:, cutoff:]))
        seen_cutoffs.add(cutoff)
    assert len(seen_cutoffs) > 1
    _, ws0 = G(z, None, style_mixing_prob=0.0, return_ws=True)
    assert torch.equal(ws0, base)


def test_return_ws_supports_path_length_gradients():
    torch.manual_seed(5)
    G = small_G(8)
    z = torch.randn(4, 8)
    img, ws = G(z, None, style_mixing_prob=0.9, return_ws=True)
    pl_noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grads,) = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=True)
    assert grads.shape == ws.shape == (4, G.num_ws, G.w_dim)
    lengths = grads.square().sum(2).mean(1).sqrt()
    assert (lengths > 0).all()
    lengths.mean().backward()  # double backward through modulated convs / resampling
    g = G.synthesis.b8.conv0.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_noise_modes_and_buffers():
    torch.manual_seed(6)
    G = small_G(8)
    layer = G.synthesis.b8.conv0
    assert layer.noise_const.shape == (8, 8) and layer.noise_strength.shape == ()
    with torch.no_grad():
        for n, p in G.named_parameters():
            if n.endswith('noise_strength'):
                p.fill_(0.5)
    z = torch.randn(2, 8)
    a, b = G(z, None, noise_mode='const'), G(z, None, noise_mode='const')
    assert torch.equal(a, b)
    c, d = G(z, None, noise_mode='random'), G(z, None, noise_mode='random')
    assert not torch.allclose(c, d)
    e = G(z, None, noise_mode='none')
    assert not torch.allclose(a, e)
    with pytest.raises(ValueError):
        G(z, None, noise_mode='fixed')


def test_fused_and_nonfused_modconv_agree_in_generator():
    torch.manual_seed(7)
    G = small_G(16)
    z = torch.randn(3, 8)
    G.train()  # default: non-fused
    a = G(z, None, noise_mode='const')
    G.eval()  # default: fused
    b = G(z, None, noise_mode='const')
    c = G(z, None, noise_mode='const', fused_modconv=False)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(a, c)


def test_fast_ops_match_reference_ops_end_to_end():
    torch.manual_seed(8)
    G = small_G(16, c_dim=2)
    D = small_D(16, c_dim=2, architecture='skip')
    z, c = torch.randn(2, 8), torch.randn(2, 2)
    img = G(z, c, noise_mode='const')
    logits = D(img, c)
    with ops.reference_ops():
        img_ref = G(z, c, noise_mode='const')
        logits_ref = D(img_ref, c)
    assert torch.allclose(img, img_ref, atol=1e-5)
    assert torch.allclose(logits, logits_ref, atol=1e-5)


def test_channels_last_matches_default_layout():
    torch.manual_seed(9)
    G = small_G(8)
    Gc = small_G(8, channels_last=True)
    Gc.load_state_dict(G.state_dict())
    z = torch.randn(2, 8)
    assert torch.allclose(G(z, None, noise_mode='const'), Gc(z, None, noise_mode='const'), atol=1e-5)
    D = small_D(8)
    Dc = small_D(8, block_kwargs=dict(channels_last=True))
    Dc.load_state_dict(D.state_dict())
    x = torch.randn(4, 3, 8, 8)
    assert torch.allclose(D(x, None), Dc(x, None), atol=1e-5)


def test_bfloat16_autocast_runs():
    torch.manual_seed(10)
    G = small_G(8)
    D = small_D(8)
    z = torch.randn(4, 8)
    ref = D(G(z, None, noise_mode='const'), None)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        G.mapping(z, None, update_emas=True)
        img = G(z, None, noise_mode='const', truncation_psi=0.7)
        logits = D(img, None)
        img1 = G(z, None, noise_mode='const')
        logits1 = D(img1, None)
    assert torch.isfinite(logits).all() and img.dtype == torch.float32
    logits.float().sum().backward()
    assert torch.isfinite(G.synthesis.b8.conv1.weight.grad).all()
    assert torch.allclose(logits1.float(), ref, atol=0.1 * ref.abs().max().item() + 0.05)


def test_synthesis_rejects_wrong_ws_shape():
    syn = SynthesisNetwork(8, 8, 3, **SMALL_SYN)
    with pytest.raises(ValueError):
        syn(torch.randn(2, syn.num_ws + 1, 8))


# ---------------------------------------------------------------------------
# Discriminator features


def test_discriminator_features_kwargs_and_conditioning():
    torch.manual_seed(11)
    D = small_D(8, c_dim=5)
    x = torch.randn(4, 3, 8, 8)
    c = torch.randn(4, 5) * 3  # arbitrary real conditioning (e.g. a timestep embedding)
    logits, feats = D(x, c, return_features=True)
    assert feats.shape == (4, D.feature_dim) and D.feature_dim == 16
    assert torch.allclose(logits, D(x, c))
    assert not torch.allclose(logits, D(x, c + 1))  # conditioning reaches the projection
    with pytest.raises(TypeError):
        D(x, c, t=torch.zeros(4))
    with pytest.raises(ValueError):
        D(x, torch.randn(4, 6))  # label width does not match c_dim
    with pytest.raises(ValueError):
        D(x, None)
    D0 = small_D(8)
    assert D0(x, torch.zeros(4, 0)).shape == (4, 1) and D0(x, None).shape == (4, 1)
    with pytest.raises(ValueError):
        D0(x, torch.randn(4, 2))  # extra conditioning without growing c_dim fails loudly
    with pytest.raises(ValueError):
        D0(torch.randn(4, 3, 16, 16), None)


def test_minibatch_std_group_validation_in_discriminator():
    D = small_D(8, epilogue_kwargs=dict(mbstd_group_size=4))
    D(torch.randn(8, 3, 8, 8), None)
    D(torch.randn(2, 3, 8, 8), None)  # group shrinks to the batch
    with pytest.raises(ValueError, match='divide'):
        D(torch.randn(6, 3, 8, 8), None)


def test_r1_double_backward_through_discriminator():
    torch.manual_seed(12)
    D = small_D(16, c_dim=2)
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    logits = D(x, torch.randn(4, 2))
    (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    penalty = g.square().sum([1, 2, 3]).mean()
    penalty.backward()
    for name, p in D.named_parameters():
        # (biases get no second-order signal through piecewise-linear activations)
        if name.endswith('weight') and (name.startswith('b16.conv0') or name.startswith('b4.fc')):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_freeze_d_layers_become_buffers():
    D = small_D(16, block_kwargs=dict(freeze_layers=2))
    names = dict(D.named_parameters())
    assert 'b16.fromrgb.weight' not in names and 'b16.conv0.weight' not in names
    assert 'b16.conv1.weight' in names


# ---------------------------------------------------------------------------
# Toy MLP backbone


@pytest.mark.parametrize('c_dim', [0, 4])
def test_mlp_networks(c_dim):
    torch.manual_seed(13)
    G = MLPGenerator(z_dim=2, c_dim=c_dim, out_dim=2)
    D = MLPDiscriminator(c_dim=c_dim, in_dim=2)
    assert not G.is_image and not D.is_image
    assert G.img_resolution is None and G.img_channels is None and G.out_dim == 2
    hidden = [m for m in G.body if isinstance(m, torch.nn.Linear)]
    assert len(hidden) == 2 and all(m.out_features == 128 for m in hidden)
    z = torch.randn(10, 2)
    c = torch.randn(10, c_dim)
    x = G(z, c, truncation_psi=0.5, style_mixing_prob=0.9, noise_mode='const', update_emas=True)
    assert x.shape == (10, 2) and torch.isfinite(x).all()
    x2, ws = G(z, c, return_ws=True)
    assert ws is None and torch.equal(x, x2)
    logits, feats = D(x, c, return_features=True)
    assert logits.shape == (10, 1) and feats.shape == (10, D.feature_dim) and D.feature_dim == 128
    with pytest.raises(TypeError):
        D(x, c, bogus=1)
    with pytest.raises(ValueError):
        D(x, torch.randn(10, c_dim + 1))
    if c_dim:
        assert not torch.allclose(D(x, c), D(x, c + 1))
        assert not torch.allclose(G(z, c), G(z, c + 1))
    (logits.sum() + x.sum()).backward()
    assert all(p.grad is not None for p in G.parameters())
