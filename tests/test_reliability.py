"""Issue #12 (the parts outside the training loop): no input, signal or fault loses a finished result or
shows a traceback.

One test per class of failure (each failed on the code before the fix), then a table of bad command
lines run through the real entry point: each must exit non-zero, print no traceback, name the flag at
fault and leave every pre-existing file as it was.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal

import numpy as np
import pytest
import torch

from conftest import make_trainer
from ganstack.metrics import detectors
from ganstack.training import ablate as ab
from ganstack.training import checkpoint as ckpt_io
from ganstack.training.api import ConfigError
from ganstack.training.cli import main


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GANSTACK_CACHE", str(tmp_path / "cache"))
    for var in ("GANSTACK_INCEPTION", "GANSTACK_VGG16", "GANSTACK_INCEPTION_SHA256", "GANSTACK_VGG16_SHA256",
                "GANSTACK_DIGIT_CLASSIFIER", "GANSTACK_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    detectors._loaded.clear()
    monkeypatch.setattr("ganstack.training.loop.save_scatter_panels", lambda *a, **k: False)


def run_cli(capsys, *args) -> tuple[int, str]:
    """``ganstack ARGS`` in this process: (exit status, stdout + stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out + out.err


def tree(root) -> dict:
    """``{path: sha256}`` of every file under ``root``."""
    out = {}
    for dp, _, fns in os.walk(root):
        for f in fns:
            p = os.path.join(dp, f)
            with open(p, "rb") as fh:
                out[p] = hashlib.sha256(fh.read()).hexdigest()
    return out


class StandInDetector(torch.nn.Module):
    """The StyleGAN2-ADA detector interface: uint8 [N, 3, H, W] -> [N, 48] features."""

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(img.to(torch.float32) / 255.0, 4).flatten(1)


class PickledThing:
    """A pickled class: torch's weights-only loader refuses it (and torch's error advises weights_only=False)."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints (points, images, NaN weights, incomplete, not a checkpoint) and bad data files."""
    root = tmp_path_factory.mktemp("files")
    runs = {}
    for kind in ("points", "image"):
        run = root / f"run-{kind}"
        run.mkdir()
        tr = make_trainer([], image=(kind == "image"), run_dir=str(run))
        runs[kind] = tr.save_checkpoint()
    f = {k: str(v) for k, v in runs.items()}
    ck = torch.load(f["points"], weights_only=True)
    nan = dict(ck, G_ema={k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                          for k, v in ck["G_ema"].items()})
    torch.save(nan, root / "nan.pt")
    for key in ("config", "G_opt", "plugins"):
        torch.save({k: v for k, v in ck.items() if k != key}, root / f"no_{key}.pt")
    data = open(f["points"], "rb").read()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "random.pt").write_bytes(np.random.RandomState(0).bytes(4000))
    (root / "text.pt").write_text("not a checkpoint\n")
    torch.save({"x": PickledThing()}, root / "pickled.pt")
    torch.save(dict(format="ganstack.score_model", version=1), root / "score.pt")
    (root / "afile").write_text("a regular file\n")
    (root / "emptydir").mkdir()
    np.save(root / "big.npy", np.full((64, 2), 1e300))
    np.save(root / "complex.npy", np.ones((64, 2)) + 1j)
    np.save(root / "ok.npy", np.random.RandomState(0).randn(256, 2))
    torch.jit.script(StandInDetector()).save(str(root / "good_detector.pt"))
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(root / "wrong_detector.pt"))
    for k in ("nan", "no_config", "no_G_opt", "no_plugins", "truncated", "random", "text", "pickled", "score",
              "afile", "emptydir", "big", "complex", "ok", "good_detector", "wrong_detector"):
        ext = "" if k in ("afile", "emptydir") else (".npy" if k in ("big", "complex", "ok") else ".pt")
        f[k] = str(root / f"{k}{ext}")
    f["root"] = str(root)
    return f


TRAIN = ["train", "--data", "toy:gaussians25?n=512", "--batch", "32", "--mlp-hidden", "16", "--workers", "0",
         "--kimg", "0.064", "--tick", "0.032"]
