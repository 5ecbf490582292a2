"""One run's life, shared by ``ganstack train`` and ``ganstack train-score``.

* **The run folder**: ``<outdir>/<NNNNN>-<desc>`` (StyleGAN2-ADA's numbering, :func:`new_run_dir`), ``log.txt``
  that receives everything printed to stdout and stderr, tracebacks included (:class:`RunLog`, as
  StyleGAN2-ADA's ``dnnlib.util.Logger``), ``stats.jsonl`` and TensorBoard (:class:`StatsWriter`), and the
  clean-up of temporary checkpoint files a killed run left behind (:func:`clean_stale_temp`).
* **The tick loop** (:class:`RunLoop`): steps until the budget, one status line and one ``stats.jsonl`` record
  per tick, snapshots every ``--snap`` ticks, a stop on signals that always ends with a checkpoint, and a check
  for non-finite losses and weights at every tick (:class:`TrainingDiverged`, exit status 3).
* **Signals** (:class:`StopSignals`): SIGINT, SIGTERM and SIGUSR1 (SLURM's early warning,
  ``--signal=USR1@90``) all mean "finish this step, write a checkpoint, stop". Data-loader workers ignore them
  (:func:`worker_ignores_stop_signals`), so a signal to the whole process group (``timeout``, ``scancel``,
  preemption) reaches the main process, which writes the checkpoint; the checkpoint needs no data.
* **Resume checks**: which options may change (:func:`merge_resume`, one rule for both commands) and whether
  the data is the same (:func:`check_same_dataset`: an absolute path and the dataset's content fingerprint).
* :func:`run_training`: everything ``ganstack train`` does after parsing its options.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from ganstack.stylegan_base.cli_support import check_output_dir
from ganstack.stylegan_base.errors import CheckpointError, GanstackError
from ganstack.training import distributed

# How often the ranks of a multi-GPU run agree on a stop request (a collective with a host read); one process
# checks its own flag every step at no cost.
STOP_POLL_STEPS = 8
# Temporary checkpoint files at least this old belong to no live writer (a writer keeps touching its file).
STALE_TEMP_SECONDS = 120
TEMP_GLOB_RE = re.compile(r"^\.tmp-.*\.pt$")


# ------------------------------------------------------------------------------------------------
# The status line

def format_time(seconds: float) -> str:
    s = int(np.rint(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s"
    return f"{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m"


def _cpu_mem_gb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30
    except (OSError, ValueError, AttributeError):
        return float("nan")


def tick_fields(tick: int, cur_nimg: int, tick_time: float, tick_nimg: int, maintenance: float, total_time: float,
                device) -> dict:
    """The fixed fields of a status line (StyleGAN2-ADA's)."""
    device = torch.device(device)
    return {
        "tick": tick,
        "kimg": cur_nimg / 1e3,
        "time": total_time,
        "sec/tick": tick_time,
        "sec/kimg": tick_time / max(tick_nimg, 1) * 1e3,
        "maintenance": maintenance,
        "cpumem": _cpu_mem_gb(),
        "gpumem": (torch.cuda.max_memory_allocated(device) / 2 ** 30) if device.type == "cuda" else 0.0,
    }


def format_status(fields: dict, extra: dict) -> str:
    parts = [f"tick {fields['tick']:<5d}", f"kimg {fields['kimg']:<8.1f}", f"time {format_time(fields['time']):<12s}",
             f"sec/tick {fields['sec/tick']:<7.1f}", f"sec/kimg {fields['sec/kimg']:<7.2f}",
             f"maintenance {fields['maintenance']:<6.1f}", f"cpumem {fields['cpumem']:<6.2f}",
             f"gpumem {fields['gpumem']:<6.2f}"]
    for k, v in extra.items():
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return " ".join(parts)


def tick_record(fields: dict, stats: dict, scalars: dict) -> dict:
    """One ``stats.jsonl`` line: the tick's statistics, the status fields, and scalars under their one name."""
    record = dict(stats)
    record.update({f"Progress/{k}": v for k, v in fields.items() if k in ("tick", "kimg")})
    record.update({f"Timing/{k}": v for k, v in fields.items() if k.startswith("sec") or k in ("time", "maintenance")})
    record.update({f"Resources/{k}": v for k, v in fields.items() if k.endswith("mem")})
    record.update(scalars)
    record["timestamp"] = time.time()
    return record


# ------------------------------------------------------------------------------------------------
# Signals

STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGUSR1")) if s is not None)


def worker_ignores_stop_signals(_worker_id: Any = None) -> None:
    """``worker_init_fn`` of the data loaders: SIGINT/SIGTERM/SIGUSR1 sent to the process group must not kill
    the workers before the main process has written its checkpoint (the main process handles them)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def stop_signals_ignored():
    """Ignore the stop signals while worker processes are started: they inherit the disposition, which closes
    the window before ``worker_init_fn`` runs. Only in the main thread; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class StopSignals:
    """Graceful stop on SIGINT, SIGTERM and SIGUSR1 for a training loop.

    Between :meth:`install` and :meth:`restore`, the first signal only sets :attr:`signum`: the loop finishes
    its step, writes a checkpoint and calls :meth:`exit_if_stopped`, which exits with ``128 + signal`` as a
    shell expects (130, 143, 138). SIGUSR1 is SLURM's early warning (``sbatch --signal=USR1@90``): the same
    checkpoint-and-stop, so that the job can be requeued with ``--resume``. A second Ctrl-C aborts at once;
    a second SIGTERM or SIGUSR1 (``scancel`` after the warning) does not interrupt the checkpoint being written.
    """

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.signum: Optional[int] = None
        self._old: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        name = signal.Signals(signum).name
        why = " (SLURM's early warning before the time limit)" if name == "SIGUSR1" else ""
        self.log(f"\nReceived {name}{why}: finishing this step, writing a checkpoint and stopping "
                 f"(press Ctrl-C again to abort without saving).")

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: no handlers, the loop runs to its end
                pass

    def restore(self) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old = {}

    def poll(self, step: int) -> bool:
        """Whether to stop now; every rank gets the same answer. One process: its own flag, every step. Several:
        an all-reduce every :data:`STOP_POLL_STEPS` steps (the only host read it costs)."""
        if distributed.world_size() <= 1:
            return self.requested
        if step % STOP_POLL_STEPS:
            return False
        device = "cuda" if torch.cuda.is_available() and torch.cuda.is_initialized() else "cpu"
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        return bool(distributed.all_reduce_sum_(flag).item() > 0)

    def exit_if_stopped(self) -> None:
        if self.signum is not None:
            raise SystemExit(128 + int(self.signum))


# ------------------------------------------------------------------------------------------------
# The run folder and its log

class TrainingDiverged(GanstackError):
    """Losses or weights became non-finite; the run stopped without writing a non-finite checkpoint."""

    exit_code = 3


def next_run_dir(outdir: str, desc: str) -> str:
    """The folder :func:`new_run_dir` would create now (nothing is created)."""
    names = os.listdir(outdir) if os.path.isdir(outdir) else []
    ids = [int(m.group(1)) for m in (re.match(r"^(\d+)-", d) for d in names) if m]
    return os.path.join(outdir, f"{max(ids, default=-1) + 1:05d}-{desc}")


def new_run_dir(outdir: str, desc: str) -> str:
    """``<outdir>/<NNNNN>-<desc>`` with the next free number, as StyleGAN2-ADA names runs."""
    check_output_dir(outdir, "--outdir")
    os.makedirs(outdir, exist_ok=True)
    path = next_run_dir(outdir, desc)
    os.makedirs(path, exist_ok=False)
    return path


def clean_stale_temp(folders: Iterable[str], log: Callable[[str], None] = print,
                     min_age_s: float = STALE_TEMP_SECONDS) -> list[str]:
    """Remove the ``.tmp-*.pt`` files that a killed run left in these folders (and in their run folders).

    Only files untouched for ``min_age_s`` seconds go: a live writer (another run in the same outdir) keeps its
    file fresh until it renames it.
    """
    removed = []
    now = time.time()
    seen = set()
    for folder in folders:
        if not folder or not os.path.isdir(folder):
            continue
        candidates = [folder] + [os.path.join(folder, d) for d in os.listdir(folder)
                                 if re.match(r"^\d{5}-", d) and os.path.isdir(os.path.join(folder, d))]
        for d in candidates:
            d = os.path.abspath(d)
            if d in seen:
                continue
            seen.add(d)
            for name in os.listdir(d):
                path = os.path.join(d, name)
                if TEMP_GLOB_RE.match(name) and os.path.isfile(path):
                    try:
                        if now - os.path.getmtime(path) >= min_age_s:
                            os.remove(path)
                            removed.append(path)
                    except OSError:
                        pass
    if removed:
        log(f"Removed {len(removed)} partial checkpoint file(s) left by an interrupted run: "
            + ", ".join(removed))
    return removed


class _TeeStream:
    def __init__(self, stream, file):
        self._stream = stream
        self._file = file

    def write(self, text):
        n = self._stream.write(text)
        try:
            self._file.write(text)
        except ValueError:  # the log was closed under us
            pass
        return n

    def flush(self):
        self._stream.flush()
        with contextlib.suppress(ValueError):
            self._file.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


class RunLog:
    """``log.txt`` in the run folder receives everything written to stdout and stderr while the run lasts
    (StyleGAN2-ADA's Logger), and the run's error or traceback when it ends with one. Calling the object prints
    a line. Use as a context manager around the run."""

    def __init__(self, path: str):
        self.path = path
        self.file = open(path, "at")
        self._stdout, self._stderr = sys.stdout, sys.stderr
        sys.stdout = _TeeStream(self._stdout, self.file)
        sys.stderr = _TeeStream(self._stderr, self.file)

    def __call__(self, msg: str) -> None:
        print(msg, flush=True)

    def close(self, exc: Optional[BaseException] = None) -> None:
        if self.file.closed:
            return
        if exc is not None:
            if isinstance(exc, GanstackError):
                self.file.write(f"Error: {exc}\n")
            elif isinstance(exc, KeyboardInterrupt):
                self.file.write("Interrupted.\n")
            elif not isinstance(exc, SystemExit):  # a crash: the traceback the terminal shows
                self.file.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = self._stdout, self._stderr
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        self.close(ev)
        return False


class StatsWriter:
    """``stats.jsonl`` (one JSON line per tick) and, with ``tensorboard``, TensorBoard scalars, in the run folder."""

    def __init__(self, run_dir: Optional[str], tensorboard: bool = False):
        self.run_dir = run_dir
        self.tensorboard = tensorboard
        self._tb = None

    def write(self, record: dict, kimg: float) -> None:
        if self.run_dir is None:
            return
        with open(os.path.join(self.run_dir, "stats.jsonl"), "at") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard:
            if self._tb is None:
                from ganstack.training.api import ConfigError
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise ConfigError("--tensorboard needs the tensorboard package: "
                                      "pip install 'ganstack[tensorboard]'.") from None
                self._tb = SummaryWriter(self.run_dir)
            for k, v in record.items():
                val = v["mean"] if isinstance(v, dict) else v
                if isinstance(val, (int, float)) and k != "timestamp":
                    self._tb.add_scalar(k, val, global_step=int(kimg))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


# ------------------------------------------------------------------------------------------------
# The tick loop

class Job:
    """Base of what :class:`RunLoop` drives: the counters live in the trainer ``tr`` (its checkpoints hold them);
    subclasses add the tick's statistics, the divergence check and what a tick writes."""

    steps_attr = "batch_idx"  # the trainer's count of training steps

    def __init__(self, trainer, cfg, run_dir: Optional[str]):
        self.tr = trainer
        self.writer = StatsWriter(run_dir, bool(getattr(cfg, "tensorboard", False)))
        self.total_nimg = cfg.total_nimg
        self.tick_kimg = cfg.tick
        self.snap = cfg.snap
        self.device = trainer.device
        self.allow_nonfinite = bool(cfg.allow_nonfinite)

    cur_nimg = property(lambda self: self.tr.cur_nimg)
    steps_done = property(lambda self: getattr(self.tr, self.steps_attr))
    cur_tick = property(lambda self: self.tr.cur_tick, lambda self, v: setattr(self.tr, "cur_tick", v))
    tick_start_nimg = property(lambda self: self.tr.tick_start_nimg,
                               lambda self, v: setattr(self.tr, "tick_start_nimg", v))

    def nothing_to_do(self) -> None:
        pass

    def begin(self) -> None:
        pass

    def step(self) -> None:
        self.tr.step()

    def prepare_stop(self) -> None:
        self.tr.stream.close()  # the checkpoint needs no data; a dead worker must not stop it

    def close(self) -> None:
        self.tr.stream.close()  # stop the data-loader workers: the run is over
        self.writer.close()


class RunLoop:
    """Steps a job to its budget with StyleGAN2-ADA's tick/snapshot rhythm; used by ``train`` and ``train-score``.

    The job (a :class:`Job`) adds ``end_tick(fields) -> (status values, record)``, ``diverged(record) -> message
    or None`` and ``after_tick(finished_tick, snapshot, final, stopping, finite)``. One stop path: a signal, the budget or divergence; the first two end with a checkpoint.
    """

    def __init__(self, job, log: Callable[[str], None], what: str = "Training"):
        self.job = job
        self.log = log
        self.what = what
        self.stop = StopSignals(log)

    def run(self) -> None:
        job = self.job
        if job.cur_nimg >= job.total_nimg:
            self.log(f"Nothing to do: the run is already at {job.cur_nimg / 1e3:.1f} kimg >= --kimg "
                     f"{job.total_nimg / 1e3:g}.")
            job.nothing_to_do()
            return
        self.stop.install()
        start = tick_start = time.time()
        maintenance = 0.0
        try:
            job.begin()
            self.log(f"{self.what} for {job.total_nimg / 1e3:g} kimg from {job.cur_nimg / 1e3:.1f} kimg ...")
            while True:
                job.step()
                done = job.cur_nimg >= job.total_nimg
                stop = self.stop.poll(job.steps_done)
                if not (done or stop or job.cur_tick == 0
                        or job.cur_nimg >= job.tick_start_nimg + job.tick_kimg * 1000):
                    continue
                now = time.time()
                fields = tick_fields(job.cur_tick, job.cur_nimg, now - tick_start, job.cur_nimg - job.tick_start_nimg,
                                     maintenance, now - start, job.device)
                status, record = job.end_tick(fields)
                self.log(format_status(fields, status))
                problem = job.diverged(record)
                t0 = time.time()
                finished_tick = job.cur_tick
                job.cur_tick += 1
                job.tick_start_nimg = job.cur_nimg
                if problem and not job.allow_nonfinite:
                    raise TrainingDiverged(problem)
                if problem:
                    self.log(f"warning: {problem} (continuing: --allow-nonfinite)")
                if stop:
                    job.prepare_stop()
                job.after_tick(finished_tick, snapshot=done or stop or finished_tick % job.snap == 0,
                               final=done or stop, stopping=stop, finite=not problem)
                maintenance = time.time() - t0
                tick_start = time.time()
                if stop:
                    self.log("Stopped by signal after writing the checkpoint above; resume with --resume.")
                    break
                if done:
                    break
        finally:
            self.stop.restore()
            job.close()
        self.stop.exit_if_stopped()
        self.log("Done.")


# ------------------------------------------------------------------------------------------------
# Resume

def merge_resume(given, saved, mutable: Iterable[str], flag: Callable[[str], str], what: str = "run",
                 extra_conflicts: Iterable[str] = ()):
    """The checkpoint's options ``saved`` with the ones a resumed run may change taken from ``given``.

    Options the user gave that are not in ``mutable`` and differ from the checkpoint are refused, all at once,
    with the list of options that may change (``flag(name)`` is each option's command-line flag).
    """
    mutable = list(mutable)
    conflicts = []
    for name in sorted(given.user_set):
        if name in mutable:
            setattr(saved, name, getattr(given, name))
        elif getattr(given, name) != getattr(saved, name):
            conflicts.append(f"{flag(name)} {getattr(given, name)!r} (checkpoint: {getattr(saved, name)!r})")
    conflicts += list(extra_conflicts)
    if conflicts:
        raise CheckpointError(f"A resumed {what} continues with the options of its checkpoint, but these differ: "
                              + "; ".join(conflicts) + ". Drop them, or start a new run without --resume. Only "
                              + describe_mutable(mutable, flag) + " may change.")
    saved.mark_user_set(set(given.user_set) & set(mutable))
    return saved


def describe_mutable(mutable: Iterable[str], flag: Callable[[str], str]) -> str:
    return ", ".join(flag(name) for name in mutable)


def dataset_identity(dataset) -> dict:
    """``{"path": absolute path or None (built-in data), "fingerprint": content digest}`` for checkpoints."""
    spec = os.path.expanduser(str(getattr(dataset, "spec", "")))
    path = os.path.abspath(spec) if spec and os.path.exists(spec) else None
    return {"path": path, "fingerprint": dataset.fingerprint()}


SHAPE_KEYS = ("kind", "resolution", "num_channels", "point_dim", "label_dim")


def check_same_dataset(saved: dict, dataset, spec: str) -> None:
    """Refuse to resume on other data than the checkpoint's, listing every difference.

    Compares the content fingerprint (the metrics cache's digest of data, labels, subset and mirroring) and the
    shape; checkpoints written before fingerprints were recorded are compared by shape only.
    """
    now = dataset.info()
    diff = [f"{k}: checkpoint {saved.get(k)!r}, data {now.get(k)!r}" for k in SHAPE_KEYS if saved.get(k) != now.get(k)]
    if saved.get("fingerprint") and saved["fingerprint"] != dataset.fingerprint():
        if saved.get("len") != now.get("len"):
            diff.append(f"items: checkpoint {saved.get('len')}, data {now.get('len')}")
        diff.append(f"content fingerprint: checkpoint {saved['fingerprint'][:12]}, data {dataset.fingerprint()[:12]}")
    if diff:
        where = saved.get("path") or saved.get("spec") or saved.get("name", "?")
        now_path = dataset_identity(dataset)["path"] or spec
        raise CheckpointError(f"The checkpoint was trained on other data than {spec!r} ({now_path}): "
                              + "; ".join(diff) + f". Resume with the data it was trained on (--data {where}), or "
                              f"start a new run without --resume.")


def resume_data_spec(saved: dict, spec: str, user_gave_data: bool) -> str:
    """The data a resumed run opens: ``--data`` if given; else the checkpoint's absolute path when it exists (the
    spec as typed may be relative to another working folder); else the spec as typed."""
    if user_gave_data:
        return spec
    path = saved.get("path")
    if path and os.path.exists(path):
        return path
    return spec


# ------------------------------------------------------------------------------------------------
# ganstack train

# Options a resumed GAN run may change; everything else must match the checkpoint. --data may point elsewhere
# only at the same data (same content fingerprint).
TRAIN_RESUME_MUTABLE = ("kimg", "snap", "keep", "workers", "metrics", "tick", "device", "tensorboard", "data",
                        "allow_nonfinite",
                        # speed switches that keep the math (training/speed.py); --mp-res/--mp-dtype do not
                        "compile", "channels_last", "tf32", "sync_debug", "threads")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _run_description(cfg, names, data_name) -> str:
    plugins = "-".join(names) if names else "none"
    desc = f"{data_name}-{cfg.cfg}-{plugins}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", desc)[:120]


