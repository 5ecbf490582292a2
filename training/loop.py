"""The training loop (StyleGAN2-ADA semantics), talking to plugins only through hooks.

One training step = one real batch and the phases ``Gmain``, [``Greg``], ``Dmain``, [``Dreg``], each followed by
an optimizer step of its network, then the G_ema update, the learning-rate schedules and ``after_step``. A tick
is ``--tick`` kimg; at each tick the run loop (:class:`ganstack.training.run.RunLoop`) prints one status line and
appends to ``stats.jsonl``; every ``--snap`` ticks it writes a checkpoint and a picture of samples.

:class:`Trainer` owns the networks, optimizers and the step. Its collaborators: :class:`LabelSampler` (labels on
the device), :class:`Pictures`, :class:`TrainerCheckpoint` (the checkpoint format), :class:`Metrics`,
:class:`TrainJob` (what the run loop drives), and an :class:`Accelerator` (the place to wrap networks or the
step, e.g. ``torch.compile``).

No host synchronisation per step on one process: statistics stay on the device until the tick, labels are
drawn from a device table, the stop flag is local. On several processes the statistic names and (every
:data:`ganstack.training.run.STOP_POLL_STEPS` steps) the stop flag are agreed on the host.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Optional

import numpy as np
import torch

from ganstack.training import checkpoint as ckpt_io
from ganstack.training import distributed
from ganstack.training.api import ConfigError, DataInfo, DInput, LoopState, PhaseContext
from ganstack.training.data import RealStream
from ganstack.training.loss import GANLoss
from ganstack.training.nets import build_networks, ema_beta, update_ema
from ganstack.training.optim import Optimizers, base_reg_intervals, lazy_mb_ratio
from ganstack.training.run import (Job, RunLoop, StopSignals, dataset_identity, format_status, format_time,
                                   tick_fields, tick_record)
from ganstack.training.snapshots import grid_shape, save_image_grid, save_scatter_panels
from ganstack.training.stats import StatCollector

__all__ = ["Trainer", "LoopState", "Accelerator", "LabelSampler", "Pictures", "TrainerCheckpoint", "Metrics",
           "TrainJob", "StopSignals", "format_time", "tick_fields", "format_status", "lazy_mb_ratio",
           "base_reg_intervals"]


class Accelerator:
    """Where a speed-up wraps the networks or the step (``torch.compile``, CUDA graphs); the default changes nothing.

    ``wrap_networks(nets)`` runs once after ``start_training`` and before the optimizers (it must keep the
    parameters and state-dict keys); ``wrap_step(fn)`` wraps the function that runs one training step;
    ``phase(name, double_backward)`` is the scope of one phase's passes (``double_backward``: the phase takes a
    gradient of a gradient, R1 or path length). The speed options (``--compile``, ``--mp-res``, ...) select
    :class:`ganstack.training.speed.SpeedAccelerator`.
    """

    def wrap_networks(self, nets):
        return nets

    def wrap_step(self, fn: Callable[[], None]) -> Callable[[], None]:
        return fn

    def phase(self, name: str, double_backward: bool):
        return contextlib.nullcontext()


class LabelSampler:
    """Random labels of the dataset (its label distribution), drawn on the device without a host sync."""

    def __init__(self, dataset, device, enabled: bool):
        self.device = torch.device(device)
        self.enabled = enabled
        self.size = len(dataset)
        self._classes = self._table = None
        if not enabled:
            return
        classes = getattr(dataset, "class_labels", None)
        if classes is not None and getattr(dataset, "num_classes", None):
            self._classes = torch.as_tensor(classes, dtype=torch.int64, device=self.device)
            self._num_classes = int(dataset.num_classes)
        else:
            table = np.stack([dataset.get_label(i) for i in range(len(dataset))])
            self._table = torch.from_numpy(table).to(self.device)

    def __call__(self, n: int, gen: torch.Generator) -> torch.Tensor:
        if not self.enabled:
            return torch.zeros([n, 0], device=self.device)
        idx = torch.randint(self.size, (n,), generator=gen, device=self.device)
        if self._classes is not None:
            return torch.nn.functional.one_hot(self._classes[idx], self._num_classes).to(torch.float32)
        return self._table[idx]


class Trainer:
    """One training run. ``run()`` trains to ``cfg.kimg``; ``step()`` does a single step (tests)."""

    def __init__(self, cfg, stack, dataset, run_dir: Optional[str] = None, resume: Optional[dict] = None,
                 device=None, log: Callable[[str], None] = print, accelerator: Optional[Accelerator] = None,
                 init=None):
        """``init``: the weights of a new run (``--init``: a path or a read ``transfer.InitSource``; default
        ``cfg.init``); a resumed run takes its weights from ``resume`` only."""
        self.cfg = cfg
        self.stack = stack
        self.dataset = dataset
        self.run_dir = run_dir
        self.rank = distributed.rank()
        self.world = distributed.world_size()
        self.log = log if self.rank == 0 else (lambda *_: None)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.data_info = DataInfo(dataset.info())
        if accelerator is None:  # cfg's speed options (training/speed.py); None when all are off
            from ganstack.training.speed import accelerator_for
            accelerator = accelerator_for(cfg, self.device)
        self.accelerator = accelerator or Accelerator()
        if stack.data_kind is None:  # configured by a caller that did not pass the data: check now
            stack.check_capabilities(self.data_info.kind)

        # Seeds: construction draws from the global RNG, identically on every rank.
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)
        import random
        random.seed(cfg.seed)
        self.nets = build_networks(stack, cfg, self.data_info, self.device)
        from ganstack.training.transfer import apply_fine_tuning  # --init, --freezed
        apply_fine_tuning(self.nets, cfg, None if resume is not None else (init or cfg.init), self.log)
        # From here on every rank draws its own random numbers (different latents per GPU).
        torch.manual_seed(cfg.seed * self.world + self.rank)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(cfg.seed * self.world + self.rank)

        stack.hooks.start_training(nets=self.nets, data_info=self.data_info, device=self.device, cfg=cfg)
        self.nets = self.accelerator.wrap_networks(self.nets)
        self.G, self.D, self.G_ema = self.nets.G, self.nets.D, self.nets.G_ema
        self.regularizers = [r for lst in stack.hooks.lazy_regularizers(cfg=cfg) for r in lst]
        self.optim = Optimizers(stack, cfg, self.G, self.D, self.data_info.kind)
        self.G_opt, self.D_opt = self.optim.G, self.optim.D
        self.mb_ratio = self.optim.mb_ratio
        self.stats = StatCollector(self.device)
        self.loss = GANLoss(stack, self.G, self.D, cfg, self.stats, self.device, self.regularizers,
                            self.optim.intervals)

        per_gpu = cfg.batch // self.world
        if per_gpu * self.world != cfg.batch or per_gpu % cfg.batch_gpu:
            raise ConfigError(f"--batch {cfg.batch} over {self.world} process(es) does not split into rounds of "
                              f"--batch-gpu {cfg.batch_gpu}; choose values where batch / GPUs is a multiple of batch-gpu.")
        self.rounds = per_gpu // cfg.batch_gpu
        self.cur_nimg = 0
        self.cur_tick = 0
        self.batch_idx = 0
        self.tick_start_nimg = 0
        self.checkpoints = TrainerCheckpoint(self)
        self._resume_path = None
        if resume is not None:
            self.checkpoints.load(resume)
            self._resume_path = resume.get("path")
        self.stream = RealStream(dataset, cfg.batch_gpu, self.device, seed=cfg.seed, rank=self.rank,
                                 world_size=self.world, start=self.batch_idx * cfg.batch, workers=cfg.workers)
        self.labels = LabelSampler(dataset, self.device, bool(cfg.cond))
        self.pictures = Pictures(self)
        self.metrics = Metrics(self)
        self._step_fn = self.accelerator.wrap_step(self._train_step)

    # ------------------------------------------------------------------------------------------
    # One step

    def phases(self, step: int):
        """``[(phase name, network, optimizer)]`` for this step."""
        out = []
        for net, module, opt in (("G", self.G, self.G_opt), ("D", self.D, self.D_opt)):
            out.append((f"{net}main", module, opt))
            if self.loss.lazy_due(net, step):
                out.append((f"{net}reg", module, opt))
        return out

    def _train_step(self) -> None:
        cfg = self.cfg
        real_rounds = [next(self.stream) for _ in range(self.rounds)]
        for phase, module, opt in self.phases(self.batch_idx):
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            double_backward = phase.endswith("reg") or bool(self.loss.in_main_phase(phase[0], self.batch_idx))
            with self.accelerator.phase(phase, double_backward):
                for real_x, real_c in real_rounds:
                    z = torch.randn([cfg.batch_gpu, self.G.z_dim], generator=self.gen, device=self.device)
                    c = self.labels(cfg.batch_gpu, self.gen)
                    ctx = PhaseContext(self.loss, phase, self.batch_idx, self.cur_nimg, DInput(img=real_x, c=real_c),
                                       z, c)
                    self.loss.accumulate_gradients(ctx, scale=1.0 / self.rounds)
            distributed.sync_gradients(module)
            module.requires_grad_(False)
            opt.step()
        # G_ema: half-life ema_kimg, optionally ramped up with the training length so far.
        update_ema(self.G_ema, self.G, ema_beta(cfg.batch, self.cur_nimg, cfg.ema_kimg, cfg.ema_rampup))
        self.optim.step_schedules()

    def step(self):
        """One training step; returns the step's statistics (a :class:`ganstack.training.stats.StepStats`)."""
        self._step_fn()
        self.cur_nimg += self.cfg.batch
        self.batch_idx += 1
        step_stats = self.stats.end_step()
        state = LoopState(self.batch_idx, self.cur_nimg, self.cfg.batch, self.G, self.D, self.G_ema, self.cfg,
                          self.device, self.cfg.total_nimg)
        self.stack.hooks.after_step(state=state, stats=step_stats)
        if self.batch_idx == 1:
            self.loss.verify()  # contracts are checked at once on the first step, then at every tick
        return step_stats

    # ------------------------------------------------------------------------------------------
    # Conveniences (the collaborators do the work)

    def checkpoint_dict(self) -> dict:
        return self.checkpoints.to_dict()

    def save_checkpoint(self, finite: bool = True) -> Optional[str]:
        return self.checkpoints.save(finite)

    def sample_ema(self, n: int, seed: int = 0) -> torch.Tensor:
        return self.pictures.sample_ema(n, seed)

    def save_pictures(self, name: str) -> Optional[str]:
        return self.pictures.save(name)

    def run_metrics(self, names=None) -> None:
        self.metrics.run(names)

    def weights_finite(self) -> bool:
        """Whether every parameter and buffer of G, D and G_ema is finite (one host read)."""
        flags = [torch.isfinite(t).all() for m in (self.G, self.D, self.G_ema)
                 for t in list(m.parameters()) + list(m.buffers()) if t.is_floating_point()]
        return bool(torch.stack(flags).all()) if flags else True

    def run(self) -> None:
        """Train until ``cfg.kimg`` (the run loop: ticks, snapshots, signals, divergence)."""
        RunLoop(TrainJob(self), self.log).run()