TRAIN_IMG = ["train", "--data", "shapes16?n=64", "--cfg", "stylegan2", "--cbase", "512", "--cmax", "32",
             "--map-depth", "2", "--z-dim", "16", "--batch", "4", "--mbstd-group", "2", "--workers", "0",
             "--kimg", "0.008"]


# -------------------------------------------------------------------------------------------------
# Lost data

def test_a_bad_detector_never_touches_the_cached_one(files, tmp_path, capsys):
    cached = tmp_path / "cache" / "detectors" / "inception-2015-12-05.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(open(files["good_detector"], "rb").read())
    before = tree(cached.parent)
    for bad in (files["random"], files["text"], files["wrong_detector"], files["truncated"]):
        code, out = run_cli(capsys, "metrics", "--network", files["image"], "--metrics", "fid10_full",
                            "--detector", bad, "--device", "cpu")
        assert code != 0 and "Traceback" not in out and bad in out, out
        assert tree(cached.parent) == before, f"{bad} changed the detector cache"
        detectors._loaded.clear()
    # The good cached file still works.
    assert detectors.load_detector("inception", device="cpu", log=lambda *_: None).path == str(cached)


def test_a_good_detector_is_cached_only_after_it_loaded(files, tmp_path):
    cache = tmp_path / "cache" / "detectors"
    det = detectors.load_detector("inception", files["good_detector"], log=lambda *_: None)
    assert det.path == str(cache / "inception-2015-12-05.pt") and os.listdir(cache) == ["inception-2015-12-05.pt"]
    with pytest.raises(detectors.DetectorError, match="not the inception feature network"):
        detectors.load_detector("inception", files["wrong_detector"])
    assert os.listdir(cache) == ["inception-2015-12-05.pt"]


ABL = dict(data="toy:gaussians25?n=512", kimg=0.064, tick=0.032, batch=32, mlp_hidden=16, workers=0)


def _quiet(*_):
    pass


def test_ablate_reuses_a_finished_cell_only_when_everything_that_defines_it_matches(tmp_path, monkeypatch):
    out = str(tmp_path / "abl")
    ab.ablate(out, ["none"], [0], dict(ABL), log=_quiet)
    before = tree(out)
    for changed in (dict(ABL, glr=0.01), dict(ABL, kimg=0.128), dict(ABL, data="toy:gaussians25?n=1024"),
                    dict(ABL, mlp_hidden=32)):
        for dry in (True, False):
            with pytest.raises(ConfigError, match="other settings") as exc:
                ab.ablate(out, ["none"], [0], changed, log=_quiet, dry_run=dry)
            assert "Nothing was changed" in str(exc.value)
            assert tree(out) == before, f"{changed} (dry run {dry}) changed the ablation"
    assert "glr 'unset' -> 0.01" in _message(out, dict(ABL, glr=0.01))
    # The same settings reuse the cell (nothing retrained), and a dry run anywhere writes nothing.
    res = ab.ablate(out, ["none"], [0], dict(ABL), log=_quiet, dry_run=True)
    assert res["status"] == {os.path.join(out, "cells", "none", "seed0"): "done"} and tree(out) == before
    fresh = str(tmp_path / "fresh")
    ab.ablate(fresh, ["none"], [0, 1], dict(ABL), log=_quiet, dry_run=True)
    assert not os.path.exists(fresh)


def _message(out, settings) -> str:
    try:
        ab.ablate(out, ["none"], [0], settings, log=_quiet, dry_run=True)
    except ConfigError as exc:
        return str(exc)
    return ""


def test_ablate_refuses_the_same_data_path_with_other_content(tmp_path):
    data = tmp_path / "points.npy"
    np.save(data, np.random.RandomState(0).randn(256, 2))
    settings = dict(ABL, data=str(data))
    out = str(tmp_path / "abl")
    ab.ablate(out, ["none"], [0], dict(settings), log=_quiet)
    before = tree(out)
    np.save(data, np.random.RandomState(1).randn(256, 2))  # another experiment under the same name
    with pytest.raises(ConfigError, match="data content"):
        ab.ablate(out, ["none"], [0], dict(settings), log=_quiet)
    assert tree(out) == before


