"""``ganstack ablate``: train a grid of plugin stacks x seeds on one budget and summarise it.

::

    ganstack ablate --data toy:grid49 --kimg 500 --seeds 0-2 \\
        --stacks "none;diffusion;smart;clr;diffusion,smart,clr" --outdir /tmp/ablation

Every cell (stack, seed) is one ordinary training run made by :func:`ganstack.training.cli.run_training`
in ``<outdir>/cells/<stack>/seed<k>/``; the cells share every training option except the seed.
Options of a plugin apply to each stack that enables it (``--opt smart.weight=0.1``), a stack may
carry its own (``--stack "diffusion,smart smart.weight=0.1"``), and ``--sweep smart.weight=0.01,0.1``
turns each stack with that plugin into one stack per value.

The grid is resumable: a cell whose ``cell.json`` says ``done`` is skipped, and an interrupted cell
resumes from its newest checkpoint (``--resume``), so re-running the same command finishes the grid.
A cell is reused or resumed only when everything that defines it matches (:func:`cell_definition`: the
training settings, the dataset's content fingerprint, the plugins and their options, the seed); a rerun
in the same ``--outdir`` with other settings (``--set glr=0.01``, another ``--data`` or ``--kimg``) is
refused before anything is written, with the differences listed. ``--dry-run`` writes nothing.
Cells run one after another, or ``--jobs N`` at a time (on several GPUs, one process per device).

Outputs in ``<outdir>``: ``results.csv`` (one row per cell, final metric values), ``results.md``
(mean +- std over seeds per stack, the best value of each column in bold), ``metrics_vs_kimg.png``
(every metric against training progress, mean and std band per stack) and, for 2-D point data,
``final_samples.png`` (a grid of final samples, stacks x seeds), ``panels.png`` (one panel per stack, side by
side) and ``signals.png`` (D's real-fake logit gap and the plugins' scalars over training).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Optional

import click
import numpy as np

from ganstack.stylegan_base.cli_support import finite_float, int_range
from ganstack.stylegan_base.errors import GanstackError
from ganstack.training import launch
from ganstack.training.ablate_report import (band, clear_winner, column_note, finish_grid, plot_side_by_side,
                                             plot_training_signals, scatter_cell, secondary_columns, signals_table)
from ganstack.training.api import ConfigError
from ganstack.training.snapshots import _pyplot

CELL_FILE = "cell.json"
LOCK_FILE = ".lock"  # flock held while a process trains the cell (see cell_lock)
BUSY = "busy: trained by another process"  # a worker's answer for a cell another ablation holds


# ------------------------------------------------------------------------------------------------
# The grid

@dataclass
class StackSpec:
    """One row of the ablation: plugins in order and their options ``{plugin: {option: value}}``."""

    plugins: list
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        base = ",".join(self.plugins) or "none"
        opts = [f"{p}.{k}={v}" for p in self.plugins for k, v in sorted(self.options.get(p, {}).items())]
        return base + (f" [{' '.join(opts)}]" if opts else "")

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.label).strip("_")[:100]


@dataclass
class Cell:
    stack: StackSpec
    seed: int
    dir: str


def _parse_assignment(text: str, what: str) -> tuple[str, str, str]:
    """``plugin.option=value`` -> ``(plugin, option, value)``."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\s*=\s*(.+?)\s*", text)
    if not m:
        raise ConfigError(f"{what} {text!r} is not of the form PLUGIN.OPTION=VALUE (for example smart.weight=0.1).")
    return m.group(1), m.group(2).replace("-", "_"), m.group(3)


def parse_stack_spec(text: str) -> StackSpec:
    """``"diffusion,smart smart.weight=0.1"`` -> plugins ``[diffusion, smart]`` with that option."""
    from ganstack.training.plugin_manager import parse_stack

    parts = text.split()
    if not parts:
        return StackSpec([])
    plugins = parse_stack(parts[0]) if "=" not in parts[0] else []
    rest = parts[1:] if "=" not in parts[0] else parts
    stack = StackSpec(plugins)
    for item in rest:
        plugin, opt, value = _parse_assignment(item, "Stack option")
        if plugin not in plugins:
            raise ConfigError(f"Stack {text!r} sets {plugin}.{opt} but does not enable {plugin}; "
                              f"write it as \"{','.join(plugins + [plugin])} {item}\".")
        stack.options.setdefault(plugin, {})[opt] = value
    return stack


