"""The run layer (training/run.py): signals to the whole process group, SLURM's early warning, log.txt, divergence,
resume checks, leftovers of killed runs, and snapshot names."""
from __future__ import annotations

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
TINY_IMAGE_ARGS = ["--data", "shapes16?n=64", "--cfg", "stylegan2", "--cbase", "256", "--cmax", "16", "--map-depth", "2",
                   "--z-dim", "8", "--batch", "4", "--mbstd-group", "2"]
TOY_ARGS = ["--data", "toy:gaussians25?n=2048", "--batch", "64", "--mlp-hidden", "32", "--workers", "0"]


def ganstack(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "ganstack", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=timeout)


def _run_dir(outdir):
    return os.path.join(outdir, sorted(os.listdir(outdir))[-1])


# -------------------------------------------------------------------------------------------------
# Signals

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_to_the_process_group_with_data_loader_workers_writes_a_checkpoint(sig, tmp_path):
    """What `timeout`, SLURM's scancel and preemption do: the signal reaches the main process and its --workers 2
    DataLoader workers at once. The workers ignore it; the main process finishes the step, writes a checkpoint,
    and exits with 128 + signal. SIGUSR1 (sbatch --signal=USR1@90) is the same checkpoint-and-stop."""
    proc = subprocess.Popen([sys.executable, "-m", "ganstack", "train", *TINY_IMAGE_ARGS, "--kimg", "1000", "--tick",
                             "0.008", "--snap", "1000", "--workers", "2", "--outdir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    deadline = time.time() + 240
    line = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("tick 1") or not line:
            break
    assert line.startswith("tick 1"), proc.stderr.read()
    os.killpg(proc.pid, sig)  # the whole process group: main process and workers
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + int(sig), err
    assert "Stopped by signal" in out and "Traceback" not in err and "killed by signal" not in err
    if sig == signal.SIGUSR1:
        assert "early warning" in out
    run = _run_dir(str(tmp_path))
    last = ckpt_io.load(ckpt_io.list_snapshots(run)[-1])
    assert last["cur_nimg"] >= 8  # written at the signal (snapshots are every 1000 ticks otherwise)
    assert not [f for f in os.listdir(run) if f.startswith(".tmp-")]
    assert "Received " + signal.Signals(sig).name in open(os.path.join(run, "log.txt")).read()


def test_workers_ignore_the_stop_signals():
    from ganstack.training.run import STOP_SIGNALS, worker_ignores_stop_signals
    code = ("import os, signal, sys; from ganstack.training.run import worker_ignores_stop_signals as w; w(0); "
            "[os.kill(os.getpid(), s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)]; print('alive')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "alive"
    assert set(STOP_SIGNALS) == {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1} and callable(worker_ignores_stop_signals)


# -------------------------------------------------------------------------------------------------
# Crash output and divergence

CRASHING_PLUGIN = '''
from ganstack.api import hookimpl


class Crash:
    """Raises in the fourth step."""

    @hookimpl
    def after_step(self, state):
        if state.step == 4:
            raise RuntimeError("boom in step 4")
'''


def test_crash_tracebacks_and_errors_reach_log_txt(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "crashplug.py").write_text(CRASHING_PLUGIN)
    info = site / "crashplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: crashplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ganstack.plugins]\ncrash = crashplug:Crash\n")
    env = dict(ENV, PYTHONPATH=str(site) + os.pathsep + ENV.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "ganstack", "train", *TOY_ARGS, "--kimg", "1", "--plugins", "crash",
                        "--outdir", str(tmp_path / "runs")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "boom in step 4" in r.stderr
    log = open(os.path.join(_run_dir(str(tmp_path / "runs")), "log.txt")).read()
    assert "Traceback (most recent call last)" in log and "RuntimeError: boom in step 4" in log
    assert "tick 0" in log  # and what the run printed before


@pytest.mark.slow
def test_a_diverged_run_stops_with_an_error_and_keeps_the_last_finite_checkpoint(tmp_path):
    # The check, on the default toy run: --glr 1e9 --dlr 1e9 --snap 1 --keep 1.
    r = ganstack("train", "--data", "toy:gaussians25?n=2048", "--batch", "64", "--workers", "0", "--tick", "0.25",
                 "--kimg", "2", "--glr", "1e9", "--dlr", "1e9", "--snap", "1", "--keep", "1",
                 "--outdir", str(tmp_path / "a"))
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "Done." not in r.stdout and "Training diverged at tick 0" in r.stderr and "Traceback" not in r.stderr
    run = _run_dir(str(tmp_path / "a"))
    assert ckpt_io.list_snapshots(run) == []  # no non-finite checkpoint was written
    assert "Error: Training diverged" in open(os.path.join(run, "log.txt")).read()
    # A finite checkpoint first, then divergence: it is kept (never pruned in favour of a non-finite state).
    from ganstack.training.run import TrainingDiverged
    with pytest.raises(TrainingDiverged, match=r"non-finite.*last finite checkpoint is .*network-snapshot-000000.pt"):
        _poisoned_after(640, run_dir=str(tmp_path / "b")).run()
    snaps = ckpt_io.list_snapshots(str(tmp_path / "b"))
    assert len(snaps) == 1 and torch.isfinite(ckpt_io.load(snaps[0])["G"]["out.weight"]).all()
    # --allow-nonfinite trains on; the last finite snapshot stays beside the non-finite state.
    _poisoned_after(640, run_dir=str(tmp_path / "c"), allow_nonfinite=True).run()
    names = sorted(os.listdir(tmp_path / "c"))
    assert "network-snapshot-000000.pt" in names and "network-snapshot-000002-nonfinite.pt" in names
    assert ckpt_io.resolve_resume(str(tmp_path / "c")).endswith("network-snapshot-000000.pt")


def _poisoned_after(nimg: int, run_dir: str, **kw):
    """A toy trainer whose G weights turn NaN once ``nimg`` images have been seen."""
    os.makedirs(run_dir)
    tr = make_trainer([], run_dir=run_dir, kimg=2, tick=0.25, snap=1, keep=1, **kw)
    real_step = tr.step

    def poisoned():
        out = real_step()
        if tr.cur_nimg >= nimg:
            with torch.no_grad():
                next(tr.G.parameters()).fill_(float("nan"))
        return out
    tr.step = poisoned
    return tr


# -------------------------------------------------------------------------------------------------
# Resume checks

def test_resume_refuses_other_data_and_finds_moved_data_by_fingerprint(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "w1").mkdir()
    np.save(tmp_path / "w1" / "pts.npy", rng.normal(size=(500, 2)).astype(np.float32))
    r = ganstack("train", "--data", "pts.npy", "--batch", "64", "--kimg", "0.128", "--tick", "0.064", "--workers", "0",
                 "--mlp-hidden", "16", "--outdir", str(tmp_path / "runs"), cwd=str(tmp_path / "w1"))
    assert r.returncode == 0, r.stderr
    run = _run_dir(str(tmp_path / "runs"))
    assert ckpt_io.load(run)["dataset"]["path"] == str(tmp_path / "w1" / "pts.npy")
    # Another folder holds another pts.npy (300 points): the checkpoint's absolute path is used, not this one.
    (tmp_path / "w2").mkdir()
    np.save(tmp_path / "w2" / "pts.npy", rng.normal(size=(300, 2)).astype(np.float32))
    r = ganstack("train", "--resume", run, "--kimg", "0.192", "--outdir", str(tmp_path / "r1"), cwd=str(tmp_path / "w2"))
    assert r.returncode == 0, r.stderr
    # --data pointing at other data is refused with the differences; the same data elsewhere is accepted.
    r = ganstack("train", "--resume", run, "--data", "pts.npy", "--kimg", "0.192", "--outdir", str(tmp_path / "r2"),
                 cwd=str(tmp_path / "w2"))
    assert r.returncode == 2 and "other data" in r.stderr and "items: checkpoint 500, data 300" in r.stderr
    assert "content fingerprint" in r.stderr and "Traceback" not in r.stderr
    os.replace(tmp_path / "w1" / "pts.npy", tmp_path / "moved.npy")
    (tmp_path / "w1" / "pts.npy").write_bytes((tmp_path / "w2" / "pts.npy").read_bytes())  # other content, same path
    r = ganstack("train", "--resume", run, "--kimg", "0.192", "--outdir", str(tmp_path / "r3"), cwd=str(tmp_path))
    assert r.returncode == 2 and "other data" in r.stderr
    r = ganstack("train", "--resume", run, "--data", str(tmp_path / "moved.npy"), "--kimg", "0.192",
                 "--outdir", str(tmp_path / "r4"), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr


def test_the_options_a_resume_may_change_are_real_flags():
    from ganstack.training.cli import RESUME_MUTABLE, TRAIN_OPTIONS, build_cli, flag_of
    train = build_cli().commands["train"]
    flags = {opt for p in train.params for opt in p.opts}
    assert "image_snap" not in RESUME_MUTABLE
    for field in RESUME_MUTABLE:
        assert flag_of(field) in flags, field
    assert {f for _, f, _ in TRAIN_OPTIONS} >= set(RESUME_MUTABLE)
    from ganstack.plugins.score_models.cli import OPTIONS
    from ganstack.plugins.score_models.train import RESUME_MUTABLE as SCORE_MUTABLE
    assert set(SCORE_MUTABLE) <= {f for _, f, _ in OPTIONS}


def test_leftover_temp_files_of_a_killed_run_are_removed_at_the_next_start(tmp_path):
    r = ganstack("train", *TOY_ARGS, "--kimg", "0.128", "--tick", "0.064", "--outdir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    run = _run_dir(str(tmp_path))
    stale, fresh = os.path.join(run, ".tmp-abc123.pt"), os.path.join(run, ".tmp-live.pt")
    for p in (stale, fresh):
        open(p, "wb").write(b"partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # what SIGKILL left an hour ago
    r = ganstack("train", "--resume", run, "--kimg", "0.192", "--outdir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(stale) and os.path.exists(fresh)  # a fresh one may belong to a live writer
    assert "Removed 1 partial checkpoint file" in r.stdout


# -------------------------------------------------------------------------------------------------
# Snapshot names

def test_snapshot_names_are_integer_kimg_and_a_later_one_replaces_an_earlier_of_the_same_kimg(tmp_path):
    assert ckpt_io.snapshot_name(2032) == "network-snapshot-000002.pt"
    assert ckpt_io.snapshot_name(12000) == "network-snapshot-000012.pt"
    tr = make_trainer([], run_dir=str(tmp_path), kimg=1.536, tick=0.256, snap=1, keep=0)
    tr.run()
    snaps = ckpt_io.list_snapshots(str(tmp_path))
    assert [os.path.basename(p) for p in snaps] == ["network-snapshot-000000.pt", "network-snapshot-000001.pt"]
    assert ckpt_io.load(snaps[-1])["cur_nimg"] == 1536  # the newest state of that kimg
    assert ckpt_io.load(snaps[0])["cur_nimg"] == 800  # ticks end at 32, 288, 544, 800: the last one holds 000000
    # Old fractional names still read and sort: by kimg, then time.
    (tmp_path / "network-snapshot-000000.512.pt").write_bytes(open(snaps[0], "rb").read())
    order = [os.path.basename(p) for p in ckpt_io.list_snapshots(str(tmp_path))]
    assert order == ["network-snapshot-000000.pt", "network-snapshot-000000.512.pt", "network-snapshot-000001.pt"]
    ckpt_io.prune_snapshots(str(tmp_path), keep=1)
    assert [os.path.basename(p) for p in ckpt_io.list_snapshots(str(tmp_path))] == ["network-snapshot-000001.pt"]
    # Resume from the folder continues from the newest state, exactly.
    straight = make_trainer([], kimg=1.536)
    for _ in range(48):
        straight.step()
    resumed = make_trainer([], kimg=1.6, resume=ckpt_io.load(str(tmp_path)))
    assert resumed.cur_nimg == 1536 and state_equal(resumed.G.state_dict(), straight.G.state_dict())