def test_generate_validates_before_writing_and_writes_atomically(files, tmp_path, capsys, monkeypatch):
    existing = tmp_path / "existing.npy"
    existing.write_bytes(b"PRECIOUS")
    for bad in (["--n", "0"], ["--n", "-3"], ["--trunc", "nan"], ["--seed", "-1"], ["--device", "gpu"]):
        code, out = run_cli(capsys, "generate", "--network", files["points"], "--out", existing, *bad)
        assert code != 0 and "Traceback" not in out and bad[0] in out, out
        assert existing.read_bytes() == b"PRECIOUS"
    # A failure while writing (here: the disk) leaves the old file and no temporary file.
    def failing_save(path, arr):
        open(path, "wb").write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(np, "save", failing_save)
    code, out = run_cli(capsys, "generate", "--network", files["points"], "--out", existing, "--n", "5",
                        "--device", "cpu")
    assert code != 0 and "disk is full" in out.lower() and "Traceback" not in out
    assert existing.read_bytes() == b"PRECIOUS" and sorted(os.listdir(tmp_path)) == ["existing.npy"]


# -------------------------------------------------------------------------------------------------
# Environment and I/O errors

@pytest.mark.parametrize("command", ["train", "generate", "generate-points", "convert", "ablate", "classifier"])
def test_an_output_path_under_a_regular_file_is_one_paragraph(files, tmp_path, capsys, command):
    blocked = os.path.join(files["afile"], "sub")
    args = {
        "train": TRAIN + ["--outdir", blocked],
        "generate": ["generate", "--network", files["image"], "--outdir", blocked, "--seeds", "0"],
        "generate-points": ["generate", "--network", files["points"], "--out", os.path.join(blocked, "x.npy")],
        "convert": ["dataset", "convert", "--source", files["emptydir"], "--dest", os.path.join(blocked, "x.zip")],
        "ablate": ["ablate", "--outdir", blocked, "--stacks", "none", "--kimg", "0.064", "--seeds", "0"],
        "classifier": ["train-classifier", "--data", files["ok"], "--out", os.path.join(blocked, "c.pt")],
    }[command]
    code, out = run_cli(capsys, *args)
    assert code != 0 and "Traceback" not in out, out
    assert "is a file, not a folder" in out and files["afile"] in out and len(out.strip().splitlines()) <= 2, out


