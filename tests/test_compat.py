"""StyleGAN2-ADA's train.py command-line forms on `ganstack train` (training/compat.py): each runs as a dry run
with the expected resolved settings, or stops with the expected one-line message (exit 2, no traceback)."""
from __future__ import annotations

import os

import pytest

from conftest import run_cli

BASE = ["train", "--data", "shapes16?n=64", "--cfg", "stylegan2", "--batch", "4", "--mbstd-group", "2",
        "--workers", "0", "--device", "cpu", "--cbase", "512", "--cmax", "32", "--map-depth", "2", "--z-dim", "16"]
OFF = "ADA is off (StyleGAN2-ADA's default is --aug ada"

RUNS = [  # (StyleGAN2-ADA flags, lines expected in the dry run's output)
    ([], ["Plugins:      none", OFF]),
    (["--aug", "noaug"], ["Plugins:      none", OFF]),
    (["--aug", "ada"], ["Plugins:      ada", "ADA on, adaptive: target 0.6, augpipe bgc, p from 0.0"]),
    (["--aug=ada", "--target", "0.7", "--augpipe", "bg"], ["ADA on, adaptive: target 0.7, augpipe bg"]),
    (["--aug", "fixed", "--p", "0.2"], ["ada: p=0.2, adaptive=False", "ADA on, fixed p 0.2, augpipe bgc"]),
    (["--plugins", "ada"], ["Plugins:      ada", "ADA on, adaptive: target 0.6"]),
    (["--aug", "ada", "--plugins", "diffaug"], ["Plugins:      ada, diffaug", "ADA on, adaptive"]),
    (["--aug", "ada", "--plugins", "ada", "--ada-target", "0.8"], ["ADA on, adaptive: target 0.8"]),
    (["--mirror=1"], ["(128 images, 16x16x3)"]),
    (["--mirror"], ["(128 images, 16x16x3)"]),
    (["--mirror", "1"], ["(128 images, 16x16x3)"]),
    (["--mirror=0"], ["(64 images, 16x16x3)"]),
    (["--mirror=1", "--subset", "40"], ["(80 images, 16x16x3)"]),
    (["--subset", "40", "--max-size", "40"], ["(40 images, 16x16x3)"]),
    (["--cond=0"], ["(64 images, 16x16x3)"]),
    (["--fp32=1"], ["Preset:"]),
    (["--fp32", "--amp", "off"], ["Preset:"]),
    (["--nhwc=0", "--nobench=1"], ["Preset:"]),
    (["--dry-run"], ["Dry run: options are valid"]),
]

ERRORS = [  # (StyleGAN2-ADA flags, what the one-line message says)
    (["--aug", "noaug", "--plugins", "ada"], ["--aug noaug and --plugins ada contradict", "Drop ada"]),
    (["--aug", "fixed"], ["--aug fixed needs --p P"]),
    (["--p", "0.2"], ["--p is an option of StyleGAN2-ADA's augmentation", "Add --aug fixed"]),
    (["--target", "0.7"], ["default there is --aug ada", "ganstack trains without augmentation", "Add --aug ada"]),
    (["--augpipe", "bg"], ["Add --aug ada (or --aug fixed --p P)"]),
    (["--aug", "fixed", "--p", "0.2", "--target", "0.6"], ["--target can only be given with --aug ada"]),
    (["--aug", "ada", "--p", "0.3"], ["--p can only be given with --aug fixed"]),
    (["--aug", "noaug", "--augpipe", "bg"], ["--augpipe cannot be given with --aug noaug"]),
    (["--aug", "fixed", "--p", "0.2", "--ada-p", "0.3"], ["--p and --ada-p 0.3 contradict"]),
    (["--aug", "ada", "--ada-adaptive", "false"], ["--aug ada and --ada-adaptive false contradict"]),
    (["--aug", "noaug", "--ada-p", "0.3"], ["--ada-p given, but plugin(s) ada not enabled"]),
    (["--subset", "10", "--max-size", "20"], ["--subset 10 and --max-size 20 contradict"]),
    (["--cond=1"], ["--cond needs labels"]),
    (["--fp32=1", "--amp", "bf16"], ["--fp32=1 and --amp bf16 contradict"]),
    (["--nobench=0"], ["--nobench=0", "cuDNN benchmarking off"]),
    (["--allow-tf32=0"], ["--allow-tf32=0", "TF32 defaults"]),
    (["--fp32=0", "--mp-res", "2"], ["--fp32=0 and --mp-res 2 contradict"]),
    (["--mirror=2"], ["--mirror", "not a valid boolean"]),
]


@pytest.mark.parametrize("flags,expected", RUNS, ids=[" ".join(f) or "(none)" for f, _ in RUNS])
def test_stylegan2_ada_command_line_runs(flags, expected, tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_cli(BASE + ["--outdir", str(out), "-n"] + flags) == 0
    text = capsys.readouterr().out
    for e in expected:
        assert e in text, (e, text)
    assert text.count("Augment:") == 1
    assert not out.exists() or not os.listdir(out)  # -n is --dry-run: nothing is created


@pytest.mark.parametrize("flags,expected", ERRORS, ids=[" ".join(f) for f, _ in ERRORS])
def test_stylegan2_ada_command_line_refused_in_one_line(flags, expected, tmp_path, capsys):
    assert run_cli(BASE + ["--outdir", str(tmp_path / "runs"), "-n"] + flags) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("Usage:", "Try "))]
    assert len([line for line in lines if line.strip()]) == 1, err
    for e in expected:
        assert e in err, (e, err)


def test_without_aug_the_run_log_says_ada_is_off(tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_cli(BASE + ["--outdir", str(out), "--kimg", "0.004", "--snap", "1"]) == 0
    run = out / os.listdir(out)[0]
    assert OFF in open(run / "log.txt").read()
    capsys.readouterr()


@pytest.mark.parametrize("flags,expected", [
    ({"sg_fp32": False}, {"mp_res": 4, "mp_dtype": "fp16"}),
    ({"sg_fp32": True}, {}),
    ({"sg_nhwc": True}, {"channels_last": True}),
    ({"sg_nhwc": False}, {}),
    ({"sg_allow_tf32": True}, {"tf32": True}),
])
def test_speed_flags_map_onto_ganstack_options(flags, expected):
    from ganstack.training import compat
    kwargs = dict(flags, plugins=None, mp_res=0, mp_dtype="bf16", channels_last=False, tf32=False)
    _, user = compat.apply(kwargs, set(), lambda text: [])
    assert user == set(expected) and all(kwargs[k] == v for k, v in expected.items())
    assert not any(k.startswith("sg_") for k in kwargs)
