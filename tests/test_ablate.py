"""``ganstack ablate``: a tiny grid on toy data writes the CSV, the markdown table and the plots; a second
invocation skips finished cells; an interrupted cell resumes exactly; stack/option parsing."""
from __future__ import annotations

import csv
import importlib.metadata as importlib_metadata
import json
import os

import pytest
import torch

from conftest import state_equal
from ganstack.training import ablate as ab
from ganstack.training import checkpoint as ckpt_io
from ganstack.training import plugin_manager
from ganstack.training.api import ConfigError, Option, PluginError, hookimpl

TINY = dict(data="toy:gaussians25?n=2048", kimg=0.256, tick=0.128, batch=32, mlp_hidden=32, workers=0, image_snap=100)


@pytest.fixture(autouse=True)
def no_snapshot_scatter_plots(monkeypatch):
    """The loop's per-tick scatter PNGs are not under test here and cost a second each on a CPU."""
    monkeypatch.setattr("ganstack.training.loop.save_scatter_panels", lambda *a, **k: False)


class Jitter:
    """Adds Gaussian noise to everything D sees (a test plugin with one option)."""

    @hookimpl
    def add_options(self):
        return [Option("std", float, 0.05, "noise standard deviation", min=0.0)]

    @hookimpl
    def configure(self, opts):
        self.std = opts.std

    @hookimpl
    def augment_d_input(self, x):
        return x.replace(img=x.img + self.std * torch.randn_like(x.img))


@pytest.fixture
def with_jitter(monkeypatch):
    """Registers Jitter as an installed plugin (an entry point), as a third-party package would."""
    ep = importlib_metadata.EntryPoint(name="jitter", value="test_ablate:Jitter", group="ganstack.plugins")
    original = plugin_manager.discover
    monkeypatch.setattr(plugin_manager, "discover", lambda extra_entry_points=None: original([ep]))


def _quiet(*_):
    pass


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_two_stacks_two_seeds_write_table_and_plots_and_rerun_skips(tmp_path, with_jitter, monkeypatch):
    out = str(tmp_path / "abl")
    res = ab.ablate(out, ["none", "jitter jitter.std=0.1"], [0, 1], dict(TINY), log=_quiet)
    assert not any(res["errors"].values())
    rows = _rows(res["csv"])
    assert [(r["stack"], r["seed"], r["status"]) for r in rows] == [
        ("none", "0", "done"), ("none", "1", "done"),
        ("jitter [jitter.std=0.1]", "0", "done"), ("jitter [jitter.std=0.1]", "1", "done")]
    assert all(float(r["kimg"]) == pytest.approx(0.256) for r in rows)
    for key in ("toy/modes_covered", "toy/hq_share", "toy/kl_modes", "toy/nfe"):
        assert all(r[key] != "" for r in rows), key
    assert {r["toy/nfe"] for r in rows} == {"1"}
    # The jitter cells really ran with their option (the checkpoint records it).
    snap = ab.newest_checkpoint(os.path.join(out, "cells", "jitter_jitter.std=0.1", "seed0"))
    assert ckpt_io.load(snap)["plugin_options"] == {"jitter": {"std": 0.1}}

    md = open(res["md"]).read()
    assert "| none | 2/2 |" in md and "| jitter [jitter.std=0.1] | 2/2 |" in md
    assert "toy/modes_covered ↑" in md and "toy/kl_modes ↓" in md and "toy/modes_loose (loose" in md
    for png in (res["curves"], res["samples"], res["panels"], res["signals"]):
        assert os.path.getsize(png) > 10_000

    # Second invocation: nothing is trained again, the reports are rewritten from the cells.
    def no_training(*a, **k):
        raise AssertionError("a finished cell was trained again")
    monkeypatch.setattr("ganstack.training.cli.run_training", no_training)
    logs = []
    res2 = ab.ablate(out, ["none", "jitter jitter.std=0.1"], [0, 1], dict(TINY), log=logs.append)
    assert any("Skipping 4 finished cell(s)" in m for m in logs)
    assert _rows(res2["csv"]) == rows

    # Another budget in the same folder is refused rather than mixed in.
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="other settings"):
        ab.run_cell(ab.plan(out, ab.build_stacks(["none"]), [0])[0], dict(TINY, kimg=1.0))