def test_a_full_disk_during_a_checkpoint_says_so_and_keeps_the_older_ones(tmp_path, monkeypatch):
    old = tmp_path / "network-snapshot-000000.pt"
    ckpt_io.atomic_save({"a": torch.zeros(3)}, str(old))
    before = old.read_bytes()
    real_save = torch.save
    errors = [OSError(errno.ENOSPC, "No space left on device"),
              RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 512 vs 448"),
              RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")]
    for err in errors:
        def full(obj, f, _err=err):
            real_save({"partial": torch.zeros(1000)}, f)  # something reaches the temporary file first
            raise _err
        monkeypatch.setattr(torch, "save", full)
        with pytest.raises(ckpt_io.DiskFullError, match="disk is full") as exc:
            ckpt_io.atomic_save({"a": torch.ones(3)}, str(old))
        assert "free" in str(exc.value)
        assert old.read_bytes() == before and os.listdir(tmp_path) == [old.name], os.listdir(tmp_path)


def test_a_full_disk_during_training_is_one_paragraph(tmp_path, capsys, monkeypatch):
    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("ganstack.training.checkpoint.torch.save", full)
    code, out = run_cli(capsys, *TRAIN, "--outdir", tmp_path)
    assert code != 0 and "The disk is full" in out and "Traceback" not in out
    run = [d for d in os.listdir(tmp_path)][0]
    assert not [f for f in os.listdir(tmp_path / run) if f.startswith(".tmp-")]


@pytest.mark.parametrize("device", ["gpu", "cuda:99", "", "tpu", "cuda:-1"] +
                         ([] if torch.cuda.is_available() else ["cuda", "cuda:7"]))
def test_unusable_devices_are_refused_by_every_command(files, capsys, device):
    for args in (TRAIN + ["--dry-run"], ["generate", "--network", files["points"], "--n", "3"],
                 ["metrics", "--network", files["points"], "--metrics", "toy"]):
        code, out = run_cli(capsys, *args, "--device", device)
        assert code == 2 and "--device" in out and "Traceback" not in out, (args[0], out)


@pytest.mark.parametrize("name", ["random", "text", "truncated", "pickled", "score", "no_config", "no_G_opt",
                                  "no_plugins", "emptydir"])
def test_checkpoint_errors_name_the_flag_and_give_no_torch_advice(files, tmp_path, capsys, name):
    uses = [(TRAIN + ["--dry-run", "--outdir", tmp_path, "--resume"], "--resume")]
    if name != "no_G_opt":  # sampling needs no optimizer state
        uses += [(["generate", "--n", "3", "--out", tmp_path / "x.npy", "--network"], "--network"),
                 (["metrics", "--metrics", "toy", "--network"], "--network")]
    for args, flag in uses:
        code, out = run_cli(capsys, *args, files[name])
        assert code == 2 and flag in out and "Traceback" not in out, out
        assert "weights_only" not in out and "KeyError" not in out and "--resume" not in out.replace(flag, ""), out
        if name.startswith("no_"):
            assert "lacks" in out


# -------------------------------------------------------------------------------------------------
# Validate before any work; --dry-run has no side effects

@pytest.mark.parametrize("extra,message", [
    (["--metrics", "fid"], "Unknown metric"),
    (["--metrics", "fid50k_full"], "measures images"),
    (["--metrics", "toy", "--data", "shapes16?n=64"], "2-D mixture"),
    (["--plugins", "ada"], "image data only"),
    (["--plugins", "diffaug"], "image data only"),
    (["--plugins", "smart", "--smart-score", "missing-score.pt"], "does not exist"),
    (["--plugins", "cmgan", "--cmgan-teacher", "missing-teacher.pt"], "does not exist"),
    (["--metrics", "fid10k_full", "--data", "shapes16?n=64"], "inception-2015-12-05.pt"),
])
@pytest.mark.parametrize("dry", [True, False])
def test_start_up_checks_fail_before_a_run_folder_exists(tmp_path, capsys, extra, message, dry):
    outdir = tmp_path / "runs"
    code, out = run_cli(capsys, *TRAIN, "--outdir", outdir, *extra, *(["--dry-run"] if dry else []))
    assert code == 2 and message in out and "Traceback" not in out, out
    assert not outdir.exists() or not os.listdir(outdir)


def test_tensorboard_missing_fails_at_start_up(tmp_path, capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith("torch.utils.tensorboard") or name == "tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    code, out = run_cli(capsys, *TRAIN, "--outdir", tmp_path / "runs", "--tensorboard", "--dry-run")
    assert code == 2 and "pip install" in out and not (tmp_path / "runs").exists()


def test_dry_run_creates_no_run_folder_and_uses_no_run_number(tmp_path, capsys):
    outdir = tmp_path / "runs"
    code, out = run_cli(capsys, *TRAIN, "--outdir", outdir, "--dry-run")
    assert code == 0 and "00000-" in out and not outdir.exists(), out
    code, _ = run_cli(capsys, *TRAIN, "--outdir", outdir, "--kimg", "0.032")
    assert code == 0 and [d[:6] for d in os.listdir(outdir)] == ["00000-"]
    code, out = run_cli(capsys, *TRAIN, "--outdir", outdir, "--dry-run")
    assert code == 0 and "00001-" in out and len(os.listdir(outdir)) == 1


# -------------------------------------------------------------------------------------------------
# Values that used to pass

def test_values_that_used_to_pass(files, tmp_path, capsys):
    out_dir = tmp_path / "g"
    cases = [
        (TRAIN + ["--kimg", "inf", "--dry-run"], "--kimg"),
        (TRAIN + ["--workers", "-1", "--dry-run"], "--workers"),
        (["generate", "--network", files["image"], "--trunc", "nan", "--outdir", out_dir], "--trunc"),
        (["generate", "--network", files["image"], "--seeds", "", "--outdir", out_dir], "--seeds"),
        (TRAIN[:1] + ["--data", files["big"], "--dry-run", "--outdir", tmp_path / "r"], "float32"),
        (TRAIN[:1] + ["--data", files["complex"], "--dry-run", "--outdir", tmp_path / "r"], "complex"),
        (["generate", "--network", files["points"], "--out", files["emptydir"]], "--out"),
    ]
    for args, needle in cases:
        code, out = run_cli(capsys, *args)
        assert code != 0 and needle in out and "Traceback" not in out, (args, out)
    assert not out_dir.exists() and not (tmp_path / "r").exists()
    assert os.listdir(files["emptydir"]) == [] and not os.path.exists(files["emptydir"] + ".npy")


def test_metrics_prints_the_files_it_wrote(files, capsys):
    code, out = run_cli(capsys, "metrics", "--network", files["points"], "--metrics", "toy", "--device", "cpu")
    path = os.path.join(os.path.dirname(files["points"]), "metric-toy.jsonl")
    assert code == 0 and f"Appended to {path}" in out and "<name>" not in out
    assert json.loads(open(path).readline())["metric"] == "toy"


def test_generate_refuses_a_diverged_checkpoint_and_writes_nothing(files, tmp_path, capsys):
    code, out = run_cli(capsys, "generate", "--network", files["nan"], "--out", tmp_path / "x.npy", "--n", "5")
    assert code == 2 and "not finite" in out and os.listdir(tmp_path) == []


# -------------------------------------------------------------------------------------------------
# Interrupts, signals and bugs

def test_ctrl_c_or_sigterm_during_dataset_convert_leaves_nothing_under_the_final_name(tmp_path, capsys, monkeypatch):
    from ganstack.stylegan_base import dataset_tool
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(src / f"{i}.png")
    real_encode = dataset_tool._encode_png
    for how, expected in (("ctrl-c", 130), ("sigterm", 143)):
        calls = []

        def encode(img, _how=how):
            calls.append(1)
            if len(calls) == 3:
                if _how == "ctrl-c":
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal.SIGTERM)
            return real_encode(img)
        monkeypatch.setattr(dataset_tool, "_encode_png", encode)
        code, out = run_cli(capsys, "dataset", "convert", "--source", src, "--dest", tmp_path / "out.zip")
        assert code == expected and "Traceback" not in out, out
        assert sorted(os.listdir(tmp_path)) == ["src"], os.listdir(tmp_path)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the CLI restores what it replaced


def test_ctrl_c_during_metrics_keeps_the_finished_results_whole(files, capsys, monkeypatch):
    from ganstack.metrics import registry
    run_dir = os.path.dirname(files["points"])
    real = registry.compute
    calls = []

    def compute(name, **kw):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(name, **kw)
    monkeypatch.setattr(registry, "compute", compute)
    path = os.path.join(run_dir, "metric-toy.jsonl")
    before = open(path).read() if os.path.exists(path) else ""
    code, out = run_cli(capsys, "metrics", "--network", files["points"], "--metrics", "toy,toy", "--device", "cpu")
    assert code == 0 and calls == ["toy"]  # duplicates are dropped
    monkeypatch.setattr(registry, "compute", lambda name, **kw: (_ for _ in ()).throw(KeyboardInterrupt()))
    code, out = run_cli(capsys, "metrics", "--network", files["points"], "--metrics", "toy", "--device", "cpu")
    assert code == 130 and "Traceback" not in out
    lines = open(path).read()[len(before):].splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["metric"] == "toy"


def test_a_bug_is_one_paragraph_with_the_traceback_saved(files, tmp_path, capsys, monkeypatch):
    def broken(*a, **k):
        return 1 / 0
    monkeypatch.setattr("ganstack.training.inference.build_networks", broken)
    code, out = run_cli(capsys, "generate", "--network", files["points"], "--out", tmp_path / "x.npy")
    assert code == 1 and "Traceback" not in out and "internal error (ZeroDivisionError" in out and "bug" in out
    crash = out.split("The full traceback is in ")[1].split(";")[0]
    assert "Traceback" in open(crash).read() and crash.startswith(str(tmp_path / "cache"))


def test_an_error_from_a_dataloader_worker_is_shown_without_its_embedded_traceback(files, tmp_path, capsys,
                                                                                 monkeypatch):
    from ganstack.stylegan_base.errors import DatasetError

    def worker_error(*a, **k):  # what torch's DataLoader re-raises in the main process
        raise DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1, in f\nganstack.stylegan_base.errors.DatasetError: "
                           "Image '7.png' could not be decoded.")
    monkeypatch.setattr("ganstack.training.inference.build_networks", worker_error)
    code, out = run_cli(capsys, "generate", "--network", files["points"], "--out", tmp_path / "x.npy")
    assert code == 2 and out.strip() == "Error: Image '7.png' could not be decoded.", out


