"""Official StyleGAN2-ADA / StyleGAN3 pickles: read without their code, mapped onto ganstack's networks,
and the imported networks reproduce an independent reference computation of the official networks."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from official_format import (SRC_SG3_ALIAS_FREE, Node, fake_official_modules, official_discriminator,
                             official_generator, ref_discriminator, ref_generator, to_persistent,
                             write_official_pickle)

from ganstack.stylegan_base import legacy
from ganstack.stylegan_base.legacy import OfficialPickleError

CASES = {
    # StyleGAN2-ADA-PyTorch: nested synthesis_kwargs, w_avg_beta default 0.995
    "ada-skip-resnet": dict(flavor="ada", g_arch="skip", d_arch="resnet", c_dim=0, clamp=None, fp16=0),
    # StyleGAN3 --cfg=stylegan2: flat G kwargs, fused_modconv_default, w_avg_beta default 0.998, FP16 + clamp
    "sg3-resnet-orig-cond": dict(flavor="sg3", g_arch="resnet", d_arch="orig", c_dim=3, clamp=0.5, fp16=2),
    # a small clamp makes conv_clamp matter, and the skip D's epilogue fromrgb must not be clamped
    "ada-orig-skip-clamp": dict(flavor="ada", g_arch="orig", d_arch="skip", c_dim=2, clamp=0.5, fp16=0),
}


def _nets(case):
    G = official_generator(c_dim=case["c_dim"], architecture=case["g_arch"], conv_clamp=case["clamp"],
                           num_fp16_res=case["fp16"], flavor=case["flavor"], seed=0)
    G_ema = official_generator(c_dim=case["c_dim"], architecture=case["g_arch"], conv_clamp=case["clamp"],
                               num_fp16_res=case["fp16"], flavor=case["flavor"], seed=7)
    D = official_discriminator(c_dim=case["c_dim"], architecture=case["d_arch"], conv_clamp=case["clamp"],
                               num_fp16_res=case["fp16"], flavor=case["flavor"])
    return G, D, G_ema


def _inputs(c_dim, n=4):
    rnd = np.random.RandomState(123)
    z = torch.from_numpy(rnd.randn(n, 12)).float()
    c = torch.zeros(n, c_dim)
    if c_dim:
        c[torch.arange(n), torch.arange(n) % c_dim] = 1
    return z, c


@pytest.mark.parametrize("name", list(CASES))
def test_imported_networks_reproduce_the_official_computation(tmp_path, name):
    case = CASES[name]
    G, D, G_ema = _nets(case)
    path = str(tmp_path / "network-snapshot-000100.pkl")
    write_official_pickle(path, G=G, D=D, G_ema=G_ema)
    nets, snap = legacy.load_official_networks(path)
    assert set(nets) == {"G", "D", "G_ema"}
    assert snap.augment_p == pytest.approx(0.25)
    assert snap.training_set_kwargs["path"] == "/data/shapes8.zip"

    z, c = _inputs(case["c_dim"])
    for role, node in (("G", G), ("G_ema", G_ema)):
        net = nets[role].module
        for psi in (1.0, 0.7):
            want = ref_generator(node, z, c, psi=psi)
            got = net(z, c, truncation_psi=psi, noise_mode="const")
            assert got.shape == want.shape == (4, 3, 8, 8)
            assert (got - want).abs().max().item() < 1e-3, (role, psi)
            assert want.std() > 0.05  # a real signal, not a degenerate all-zero image
    imgs = ref_generator(G_ema, z, c)
    want = ref_discriminator(D, imgs, c)
    got = nets["D"].module(imgs, c)
    assert got.shape == want.shape == (4, 1)
    assert (got - want).abs().max().item() < 1e-3
    # The two generators hold different weights: G and G_ema were not mixed up.
    assert (nets["G"].module(z, c, noise_mode="const") - ref_generator(G_ema, z, c)).abs().max() > 1e-2


def test_source_defaults_and_fp16_policy(tmp_path):
    """w_avg_beta comes from the pickled class source (0.995 ADA, 0.998 StyleGAN3); FP16 is reported, not kept."""
    for flavor, beta in (("ada", 0.995), ("sg3", 0.998)):
        G = official_generator(flavor=flavor, conv_clamp=256, num_fp16_res=4)
        path = str(tmp_path / f"{flavor}.pkl")
        write_official_pickle(path, G_ema=G)
        nets, _ = legacy.load_official_networks(path)
        imp = nets["G_ema"]
        assert imp.module.mapping.w_avg_beta == beta
        assert imp.kwargs["synthesis_kwargs"]["conv_clamp"] == 256
        assert "num_fp16_res" not in imp.kwargs["synthesis_kwargs"]
        assert all(not b.use_fp16 for b in imp.module.synthesis.children())
        assert any("num_fp16_res=4" in n and "float32" in n for n in imp.notes)


def test_ganstack_default_w_avg_beta_is_the_official_one():
    from ganstack.stylegan_base.networks import Generator
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                  synthesis_kwargs=dict(channel_base=64, channel_max=8))
    assert G.mapping.w_avg_beta == 0.995


def test_names_and_shapes_that_do_not_map_are_listed(tmp_path):
    G = official_generator()
    blk = G.modules["synthesis"].modules["b8"]
    blk.modules["conv1"].params["extra_gain"] = torch.ones(3)          # a name ganstack does not have
    del blk.modules["torgb"].params["bias"]                               # a name the pickle lacks
    G.modules["mapping"].buffers["w_avg"] = torch.zeros(5)               # a wrong shape
    path = str(tmp_path / "bad.pkl")
    write_official_pickle(path, G_ema=G)
    with pytest.raises(OfficialPickleError) as err:
        legacy.load_official_networks(path)
    msg = str(err.value)
    assert "synthesis.b8.conv1.extra_gain" in msg
    assert "synthesis.b8.torgb.bias" in msg
    assert "mapping.w_avg [5] vs [16]" in msg


def test_layer_attributes_are_cross_checked(tmp_path):
    """An attribute the official layer stored (here its lr multiplier) that ganstack's rebuild does not
    reproduce is an error, not a silently different network."""
    G = official_generator()
    G.modules["mapping"].modules["fc1"].attrs["bias_gain"] = 0.5
    path = str(tmp_path / "attr.pkl")
    write_official_pickle(path, G_ema=G)
    with pytest.raises(OfficialPickleError, match=r"mapping\.fc1\.bias_gain"):
        legacy.load_official_networks(path)


@pytest.mark.parametrize("what", ["stylegan3-t", "unknown-class", "unknown-kwarg"])
def test_architectures_ganstack_cannot_represent_are_refused(tmp_path, what):
    G = official_generator()
    if what == "stylegan3-t":
        G.src = SRC_SG3_ALIAS_FREE
        G.modules["synthesis"].modules["input"] = Node("SynthesisInput", (), dict(w_dim=16), {}, SRC_SG3_ALIAS_FREE)
        match = "StyleGAN3 alias-free"
    elif what == "unknown-class":
        G.modules["synthesis"].modules["b8"].modules["attn"] = Node("SelfAttention", (), {}, {})
        match = "SelfAttention"
    else:
        G.modules["synthesis"].kwargs["use_sinusoids"] = True
        match = "use_sinusoids=True"
    path = str(tmp_path / f"{what}.pkl")
    write_official_pickle(path, G_ema=G)
    with pytest.raises(OfficialPickleError, match=match):
        legacy.load_official_networks(path)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_foreign_globals_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = str(tmp_path / "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump(dict(G_ema=evil), f)
    with pytest.raises(OfficialPickleError, match=r"(posix|os|nt)\.system"):
        legacy.read_official_pickle(path)
    assert not marker.exists()
    # The embedded module source is never executed either.
    G = official_generator()
    G.src = f"open({str(marker)!r}, 'w').write('ran')\n" + G.src
    write_official_pickle(path, G_ema=G)
    legacy.load_official_networks(path)
    assert not marker.exists()


def test_tensorflow_and_other_files_get_a_clear_message(tmp_path):
    import sys
    import types
    mod = types.ModuleType("dnnlib.tflib.network")

    class Network(dict):
        pass
    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = "Network"
    mod.Network = Network
    for name in ("dnnlib", "dnnlib.tflib", "dnnlib.tflib.network"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["dnnlib.tflib.network"] = mod
    try:
        tf_path = str(tmp_path / "tf.pkl")
        with open(tf_path, "wb") as f:
            pickle.dump((Network(), Network(), Network()), f)
    finally:
        for name in ("dnnlib.tflib.network", "dnnlib.tflib", "dnnlib"):
            sys.modules.pop(name, None)
    with pytest.raises(OfficialPickleError, match="TensorFlow"):
        legacy.read_official_pickle(tf_path)
    pt = str(tmp_path / "state.pt")
    torch.save({"a": torch.zeros(1)}, pt)
    assert not legacy.looks_like_pickle(pt)
    with pytest.raises(OfficialPickleError, match="could not be read"):
        legacy.read_official_pickle(pt)
    trunc = str(tmp_path / "trunc.pkl")
    write_official_pickle(trunc, G_ema=official_generator())
    data = open(trunc, "rb").read()
    open(trunc, "wb").write(data[: len(data) // 2])
    assert legacy.looks_like_pickle(trunc)
    with pytest.raises(OfficialPickleError):
        legacy.read_official_pickle(trunc)


def test_bare_network_pickle_and_state_walk(tmp_path):
    """A pickle of one network (pickle.dump(G_ema)) is read too; flat_tensors lists state_dict names."""
    G = official_generator()
    path = str(tmp_path / "g.pkl")
    with fake_official_modules(), open(path, "wb") as f:
        pickle.dump(to_persistent(G), f)
    snap = legacy.read_official_pickle(path)
    assert set(snap.nets) == {"G_ema"}
    flat = legacy.flat_tensors(snap.nets["G_ema"])
    assert set(flat) == set(G.flat())
    assert all(torch.equal(flat[k], v) for k, v in G.flat().items())