def describe_info(info) -> str:
    if info["kind"] == "image":
        s = f"{info['len']} images, {info['resolution']}x{info['resolution']}x{info['num_channels']}"
    else:
        s = f"{info['len']} points in {info['point_dim']}-D"
    if info.get("label_dim"):
        s += f", {info['label_dim']} label dims"
    return s


def merge_train_resume(cfg, names, options, ckpt, flag: Callable[[str], str] = _flag):
    """``ganstack train --resume``: the checkpoint's options, stack and plugin options, with the mutable ones from
    the command line; any other difference is refused at once."""
    from ganstack.training.config import TrainConfig
    from ganstack.training.plugin_manager import parse_stack

    saved = TrainConfig.from_dict(ckpt["config"])
    extra = []
    if names is not None and parse_stack(names) != list(ckpt["plugins"]):
        extra.append(f"--plugins {','.join(parse_stack(names)) or 'none'} "
                     f"(checkpoint: {','.join(ckpt['plugins']) or 'none'})")
    for plugin, opts in (options or {}).items():
        for key, value in opts.items():
            old = ckpt["plugin_options"].get(plugin, {}).get(key)
            if str(old) != str(value):
                extra.append(f"--{plugin}-{key.replace('_', '-')} {value!r} (checkpoint: {old!r})")
    snap_before = saved.snap
    saved = merge_resume(cfg, saved, TRAIN_RESUME_MUTABLE, flag, what="run", extra_conflicts=extra)
    if saved.snap != snap_before:
        saved.image_snap = saved.snap  # pictures follow --snap (there is no --image-snap flag)
    return saved, list(ckpt["plugins"]), ckpt["plugin_options"]