def test_a_cell_another_process_trains_is_left_to_it_neither_failed_nor_overwritten(tmp_path):
    import fcntl

    cells = ab.plan(str(tmp_path / "shared"), ab.build_stacks(["none"]), [0, 1])
    busy, free = cells
    os.makedirs(busy.dir)
    with open(os.path.join(busy.dir, ab.LOCK_FILE), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the other ablation's run_cell holds
        with pytest.raises(ab.CellBusy, match="another process"):
            ab.run_cell(busy, dict(TINY))
        logs = []
        errors = ab.run_grid(cells, dict(TINY), log=logs.append)
        assert errors == {busy.dir: None, free.dir: None}  # not a failure of this grid
        assert not os.path.exists(os.path.join(busy.dir, ab.CELL_FILE))  # the other process's state untouched
        assert ab._read_cell(free.dir)["status"] == "done"
        assert any("skipped" in m and busy.dir in m for m in logs)
        assert any(m.startswith("left to another process: none seed 0") and "1 elsewhere" in m for m in logs)
    # The other process ended (its lock went with it): the same call now trains the cell.
    assert ab.run_cell(busy, dict(TINY))["status"] == "done"


def test_interrupted_cell_resumes_from_its_checkpoint_exactly(tmp_path):
    from ganstack.training.cli import run_training

    settings = dict(TINY, snap=1, metrics=("toy",))
    straight = ab.ablate(str(tmp_path / "straight"), ["none"], [0], dict(settings), log=_quiet)
    # An interrupted cell: trained to half the budget, marked running (as a killed process leaves it).
    cell = ab.plan(str(tmp_path / "resumed"), ab.build_stacks(["none"]), [0])[0]
    fp = ab.cell_fingerprint(settings, cell.stack, 0)
    ab._write_cell(cell.dir, dict(status="running", fingerprint=fp))
    run_training(ab.make_config(dict(settings, kimg=0.128), 0), [], {}, cell.dir, log=_quiet)
    resumed = ab.ablate(str(tmp_path / "resumed"), ["none"], [0], dict(settings), log=_quiet)

    runs = ab.run_dirs(cell.dir)
    assert len(runs) == 2
    opts = json.load(open(os.path.join(runs[1], "training_options.json")))
    assert opts["resume"] and os.path.dirname(opts["resume"]) == runs[0]
    a = ckpt_io.load(ab.newest_checkpoint(straight["cells"][0].dir))
    b = ckpt_io.load(ab.newest_checkpoint(cell.dir))
    assert a["cur_nimg"] == b["cur_nimg"] == 256
    assert state_equal(a["G_ema"], b["G_ema"]) and state_equal(a["D"], b["D"])
    # The metric history spans both run folders of the resumed cell.
    hist = ab.cell_history(cell.dir)["toy"]
    assert min(hist) < 0.128 < max(hist) == pytest.approx(0.256)
    assert _rows(resumed["csv"])[0]["toy/modes_covered"] == _rows(straight["csv"])[0]["toy/modes_covered"]


def test_cell_killed_between_final_checkpoint_and_its_metrics_gets_them_on_rerun(tmp_path):
    settings = dict(TINY, snap=1, metrics=("toy",))
    out = str(tmp_path / "abl")
    first = ab.ablate(out, ["none"], [0], dict(settings), log=_quiet)
    cell = first["cells"][0]
    final_kimg = ab.final_values(cell.dir)[0]
    # What a kill after the final checkpoint leaves: no metric record for it, the cell still "running".
    run = ab.run_dirs(cell.dir)[-1]
    path = os.path.join(run, "metric-toy.jsonl")
    lines = [ln for ln in open(path) if json.loads(ln)["kimg"] != final_kimg]
    open(path, "w").writelines(lines)
    ab._write_cell(cell.dir, dict(ab._read_cell(cell.dir), status="running"))
    assert ab.final_values(cell.dir)[0] < final_kimg

    again = ab.ablate(out, ["none"], [0], dict(settings), log=_quiet)
    assert ab.final_values(cell.dir)[0] == final_kimg  # measured at the budget, not at an earlier snapshot
    assert _rows(again["csv"])[-1]["toy/modes_covered"] == _rows(first["csv"])[-1]["toy/modes_covered"]


def test_stack_parsing_options_and_sweep(with_jitter):
    stacks = ab.build_stacks(["none", "jitter", "jitter jitter.std=0.2"], ["jitter.std=0.3"])
    assert [s.label for s in stacks] == ["none", "jitter [jitter.std=0.3]", "jitter [jitter.std=0.2]"]
    swept = ab.build_stacks(["none", "jitter"], sweep="jitter.std=0.01,0.1")
    assert [s.label for s in swept] == ["none", "jitter [jitter.std=0.01]", "jitter [jitter.std=0.1]"]
    with pytest.raises(ConfigError, match="no stack enables 'ada'"):
        ab.build_stacks(["none", "jitter"], ["ada.p=0.1"])
    with pytest.raises(ConfigError, match="appear more than once"):
        ab.build_stacks(["jitter", "jitter"])
    with pytest.raises(ConfigError, match="does not enable"):
        ab.build_stacks(["none jitter.std=0.1"])
    with pytest.raises(PluginError, match="Unknown plugin 'nosuch'.*jitter"):
        ab.validate_stacks(ab.build_stacks(["nosuch"]))
    with pytest.raises(PluginError, match=r"Stack 'jitter \[jitter.std=-1\]'.*out of range"):
        ab.validate_stacks(ab.build_stacks(["jitter jitter.std=-1"]))
    s = ab.train_settings(dict(data="toy:ring8", kimg=5, cfg=None), ["glr=0.002", "g_betas=0.5,0.9", "cond=1"])
    assert s == dict(data="toy:ring8", kimg=5, glr=0.002, g_betas=(0.5, 0.9), cond=True)
    with pytest.raises(ConfigError, match="training option"):
        ab.train_settings({}, ["nosuch=1"])


def test_markdown_marks_the_best_mean_per_column(tmp_path):
    stacks = [ab.StackSpec([]), ab.StackSpec(["x"]), ab.StackSpec(["y"])]
    rows = []
    for label, modes, kl in (("none", [20, 22], [0.5, 0.7]), ("x", [25, 25], [0.1, 0.3]), ("y", [24, 23], [0.05, 0.05])):
        for seed, (m, k) in enumerate(zip(modes, kl)):
            rows.append(dict(stack=label, seed=seed, status="done", values={"toy/modes_covered": m, "toy/kl_modes": k,
                                                                             "toy/nfe": 1.0, "toy/sec": 3.0}))
    text = ab.write_markdown(rows, ["toy/modes_covered", "toy/kl_modes", "toy/nfe"], stacks, str(tmp_path / "r.md"), "t", [])
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert "**25 ± 0**" in lines["x"] and "21 ± 1.41" in lines["none"] and "0.2 ± 0.141" in lines["x"]
    assert "**0.05 ± 0**" in lines["y"] and "**" not in lines["none"]
    assert "toy/nfe |" in lines["stack"] and "toy/sec" not in text
    assert lines["x"].endswith("| 1 |")  # nfe: no spread shown


def test_a_winner_is_marked_only_beyond_the_spread_over_seeds():
    from ganstack.training.ablate_report import clear_winner

    assert clear_winner({"a": (25, 0.5, 3), "b": (23, 1.0, 3)}, +1) == "a"  # 2 > 0.5 + 1
    assert clear_winner({"a": (25, 1.5, 3), "b": (23, 1.0, 3)}, +1) is None  # within the spread
    assert clear_winner({"a": (0.1, 0.01, 3), "b": (0.3, 0.05, 3), "c": (0.12, 0.02, 3)}, -1) is None
    assert clear_winner({"a": (0.1, 0.01, 3), "b": (0.3, 0.05, 3), "c": (0.2, 0.02, 3)}, -1) == "a"
    assert clear_winner({"a": (25, float("nan"), 1), "b": (3, float("nan"), 1)}, +1) is None  # one seed
    assert clear_winner({"a": (25, 0, 3), "b": (3, 0, 3)}, 0) is None  # a count with no direction


def test_plugin_scalars_of_cells_logged_before_plugin_api_v1_join_todays_column(tmp_path):
    from ganstack.training import ablate_report

    cell = tmp_path / "cell"
    for name, key, kimg, value in (("00000-old", "Plugin/diffusion/T", 20.0, 5), ("00001-new", "diffusion/T", 40.0, 7)):
        (cell / name).mkdir(parents=True)
        (cell / name / "stats.jsonl").write_text(json.dumps({"Progress/kimg": kimg, key: {"mean": value}}) + "\n")
    series = ablate_report.signal_series(ablate_report.read_stats(str(cell)))
    assert series == {"diffusion/T": ([20.0, 40.0], [5.0, 7.0])}


def test_image_ablation_panels_show_each_stacks_samples(tmp_path):
    settings = dict(data="shapes16?n=64", cfg="cifar", cbase=256, cmax=16, map_depth=2, kimg=0.032, tick=0.016, batch=8,
                    workers=0, metrics=(), image_snap=100)
    res = ab.ablate(str(tmp_path / "img"), ["none"], [0], settings, log=_quiet)
    assert not any(res["errors"].values())
    import matplotlib.image
    panel = matplotlib.image.imread(res["panels"])
    assert panel.shape[0] > 200 and panel[..., :3].std() > 0.05  # a grid of samples, not a blank figure
