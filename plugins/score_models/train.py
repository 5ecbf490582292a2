"""Training a small EDM denoiser on a ganstack dataset (the engine of ``ganstack train-score``).

It runs on the GAN trainer's run layer (:mod:`ganstack.training.run`): the run folder and ``log.txt``, the tick
loop with its status line, ``stats.jsonl``, snapshots, signals and divergence check, and the resume rules; plus
the resumable real-batch stream (``ganstack.training.data.RealStream``) and atomic checkpoints with RNG
capture/restore (``ganstack.training.checkpoint``). A checkpoint holds the raw and EMA
weights, Adam's state, the counters, the options and the RNG states, so ``--resume`` continues
exactly: N steps straight and N/2 + resume + N/2 give bitwise-identical weights.

Defaults follow EDM (``NVlabs/edm`` ``train.py``): Adam betas (0.9, 0.999), eps 1e-8, lr 1e-3,
EMA half-life 500 kimg ramped up as ``0.05 * cur_nimg``, loss summed over pixels and averaged over
the batch, non-finite gradients zeroed. Deviations, for runs of a few hundred kimg: the learning-rate
ramp-up is 10 kimg (EDM: 10 Mimg) and the networks are small (:mod:`ganstack.plugins.score_models.edm`).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ganstack.plugins.score_models import io as score_io
from ganstack.plugins.score_models.edm import EDMLoss, EDMPrecond, edm_sample, ema_beta, update_ema
from ganstack.stylegan_base.errors import CheckpointError
from ganstack.training import checkpoint as ckpt_io
from ganstack.training.api import ConfigError
from ganstack.training.data import RealStream
from ganstack.training.options import RunOptions
from ganstack.training.run import (Job, RunLog, RunLoop, check_same_dataset, clean_stale_temp,
                                   dataset_identity, merge_resume as merge_options, new_run_dir, resume_data_spec,
                                   tick_record)

# Options a resumed run may change (everything else comes from the checkpoint).
RESUME_MUTABLE = ("kimg", "tick", "snap", "keep", "workers", "device", "pictures", "data", "allow_nonfinite")


@dataclass
class ScoreTrainConfig(RunOptions):
    """Every option of a ``train-score`` run (saved in its checkpoints). None = automatic."""

    WHAT = "score-training options"

    # data, cond, mirror, max_size: RunOptions
    kimg: float = 200.0
    batch: Optional[int] = None          # 64 for images, 256 for points
    lr: float = 1e-3                     # EDM's DDPM++ CIFAR-10 learning rate
    lr_rampup_kimg: float = 10.0
    ema_kimg: float = 500.0              # EDM: 0.5 Mimg half-life ...
    ema_rampup: Optional[float] = 0.05   # ... ramped up as 0.05 * cur_nimg
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5
    arch: str = "auto"                   # unet for images, mlp for points
    channels: Optional[int] = None       # U-Net base channels (32) or MLP width (256)
    channel_mult: str = "1,2,2"
    blocks: Optional[int] = None         # U-Net blocks per level (2) or MLP layers (4)
    dropout: float = 0.0
    seed: int = 0
    tick: Optional[float] = None         # kimg per status line: 4 images, 20 points
    snap: int = 10                       # ticks per checkpoint
    keep: int = 5
    workers: int = 2
    device: str = "auto"
    pictures: bool = True                # sample a picture (Heun, 18 steps) at each checkpoint
    allow_nonfinite: bool = False        # keep training when the loss or weights become non-finite


def resolve_config(cfg: ScoreTrainConfig, data_info: dict) -> ScoreTrainConfig:
    """Fill the automatic options from the dataset and check ranges (ConfigError with a fix)."""
    kind = data_info["kind"]
    if cfg.arch == "auto":
        cfg.arch = "unet" if kind == "image" else "mlp"
    if cfg.arch not in ("unet", "mlp"):
        raise ConfigError(f"--arch {cfg.arch!r} is unknown; use auto, unet (images) or mlp (points).")
    if (cfg.arch == "unet") != (kind == "image"):
        raise ConfigError(f"--arch {cfg.arch} does not fit {kind} data ({cfg.data!r}); use --arch auto.")
    if cfg.batch is None:
        cfg.batch = 64 if kind == "image" else 256
    if cfg.channels is None:
        cfg.channels = 32 if kind == "image" else 256
    if cfg.blocks is None:
        cfg.blocks = 2 if kind == "image" else 4
    if cfg.tick is None:
        cfg.tick = 4.0 if kind == "image" else 20.0
    checks = [
        (cfg.kimg > 0, f"--kimg must be positive, got {cfg.kimg}."),
        (cfg.batch >= 1, f"--batch must be >= 1, got {cfg.batch}."),
        (cfg.lr > 0, f"--lr must be positive, got {cfg.lr}."),
        (cfg.ema_kimg >= 0, f"--ema must be >= 0 kimg, got {cfg.ema_kimg}."),
        (cfg.sigma_data > 0 and cfg.P_std > 0, "--sigma-data and --p-std must be positive."),
        (cfg.channels >= 4 and cfg.blocks >= 1, "--channels must be >= 4 and --blocks >= 1."),
        (0 <= cfg.dropout < 1, f"--dropout must be in [0, 1), got {cfg.dropout}."),
        (cfg.tick > 0 and cfg.snap >= 1 and cfg.keep >= 0, "--tick must be > 0, --snap >= 1, --keep >= 0."),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    if cfg.cond and not data_info.get("label_dim"):
        raise ConfigError(f"--cond needs labels, but {cfg.data!r} has none (add a dataset.json with labels).")
    if kind == "image":
        mult = _parse_mult(cfg.channel_mult)
        if data_info["resolution"] % (2 ** (len(mult) - 1)):
            raise ConfigError(f"--channel-mult {cfg.channel_mult} has {len(mult)} levels, which needs a resolution "
                              f"divisible by {2 ** (len(mult) - 1)}; the data is {data_info['resolution']}x"
                              f"{data_info['resolution']}. Use fewer levels.")
    return cfg


def _parse_mult(s: str) -> list[int]:
    try:
        mult = [int(v) for v in str(s).split(",") if v.strip()]
    except ValueError:
        mult = []
    if not mult or any(m < 1 for m in mult):
        raise ConfigError(f"--channel-mult {s!r} must be positive integers separated by commas, e.g. 1,2,2.")
    return mult


def arch_spec(cfg: ScoreTrainConfig, data_info: dict) -> dict:
    label_dim = int(data_info.get("label_dim") or 0) if cfg.cond else 0
    if cfg.arch == "unet":
        return {"name": "unet", "kwargs": dict(img_resolution=int(data_info["resolution"]),
                                               img_channels=int(data_info["num_channels"]), label_dim=label_dim,
                                               model_channels=int(cfg.channels),
                                               channel_mult=_parse_mult(cfg.channel_mult),
                                               num_blocks=int(cfg.blocks), dropout=float(cfg.dropout))}
    return {"name": "mlp", "kwargs": dict(point_dim=int(data_info["point_dim"]), label_dim=label_dim,
                                          hidden=int(cfg.channels), num_layers=int(cfg.blocks))}


class ScoreTrainer:
    """One ``train-score`` run: ``run()`` trains to ``cfg.kimg``; ``step()`` does one step (tests)."""

    def __init__(self, cfg: ScoreTrainConfig, dataset, run_dir: Optional[str] = None, resume: Optional[dict] = None,
                 device=None, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.dataset = dataset
        self.data_info = dataset.info()
        self.run_dir = run_dir
        self.log = log
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)
        self.arch = arch_spec(cfg, self.data_info)
        self.net = EDMPrecond(self.arch, sigma_data=cfg.sigma_data).to(self.device).train().requires_grad_(True)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
        self.loss_fn = EDMLoss(cfg.P_mean, cfg.P_std, cfg.sigma_data)
        self.cur_nimg = 0
        self.cur_tick = 0
        self.tick_start_nimg = 0
        self.steps_done = 0
        self._tick_loss = None  # sum of the tick's step losses, on the device
        self._tick_steps = 0
        self.last_finite: Optional[str] = None
        self._resume_path = None
        if resume is not None:
            self._load(resume)
            self._resume_path = resume.get("path")
        self.stream = RealStream(dataset, cfg.batch, self.device, seed=cfg.seed, rank=0, world_size=1,
                                 start=self.cur_nimg, workers=cfg.workers)

    # -- one step ------------------------------------------------------------------------------
    def step(self) -> torch.Tensor:
        """One step; returns the step's mean loss as a device tensor (no host sync)."""
        cfg = self.cfg
        x, c = next(self.stream)
        labels = c if self.net.label_dim else None
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * min(self.cur_nimg / max(cfg.lr_rampup_kimg * 1000, 1e-8), 1.0)
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net, x, labels)
        loss.sum().div(x.shape[0]).backward()  # EDM: summed over pixels, averaged over the batch
        for p in self.net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        self.opt.step()
        self.cur_nimg += x.shape[0]
        update_ema(self.ema, self.net, ema_beta(x.shape[0], self.cur_nimg, cfg.ema_kimg, cfg.ema_rampup))
        self.steps_done += 1
        value = loss.detach().mean()
        self._tick_loss = value if self._tick_loss is None else self._tick_loss + value
        self._tick_steps += 1
        return value

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_dict(self) -> dict:
        cpu = lambda sd: {k: v.detach().cpu().clone() for k, v in sd.items()}  # noqa: E731
        return {
            "arch": self.arch,
            "sigma_data": self.cfg.sigma_data,
            "model": cpu(self.ema.state_dict()),
            "data": {**self.data_info, **dataset_identity(self.dataset)},
            "training": {
                "net": cpu(self.net.state_dict()),
                "opt": self.opt.state_dict(),
                "options": self.cfg.to_dict(),
                "cur_nimg": self.cur_nimg,
                "cur_tick": self.cur_tick,
                "tick_start_nimg": self.tick_start_nimg,
                "rng": ckpt_io.capture_rng(),
            },
        }

    def save_checkpoint(self, finite: bool = True) -> Optional[str]:
        if self.run_dir is None:
            return None
        path, self.last_finite = ckpt_io.write_snapshot(self.checkpoint_dict(), self.run_dir, self.cur_nimg,
                                                        self.cfg.keep, score_io.SNAPSHOT_PREFIX, finite=finite,
                                                        last_finite=self.last_finite, save=score_io.save_checkpoint)
        return path

    def _load(self, ckpt: dict) -> None:
        tr = ckpt.get("training")
        if not tr:
            raise CheckpointError(f"{ckpt.get('path')!r} holds only an exported model, without the training state "
                                  f"needed to resume; start a new run instead.")
        ckpt_io.load_weights([(self.net, tr["net"]), (self.ema, ckpt["model"])], "The score checkpoint",
                             "Resume with the options it was trained with.")
        self.opt.load_state_dict(tr["opt"])
        self.cur_nimg = tr["cur_nimg"]
        self.cur_tick = tr["cur_tick"]
        self.tick_start_nimg = tr["tick_start_nimg"]
        ckpt_io.restore_rng(tr["rng"])

    # -- pictures ------------------------------------------------------------------------------
    @torch.no_grad()
    def save_pictures(self, name: str, n: Optional[int] = None) -> Optional[str]:
        """Samples of the EMA model (Heun, 18 steps) next to the data, without touching training RNG."""
        if self.run_dir is None or not self.cfg.pictures:
            return None
        from ganstack.training.snapshots import grid_shape, save_image_grid, save_scatter_panels
        path = os.path.join(self.run_dir, f"{name}.png")
        image = self.data_info["kind"] == "image"
        if image:
            gw, gh = grid_shape(self.data_info["resolution"])
            gh = min(gh, 4)
            n = gw * gh
        else:
            n = n or 1000
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            g = torch.Generator(device=self.device).manual_seed(0)
            latents = torch.randn([n, *self.ema.sample_shape], generator=g, device=self.device)
            labels = None
            if self.ema.label_dim:
                idx = torch.randint(len(self.dataset), (n,), generator=g, device=self.device).tolist()
                labels = torch.from_numpy(np.stack([self.dataset.get_label(i) for i in idx])).to(self.device)
            x = torch.cat([edm_sample(self.ema, latents[i:i + 256], None if labels is None else labels[i:i + 256])
                           for i in range(0, n, 256)])
        if image:
            save_image_grid(x.clamp(-1, 1), path, (gw, gh))
            return path
        ref = np.asarray(self.dataset.get_batch(np.arange(min(len(self.dataset), 2000)))[0])
        centers = (self.data_info.get("toy") or {}).get("centers")
        ok = save_scatter_panels([(f"score-model samples at {self.cur_nimg / 1000:.1f} kimg", x.cpu().numpy())], path,
                                 reference=ref, centers=None if centers is None else np.asarray(centers))
        return path if ok else None

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        RunLoop(ScoreJob(self), self.log, what="Training the score model").run()


