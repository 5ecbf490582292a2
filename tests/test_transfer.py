"""import-pkl, --init (fine-tuning start from a pickle or checkpoint) and --freezed (Freeze-D)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import make_config, make_trainer, run_cli
from official_format import (official_discriminator, official_generator, ref_discriminator, ref_generator,
                             write_official_pickle)

from ganstack.stylegan_base.datasets import open_dataset
from ganstack.stylegan_base.errors import CheckpointError
from ganstack.stylegan_base.networks import Discriminator
from ganstack.training import transfer
from ganstack.training.api import ConfigError
from ganstack.training.config import resolve
from ganstack.training.inference import load_model
from ganstack.training.nets import build_networks
from ganstack.training.plugin_manager import PluginStack

# The official pickle matches conftest's TINY_IMAGE: 16x16, cbase 512, cmax 32, map 2, z/w 16, mbstd 2.
OFFICIAL = dict(z_dim=16, w_dim=16, img_resolution=16, map_layers=2, channel_base=512, channel_max=32)


def _pickle(path, c_dim=0, **kw):
    G = official_generator(c_dim=c_dim, seed=0, **dict(OFFICIAL, **kw))
    G_ema = official_generator(c_dim=c_dim, seed=5, **dict(OFFICIAL, **kw))
    D = official_discriminator(c_dim=c_dim, img_resolution=16, channel_base=kw.get('channel_base', 512),
                               channel_max=32, mbstd_group_size=2, conv_clamp=kw.get('conv_clamp'))
    write_official_pickle(str(path), G=G, D=D, G_ema=G_ema,
                          training_set_kwargs=dict(path='/data/shapes16.zip', xflip=True, use_labels=bool(c_dim)))
    return G, D, G_ema


def _z(n=3):
    return torch.from_numpy(np.random.RandomState(0).randn(n, 16)).float()


def test_import_pkl_writes_a_checkpoint_generate_reads(tmp_path, capsys):
    src, dest = tmp_path / "network-snapshot-000200.pkl", tmp_path / "imported.pt"
    G, D, G_ema = _pickle(src, conv_clamp=256)
    assert run_cli(["import-pkl", str(src), str(dest)]) == 0
    out = capsys.readouterr().out
    assert "Imported D, G, G_ema" in out and "16x16x3" in out and "conv_clamp 256" in out
    model = load_model(str(dest), device="cpu")
    z = _z()
    for psi in (1.0, 0.7):
        got = model.sample(z, truncation_psi=psi, noise_mode="const")
        assert (got - ref_generator(G_ema, z, None, psi=psi)).abs().max() < 1e-3
    ckpt = torch.load(dest, weights_only=True)
    assert ckpt["config"]["cbase"] == 512 and ckpt["config"]["mbstd_group"] == 2 and ckpt["config"]["mirror"]
    assert ckpt["imported_from"]["augment_p"] == pytest.approx(0.25)
    assert len(ckpt["imported_from"]["sha256"]) == 64
    # generate --network on the imported checkpoint writes images
    outdir = tmp_path / "imgs"
    assert run_cli(["generate", "--network", str(dest), "--seeds", "0-1", "--outdir", str(outdir), "--device", "cpu"]) == 0
    assert sorted(os.listdir(outdir)) == ["seed0000.png", "seed0001.png"]
    # DEST is not overwritten silently
    assert run_cli(["import-pkl", str(src), str(dest)]) == 2


def test_import_pkl_refuses_what_train_cannot_rebuild(tmp_path):
    G = official_generator(**OFFICIAL)
    G.modules["mapping"].kwargs["lr_multiplier"] = 0.1
    for layer in G.modules["mapping"].modules.values():
        layer.attrs["weight_gain"] *= 10
        layer.attrs["bias_gain"] = 0.1
    src = tmp_path / "lr.pkl"
    write_official_pickle(str(src), G_ema=G)
    with pytest.raises(ConfigError, match=r"G mapping lr_multiplier=0\.1"):
        transfer.import_pkl(str(src), str(tmp_path / "x.pt"))
    assert not (tmp_path / "x.pt").exists()


def test_import_pkl_of_a_converted_pretrained_pickle(tmp_path):
    """StyleGAN2-ADA's pretrained pickles (converted from TensorFlow by its legacy.py) spell out every
    argument, give the unconditional D a 0-layer label mapping and may use the whole minibatch for
    minibatch-std."""
    G = official_generator(**OFFICIAL)
    G.kwargs["mapping_kwargs"].update(embed_features=None, layer_features=None, activation="lrelu",
                                      lr_multiplier=0.01, w_avg_beta=0.995)
    G.modules["mapping"].kwargs.update(G.kwargs["mapping_kwargs"])
    extra = dict(resample_filter=[1, 3, 3, 1], use_noise=True, activation="lrelu")
    G.kwargs["synthesis_kwargs"].update(extra)
    G.modules["synthesis"].kwargs.update(extra)
    D = official_discriminator(img_resolution=16, channel_base=512, channel_max=32, mbstd_group_size=None)
    D.kwargs.update(cmap_dim=None, block_kwargs=dict(activation="lrelu", resample_filter=[1, 3, 3, 1], freeze_layers=0),
                    mapping_kwargs=dict(num_layers=0, embed_features=None, layer_features=None, activation="lrelu",
                                        lr_multiplier=0.1),
                    epilogue_kwargs=dict(mbstd_group_size=None, mbstd_num_channels=1, activation="lrelu"))
    src = tmp_path / "ffhq-like.pkl"
    write_official_pickle(str(src), G=G, D=D, G_ema=G)
    ckpt = transfer.import_pkl(str(src), str(tmp_path / "ffhq.pt"))
    assert any("whole minibatch" in n for n in ckpt["imported_from"]["notes"])
    model = load_model(str(tmp_path / "ffhq.pt"), device="cpu")
    z = _z()
    assert (model.sample(z, noise_mode="const") - ref_generator(G, z, None)).abs().max() < 1e-3


def _fresh_nets(cond=False):
    cfg = make_config(image=True, cond=cond)
    ds = open_dataset(cfg.data, use_labels=cfg.cond)
    resolve(cfg, ds.info())
    stack = PluginStack([], {})
    stack.configure(cfg)
    torch.manual_seed(123)
    return build_networks(stack, cfg, ds.info())


@pytest.mark.parametrize("via", ["pickle", "checkpoint"])
def test_init_copies_every_weight_into_fresh_networks(tmp_path, via):
    src = tmp_path / "snap.pkl"
    G, D, G_ema = _pickle(src)
    if via == "checkpoint":
        transfer.import_pkl(str(src), str(tmp_path / "snap.pt"))
        src = tmp_path / "snap.pt"
    nets = _fresh_nets()
    report = transfer.load_init_weights(nets, str(src))
    assert report.kind == ("official pickle" if via == "pickle" else "ganstack checkpoint")
    assert report.copied["G"] == len(nets.G.state_dict()) and not report.fresh["G"] and not report.ignored["D"]
    z = _z()
    assert (nets.G_ema.eval()(z, None, noise_mode="const") - ref_generator(G_ema, z, None)).abs().max() < 1e-3
    assert (nets.G.eval()(z, None, noise_mode="const") - ref_generator(G, z, None)).abs().max() < 1e-3
    img = ref_generator(G_ema, z[:2], None)
    assert (nets.D(img, None) - ref_discriminator(D, img, None)).abs().max() < 1e-3
    assert all(p.requires_grad is False for p in nets.G.parameters())  # build_networks' state is kept
    assert any("G:" in line for line in report.lines())


def test_init_reports_fresh_and_unused_tensors_and_refuses_other_shapes(tmp_path):
    src = tmp_path / "uncond.pkl"
    _pickle(src)
    ckpt_path = str(tmp_path / "uncond.pt")
    transfer.import_pkl(str(src), ckpt_path)
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["D"]["old_head.weight"] = torch.zeros(4, 32)  # a module the new run's D does not have
    torch.save(ckpt, ckpt_path)
    nets = _fresh_nets(cond=False)
    nets.D.new_head = torch.nn.Linear(32, 8)  # one a plugin adds to D (CLR's latent head, say)
    before = nets.D.new_head.weight.clone()
    report = transfer.load_init_weights(nets, ckpt_path)
    assert report.fresh["D"] == ["new_head.weight", "new_head.bias"]
    assert report.ignored["D"] == ["old_head.weight"]
    assert torch.equal(nets.D.new_head.weight, before)
    assert torch.equal(nets.D.b4.fc.weight, ckpt["D"]["b4.fc.weight"])
    wide = tmp_path / "wide.pkl"
    _pickle(wide, z_dim=8)
    with pytest.raises(CheckpointError, match=r"do not fit.*mapping\.fc0\.weight \[16, 8\] vs \[16, 16\]"):
        transfer.load_init_weights(_fresh_nets(), str(wide))
    with pytest.raises(CheckpointError, match="no such file"):
        transfer.load_init_weights(_fresh_nets(), str(tmp_path / "missing.pkl"))


@pytest.mark.parametrize("arch", ["resnet", "orig", "skip"])
def test_freezed_counts_layers_as_stylegan2_ada(arch):
    kw = dict(c_dim=0, img_resolution=32, img_channels=3, architecture=arch, channel_base=256, channel_max=16)
    torch.manual_seed(0)
    D = Discriminator(**kw)
    layers = transfer.discriminator_layers(D)
    if arch == "resnet":  # official layer_idx: b32 fromrgb 0, conv0 1, conv1 2, skip 3; b16 conv0 4 ...
        assert layers[:5] == ["b32.fromrgb", "b32.conv0", "b32.conv1", "b32.skip", "b16.conv0"]
    for n in (0, 2, 5, 100):
        torch.manual_seed(0)
        ours = Discriminator(**kw)
        state = {k: v.clone() for k, v in ours.state_dict().items()}
        frozen = transfer.freeze_discriminator_layers(ours, n)
        assert frozen == layers[:n]
        torch.manual_seed(0)
        official = Discriminator(**kw, block_kwargs=dict(freeze_layers=n))  # the constructor's Freeze-D
        assert {k for k, _ in ours.named_parameters()} == {k for k, _ in official.named_parameters()}
        assert {k for k, _ in ours.named_buffers()} == {k for k, _ in official.named_buffers()}
        assert all(torch.equal(v, state[k]) for k, v in ours.state_dict().items())
    D = Discriminator(**kw)
    transfer.freeze_discriminator_layers(D, 3)
    D.requires_grad_(True)
    frozen_w = D.get_submodule(layers[0]).weight.clone()
    opt = torch.optim.Adam(D.parameters(), lr=0.1)
    D(torch.randn(2, 3, 32, 32), None).sum().backward()
    opt.step()
    assert torch.equal(D.get_submodule(layers[0]).weight, frozen_w)
    assert not torch.equal(D.b4.fc.weight, Discriminator(**kw).b4.fc.weight)
    with pytest.raises(ConfigError):
        transfer.freeze_discriminator_layers(D, -1)
    with pytest.raises(ConfigError, match="StyleGAN2 discriminator"):
        transfer.freeze_discriminator_layers(torch.nn.Linear(2, 2), 1)


# ------------------------------------------------------------------------------------------------
# Official pickles where a checkpoint is accepted: generate --network X.pkl, metrics --network X.pkl

def test_generate_from_an_official_pickle_writes_the_official_images(tmp_path):
    import imageio.v2 as imageio

    src = tmp_path / "network-snapshot-000200.pkl"
    _, _, G_ema = _pickle(src, conv_clamp=256)
    model = load_model(str(src), device="cpu")  # read in memory, no checkpoint file written
    z = _z()
    for psi in (1.0, 0.7):
        assert (model.sample(z, truncation_psi=psi, noise_mode="const")
                - ref_generator(G_ema, z, None, psi=psi)).abs().max() < 1e-3
    assert sorted(os.listdir(tmp_path)) == [src.name]
    outdir = tmp_path / "imgs"
    for psi in ("1", "0.7"):
        assert run_cli(["generate", "--network", str(src), "--seeds", "3,5", "--trunc", psi, "--outdir", str(outdir),
                     "--device", "cpu"]) == 0
        for seed in (3, 5):
            zs = torch.from_numpy(np.random.RandomState(seed).randn(1, 16)).float()
            ref = ((ref_generator(G_ema, zs, None, psi=float(psi))[0] + 1) * 127.5).clamp(0, 255)
            png = torch.from_numpy(imageio.imread(outdir / f"seed{seed:04d}.png")).permute(2, 0, 1).float()
            # uint8 rounding (0.5) plus 1e-3 of the [-1, 1] range
            assert (png - ref).abs().max() <= 0.5 + 1e-3 * 127.5


def test_metrics_on_an_official_pickle(tmp_path, monkeypatch, capsys):
    import json

    from test_metrics import StandInDetector

    from ganstack.metrics import detectors
    torch.manual_seed(0)
    det = tmp_path / "stand-in.pt"
    torch.jit.script(StandInDetector()).save(str(det))
    monkeypatch.setenv("GANSTACK_CACHE", str(tmp_path / "cache"))
    detectors._loaded.clear()
    src = tmp_path / "pkl" / "network-snapshot-000200.pkl"
    src.parent.mkdir()
    _pickle(src)
    dest = tmp_path / "pt" / "imported.pt"
    dest.parent.mkdir()
    transfer.import_pkl(str(src), str(dest))
    args = ["--metrics", "fid64_full", "--data", "shapes16?n=80", "--detector", str(det), "--device", "cpu"]
    assert run_cli(["metrics", "--network", str(src)] + args) == 0
    assert run_cli(["metrics", "--network", str(dest)] + args) == 0
    got = [json.loads(s) for s in open(src.parent / "metric-fid64_full.jsonl")]
    ref = [json.loads(s) for s in open(dest.parent / "metric-fid64_full.jsonl")]
    assert got[0]["snapshot"] == src.name and got[0]["kimg"] == 0
    assert got[0]["results"]["fid64_full"] == pytest.approx(ref[0]["results"]["fid64_full"], rel=1e-6)
    assert got[0]["results"]["fid64_full"] > 0


# ------------------------------------------------------------------------------------------------
# ganstack train --init / --freezed

def test_trainer_init_starts_from_the_pickles_weights_and_trains(tmp_path):

    src = tmp_path / "snap.pkl"
    G, D, G_ema = _pickle(src)
    tr = make_trainer([], image=True, init=str(src))
    z = _z()
    with torch.no_grad():
        assert (tr.G_ema(z, None, noise_mode="const") - ref_generator(G_ema, z, None)).abs().max() < 1e-3
        assert (tr.G(z, None, noise_mode="const") - ref_generator(G, z, None)).abs().max() < 1e-3
    # fresh optimiser state, counters at zero
    assert tr.cur_nimg == 0 and not tr.G_opt.state and not tr.D_opt.state
    before = {k: v.clone() for k, v in tr.G.state_dict().items()}
    for _ in range(2):
        tr.step()
    assert any(not torch.equal(before[k], v) for k, v in tr.G.state_dict().items())
    assert all(torch.isfinite(v).all() for v in tr.G.state_dict().values())


def test_train_init_and_freezed_from_the_command_line(tmp_path, capsys):
    src = tmp_path / "network-snapshot-000200.pkl"
    _, D, _ = _pickle(src, conv_clamp=256)
    out = tmp_path / "runs"
    # no architecture options given: the run takes them from the pickle (cbase, cmax, z/w, mapping, conv_clamp)
    base = ["train", "--data", "shapes16?n=64", "--cfg", "stylegan2", "--batch", "4", "--mbstd-group", "2",
            "--workers", "0", "--outdir", str(out), "--device", "cpu", "--init", str(src)]
    assert run_cli(base + ["--freezed", "3", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "Init:" in text and "cbase=512" in text and "conv_clamp=256" in text and "Freeze-D:" in text
    assert not out.exists() or not os.listdir(out)
    assert run_cli(base + ["--freezed", "3", "--kimg", "0.016", "--snap", "1", "--tick", "0.008"]) == 0
    text = capsys.readouterr().out
    assert "tensors copied" in text and "b16.fromrgb, b16.conv0, b16.conv1 do not train" in text
    run = out / os.listdir(out)[0]
    ckpt = torch.load(run / "network-snapshot-000000.pt", weights_only=True)  # 16 images: kimg 0
    assert ckpt["config"]["init"] == str(src) and ckpt["config"]["freezed"] == 3
    assert ckpt["cur_nimg"] == 16
    official = D.flat()
    for name in ("b16.fromrgb.weight", "b16.fromrgb.bias", "b16.conv0.weight", "b16.conv1.bias"):
        assert torch.equal(ckpt["D"][name], official[name]), name  # frozen: bit-identical
    for name in ("b16.skip.weight", "b8.conv0.weight", "b4.fc.weight", "b4.out.bias"):
        assert not torch.equal(ckpt["D"][name], official[name]), name  # later layers train
    # a resumed run keeps the same layers frozen (the optimiser state fits) and does not re-read --init
    os.remove(src)
    assert run_cli(["train", "--resume", str(run), "--kimg", "0.032", "--outdir", str(out)]) == 0
    capsys.readouterr()


def test_train_init_bad_input_is_one_paragraph_exit_2(tmp_path, capsys):
    src = tmp_path / "snap.pkl"
    _pickle(src)
    base = ["train", "--data", "shapes16?n=64", "--cfg", "stylegan2", "--batch", "4", "--mbstd-group", "2",
            "--workers", "0", "--outdir", str(tmp_path / "runs"), "--device", "cpu", "--dry-run"]
    lr = tmp_path / "lr.pkl"
    G = official_generator(**OFFICIAL)
    G.modules["mapping"].kwargs["lr_multiplier"] = 0.1
    for layer in G.modules["mapping"].modules.values():
        layer.attrs["weight_gain"] *= 10
        layer.attrs["bias_gain"] = 0.1
    write_official_pickle(str(lr), G_ema=G)
    ckpt = tmp_path / "imported.pt"
    transfer.import_pkl(str(src), str(ckpt))
    cases = [
        (["--init", str(src), "--resume", str(ckpt)], ["--resume continues a run exactly", "Give one of them"]),
        (["--resume", str(src)], ["official StyleGAN2-ADA", f"--init {src}"]),
        (["--resume", str(ckpt)], ["cannot be resumed", f"--init {ckpt}"]),
        (["--init", str(lr)], ["G mapping lr_multiplier=0.1", "cannot start from them"]),
        (["--init", str(src), "--freezed", "40"], ["--freezed 40", "only 7 layers", "b16.fromrgb ... b8.skip", "--freezed 0..7"]),
        (["--init", str(src), "--cbase", "256"], ["do not fit", "--cbase"]),
        (["--init", str(tmp_path / "nope.pkl")], ["no such file"]),
    ]
    for extra, expected in cases:
        assert run_cli(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().count("\n") == 0, err
        for e in expected:
            assert e in err, (extra, e, err)