# -------------------------------------------------------------------------------------------------
# A table of bad command lines: non-zero exit, no traceback, the flag named, files untouched

def _bad_inputs(f):
    net, img = f["points"], f["image"]
    g = ["generate", "--network"]
    m = ["metrics", "--network"]
    c = ["dataset", "convert", "--source", f["emptydir"], "--dest"]
    a = ["ablate", "--outdir", os.path.join(f["root"], "abl"), "--stacks", "none", "--seeds", "0", "--dry-run"]
    return [
        (g + [net, "--n", "0", "--out", f["ok"]], "--n"),
        (g + [net, "--n", str(10 ** 12)], "--n"),
        (g + [net, "--out", os.path.join(f["root"], "samples")], "--out"),
        (g + [net, "--out", f["afile"] + ".npy", "--seed", str(2 ** 40)], "--seed"),
        (g + [img, "--seeds", "5-2"], "--seeds"),
        (g + [img, "--seeds", "-1"], "--seeds"),
        (g + [img, "--seeds", "99999999999"], "--seeds"),
        (g + [img, "--seeds", "0-99999999999"], "--seeds"),
        (g + [img, "--seeds", ","], "--seeds"),
        (g + [img, "--trunc", "inf"], "--trunc"),
        (g + [img, "--class", "-1"], "--class"),
        (g + [img, "--out", os.path.join(f["root"], "x.npy")], "--out"),
        (g + [img, "--outdir", f["afile"]], "--outdir"),
        (g + [f["random"]], "--network"),
        (g + [f["emptydir"]], "--network"),
        (g + [os.path.join(f["root"], "nowhere.pt")], "--network"),
        (m + [net, "--metrics", ""], "--metrics"),
        (m + [net, "--metrics", "bogus"], "--metrics"),
        (m + [img, "--metrics", "toy"], "--metrics"),
        (m + [img, "--metrics", "fid0"], "--metrics"),
        (m + [img, "--metrics", "fid99999999999k"], "--metrics"),
        (m + [img, "--metrics", "fid10_full", "--detector", f["emptydir"]], "--detector"),
        (m + [img, "--metrics", "fid10_full", "--detector", f["random"]], f["random"]),
        (m + [img, "--metrics", "stackedmnist", "--classifier", f["random"]], f["random"]),
        (m + [net, "--metrics", "toy", "--batch", "0"], "--batch"),
        (m + [net, "--metrics", "toy", "--seed", "-1"], "--seed"),
        (m + [net, "--metrics", "toy", "--data", os.path.join(f["root"], "nowhere.npy")], "nowhere.npy"),
        (TRAIN + ["--dry-run", "--glr", "inf"], "--glr"),
        (TRAIN + ["--dry-run", "--gamma", "nan"], "--gamma"),
        (TRAIN + ["--dry-run", "--ema", "inf"], "--ema"),
        (TRAIN + ["--dry-run", "--tick", "0"], "--tick"),
        (TRAIN + ["--dry-run", "--batch", str(10 ** 30)], "--batch"),
        (TRAIN + ["--dry-run", "--z-dim", "0"], "--z-dim"),
        (TRAIN + ["--dry-run", "--mlp-hidden", "-1"], "--mlp-hidden"),
        (TRAIN + ["--dry-run", "--mbstd-group", "-1"], "--mbstd-group"),
        (TRAIN + ["--dry-run", "--seed", "-1"], "--seed"),
        (TRAIN + ["--dry-run", "--max-size", "0"], "--max-size"),
        (TRAIN + ["--dry-run", "--cfg", "bogus"], "--cfg"),
        (TRAIN_IMG + ["--dry-run", "--cbase", "0"], "--cbase"),
        (TRAIN + ["--dry-run", "--outdir", f["afile"]], "--outdir"),
        (TRAIN[:1] + ["--dry-run", "--data", "toy:ring8?std=nan"], "std"),
        (TRAIN[:1] + ["--dry-run", "--data", "toy:ring8?n=100000000000"], "n must be"),
        (TRAIN[:1] + ["--dry-run", "--data", f["afile"]], "afile"),
        (TRAIN + ["--dry-run", "--resume", f["truncated"]], "--resume"),
        (c + [f["afile"]], "--dest"),
        (c + [f["emptydir"]], "--dest"),
        (["dataset", "convert", "--source", f["emptydir"], "--dest", os.path.join(f["root"], "x.zip"),
          "--resolution", str(2 ** 40)], "--resolution"),
        (["dataset", "convert", "--source", f["emptydir"], "--dest", os.path.join(f["root"], "x.zip"),
          "--seed", "-1"], "--seed"),
        (a + ["--kimg", "inf"], "--kimg"),
        (a + ["--kimg", "1", "--jobs", "0"], "--jobs"),
        (a + ["--kimg", "1", "--devices", "gpu"], "--devices"),
        (a + ["--kimg", "1", "--set", "workers=-1"], "--workers"),
        (a + ["--kimg", "1", "--set", "glr=nan"], "--glr"),
        (a + ["--kimg", "1", "--metrics", "bogus"], "--metrics"),
        (["train-classifier", "--data", f["ok"], "--epochs", "0"], "--epochs"),
        (["train-score", "--data", "toy:ring8", "--workers", "-1"], "--workers"),
        (["train-score", "--data", "toy:ring8", "--kimg", "inf"], "--kimg"),
    ]