def build_stacks(stack_specs, shared_opts=(), sweep: Optional[str] = None) -> list[StackSpec]:
    """Stacks from their specs, plus shared ``--opt`` values, expanded by ``--sweep``."""
    stacks = [parse_stack_spec(s) for s in stack_specs]
    if not stacks:
        raise ConfigError("No stacks given. Pass --stacks \"none;diffusion;diffusion,smart\" or --stack SPEC (repeatable).")
    for text in shared_opts:
        plugin, opt, value = _parse_assignment(text, "--opt")
        users = [s for s in stacks if plugin in s.plugins]
        if not users:
            raise ConfigError(f"--opt {text}: no stack enables {plugin!r}; stacks: "
                              f"{', '.join(s.label for s in stacks)}.")
        for s in users:
            s.options.setdefault(plugin, {}).setdefault(opt, value)  # a stack's own value wins
    if sweep:
        plugin, opt, values = _parse_assignment(sweep, "--sweep")
        values = [v.strip() for v in values.split(",") if v.strip()]
        if not any(plugin in s.plugins for s in stacks):
            raise ConfigError(f"--sweep {sweep}: no stack enables {plugin!r}.")
        expanded = []
        for s in stacks:
            if plugin not in s.plugins:
                expanded.append(s)
                continue
            for v in values:
                opts = {p: dict(o) for p, o in s.options.items()}
                opts.setdefault(plugin, {})[opt] = v
                expanded.append(StackSpec(list(s.plugins), opts))
        stacks = expanded
    labels = [s.label for s in stacks]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"Stack(s) {', '.join(dup)} appear more than once; give each stack once.")
    return stacks


def validate_stacks(stacks: list[StackSpec], settings: Optional[dict] = None) -> None:
    """Unknown plugins, unknown or out-of-range options and refused stacks (``configure``) fail now,
    not after hours of training."""
    from ganstack.training.plugin_manager import PluginStack

    info = None
    if settings is not None:
        from ganstack.stylegan_base.datasets import open_dataset
        info = open_dataset(settings.get("data", "toy:gaussians25"), use_labels=bool(settings.get("cond"))).info()
    for s in stacks:
        try:
            stack = PluginStack(s.plugins, s.options)
            if info is not None:
                from ganstack.training.config import resolve
                from ganstack.training.preflight import preflight
                cfg = make_config(dict(settings), 0)
                resolve(cfg, info)
                stack.configure(cfg)
                preflight(cfg, stack, info)  # data fit of the plugins, metrics, tensorboard: before cell 1
        except GanstackError as exc:
            raise type(exc)(f"Stack {s.label!r}: {exc}") from None


# ------------------------------------------------------------------------------------------------
# Training options shared by every cell

def _coerce(value: str, default):
    """A ``--set`` value in the type of the TrainConfig field."""
    if isinstance(default, bool):
        low = value.lower()
        if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ConfigError(f"expected a boolean, got {value!r}")
        return low in ("1", "true", "yes", "on")
    if isinstance(default, tuple):
        return tuple(float(v) for v in value.split(","))
    if value.lower() == "none":
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def train_settings(base: dict, assignments=()) -> dict:
    """``{TrainConfig field: value}`` from the named options plus ``--set KEY=VALUE``."""
    from ganstack.training.config import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig) if not f.name.startswith("_")}
    out = {k: v for k, v in base.items() if v is not None}
    for text in assignments:
        key, sep, value = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields or key in ("seed", "ref_gpus"):
            allowed = ", ".join(sorted(k for k in fields if k not in ("seed", "ref_gpus")))
            raise ConfigError(f"--set {text!r}: expected KEY=VALUE with KEY a training option ({allowed}). "
                              f"The seed comes from --seeds.")
        try:
            default = () if "tuple" in str(fields[key].type) else fields[key].default  # Optional[tuple]: betas
            out[key] = value.strip() if key == "metrics" else _coerce(value.strip(), default)
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"--set {text!r}: {exc}") from None
    if isinstance(out.get("metrics"), str):
        out["metrics"] = tuple(m.strip() for m in out["metrics"].split(",") if m.strip())
    return out


def make_config(settings: dict, seed: int):
    from ganstack.training.config import TrainConfig

    cfg = TrainConfig(**settings, seed=seed)
    cfg.mark_user_set(set(settings) | {"seed"})
    return cfg


# Settings that change how a cell is run or watched, not what it trains (a finished cell stays valid).
_NOT_DEFINING = ("workers", "device", "snap", "tick", "keep", "tensorboard", "image_snap")
_data_fingerprints: dict = {}


def data_fingerprint(settings: dict) -> str:
    """Content fingerprint of the cells' dataset (its view: max_size, mirror, labels), memoised per process.

    Part of what defines a cell: the same ``--data`` path holding other data (another folder, an edited
    file) is another experiment.
    """
    from ganstack.stylegan_base.datasets import open_dataset

    spec = settings.get("data", "toy:gaussians25")
    path = os.path.expanduser(str(spec))
    stamp = None
    if os.path.exists(path):
        st = os.stat(path)
        stamp = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    key = (spec, stamp, settings.get("max_size"), bool(settings.get("mirror")), bool(settings.get("cond")))
    if key not in _data_fingerprints:
        ds = open_dataset(spec, mirror=bool(settings.get("mirror")), max_size=settings.get("max_size"),
                          use_labels=bool(settings.get("cond")))
        _data_fingerprints[key] = ds.fingerprint()
    return _data_fingerprints[key]


def cell_definition(settings: dict, stack: StackSpec, seed: int) -> dict:
    """Everything that defines what a cell trains: the training settings (the data by its content), the
    plugin stack with its options, and the seed. A finished cell is reused only when all of it matches."""
    defining = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(settings.items())
                if k not in _NOT_DEFINING and k != "data"}
    return dict(settings=defining, data_fingerprint=data_fingerprint(settings), plugins=list(stack.plugins),
                options={p: dict(sorted(o.items())) for p, o in sorted(stack.options.items())}, seed=seed)