def _startup_lines(cfg, stack, info, world, dev) -> list[str]:
    lines = [f"Dataset:      {cfg.data} ({describe_info(info)})",
             f"Preset:       {cfg.cfg}  batch {cfg.batch}  glr {cfg.glr:g}  dlr {cfg.dlr:g}  gamma {cfg.gamma:g}  "
             f"ema {cfg.ema_kimg:g} kimg" + (f" (rampup {cfg.ema_rampup:g})" if cfg.ema_rampup else "")
             + f"  kimg {cfg.kimg:g}  GPUs {world}  device {dev}",
             f"Plugins:      {', '.join(stack.names) or 'none'}"
             + ("" if len(stack.names) < 2 else "   (pre-D augments run in this order)")]
    for name in stack.names:
        opts = ", ".join(f"{k}={v}" for k, v in stack.options[name].as_dict().items())
        if opts:
            lines.append(f"  {name}: {opts}")
    return lines


def run_training(cfg, plugin_names, plugin_options: dict, outdir: str, resume: Optional[str] = None,
                 dry_run: bool = False, log=None, device=None, flag: Callable[[str], str] = _flag,
                 extra_startup: Optional[Callable[[Any], list]] = None) -> Optional[str]:
    """Everything ``ganstack train`` does after parsing; also used by ``ganstack ablate`` and tests.

    ``extra_startup(stack) -> lines`` adds start-up lines (the CLI's note on augmentation).

    Returns the run folder (None for a dry run, which creates nothing).
    """
    from ganstack.stylegan_base.datasets import open_dataset
    from ganstack.training import checkpoint as ckpt_io
    from ganstack.training.config import resolve, validate
    from ganstack.training.loop import Trainer
    from ganstack.training.plugin_manager import PluginStack
    from ganstack.training.preflight import preflight

    from ganstack.training import transfer

    check_output_dir(outdir, "--outdir")
    resume_ckpt = init_src = None
    if resume and cfg.init:
        raise CheckpointError(f"--init {cfg.init} and --resume {resume} were both given. --resume continues a run "
                              f"exactly (its weights, optimiser and plugin state, counters); --init starts a new run "
                              f"from weights only (StyleGAN2-ADA's --resume PKL). Give one of them.")
    if resume:
        transfer.refuse_pickle_resume(resume)
        resume_ckpt = ckpt_io.load(resume)
        user_gave_data = cfg.is_user_set("data")
        cfg, plugin_names, plugin_options = merge_train_resume(cfg, plugin_names, plugin_options, resume_ckpt, flag)
        cfg.data = resume_data_spec(resume_ckpt["dataset"], cfg.data, user_gave_data)

    dev = device or cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    rank, world, local_rank = distributed.init_from_env(torch.device(dev).type)
    if torch.device(dev).type == "cuda" and world > 1:
        dev = f"cuda:{local_rank}"

    taken = []
    if cfg.init and resume_ckpt is None:
        init_src = transfer.read_init_source(cfg.init)
        taken = transfer.init_architecture(cfg, init_src)
    dataset = open_dataset(cfg.data, mirror=cfg.mirror, max_size=cfg.max_size, use_labels=cfg.cond)
    info = dataset.info()
    if torch.device(dev).type == "cpu":  # intra-op threads by data kind / --threads (training/speed.py)
        from ganstack.training.speed import configure_threads
        configure_threads(cfg.threads, kind=info["kind"])
    if resume_ckpt is not None:
        check_same_dataset(resume_ckpt["dataset"], dataset, cfg.data)
        validate(cfg, info, world)
    else:
        resolve(cfg, info, world)
    stack = PluginStack(plugin_names, plugin_options)
    stack.configure(cfg, info)
    validate(cfg, info, world)
    # Everything that can be checked without training fails here, before a run folder exists.
    preflight(cfg, stack, info, device=dev, log=log or print)
    transfer.check_fine_tuning(cfg, stack, info, init_src)
    startup = _startup_lines(cfg, stack, info, world, dev)
    if init_src is not None:
        startup.append(f"Init:         weights of {init_src.path} ({init_src.kind}); fresh optimiser and plugin "
                       f"state" + (f"; from it: {', '.join(taken)}" if taken else ""))
    if extra_startup is not None:
        startup += list(extra_startup(stack))
    if cfg.freezed:
        startup.append(f"Freeze-D:     the first {cfg.freezed} layers of D do not train (--freezed)")
    desc = _run_description(cfg, stack.names, info.get("name", "data"))
    if dry_run:  # no side effects: no run folder, no run number used up
        for line in [f"Run folder:   none (dry run; the next run would be {next_run_dir(outdir, desc)})"] + startup:
            (log or print)(line)
        (log or print)("Dry run: options are valid; exiting without training or creating a run folder.")
        return None

    run_dir = None
    if rank == 0:
        run_dir = new_run_dir(outdir, desc)
    run_dir = distributed.broadcast_object(run_dir)
    run_log = RunLog(os.path.join(run_dir, "log.txt")) if log is None and rank == 0 else None
    if log is None:
        log = run_log if run_log is not None else (lambda *_: None)
    with run_log if run_log is not None else contextlib.nullcontext():
        if rank == 0:
            clean_stale_temp([outdir] + ([os.path.dirname(resume_ckpt["path"])] if resume_ckpt else []), log)
            with open(os.path.join(run_dir, "training_options.json"), "wt") as f:
                json.dump({"config": cfg.to_dict(), "plugins": stack.names, "plugin_options": stack.options_dict(),
                           "plugin_provenance": stack.provenance(), "dataset": {**info, **dataset_identity(dataset)},
                           "resume": resume_ckpt["path"] if resume_ckpt else None, "world_size": world}, f, indent=2)
        log(f"Run folder:   {run_dir}")
        for line in startup:
            log(line)
        trainer = Trainer(cfg, stack, dataset, run_dir=run_dir, resume=resume_ckpt, device=dev, log=log, init=init_src)
        if resume_ckpt is not None:
            log(f"Resuming from {resume_ckpt['path']} at {trainer.cur_nimg / 1000:.1f} kimg.")
        g_opt, d_opt = trainer.G_opt.param_groups[0], trainer.D_opt.param_groups[0]
        log(f"Optimizers:   G Adam lr {g_opt['lr']:.4g} betas ({g_opt['betas'][0]:.4g}, {g_opt['betas'][1]:.4g}), "
            f"D Adam lr {d_opt['lr']:.4g} betas ({d_opt['betas'][0]:.4g}, {d_opt['betas'][1]:.4g})"
            + "".join(f"; {net} lr schedule {type(s).__name__}" for net, s in trainer.optim.schedules.items()))
        n_g = sum(p.numel() for p in trainer.G.parameters())
        n_d = sum(p.numel() for p in trainer.D.parameters())
        log(f"Networks:     G {n_g / 1e6:.2f} M params, D {n_d / 1e6:.2f} M params")
        from ganstack.training.speed import describe_speed
        log(f"Speed:        {describe_speed(trainer)}")
        trainer.run()
    return run_dir