def test_bad_command_lines(files, capsys):
    failures = []
    for args, needle in _bad_inputs(files):
        before = tree(files["root"])
        code, out = run_cli(capsys, *args)
        changed = [p for p, h in tree(files["root"]).items() if before.get(p, h) != h]
        added = sorted(set(tree(files["root"])) - set(before))
        if code == 0 or "Traceback" in out or needle not in out or changed or added:
            failures.append((args, code, out.strip()[-300:], changed, added))
    assert not failures, "\n".join(map(str, failures))


def test_a_metric_line_cut_off_by_a_full_disk_or_a_kill_loses_no_other_result(tmp_path):
    from ganstack.metrics import registry
    registry.append_result(str(tmp_path), "toy", {"modes": 25}, snapshot="a.pt", kimg=1.0)
    with open(tmp_path / "metric-toy.jsonl", "at") as f:
        f.write('{"metric": "toy", "resu')  # the write that the disk or a SIGKILL cut short
    registry.append_result(str(tmp_path), "toy", {"modes": 24}, snapshot="b.pt", kimg=2.0)
    assert [r["results"]["modes"] for r in registry.read_results(str(tmp_path))] == [25, 24]


def test_an_imported_checkpoint_cannot_be_resumed_but_can_seed_a_run(files, tmp_path):
    ck = torch.load(files["points"], weights_only=True)
    imported = {k: v for k, v in ck.items() if k not in ("G_opt", "D_opt", "rng", "cur_tick", "batch_idx",
                                                         "tick_start_nimg")}
    imported["imported_from"] = {"path": "network-snapshot.pkl"}
    torch.save(imported, tmp_path / "imported.pt")
    with pytest.raises(ckpt_io.CheckpointError, match="--init"):
        ckpt_io.load(str(tmp_path / "imported.pt"))
    assert "G_ema" in ckpt_io.load(str(tmp_path / "imported.pt"), flag="--init", purpose="weights")