class ScoreJob(Job):
    """What the run loop drives for ``train-score``: the status line (loss, lr), checkpoints, pictures."""

    steps_attr = "steps_done"

    def __init__(self, trainer: ScoreTrainer):
        super().__init__(trainer, trainer.cfg, trainer.run_dir)

    def end_tick(self, fields: dict):
        tr = self.tr
        n = tr._tick_steps
        loss = float(tr._tick_loss) / n if n else float("nan")  # the tick's one host read
        tr._tick_loss, tr._tick_steps = None, 0
        lr = tr.opt.param_groups[0]["lr"]
        record = tick_record(fields, {"Loss/score": {"num": n, "mean": loss}}, {"lr": lr})
        self.writer.write(record, tr.cur_nimg / 1e3)
        return {"loss": loss, "lr": lr}, record

    def diverged(self, record: dict) -> Optional[str]:
        tr = self.tr
        loss_ok = bool(np.isfinite(record["Loss/score"]["mean"])) or record["Loss/score"]["num"] == 0
        weights_ok = bool(torch.stack([torch.isfinite(p).all() for p in tr.net.parameters()]).all())
        if loss_ok and weights_ok:
            return None
        last = tr.last_finite or tr._resume_path
        return (f"Score training diverged at {tr.cur_nimg / 1e3:.1f} kimg ("
                + ", ".join((["non-finite loss"] if not loss_ok else []) + ([] if weights_ok else ["non-finite weights"]))
                + f"). No checkpoint of this state was written; the last finite checkpoint is "
                f"{last or '(none)'}. Lower --lr (now {tr.cfg.lr:g}), or pass --allow-nonfinite to go on regardless")

    def after_tick(self, finished_tick: int, snapshot: bool, final: bool, stopping: bool, finite: bool) -> None:
        tr = self.tr
        if snapshot:
            path = tr.save_checkpoint(finite)
            if path:
                tr.log(f"  checkpoint: {path}")
            if not stopping and (finished_tick > 0 or final):
                tr.save_pictures(f"samples{ckpt_io.kimg_tag(tr.cur_nimg)}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def merge_resume(cfg: ScoreTrainConfig, ckpt: dict) -> ScoreTrainConfig:
    """The checkpoint's options, with the few a resumed run may change taken from ``cfg``."""
    saved = ScoreTrainConfig.from_dict(ckpt["training"]["options"])
    return merge_options(cfg, saved, RESUME_MUTABLE, _flag, what="score run")


def run_training(cfg: ScoreTrainConfig, outdir: str, resume: Optional[str] = None, log=None, device=None) -> str:
    """Everything ``ganstack train-score`` does after parsing its options; returns the run folder."""
    from ganstack.stylegan_base.datasets import open_dataset

    resume_ckpt = None
    if resume:
        resume_ckpt = score_io.read_checkpoint(resume, what="--resume checkpoint")
        user_gave_data = cfg.is_user_set("data")
        cfg = merge_resume(cfg, resume_ckpt)
        cfg.data = resume_data_spec(resume_ckpt.get("data") or {}, cfg.data, user_gave_data)
    dev = device or cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = open_dataset(cfg.data, mirror=cfg.mirror, max_size=cfg.max_size, use_labels=cfg.cond)
    info = dataset.info()
    resolve_config(cfg, info)
    if resume_ckpt is not None:
        check_same_dataset(resume_ckpt.get("data") or {}, dataset, cfg.data)
    name = f"{info.get('name', 'data')}-score-{cfg.arch}"
    run_dir = new_run_dir(outdir, name.replace("/", "_")[:100])
    run_log = RunLog(os.path.join(run_dir, "log.txt")) if log is None else None
    log = log or run_log
    with run_log if run_log is not None else contextlib.nullcontext():
        clean_stale_temp([outdir] + ([os.path.dirname(resume_ckpt["path"])] if resume_ckpt else []), log)
        with open(os.path.join(run_dir, "training_options.json"), "wt") as f:
            json.dump({"score_config": cfg.to_dict(), "dataset": {**info, **dataset_identity(dataset)},
                       "resume": resume_ckpt["path"] if resume_ckpt else None}, f, indent=2)
        trainer = ScoreTrainer(cfg, dataset, run_dir=run_dir, resume=resume_ckpt, device=dev, log=log)
        n_params = sum(p.numel() for p in trainer.net.parameters())
        log(f"Run folder:   {run_dir}")
        log(f"Dataset:      {cfg.data} ({info['len']} items, {info['kind']})")
        log(f"Score model:  EDM-preconditioned {cfg.arch}, {n_params / 1e6:.2f} M params, sigma_data "
            f"{cfg.sigma_data:g}, P_mean {cfg.P_mean:g}, P_std {cfg.P_std:g}, "
            f"{'conditional' if trainer.net.label_dim else 'unconditional'}")
        log(f"Optimiser:    Adam lr {cfg.lr:g} (ramp-up {cfg.lr_rampup_kimg:g} kimg), batch {cfg.batch}, "
            f"EMA half-life {cfg.ema_kimg:g} kimg (ramp-up {cfg.ema_rampup}), device {dev}")
        if resume_ckpt is not None:
            log(f"Resuming from {resume_ckpt['path']} at {trainer.cur_nimg / 1000:.1f} kimg.")
        trainer.run()
    return run_dir
