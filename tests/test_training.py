"""End-to-end training, exact resume, signals, and the command line's handling of bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import make_trainer, state_equal
from ganstack.training import checkpoint as ckpt_io

ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def ganstack(*args, cwd=None, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "ganstack", *args], capture_output=True, text=True,
                          cwd=cwd, env=env or ENV, timeout=timeout)


# -------------------------------------------------------------------------------------------------
# Exact resume

def _train_steps(trainer, n):
    for _ in range(n):
        trainer.step()


@pytest.mark.parametrize("kind", ["points", "image"])
def test_resume_is_bitwise_exact(kind, tmp_path):
    """N steps straight == N/2 steps, checkpoint to disk, new process state, N/2 more."""
    kw = dict(image=True) if kind == "image" else {}
    n = 6 if kind == "image" else 10  # image: crosses the path-length interval (4); R1 at 0 (16)
    straight = make_trainer([], **kw)
    _train_steps(straight, n)

    first = make_trainer([], **kw)
    _train_steps(first, n // 2)
    path = tmp_path / "ckpt.pt"
    ckpt_io.atomic_save(first.checkpoint_dict(), str(path))
    del first
    torch.manual_seed(12345)  # scramble the global RNG: resume must restore it
    np.random.seed(999)
    resumed = make_trainer([], resume=ckpt_io.load(str(path)), **kw)
    _train_steps(resumed, n - n // 2)

    assert resumed.cur_nimg == straight.cur_nimg and resumed.batch_idx == straight.batch_idx
    for key in ("G", "D", "G_ema"):
        assert state_equal(getattr(straight, key).state_dict(), getattr(resumed, key).state_dict()), key
    assert state_equal(straight.G_opt.state_dict(), resumed.G_opt.state_dict())
    assert state_equal(straight.D_opt.state_dict(), resumed.D_opt.state_dict())
    assert state_equal(straight.stack.state_dict(), resumed.stack.state_dict())


def test_cli_resume_into_fresh_outdir_matches_straight_run(tmp_path):
    common = ["--data", "toy:gaussians25?n=2048", "--batch", "64", "--mlp-hidden", "32", "--tick", "0.5",
              "--snap", "1", "--workers", "0"]
    r = ganstack("train", *common, "--kimg", "2", "--outdir", str(tmp_path / "straight"))
    assert r.returncode == 0, r.stderr
    r = ganstack("train", *common, "--kimg", "1", "--outdir", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    run_a = tmp_path / "a" / os.listdir(tmp_path / "a")[0]
    r = ganstack("train", "--resume", str(run_a), "--kimg", "2", "--outdir", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    assert "Resuming from" in r.stdout
    run_b = tmp_path / "b" / os.listdir(tmp_path / "b")[0]
    run_s = tmp_path / "straight" / os.listdir(tmp_path / "straight")[0]
    last_b = ckpt_io.load(str(run_b))
    last_s = ckpt_io.load(str(run_s))
    assert last_b["cur_nimg"] == last_s["cur_nimg"] == 2048
    for key in ("G", "D", "G_ema", "G_opt", "D_opt"):
        assert state_equal(last_b[key], last_s[key]), key
    # Changing a training option on resume is refused with the list of what differs.
    r = ganstack("train", "--resume", str(run_a), "--glr", "0.1", "--outdir", str(tmp_path / "c"))
    assert r.returncode == 2 and "--glr 0.1" in r.stderr and "Traceback" not in r.stderr


# -------------------------------------------------------------------------------------------------
# End to end

def test_toy_run_writes_status_stats_pictures_and_checkpoints(tmp_path):
    r = ganstack("train", "--data", "toy:gaussians25?n=4096", "--kimg", "3", "--batch", "64", "--tick", "1",
                 "--snap", "2", "--keep", "2", "--metrics", "toy", "--outdir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    run = tmp_path / os.listdir(tmp_path)[0]
    status = [l for l in r.stdout.splitlines() if l.startswith("tick ")]
    assert len(status) == 4 and all("sec/kimg" in l and "cpumem" in l for l in status)
    stats = [json.loads(l) for l in open(run / "stats.jsonl")]
    assert len(stats) == 4 and "Loss/D/loss" in stats[-1] and stats[-1]["Progress/kimg"] == pytest.approx(3.008)
    snaps = sorted(p.name for p in run.glob("network-snapshot-*.pt"))
    assert len(snaps) == 2  # --keep 2
    assert (run / "fakes_init.png").exists() and list(run.glob("fakes00000*.png"))
    metric = [json.loads(l) for l in open(run / "metric-toy.jsonl")]
    assert metric and 0 <= metric[-1]["results"]["modes_covered"] <= 25
    # generate: .npy samples plus a scatter plot, through the checkpoint's sampler.
    out = tmp_path / "samples.npy"
    r = ganstack("generate", "--network", str(run), "--n", "300", "--out", str(out))
    assert r.returncode == 0, r.stderr
    x = np.load(out)
    assert x.shape == (300, 2) and np.isfinite(x).all()
    assert (tmp_path / "samples.png").exists()


def test_tiny_image_run_and_generate(tmp_path):
    from conftest import TINY_IMAGE
    r = ganstack("train", "--data", "shapes16?n=128", "--cfg", "stylegan2", "--cbase", "512", "--cmax", "32",
                 "--map-depth", "2", "--z-dim", "16", "--batch", "4", "--mbstd-group", "2", "--kimg", "0.04",
                 "--tick", "0.02", "--workers", "1", "--outdir", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / os.listdir(tmp_path / "runs")[0]
    assert (run / "reals.png").exists() and list(run.glob("fakes000000.png"))
    ckpt = ckpt_io.load(str(run))
    assert ckpt["cur_nimg"] == 40 and ckpt["config"]["cfg"] == "stylegan2"
    r = ganstack("generate", "--network", str(run), "--seeds", "0-3", "--grid", "--outdir", str(tmp_path / "gen"))
    assert r.returncode == 0, r.stderr
    import imageio.v2 as imageio
    img = imageio.imread(tmp_path / "gen" / "seed0002.png")
    assert img.shape == (16, 16, 3)
    assert (tmp_path / "gen" / "grid.png").exists()


# -------------------------------------------------------------------------------------------------
# Interrupts

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_checkpoint_then_resume(sig, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "ganstack", "train", "--data", "toy:gaussians25?n=2048",
                             "--kimg", "100000", "--batch", "32", "--tick", "1000", "--outdir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    line = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("tick 0"):
            break
    assert line.startswith("tick 0"), proc.stderr.read()
    time.sleep(1.0)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + int(sig), err
    assert "Stopped by signal" in out and "Traceback" not in err
    run = tmp_path / os.listdir(tmp_path)[0]
    snaps = ckpt_io.list_snapshots(str(run))
    last = ckpt_io.load(snaps[-1])
    assert last["cur_nimg"] > 32  # written at the interrupt, not only the tick-0 snapshot
    assert not list(run.glob(".tmp-*"))  # no partial file left behind
    r = ganstack("train", "--resume", snaps[-1], "--kimg", str((last["cur_nimg"] + 64) / 1000),
                 "--outdir", str(tmp_path / "resumed"))
    assert r.returncode == 0, r.stderr


# -------------------------------------------------------------------------------------------------
# Bad input: one clear paragraph, exit status 2, no traceback

@pytest.mark.parametrize("args, message", [
    (["--data", "/nonexistent/data.zip"], "/nonexistent/data.zip"),
    (["--data", "toy:gaussians26"], "gaussians25"),
    (["--plugins", "nosuchplugin"], "Unknown plugin 'nosuchplugin'"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--gamma", "-1"], "--gamma must be >= 0"),
    (["--cfg", "paper256"], "point data"),
    (["--resume", "/nonexistent/run"], "no such file or folder"),
    (["--cond"], "needs labels"),
])
def test_bad_input_errors(args, message, tmp_path):
    r = ganstack("train", "--kimg", "0.1", "--outdir", str(tmp_path), *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr


def test_unknown_option_is_a_usage_error(tmp_path):
    r = ganstack("train", "--no-such-flag", "1")
    assert r.returncode == 2 and "No such option" in r.stderr and "Traceback" not in r.stderr


def test_corrupt_and_wrong_checkpoints(tmp_path):
    bad = tmp_path / "network-snapshot-000001.pt"
    bad.write_bytes(b"not a checkpoint")
    r = ganstack("train", "--resume", str(bad), "--outdir", str(tmp_path / "o"))
    assert r.returncode == 2 and "could not be read" in r.stderr and "Traceback" not in r.stderr
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    r = ganstack("generate", "--network", str(other), "--outdir", str(tmp_path / "g"))
    assert r.returncode == 2 and "not a ganstack training checkpoint" in r.stderr


def test_resume_with_data_of_another_shape_is_refused(tmp_path):
    tr = make_trainer([])
    tr.step()
    path = tmp_path / "c.pt"
    ckpt_io.atomic_save(tr.checkpoint_dict(), str(path))
    r = ganstack("train", "--resume", str(path), "--data", "shapes16?n=64", "--outdir", str(tmp_path / "o"))
    assert r.returncode == 2
    assert "--data" in r.stderr and "Traceback" not in r.stderr


def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "x.pt"
    ckpt_io.atomic_save({"a": torch.ones(2)}, str(path))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ckpt_io.atomic_save({"a": Unpicklable()}, str(path))
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["x.pt"]