def cell_fingerprint(settings: dict, stack: StackSpec, seed: int) -> str:
    blob = json.dumps(cell_definition(settings, stack, seed), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every entry of two cell definitions that differs."""
    if not old:
        return ["it was recorded without its settings (an older ganstack), so they cannot be compared"]
    out = []
    for key in ("settings", "options"):
        a, b = old.get(key, {}) or {}, new.get(key, {}) or {}
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out.append(f"{k} {a.get(k, 'unset')!r} -> {b.get(k, 'unset')!r}")
    if old.get("data_fingerprint") != new.get("data_fingerprint"):
        out.append(f"data content {str(old.get('data_fingerprint'))[:12]} -> {str(new.get('data_fingerprint'))[:12]} "
                   f"({old.get('data', '?')!r} -> {new.get('data', '?')!r})")
    for key in ("plugins", "seed"):
        if old.get(key) != new.get(key):
            out.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    return out or ["the fingerprint differs"]


def cell_conflict(cell: "Cell", settings: dict) -> Optional[str]:
    """Why ``cell.dir`` cannot be reused or resumed under ``settings`` (None when it can, or is new)."""
    if not os.path.isdir(cell.dir):
        return None
    path = os.path.join(cell.dir, CELL_FILE)
    state = _read_cell(cell.dir)
    if not state:
        if os.path.exists(path) or run_dirs(cell.dir):
            return (f"its {CELL_FILE} is missing or unreadable but it holds runs, so what it was trained with is "
                    f"unknown")
        return None
    if state.get("fingerprint") == cell_fingerprint(settings, cell.stack, cell.seed):
        return None
    new = dict(cell_definition(settings, cell.stack, cell.seed), data=settings.get("data"))
    return ", ".join(_differences(state.get("definition") or {}, new))


def check_reuse(cells: list["Cell"], settings: dict) -> dict:
    """Refuse, before anything is written, to reuse or resume cells made with other settings.

    Returns ``{cell dir: 'done' | 'resume' | 'new'}`` for the plan.
    """
    conflicts = []
    plan = {}
    for cell in cells:
        why = cell_conflict(cell, settings)
        if why:
            name = f"cells/{os.path.basename(os.path.dirname(cell.dir))}/{os.path.basename(cell.dir)}"
            conflicts.append(f"{name}: {why}")
            continue
        state = _read_cell(cell.dir)
        plan[cell.dir] = "done" if state.get("status") == "done" else ("resume" if newest_checkpoint(cell.dir) else "new")
    if conflicts:
        shown = conflicts[:8] + ([f"... and {len(conflicts) - 8} more"] if len(conflicts) > 8 else [])
        raise ConfigError("This --outdir already holds cells trained with other settings, so their results cannot "
                          "be reused (a finished cell is reused only when everything that defines it matches: "
                          "training options, data content, plugins and their options, seed). Differences (was -> "
                          "now): " + "; ".join(shown) + ". Use a new --outdir for the new settings, or delete those "
                          "cell folders to retrain them. Nothing was changed.")
    return plan


# ------------------------------------------------------------------------------------------------
# Running cells

def _read_cell(cell_dir: str) -> dict:
    try:
        with open(os.path.join(cell_dir, CELL_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_json(path: str, data: dict) -> None:
    from ganstack.stylegan_base.cli_support import atomic_path
    with atomic_path(path) as tmp, open(tmp, "wt") as f:
        json.dump(data, f, indent=2)


def _write_cell(cell_dir: str, data: dict) -> None:
    _write_json(os.path.join(cell_dir, CELL_FILE), data)


def run_dirs(cell_dir: str) -> list[str]:
    """The cell's run folders, oldest first (``00000-...``, ``00001-...`` after a resume)."""
    if not os.path.isdir(cell_dir):
        return []
    names = sorted(d for d in os.listdir(cell_dir) if re.match(r"^\d{5}-", d)
                   and os.path.isdir(os.path.join(cell_dir, d)))
    return [os.path.join(cell_dir, d) for d in names]


def newest_checkpoint(cell_dir: str) -> Optional[str]:
    from ganstack.training import checkpoint as ckpt_io

    best = None
    for rd in run_dirs(cell_dir):
        for path in ckpt_io.list_snapshots(rd):
            nimg = ckpt_io.snapshot_nimg(path)
            if best is None or nimg >= best[0]:
                best = (nimg, path)
    return best[1] if best else None


class CellBusy(GanstackError):
    """Another process (a second ``ganstack ablate`` on a shared cells folder) is training this cell now."""


@contextlib.contextmanager
def cell_lock(cell_dir: str):
    """Hold ``cell_dir/.lock`` (an exclusive ``flock``) while the cell trains; :class:`CellBusy` if it is held.

    Two ablations whose cells folders are shared (``benchmarks/evidence.sh``, or the same command in two
    terminals) can then run at once: each trains the cells the other is not training. The lock dies with its
    process, so a killed run leaves no stale lock. On a file system without ``flock`` there is no guard.
    """
    import fcntl

    os.makedirs(cell_dir, exist_ok=True)
    with open(os.path.join(cell_dir, LOCK_FILE), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CellBusy(f"{cell_dir} is being trained by another process right now (it holds {LOCK_FILE}); "
                           f"this run leaves the cell to it. Re-run the command after that one ends to "
                           f"collect the cell in this ablation's results.") from None
        except OSError:
            pass  # no flock here (some network file systems): train unguarded, as before
        yield


def run_cell(cell: Cell, settings: dict, device: Optional[str] = None, log=None) -> dict:
    """Train one cell to the budget (or resume it), then record it as done; returns its cell.json.

    Raises :class:`CellBusy`, before writing anything, when another process is training the same cell.
    """
    with cell_lock(cell.dir):
        return _run_cell_locked(cell, settings, device, log)


def _run_cell_locked(cell: Cell, settings: dict, device: Optional[str], log) -> dict:
    from ganstack.training.cli import run_training

    fp = cell_fingerprint(settings, cell.stack, cell.seed)
    why = cell_conflict(cell, settings)
    if why:
        raise ConfigError(f"{cell.dir} holds a cell trained with other settings ({why}). Use a new --outdir for "
                          f"a different ablation, or delete that folder.")
    state = _read_cell(cell.dir)  # read under the lock: a cell another process just finished counts as done
    if state.get("status") == "done":
        return state
    definition = dict(cell_definition(settings, cell.stack, cell.seed), data=settings.get("data"))
    info = dict(stack=cell.stack.label, plugins=cell.stack.plugins, options=cell.stack.options, seed=cell.seed,
                fingerprint=fp, definition=definition, status="running", started=time.time())
    _write_cell(cell.dir, info)
    cfg = make_config(settings, cell.seed)
    resume = newest_checkpoint(cell.dir)
    if resume:
        # The checkpoint carries the stack and its options; only the resumable settings are passed.
        run_training(cfg, None, None, cell.dir, resume=resume, device=device, log=log)
    else:
        run_training(cfg, list(cell.stack.plugins), cell.stack.options, cell.dir, device=device, log=log)
    info.update(status="done", finished=time.time(), run_dirs=[os.path.basename(d) for d in run_dirs(cell.dir)])
    _write_cell(cell.dir, info)
    return info


_WORKER_DEVICE = None


def _init_worker(queue, threads):
    global _WORKER_DEVICE
    import torch
    _WORKER_DEVICE = queue.get()
    torch.set_num_threads(threads)


def _run_cell_in_worker(cell: Cell, settings: dict) -> tuple[str, Optional[str]]:
    import contextlib

    os.makedirs(cell.dir, exist_ok=True)
    # Each worker's status lines go to the cell's worker.log (and each run's log.txt), not the terminal.
    with open(os.path.join(cell.dir, "worker.log"), "at") as f, contextlib.redirect_stdout(f):
        try:
            run_cell(cell, settings, device=_WORKER_DEVICE)
            return cell.dir, None
        except CellBusy:  # another ablation trains it (and writes this worker.log): the main process says so
            return cell.dir, BUSY
        except Exception as exc:  # noqa: BLE001 - reported per cell; the others go on
            traceback.print_exc(file=f)
            return cell.dir, f"{type(exc).__name__}: {exc}"


def run_grid(cells: list[Cell], settings: dict, jobs: int = 1, devices: Optional[list] = None, log=click.echo,
             keep_going: bool = True) -> dict:
    """Run every unfinished cell; returns ``{cell dir: error or None}``."""
    # A cell counts as finished only with the fingerprint of these settings (run_cell refuses the others).
    todo = [c for c in cells if not (_read_cell(c.dir).get("status") == "done"
                                     and _read_cell(c.dir).get("fingerprint") == cell_fingerprint(settings, c.stack, c.seed))]
    skipped = len(cells) - len(todo)
    if skipped:
        log(f"Skipping {skipped} finished cell(s).")
    errors = {}
    from ganstack.stylegan_base.progress import GridProgress  # cells done / running / left, time so far
    if jobs <= 1 or len(todo) <= 1:
        device = devices[0] if devices else None
        with GridProgress(len(cells), initial=skipped, desc="ablate", log=log) as grid:
            for i, cell in enumerate(todo):
                resumed = " (resuming)" if newest_checkpoint(cell.dir) else ""
                log(f"[{i + 1}/{len(todo)}] {cell.stack.label}  seed {cell.seed}{resumed}")
                grid.started()
                try:
                    run_cell(cell, settings, device=device)
                    errors[cell.dir] = None
                except CellBusy as exc:
                    log(f"  skipped: {exc}")
                    errors[cell.dir] = None
                    grid.finished(f"{cell.stack.label} seed {cell.seed}", elsewhere=True)
                    continue
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # noqa: BLE001
                    if not keep_going or isinstance(exc, ConfigError):
                        raise
                    errors[cell.dir] = f"{type(exc).__name__}: {exc}"
                    _write_cell(cell.dir, dict(_read_cell(cell.dir), status="failed", error=errors[cell.dir],
                                               traceback=traceback.format_exc()))
                grid.finished(f"{cell.stack.label} seed {cell.seed}", errors[cell.dir])
        return errors
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    devices = list(devices or ["cpu"] * jobs)
    for k in range(jobs):
        queue.put(devices[k % len(devices)])
    threads = max(1, (os.cpu_count() or 1) // jobs)
    log(f"Running {len(todo)} cell(s), {jobs} at a time on {', '.join(devices[:jobs])}.")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                                initargs=(queue, threads)) as pool, \
            GridProgress(len(cells), initial=skipped, desc="ablate", log=log) as grid:
        futures = {pool.submit(_run_cell_in_worker, c, settings): c for c in todo}
        grid.started(min(jobs, len(todo)))
        for fut in concurrent.futures.as_completed(futures):
            cell = futures[fut]
            _, err = fut.result()
            if err == BUSY:
                errors[cell.dir] = None
                grid.finished(f"{cell.stack.label} seed {cell.seed}", elsewhere=True)
                if grid.left > 0:
                    grid.started()
                continue
            errors[cell.dir] = err
            if err:
                _write_cell(cell.dir, dict(_read_cell(cell.dir), status="failed", error=err))
            grid.finished(f"{cell.stack.label} seed {cell.seed}", err)
            if grid.left > 0:
                grid.started()  # the pool starts the next cell
    return errors


# ------------------------------------------------------------------------------------------------
# Results

def cell_history(cell_dir: str) -> dict:
    """``{metric: {kimg: results}}`` over all run folders of the cell (a later run wins a tie)."""
    from ganstack.metrics.registry import read_results

    hist: dict = {}
    for rd in run_dirs(cell_dir):
        for rec in read_results(rd):
            hist.setdefault(rec["metric"], {})[float(rec["kimg"])] = rec["results"]
    return hist


def _numeric(results: dict) -> dict:
    return {k: float(v) for k, v in results.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("sec",)}


def final_values(cell_dir: str) -> tuple[Optional[float], dict]:
    """``(kimg, {metric/key: value})`` at the newest evaluation of each metric."""
    hist = cell_history(cell_dir)
    out, kimg = {}, None
    for metric, by_kimg in hist.items():
        k = max(by_kimg)
        kimg = k if kimg is None else max(kimg, k)
        out.update({f"{metric}/{key}": v for key, v in _numeric(by_kimg[k]).items()})
    return kimg, out


def column_direction(column: str) -> int:
    from ganstack.metrics.registry import direction
    return direction(column.split("/", 1)[-1])


def _shown_columns(columns) -> list[str]:
    keep = [c for c in columns if column_direction(c) != 0 or c.endswith("/nfe")]
    return keep or list(columns)


def summarize(cells: list[Cell]) -> tuple[list[dict], list[str]]:
    rows, columns = [], []
    for cell in cells:
        state = _read_cell(cell.dir)
        kimg, values = final_values(cell.dir)
        for key in values:
            if key not in columns:
                columns.append(key)
        rows.append(dict(stack=cell.stack.label, plugins=",".join(cell.stack.plugins) or "none",
                         options=json.dumps(cell.stack.options, sort_keys=True), seed=cell.seed,
                         status=state.get("status", "not run"), kimg=kimg, values=values))
    return rows, columns


def write_csv(rows, columns, path: str) -> None:
    with open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stack", "plugins", "options", "seed", "status", "kimg"] + columns)
        for r in rows:
            w.writerow([r["stack"], r["plugins"], r["options"], r["seed"], r["status"],
                        "" if r["kimg"] is None else f"{r['kimg']:g}"]
                       + ["" if c not in r["values"] else f"{r['values'][c]:.6g}" for c in columns])


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")


def aggregate(rows, columns, stacks: list[StackSpec]) -> dict:
    """``{stack label: {column: (mean, std, n)}}`` over the finished seeds."""
    out = {}
    for s in stacks:
        done = [r for r in rows if r["stack"] == s.label and r["status"] == "done"]
        out[s.label] = {}
        for c in columns:
            vals = [r["values"][c] for r in done if c in r["values"] and math.isfinite(r["values"][c])]
            if vals:
                mean, std = _mean_std(vals)
                out[s.label][c] = (mean, std, len(vals))
    return out


def _fmt(x: float) -> str:
    """Three significant digits (``4.67``, ``0.00231``, ``10.3``), whole numbers from 1000 up."""
    if not math.isfinite(x):
        return "–"
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def write_markdown(rows, columns, stacks, path: str, title: str, notes: list[str]) -> str:
    agg = aggregate(rows, columns, stacks)
    shown = _shown_columns(columns)
    arrows = {1: " ↑", -1: " ↓", 0: ""}
    shown = shown + [c for c in secondary_columns(columns) if c not in shown]
    best = {}
    for c in shown:
        label = clear_winner({s.label: agg[s.label][c] for s in stacks if c in agg[s.label]}, column_direction(c))
        if label is not None:
            best[c] = {label}
    lines = [f"# {title}", ""]
    lines.append("| stack | seeds | " + " | ".join(f"{c}{arrows[column_direction(c)]}" + column_note(c)
                                                  for c in shown) + " |")
    lines.append("|---|---|" + "---|" * len(shown))
    for s in stacks:
        n_done = sum(1 for r in rows if r["stack"] == s.label and r["status"] == "done")
        n_all = sum(1 for r in rows if r["stack"] == s.label)
        cells = []
        for c in shown:
            if c not in agg[s.label]:
                cells.append("–")
                continue
            mean, std, _ = agg[s.label][c]
            spread = math.isfinite(std) and (column_direction(c) != 0 or column_note(c))  # nfe: fixed
            text = _fmt(mean) + (f" ± {_fmt(std)}" if spread else "")
            cells.append(f"**{text}**" if s.label in best.get(c, ()) else text)
        lines.append(f"| {s.label} | {n_done}/{n_all} | " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample std over the finished seeds at the final evaluation (↑ higher is better, ↓ lower "
                  "is better). A stack is in bold only where it is a clear winner: its mean beats every other "
                  "stack's by more than the two stacks' standard deviations added (one seed: nothing is marked)."]
    lines += [""] + [f"- {n}" for n in notes]
    failed = [r for r in rows if r["status"] not in ("done",)]
    if failed:
        lines += ["", "Unfinished or failed cells: " + ", ".join(f"{r['stack']} seed {r['seed']} ({r['status']})"
                                                               for r in failed)]
    text = "\n".join(lines) + "\n"
    with open(path, "wt") as f:
        f.write(text)
    return text


def plot_curves(cells: list[Cell], stacks: list[StackSpec], columns: list[str], path: str, title: str) -> bool:
    """One panel per metric column: mean over seeds against kimg per stack, with a +-std band."""
    plt = _pyplot()
    if plt is None:
        return False
    shown = [c for c in _shown_columns(columns) if not c.endswith("/nfe")] or _shown_columns(columns)
    if not shown:
        return False
    hists = {c.dir: cell_history(c.dir) for c in cells}
    ncol = min(3, len(shown))
    nrow = math.ceil(len(shown) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.6 * nrow), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, col in zip(axes.flat, shown):
        metric, key = col.split("/", 1)
        for si, s in enumerate(stacks):
            series = []
            for c in cells:
                if c.stack.label != s.label:
                    continue
                by_kimg = hists[c.dir].get(metric, {})
                series.append({k: float(v[key]) for k, v in by_kimg.items() if key in v})
            if not series:
                continue
            common = sorted(set.intersection(*[set(x) for x in series])) if all(series) else []
            if not common:
                continue
            vals = np.array([[x[k] for k in common] for x in series])
            band(ax, common, vals, colors[si % len(colors)], s.label)
        d = column_direction(col)
        ax.set_title(col + {1: " (higher is better)", -1: " (lower is better)", 0: ""}[d], fontsize=9)
    finish_grid(plt, fig, axes, len(shown), title, path)
    return True


def plot_final_samples(cells: list[Cell], stacks: list[StackSpec], seeds: list[int], path: str, title: str,
                       n: int = 2000) -> bool:
    """Grid of scatter plots (rows: stacks, columns: seeds) of samples from each cell's final checkpoint."""
    import torch

    plt = _pyplot()
    if plt is None:
        return False
    by_key = {(c.stack.label, c.seed): c for c in cells}
    fig, axes = plt.subplots(len(stacks), len(seeds), figsize=(2.6 * len(seeds) + 1.2, 2.6 * len(stacks)),
                             squeeze=False)
    ref: dict = {}
    for i, s in enumerate(stacks):
        for j, seed in enumerate(seeds):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            cell = by_key.get((s.label, seed))
            ckpt = newest_checkpoint(cell.dir) if cell else None
            if ckpt is None:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, fontsize=8)
                continue
            if scatter_cell(ax, ckpt, ref, n) is None:
                plt.close(fig)
                return False
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    for j, seed in enumerate(seeds):
        axes[0, j].set_title(f"seed {seed}", fontsize=9)
    for i, s in enumerate(stacks):
        axes[i, 0].set_ylabel(s.label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_reports(outdir: str, cells: list[Cell], stacks: list[StackSpec], seeds: list[int], settings: dict,
                  log=click.echo) -> dict:
    rows, columns = summarize(cells)
    paths = dict(csv=os.path.join(outdir, "results.csv"), md=os.path.join(outdir, "results.md"),
                 curves=os.path.join(outdir, "metrics_vs_kimg.png"), samples=os.path.join(outdir, "final_samples.png"))
    write_csv(rows, columns, paths["csv"])
    budget = settings.get("kimg")
    title = f"Ablation on {settings.get('data')}: {budget:g} kimg per cell, seeds {', '.join(map(str, seeds))}"
    opts = {k: v for k, v in settings.items() if k not in ("data", "kimg", "workers", "metrics")}
    notes = ["Training options: " + (", ".join(f"{k}={v}" for k, v in sorted(opts.items())) or "preset defaults"),
             f"Metrics: {', '.join(settings.get('metrics', ())) or 'none'} (sampled through each stack's sampler; "
             f"nfe = generator evaluations per sample)."]
    text = write_markdown(rows, columns, stacks, paths["md"], title, notes)
    extra = signals_table(cells, stacks)  # ablate_report: D's logit gap and plugin scalars at the end
    if extra:
        with open(paths["md"], "at") as f:
            f.write(extra)
        text += extra
    made = []
    if columns and plot_curves(cells, stacks, columns, paths["curves"], title):
        made.append(paths["curves"])
    if plot_final_samples(cells, stacks, seeds, paths["samples"], title):
        made.append(paths["samples"])
    # The results side (ablate_report): side-by-side panels per stack and D/plugin signals over training.
    agg = aggregate(rows, columns, stacks)
    for key, fn in (("panels", lambda p: plot_side_by_side(cells, stacks, seeds, agg, p, title)),
                    ("signals", lambda p: plot_training_signals(cells, stacks, p, title))):
        paths[key] = os.path.join(outdir, f"{key}.png")
        if fn(paths[key]):
            made.append(paths[key])
    log(text)
    log(f"Wrote {paths['csv']}, {paths['md']}" + (f", {', '.join(made)}" if made else ""))
    return paths


# ------------------------------------------------------------------------------------------------
# Command

def _default_devices(jobs: int) -> list[str]:
    import torch
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def plan(outdir: str, stacks: list[StackSpec], seeds: list[int]) -> list[Cell]:
    return [Cell(s, seed, os.path.join(outdir, "cells", s.slug, f"seed{seed}")) for s in stacks for seed in seeds]


def default_snap(settings: dict) -> int:
    """Ticks between checkpoints so that each cell is evaluated about ten times."""
    from ganstack.stylegan_base.datasets import open_dataset
    from ganstack.training.config import resolve

    cfg = make_config(dict(settings), 0)
    resolve(cfg, open_dataset(cfg.data, use_labels=cfg.cond).info())
    return max(1, int(round(cfg.kimg / cfg.tick / 10)))


def ablate(outdir: str, stack_specs, seeds, settings: dict, shared_opts=(), sweep=None, jobs: int = 1,
           devices=None, log=click.echo, dry_run: bool = False, launcher=None) -> dict:
    """Everything ``ganstack ablate`` does after parsing (also used by the tests).

    ``launcher`` runs the cells (:mod:`ganstack.training.launch`): by default here, ``jobs`` at a time on
    ``devices``; a ``SlurmCellLauncher`` submits them as a job array instead.
    """
    from ganstack.stylegan_base.cli_support import check_output_dir

    check_output_dir(outdir, "--outdir")
    stacks = build_stacks(stack_specs, shared_opts, sweep)
    if "kimg" not in settings:
        raise ConfigError("ganstack ablate needs one shared budget: --kimg N.")
    validate_stacks(stacks, settings)
    if not seeds:
        raise ConfigError("--seeds is empty; give at least one seed, e.g. --seeds 0-2.")
    if "kimg" not in settings:
        raise ConfigError("ganstack ablate needs one shared budget: --kimg N.")
    settings = dict(settings)
    if "metrics" not in settings:
        from ganstack.stylegan_base.datasets import open_dataset
        info = open_dataset(settings.get("data", "toy:gaussians25")).info()
        settings["metrics"] = ("toy",) if info.get("toy") else ()
    if "snap" not in settings:
        settings["snap"] = default_snap(settings)
    settings.setdefault("keep", 2)
    cells = plan(outdir, stacks, seeds)
    # Finished or interrupted cells of other settings are refused before anything is written.
    status = check_reuse(cells, settings)
    log(f"Ablation: {len(stacks)} stack(s) x {len(seeds)} seed(s) = {len(cells)} cells in {outdir}")
    for s in stacks:
        log(f"  {s.label}")
    counts = {k: sum(1 for v in status.values() if v == k) for k in ("done", "resume", "new")}
    log(f"Cells: {counts['done']} finished (reused), {counts['resume']} to resume, {counts['new']} to train.")
    if dry_run:  # no side effects: no folder, no ablation.json
        log("Dry run: nothing was written.")
        return dict(cells=cells, stacks=stacks, status=status)
    os.makedirs(outdir, exist_ok=True)
    _write_json(os.path.join(outdir, "ablation.json"),
                dict(stacks=[dict(label=s.label, plugins=s.plugins, options=s.options) for s in stacks],
                     seeds=list(seeds), settings={k: list(v) if isinstance(v, tuple) else v
                                                  for k, v in settings.items()}))
    from ganstack.training.launch import LocalCellLauncher
    launcher = launcher or LocalCellLauncher(jobs=jobs, devices=devices)
    errors = launcher.run(cells, settings, outdir, log=log)
    paths = write_reports(outdir, cells, stacks, list(seeds), settings, log=log)
    failed = {k: v for k, v in errors.items() if v}
    if failed:
        log(f"{len(failed)} cell(s) failed; see cell.json in: " + ", ".join(failed))
    missing = sum(1 for c in cells if _read_cell(c.dir).get("status") != "done")
    if missing:
        log(f"The results cover {len(cells) - missing} of {len(cells)} cells; {missing} missing. "
            f"`ganstack ablate --status {outdir}` shows them; re-running this command collects finished cells "
            f"and runs (or resubmits) the rest.")
    return dict(cells=cells, stacks=stacks, errors=errors, missing=missing, **paths)


@click.command("ablate")
@click.option("--outdir", default=None, help="Folder of the ablation (cells, results.csv/.md, plots).")
@click.option("--stacks", "stacks_text", default=None,
              help='Stacks separated by ";", e.g. "none;diffusion;diffusion,smart;diffusion,smart,clr".')
@click.option("--stack", "stack_list", multiple=True, metavar="SPEC",
              help='One stack with its own options, e.g. "diffusion,smart smart.weight=0.1" (repeatable).')
@click.option("--seeds", default="0-2", show_default=True, help="Seeds, e.g. 0-2 or 0,5,7.")
@click.option("--data", default="toy:gaussians25", show_default=True, help="Dataset (as for ganstack train).")
@click.option("--kimg", type=finite_float(0, min_open=True), default=None,
              help="Training budget of every cell, in kimg (required).")
@click.option("--cfg", default=None, help="Preset (as for ganstack train) [default: auto].")
@click.option("--batch", type=int_range(1), default=None, help="Batch size [default: preset].")
@click.option("--metrics", default=None, help="Metrics at each checkpoint [default: toy for 2-D mixtures].")
@click.option("--snap", type=int_range(1), default=None, help="Ticks between checkpoints/metrics [default: ~10 per cell].")
@click.option("--tick", type=finite_float(0, min_open=True), default=None, help="kimg per tick [default: preset].")
@click.option("--opt", "shared_opts", multiple=True, metavar="PLUGIN.OPTION=VALUE",
              help="Plugin option for every stack that enables the plugin (repeatable).")
@click.option("--sweep", default=None, metavar="PLUGIN.OPTION=V1,V2,...",
              help="Run each stack that enables PLUGIN once per value.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Any other training option for every cell, e.g. --set glr=0.002 --set mlp_hidden=64.")
@click.option("--jobs", type=int_range(1, 1024), default=None, help="Cells at a time [default: number of GPUs, else 1].")
@click.option("--devices", default=None, help="Comma-separated devices for --jobs [default: all GPUs, else cpu].")
@click.option("--dry-run", is_flag=True, default=False, help="List the cells and exit.")
@launch.ablate_options
def ablate_command(outdir, stacks_text, stack_list, seeds, data, kimg, cfg, batch, metrics, snap, tick, shared_opts,
                   sweep, assignments, jobs, devices, dry_run, **launch_kw):
    """Train stacks x seeds on one budget; write results.csv, results.md and plots. Resumable.

    With --launcher slurm the cells are submitted as one SLURM job array (submitit); re-running the same
    command collects finished cells and resubmits unfinished or failed ones.
    """
    from ganstack.stylegan_base.cli_support import check_device, parse_seed_list

    if launch_kw.get("status_dir"):
        launch.print_status(launch_kw["status_dir"])
        return
    if not outdir:
        raise ConfigError("ganstack ablate needs --outdir DIR (the folder of the ablation), or --status DIR.")
    seed_list = parse_seed_list(seeds, "--seeds")

    specs = [s for s in (stacks_text or "").split(";") if s.strip()] + list(stack_list)
    if not specs:
        raise ConfigError("Give the stacks to compare: --stacks \"none;diffusion;diffusion,smart\" or --stack SPEC.")
    base = dict(data=data, kimg=kimg, cfg=cfg, batch=batch, snap=snap, tick=tick, workers=0)
    if metrics is not None:
        base["metrics"] = metrics
    settings = train_settings(base, assignments)
    dev_list = ([check_device(d, "--devices") for d in devices.split(",") if d.strip()] if devices
                else _default_devices(jobs or 1))
    if not dev_list or "auto" in dev_list:
        raise ConfigError(f"--devices {devices!r}: give devices such as cpu or cuda:0,cuda:1 (not auto).")
    if jobs is None:
        jobs = len(dev_list) if dev_list[0].startswith("cuda") else 1
    result = ablate(outdir, specs, seed_list, settings, shared_opts, sweep, jobs=jobs, devices=dev_list,
                    dry_run=dry_run, launcher=launch.make_cell_launcher(launch_kw, jobs, dev_list))
    failed = [k for k, v in (result.get("errors") or {}).items() if v]
    if failed:  # the reports cover the other cells; the exit status tells scripts and CI
        raise CellsFailed(f"{len(failed)} of {len(result['cells'])} cells failed (each cell.json holds its error and "
                          f"log; `ganstack ablate --status {outdir}` lists them). The results table covers the "
                          f"others. Fix the cause and re-run the same command: finished cells are reused.")


class CellsFailed(GanstackError):
    """Some cells of an ablation failed; the results of the others were written."""

    exit_code = 1


__all__ = ["ablate", "ablate_command"]