class Pictures:
    """Snapshot pictures of a run: image grids, or scatter plots over the data for 2-D points."""

    def __init__(self, trainer: Trainer):
        self.tr = trainer
        self._grid = None

    @torch.no_grad()
    def sample_ema(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` samples from G_ema through the sampler hook, without touching any training RNG."""
        tr = self.tr
        out = []
        with torch.random.fork_rng(devices=[tr.device] if tr.device.type == "cuda" else []):
            torch.manual_seed(seed)
            g = torch.Generator(device=tr.device).manual_seed(seed)
            for i in range(0, n, 64):
                m = min(64, n - i)
                z = torch.randn([m, tr.G_ema.z_dim], generator=g, device=tr.device)
                c = tr.labels(m, g)
                x = tr.stack.hooks.sampler(G=tr.G_ema, z=z, c=c, ctx=None, G_kwargs=dict(noise_mode="const"))
                out.append(x.img.float())
        return torch.cat(out)

    def save(self, name: str) -> Optional[str]:
        tr = self.tr
        if tr.rank != 0 or tr.run_dir is None:
            return None
        path = os.path.join(tr.run_dir, f"{name}.png")
        if tr.data_info.is_image:
            gw, gh = grid_shape(tr.data_info.resolution)
            save_image_grid(self.sample_ema(gw * gh), path, (gw, gh))
            return path
        if self._grid is None:
            n = min(len(tr.dataset), 2000)
            idx = np.random.default_rng(0).choice(len(tr.dataset), n, replace=False)
            self._grid = np.asarray(tr.dataset.get_batch(list(idx))[0])
        fake = self.sample_ema(2000).cpu().numpy()
        centers = (tr.data_info.toy or {}).get("centers")
        ok = save_scatter_panels([(f"G_ema at {tr.cur_nimg / 1000:.1f} kimg", fake)], path, reference=self._grid,
                                 centers=None if centers is None else np.asarray(centers))
        return path if ok else None

    def save_reals(self) -> None:
        tr = self.tr
        if tr.rank != 0 or tr.run_dir is None or not tr.data_info.is_image:
            return
        gw, gh = grid_shape(tr.data_info.resolution)
        idx = np.random.default_rng(0).choice(len(tr.dataset), min(gw * gh, len(tr.dataset)), replace=False)
        x = torch.stack([torch.as_tensor(tr.dataset[int(i)][0]) for i in idx]).float() / 127.5 - 1
        save_image_grid(x, os.path.join(tr.run_dir, "reals.png"), (gw, gh))


class TrainerCheckpoint:
    """The GAN checkpoint format: everything an exact resume needs, and where the run came from."""

    def __init__(self, trainer: Trainer):
        self.tr = trainer
        self.last_finite: Optional[str] = None

    def to_dict(self) -> dict:
        tr = self.tr
        rng = distributed.all_gather_object(ckpt_io.capture_rng({"loop": tr.gen}))
        return {
            "format": ckpt_io.FORMAT,
            "version": ckpt_io.VERSION,
            "config": tr.cfg.to_dict(),
            "dataset": {**tr.data_info.to_dict(), **dataset_identity(tr.dataset)},
            "plugins": list(tr.stack.names),
            "plugin_options": tr.stack.options_dict(),
            "plugin_provenance": tr.stack.provenance(),
            "plugin_state": tr.stack.state_dict(),
            "G": tr.G.state_dict(),
            "D": tr.D.state_dict(),
            "G_ema": tr.G_ema.state_dict(),
            "G_opt": tr.G_opt.state_dict(),
            "D_opt": tr.D_opt.state_dict(),
            "lr_schedules": tr.optim.schedule_state(),
            "cur_nimg": tr.cur_nimg,
            "cur_tick": tr.cur_tick,
            "batch_idx": tr.batch_idx,
            "tick_start_nimg": tr.tick_start_nimg,
            "world_size": tr.world,
            "rng": rng,
        }

    def save(self, finite: bool = True) -> Optional[str]:
        """Write a snapshot (collective: every rank takes part) and prune old ones, never the last finite one."""
        tr = self.tr
        data = self.to_dict()
        if tr.rank != 0 or tr.run_dir is None:
            return None
        path, self.last_finite = ckpt_io.write_snapshot(data, tr.run_dir, tr.cur_nimg, tr.cfg.keep, finite=finite,
                                                        last_finite=self.last_finite)
        return path

    def load(self, ckpt: dict) -> None:
        tr = self.tr
        ckpt_io.load_weights([(tr.G, ckpt["G"]), (tr.D, ckpt["D"]), (tr.G_ema, ckpt["G_ema"])],
                             "The checkpoint's G, D and G_ema", "Resume with the options it was trained with.")
        tr.G_opt.load_state_dict(ckpt["G_opt"])
        tr.D_opt.load_state_dict(ckpt["D_opt"])
        tr.optim.load_schedule_state(ckpt.get("lr_schedules", {}))
        tr.stack.load_state_dict(ckpt["plugin_state"])
        tr.cur_nimg = ckpt["cur_nimg"]
        tr.cur_tick = ckpt["cur_tick"]
        tr.batch_idx = ckpt["batch_idx"]
        tr.tick_start_nimg = ckpt["tick_start_nimg"]
        rng = ckpt["rng"]
        if len(rng) != tr.world:
            tr.log(f"note: the checkpoint was written by {len(rng)} process(es) and is resumed on {tr.world}; "
                   f"training continues, but random draws differ from an uninterrupted run.")
            torch.manual_seed(tr.cfg.seed * tr.world + tr.rank + tr.batch_idx)
        else:
            ckpt_io.restore_rng(rng[tr.rank], {"loop": tr.gen})


class Metrics:
    """The ``--metrics`` of a run, at every snapshot (metrics are not plugins: imported only when asked for)."""

    def __init__(self, trainer: Trainer):
        self.tr = trainer

    def run(self, names=None) -> None:
        tr = self.tr
        if not tr.cfg.metrics or tr.run_dir is None:
            return
        from ganstack.metrics import registry
        with torch.random.fork_rng(devices=[tr.device] if tr.device.type == "cuda" else []):
            for name in names or tr.cfg.metrics:
                result = registry.compute(name, G=tr.G_ema, stack=tr.stack, dataset=tr.dataset, device=tr.device,
                                          cfg=tr.cfg)
                if tr.rank == 0:
                    snap = ckpt_io.snapshot_name(tr.cur_nimg)
                    registry.append_result(tr.run_dir, name, result, snapshot=snap, kimg=tr.cur_nimg / 1e3)
                    tr.log(f"  {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in result.items()))

    def finish_interrupted(self) -> None:
        """A run stopped between its final checkpoint and that checkpoint's metrics: compute the missing ones."""
        tr = self.tr
        if not tr.cfg.metrics or not tr._resume_path:
            return
        from ganstack.metrics import registry
        snap = os.path.basename(tr._resume_path)
        kimg = tr.cur_nimg / 1e3  # snapshot names hold integer kimg: the same name may stand for earlier states
        done = {r.get("metric") for r in registry.read_results(os.path.dirname(tr._resume_path))
                if r.get("snapshot") == snap and r.get("kimg") == kimg}
        missing = [m for m in tr.cfg.metrics if m not in done]
        if missing:
            tr.log(f"Computing the metrics the final snapshot {snap} lacks: {', '.join(missing)}")
            self.run(missing)


class TrainJob(Job):
    """What the run loop drives for ``ganstack train``: ticks, pictures, checkpoints, metrics, divergence."""

    def __init__(self, trainer: Trainer):
        super().__init__(trainer, trainer.cfg, trainer.run_dir if trainer.rank == 0 else None)

    def nothing_to_do(self) -> None:
        self.tr.metrics.finish_interrupted()

    def begin(self) -> None:
        if self.tr.cur_nimg == 0:
            self.tr.pictures.save_reals()
            self.tr.pictures.save("fakes_init")

    def end_tick(self, fields: dict):
        tr = self.tr
        tr.loss.verify()
        stats = tr.stats.end_tick()
        scalars = tr.stack.report_stats()
        status = {**tr.stats.status_values(stats), **scalars}
        record = tick_record(fields, stats, scalars)
        self.writer.write(record, tr.cur_nimg / 1e3)
        return status, record

    def diverged(self, record: dict) -> Optional[str]:
        tr = self.tr
        bad = sorted(k for k, v in record.items()
                     if k.startswith("Loss/") and isinstance(v, dict) and not np.isfinite(v.get("mean", 0.0)))
        weights_ok = tr.weights_finite()
        if not bad and weights_ok:
            return None
        last = tr.checkpoints.last_finite or tr._resume_path
        what = ", ".join(([f"non-finite losses ({', '.join(bad[:6])}{', ...' if len(bad) > 6 else ''})"] if bad else [])
                         + ([] if weights_ok else ["non-finite weights"]))
        return (f"Training diverged at tick {tr.cur_tick} ({tr.cur_nimg / 1e3:.1f} kimg): {what}. No checkpoint of "
                f"this state was written; the last finite checkpoint is "
                f"{last if last else '(none: the run diverged before its first snapshot)'}. Lower --glr/--dlr (now "
                f"{tr.cfg.glr:g}/{tr.cfg.dlr:g}) or raise --gamma and start again, or pass --allow-nonfinite to go on "
                f"training regardless.")

    def after_tick(self, finished_tick: int, snapshot: bool, final: bool, stopping: bool, finite: bool) -> None:
        tr = self.tr
        if final or finished_tick % tr.cfg.image_snap == 0:
            tr.pictures.save(f"fakes{ckpt_io.kimg_tag(tr.cur_nimg)}")
        if snapshot:
            path = self._save(finite)
            if path:
                tr.log(f"  checkpoint: {path}")
            if not stopping:
                tr.metrics.run()

    def _save(self, finite: bool) -> Optional[str]:
        try:
            return self.tr.checkpoints.save(finite)
        except RuntimeError as exc:  # torch's SIGCHLD handler: a data-loader worker died
            if "DataLoader worker" not in str(exc):
                raise
            self.tr.stream.close()
            return self.tr.checkpoints.save(finite)


# Re-exported for code that imported them from here.
lazy_mb_ratio = lazy_mb_ratio
