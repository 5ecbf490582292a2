"""Progress on long work: quiet when the stream is not a terminal (apart from occasional log lines),
live on a terminal or when forced, and never a change in results."""
from __future__ import annotations

import builtins
import fcntl
import io
import os
import pty
import struct
import termios

import pytest
import torch

from ganstack.metrics import detectors
from ganstack.metrics.features import generated_stats, real_stats
from ganstack.stylegan_base.datasets import open_dataset
from ganstack.stylegan_base.progress import progress
from ganstack.training.plugin_manager import PluginStack


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("GANSTACK_PROGRESS", raising=False)
    monkeypatch.delenv("GANSTACK_PROGRESS_INTERVAL", raising=False)


def _count(stream, n=5, **kw):
    with progress(total=n, desc="work", stream=stream, **kw) as bar:
        for _ in range(n):
            bar.update(1)
    return bar


def test_quiet_when_not_a_terminal():
    buf = io.StringIO()
    bar = _count(buf, delay=0)
    assert bar.n == 5 and not bar.live
    assert buf.getvalue() == ""


def test_occasional_plain_lines_in_logs(monkeypatch):
    monkeypatch.setenv("GANSTACK_PROGRESS_INTERVAL", "0")
    buf = io.StringIO()
    _count(buf, n=4)
    lines = buf.getvalue().splitlines()
    assert lines == ["work: 1/4 it (25%), 0s elapsed, 0s left", "work: 2/4 it (50%), 0s elapsed, 0s left",
                     "work: 3/4 it (75%), 0s elapsed, 0s left"]
    monkeypatch.setenv("GANSTACK_PROGRESS", "0")  # off means off
    buf = io.StringIO()
    _count(buf, n=4)
    assert buf.getvalue() == ""


def _read_all(fd):
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out.decode(errors="replace")


def _terminal(monkeypatch, backend):
    """A pseudo-terminal with a size: ``(master fd, stream)``; ``backend`` builtin hides tqdm."""
    if backend == "builtin":  # without tqdm installed: the built-in status line
        real_import = builtins.__import__

        def no_tqdm(name, *a, **kw):
            if name.startswith("tqdm"):
                raise ImportError(name)
            return real_import(name, *a, **kw)
        monkeypatch.setattr(builtins, "__import__", no_tqdm)
    else:
        pytest.importorskip("tqdm")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real terminal has a size
    return master, os.fdopen(slave, "w")


@pytest.mark.parametrize("backend", ["tqdm", "builtin"])
def test_live_on_a_terminal(monkeypatch, backend):
    master, stream = _terminal(monkeypatch, backend)
    bar = _count(stream, n=3, delay=0)
    assert bar.live and (bar._bar is not None) == (backend == "tqdm")
    stream.close()
    text = _read_all(master)
    os.close(master)
    assert "work" in text and "\r" in text


def test_forced_display_and_unchanged_results(monkeypatch):
    ds = open_dataset("shapes16?n=40")
    stack = PluginStack([], {})
    from ganstack.stylegan_base.networks import Generator
    torch.manual_seed(0)
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                  synthesis_kwargs=dict(channel_base=64, channel_max=8), mapping_kwargs=dict(num_layers=2)).eval()

    def extractor(x):
        return x.float().flatten(1)[:, :16]

    def run(tmp):
        real = real_stats(ds, extractor, "pix", "pix-v1", capture_mean_cov=True, batch=16, cache=False)
        gen, nfe = generated_stats(G, stack, extractor, 24, "cpu", batch=10, capture_mean_cov=True)
        return real.get_mean_cov(), gen.get_mean_cov(), nfe

    import sys
    quiet = run(None)
    monkeypatch.setenv("GANSTACK_PROGRESS", "1")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    loud = run(None)
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    assert "features of real images" in err.getvalue() and "features of generated images" in err.getvalue()
    for a, b in zip(quiet[:2], loud[:2]):
        for x, y in zip(a, b):
            assert (x == y).all()
    assert quiet[2] == loud[2]


def test_download_shows_bytes(tmp_path, monkeypatch):
    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(3 << 20))
    monkeypatch.setenv("GANSTACK_PROGRESS", "1")
    import sys
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    tmp = detectors._download(src.as_uri(), str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    assert open(tmp, "rb").read() == src.read_bytes()
    assert "downloading weights.bin" in err.getvalue()


def test_ablate_grid_shows_cells_done_running_left(tmp_path, monkeypatch, capsys):
    """Not a terminal: no bar, one plain line per finished cell with done / running / left and the time."""
    from ganstack.training import ablate as ab
    monkeypatch.setattr("ganstack.training.loop.save_scatter_panels", lambda *a, **k: False)
    monkeypatch.setenv("GANSTACK_PROGRESS_INTERVAL", "0")  # even the most talkative log setting stays per cell
    settings = dict(data="toy:gaussians25?n=512", kimg=0.064, tick=0.064, batch=32, mlp_hidden=8, workers=0,
                    image_snap=100)
    lines = []
    ab.ablate(str(tmp_path / "grid"), ["none"], [0, 1], dict(settings), log=lines.append)
    err = capsys.readouterr().err
    assert "\r" not in err and "ablate" not in err  # no bar into a non-terminal
    done = [line for line in lines if line.startswith("done: ")]
    assert len(done) == 2
    assert done[0].startswith("done: none seed 0  [1/2 cells done, 0 running, 1 left; ")
    assert done[1].startswith("done: none seed 1  [2/2 cells done, 0 running, 0 left; ")
    assert done[1].endswith(" so far]")
    lines.clear()
    ab.ablate(str(tmp_path / "grid"), ["none"], [0, 1], dict(settings), log=lines.append)  # nothing left to do
    assert not [line for line in lines if line.startswith("done: ")]


@pytest.mark.parametrize("backend", ["tqdm", "builtin"])
def test_grid_progress_live_on_a_terminal(monkeypatch, backend):
    from ganstack.stylegan_base.progress import GridProgress
    master, stream = _terminal(monkeypatch, backend)
    lines = []
    with GridProgress(4, initial=1, desc="ablate", log=lines.append, stream=stream) as grid:
        grid.started(2)
        assert (grid.done, grid.running, grid.left) == (1, 2, 1)
        grid.finished("a seed 0")
        grid.started()
        grid.finished("b seed 0", error="RuntimeError: boom")
    stream.close()
    text = _read_all(master)
    os.close(master)
    assert "ablate" in text and "running" in text and "left" in text
    assert lines[0].startswith("done: a seed 0  [2/4 cells done, 1 running, 1 left; ")
    assert lines[1].startswith("FAILED: b seed 0 (RuntimeError: boom)  [2/4 cells done, 1 failed, 1 running, 0 left; ")
