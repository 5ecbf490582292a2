"""The training loop (StyleGAN2-ADA semantics), talking to plugins only through hooks.

One training step = one real batch and the phases ``Gmain``, [``Greg``], ``Dmain``, [``Dreg``], each
followed by an optimizer step of its network, then the G_ema update and ``after_step``. A tick is
``--tick`` kimg; at each tick the loop prints one status line and appends to ``stats.jsonl``; every
``--snap`` ticks it writes a checkpoint and a picture of samples.
"""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ganstack.training import checkpoint as ckpt_io
from ganstack.training import distributed
from ganstack.training.api import ConfigError, DInput
from ganstack.training.data import RealStream
from ganstack.training.loss import GANLoss, PhaseContext
from ganstack.training.nets import build_networks, ema_beta, update_ema
from ganstack.training.snapshots import grid_shape, save_image_grid, save_scatter_panels
from ganstack.training.stats import StatCollector
from ganstack.stylegan_base.errors import CheckpointError


@dataclass
class LoopState:
    """What ``after_step`` receives: the counters and the networks after the step."""

    step: int
    cur_nimg: int
    batch_size: int
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    cfg: object
    device: torch.device


def lazy_mb_ratio(intervals) -> float:
    """StyleGAN2's lazy-regularization correction, generalised to several intervals on one network.

    ``f`` = share of steps that run a reg phase (steps where any interval divides the step number);
    the reg phases add ``f`` optimizer steps per main step, so lr and betas are rescaled by
    ``1 / (1 + f)``. One interval ``k`` gives StyleGAN2's ``k / (k + 1)``.
    """
    intervals = [int(k) for k in intervals if k > 1]
    if not intervals:
        return 1.0
    period = math.lcm(*intervals)
    due = sum(1 for s in range(period) if any(s % k == 0 for k in intervals))
    return 1.0 / (1.0 + due / period)


def make_optimizer(module, lr, betas, eps, mb_ratio):
    params = [p for p in module.parameters()]
    return torch.optim.Adam(params, lr=lr * mb_ratio, betas=[b ** mb_ratio for b in betas], eps=eps)


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
    """The fixed fields of a status line (StyleGAN2-ADA's): shared by ``train`` and ``train-score``."""
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


class StopSignals:
    """Graceful stop on SIGINT/SIGTERM for a training loop (``ganstack train`` and ``train-score``).

    Between :meth:`install` and :meth:`restore`, the first signal only sets :attr:`signum`: the loop
    finishes its step, writes a checkpoint and calls :meth:`exit_if_stopped`, which exits with
    ``128 + signal`` as a shell expects. A second signal raises KeyboardInterrupt at once.
    """

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.signum: Optional[int] = None
        self._old: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame):
        if self.signum is not None:  # second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.signum = signum
        self.log(f"\nReceived {signal.Signals(signum).name}: finishing this step and writing a checkpoint "
                 f"(press Ctrl-C again to abort without saving).")

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: no handlers, the loop runs to its end
                pass

    def restore(self) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old = {}

    def exit_if_stopped(self) -> None:
        if self.signum is not None:
            raise SystemExit(128 + int(self.signum))


class Trainer:
    """One training run. ``run()`` trains to ``cfg.kimg``; ``step()`` does a single step (tests)."""

    def __init__(self, cfg, stack, dataset, run_dir: Optional[str] = None, resume: Optional[dict] = None,
                 device=None, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.stack = stack
        self.dataset = dataset
        self.run_dir = run_dir
        self.rank = distributed.rank()
        self.world = distributed.world_size()
        self.log = log if self.rank == 0 else (lambda *_: None)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.data_info = dataset.info()

        # Seeds: construction draws from the global RNG, identically on every rank.
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)
        import random
        random.seed(cfg.seed)
        self.nets = build_networks(stack, cfg, self.data_info, self.device)
        self.G, self.D, self.G_ema = self.nets.G, self.nets.D, self.nets.G_ema
        # From here on every rank draws its own random numbers (different latents per GPU).
        torch.manual_seed(cfg.seed * self.world + self.rank)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(cfg.seed * self.world + self.rank)

        regs = [r for _, lst in stack.collect("lazy_regularizers", cfg=cfg) for r in lst]
        self.regularizers = regs
        self.mb_ratio = {net: lazy_mb_ratio([r.interval for r in regs if r.net == net]) for net in ("G", "D")}
        self.G_opt = make_optimizer(self.G, cfg.glr, cfg.g_betas, cfg.adam_eps, self.mb_ratio["G"])
        self.D_opt = make_optimizer(self.D, cfg.dlr, cfg.d_betas, cfg.adam_eps, self.mb_ratio["D"])
        self.stats = StatCollector(self.device)
        self.loss = GANLoss(stack, self.G, self.D, cfg, self.stats, self.device, regs)

        per_gpu = cfg.batch // self.world
        if per_gpu * self.world != cfg.batch or per_gpu % cfg.batch_gpu:
            raise ConfigError(f"--batch {cfg.batch} over {self.world} process(es) does not split into rounds of "
                              f"--batch-gpu {cfg.batch_gpu}; choose values where batch / GPUs is a multiple of batch-gpu.")
        self.rounds = per_gpu // cfg.batch_gpu
        self.cur_nimg = 0
        self.cur_tick = 0
        self.batch_idx = 0
        self.tick_start_nimg = 0
        self._resume_path = None
        if resume is not None:
            self._load(resume)
            self._resume_path = resume.get("path")
        self.stream = RealStream(dataset, cfg.batch_gpu, self.device, seed=cfg.seed, rank=self.rank,
                                 world_size=self.world, start=self.batch_idx * cfg.batch, workers=cfg.workers)
        self._stop = StopSignals(self.log)
        self._grid = None
        self._tb = None

    # ------------------------------------------------------------------------------------------
    # One step

    def _labels(self, n: int) -> torch.Tensor:
        if not self.cfg.cond:
            return torch.zeros([n, 0], device=self.device)
        idx = torch.randint(len(self.dataset), (n,), generator=self.gen, device=self.device).tolist()
        return torch.from_numpy(np.stack([self.dataset.get_label(i) for i in idx])).to(self.device)

    def phases(self, step: int):
        """``[(phase name, network, optimizer)]`` for this step."""
        out = []
        for net, module, opt in (("G", self.G, self.G_opt), ("D", self.D, self.D_opt)):
            out.append((f"{net}main", module, opt))
            if self.loss.lazy_due(net, step):
                out.append((f"{net}reg", module, opt))
        return out

    def step(self) -> dict:
        cfg = self.cfg
        rounds = self.rounds
        real_rounds = [next(self.stream) for _ in range(rounds)]
        for phase, module, opt in self.phases(self.batch_idx):
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            for real_x, real_c in real_rounds:
                z = torch.randn([cfg.batch_gpu, self.G.z_dim], generator=self.gen, device=self.device)
                c = self._labels(cfg.batch_gpu)
                ctx = PhaseContext(self.loss, phase, self.batch_idx, self.cur_nimg,
                                   DInput(img=real_x, c=real_c), z, c)
                self.loss.accumulate_gradients(ctx, scale=1.0 / rounds)
            distributed.sync_gradients(module)
            module.requires_grad_(False)
            opt.step()

        # G_ema: half-life ema_kimg, optionally ramped up with the training length so far.
        update_ema(self.G_ema, self.G, ema_beta(cfg.batch, self.cur_nimg, cfg.ema_kimg, cfg.ema_rampup))

        self.cur_nimg += cfg.batch
        self.batch_idx += 1
        step_stats = self.stats.end_step()
        state = LoopState(self.batch_idx, self.cur_nimg, cfg.batch, self.G, self.D, self.G_ema, cfg, self.device)
        self.stack.collect("after_step", state=state, stats=step_stats)
        return step_stats

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    def checkpoint_dict(self) -> dict:
        rng = distributed.all_gather_object(ckpt_io.capture_rng({"loop": self.gen}))
        return {
            "format": ckpt_io.FORMAT,
            "version": ckpt_io.VERSION,
            "config": self.cfg.to_dict(),
            "dataset": self.data_info,
            "plugins": list(self.stack.names),
            "plugin_options": self.stack.options_dict(),
            "plugin_state": self.stack.state_dict(),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "G_opt": self.G_opt.state_dict(),
            "D_opt": self.D_opt.state_dict(),
            "cur_nimg": self.cur_nimg,
            "cur_tick": self.cur_tick,
            "batch_idx": self.batch_idx,
            "tick_start_nimg": self.tick_start_nimg,
            "world_size": self.world,
            "rng": rng,
        }

    def save_checkpoint(self) -> Optional[str]:
        data = self.checkpoint_dict()  # collective: every rank takes part
        if self.rank != 0 or self.run_dir is None:
            return None
        path = ckpt_io.snapshot_path(self.run_dir, self.cur_nimg)
        ckpt_io.atomic_save(data, path)
        ckpt_io.prune_snapshots(self.run_dir, self.cfg.keep)
        return path

    def _load(self, ckpt: dict) -> None:
        try:
            self.G.load_state_dict(ckpt["G"])
            self.D.load_state_dict(ckpt["D"])
            self.G_ema.load_state_dict(ckpt["G_ema"])
        except RuntimeError as exc:
            raise CheckpointError(f"The checkpoint's networks do not fit the networks these options build "
                                  f"({str(exc).splitlines()[0]}). Resume with the options it was trained with.") from None
        self.G_opt.load_state_dict(ckpt["G_opt"])
        self.D_opt.load_state_dict(ckpt["D_opt"])
        self.stack.load_state_dict(ckpt["plugin_state"])
        self.cur_nimg = ckpt["cur_nimg"]
        self.cur_tick = ckpt["cur_tick"]
        self.batch_idx = ckpt["batch_idx"]
        self.tick_start_nimg = ckpt["tick_start_nimg"]
        rng = ckpt["rng"]
        if len(rng) != self.world:
            self.log(f"note: the checkpoint was written by {len(rng)} process(es) and is resumed on {self.world}; "
                     f"training continues, but random draws differ from an uninterrupted run.")
            torch.manual_seed(self.cfg.seed * self.world + self.rank + self.batch_idx)
        else:
            ckpt_io.restore_rng(rng[self.rank], {"loop": self.gen})

    # ------------------------------------------------------------------------------------------
    # Snapshots and reporting

    @torch.no_grad()
    def sample_ema(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` samples from G_ema through the sampler hook, without touching any training RNG."""
        out = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            g = torch.Generator(device=self.device).manual_seed(seed)
            for i in range(0, n, 64):
                m = min(64, n - i)
                z = torch.randn([m, self.G_ema.z_dim], generator=g, device=self.device)
                c = self._grid_labels(m, g)
                x = self.stack.first("sampler", G=self.G_ema, z=z, c=c, ctx=None,
                                     G_kwargs=dict(noise_mode="const"))
                out.append(x.img.float())
        return torch.cat(out)

    def _grid_labels(self, n, g):
        if not self.cfg.cond:
            return torch.zeros([n, 0], device=self.device)
        idx = torch.randint(len(self.dataset), (n,), generator=g, device=self.device).tolist()
        return torch.from_numpy(np.stack([self.dataset.get_label(i) for i in idx])).to(self.device)

    def save_pictures(self, name: str) -> Optional[str]:
        if self.rank != 0 or self.run_dir is None:
            return None
        path = os.path.join(self.run_dir, f"{name}.png")
        if self.data_info["kind"] == "image":
            gw, gh = grid_shape(self.data_info["resolution"])
            save_image_grid(self.sample_ema(gw * gh), path, (gw, gh))
        else:
            if self._grid is None:
                n = min(len(self.dataset), 2000)
                idx = np.random.default_rng(0).choice(len(self.dataset), n, replace=False)
                self._grid = np.asarray(self.dataset.get_batch(list(idx))[0])
            fake = self.sample_ema(2000).cpu().numpy()
            centers = self.data_info.get("toy", {}).get("centers")
            ok = save_scatter_panels([(f"G_ema at {self.cur_nimg / 1000:.1f} kimg", fake)], path,
                                     reference=self._grid, centers=None if centers is None else np.asarray(centers))
            if not ok:
                return None
        return path

    def save_reals(self) -> None:
        if self.rank != 0 or self.run_dir is None or self.data_info["kind"] != "image":
            return
        gw, gh = grid_shape(self.data_info["resolution"])
        idx = np.random.default_rng(0).choice(len(self.dataset), min(gw * gh, len(self.dataset)), replace=False)
        x = torch.stack([torch.as_tensor(self.dataset[int(i)][0]) for i in idx]).float() / 127.5 - 1
        save_image_grid(x, os.path.join(self.run_dir, "reals.png"), (gw, gh))

    def status_fields(self, tick_time, tick_nimg, maintenance, total_time) -> dict:
        return tick_fields(self.cur_tick, self.cur_nimg, tick_time, tick_nimg, maintenance, total_time, self.device)

    @staticmethod
    def format_status(fields: dict, plugin_stats: dict) -> str:
        parts = [f"tick {fields['tick']:<5d}", f"kimg {fields['kimg']:<8.1f}", f"time {format_time(fields['time']):<12s}",
                 f"sec/tick {fields['sec/tick']:<7.1f}", f"sec/kimg {fields['sec/kimg']:<7.2f}",
                 f"maintenance {fields['maintenance']:<6.1f}", f"cpumem {fields['cpumem']:<6.2f}",
                 f"gpumem {fields['gpumem']:<6.2f}"]
        for k, v in plugin_stats.items():
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        return " ".join(parts)

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self._stop.requested else 0.0], device=self.device)
        return bool(distributed.all_reduce_sum_(flag).item() > 0) if self.world > 1 else self._stop.requested

    def _write_jsonl(self, record: dict):
        if self.rank != 0 or self.run_dir is None:
            return
        with open(os.path.join(self.run_dir, "stats.jsonl"), "at") as f:
            f.write(json.dumps(record) + "\n")
        if self.cfg.tensorboard:
            if self._tb is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise ConfigError("--tensorboard needs the tensorboard package: pip install 'ganstack[tensorboard]'.")
                self._tb = SummaryWriter(self.run_dir)
            for k, v in record.items():
                val = v["mean"] if isinstance(v, dict) else v
                if isinstance(val, (int, float)) and k != "timestamp":
                    self._tb.add_scalar(k, val, global_step=int(self.cur_nimg / 1e3))
            self._tb.flush()

    def _finish_interrupted_metrics(self) -> None:
        """A run stopped between its final checkpoint and that checkpoint's metrics: compute the missing ones."""
        if not self.cfg.metrics or not self._resume_path:
            return
        from ganstack.metrics import registry
        snap = os.path.basename(self._resume_path)
        done = {r.get("metric") for r in registry.read_results(os.path.dirname(self._resume_path))
                if r.get("snapshot") == snap}
        missing = [m for m in self.cfg.metrics if m not in done]
        if missing:
            self.log(f"Computing the metrics the final snapshot {snap} lacks: {', '.join(missing)}")
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                self.run_metrics(missing)

    def run_metrics(self, names=None) -> None:
        if not self.cfg.metrics or self.run_dir is None:
            return
        from ganstack.metrics import registry  # metrics are not plugins; imported only when asked for
        for name in names or self.cfg.metrics:
            result = registry.compute(name, G=self.G_ema, stack=self.stack, dataset=self.dataset,
                                      device=self.device, cfg=self.cfg)
            if self.rank == 0:
                snap = ckpt_io.snapshot_path(self.run_dir, self.cur_nimg)
                registry.append_result(self.run_dir, name, result, snapshot=os.path.basename(snap),
                                       kimg=self.cur_nimg / 1e3)
                self.log(f"  {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in result.items()))

    # ------------------------------------------------------------------------------------------

    def run(self) -> Optional[str]:
        """Train until ``cfg.kimg``; returns the path of the last checkpoint written."""
        cfg = self.cfg
        if self.cur_nimg >= cfg.total_nimg:
            self.log(f"Nothing to do: the run is already at {self.cur_nimg / 1e3:.1f} kimg >= --kimg {cfg.kimg}.")
            self._finish_interrupted_metrics()
            return None
        self._stop.install()
        start_time = time.time()
        tick_start_time = start_time
        maintenance = 0.0
        last_ckpt = None
        if self.cur_nimg == 0:
            self.save_reals()
            self.save_pictures("fakes_init")
        self.log(f"Training for {cfg.kimg:g} kimg from {self.cur_nimg / 1e3:.1f} kimg ...")
        try:
            while True:
                self.step()
                done = self.cur_nimg >= cfg.total_nimg
                stop = self._stop_requested()
                tick_due = self.cur_tick == 0 or self.cur_nimg >= self.tick_start_nimg + cfg.tick * 1000
                if not (done or stop or tick_due):
                    continue
                tick_end_time = time.time()
                fields = self.status_fields(tick_end_time - tick_start_time, self.cur_nimg - self.tick_start_nimg,
                                            maintenance, tick_end_time - start_time)
                plugin_stats = self.stack.report_stats()
                self.log(self.format_status(fields, plugin_stats))
                record = self.stats.end_tick()
                record.update({f"Progress/{k}": v for k, v in fields.items() if k in ("tick", "kimg")})
                record.update({f"Timing/{k}": v for k, v in fields.items()
                               if k.startswith("sec") or k in ("time", "maintenance")})
                record.update({f"Resources/{k}": v for k, v in fields.items() if k.endswith("mem")})
                record.update({f"Plugin/{k}": v for k, v in plugin_stats.items()})
                record["timestamp"] = time.time()
                self._write_jsonl(record)

                # The tick is over; checkpoints written below resume at the start of the next one.
                t0 = time.time()
                finished_tick = self.cur_tick
                self.cur_tick += 1
                self.tick_start_nimg = self.cur_nimg
                if done or stop or finished_tick % cfg.image_snap == 0:
                    self.save_pictures(f"fakes{ckpt_io.kimg_tag(self.cur_nimg)}")
                if done or stop or finished_tick % cfg.snap == 0:
                    last_ckpt = self.save_checkpoint() or last_ckpt
                    if last_ckpt:
                        self.log(f"  checkpoint: {last_ckpt}")
                    if not stop:
                        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                            self.run_metrics()
                maintenance = time.time() - t0
                tick_start_time = time.time()
                if stop:
                    self.log("Stopped by signal after writing the checkpoint above; resume with --resume.")
                    break
                if done:
                    break
        finally:
            self._stop.restore()
            if self._tb is not None:
                self._tb.close()
        self._stop.exit_if_stopped()
        self.log("Done.")
        return last_ckpt
