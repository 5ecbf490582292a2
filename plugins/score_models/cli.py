"""``ganstack train-score``: train a small EDM denoiser for the smart and cmgan plugins.

Registered through the entry-point group ``ganstack.commands`` (``train-score =
plugins.score_models.cli:train_score_command``), so ``training/`` never imports it.
"""
from __future__ import annotations

import click

from ganstack.stylegan_base.cli_support import DEVICE, FINITE_FLOAT, SEED, finite_float, int_range  # rel: input checks
from ganstack.plugins.score_models.train import RESUME_MUTABLE, ScoreTrainConfig, run_training

_D = ScoreTrainConfig()

# (flag, field, click kwargs)
OPTIONS = [
    ("--data", "data", dict(type=str, default=None,
                            help="Dataset: a zip/folder of images, a .npy/.csv point file, toy:NAME or shapesR "
                                 "(required unless --resume).")),
    ("--kimg", "kimg", dict(type=finite_float(0, min_open=True), default=_D.kimg, show_default=True, help="Training length in thousands of images.")),
    ("--batch", "batch", dict(type=int, default=None, help="Batch size [default: 64 images, 256 points]")),
    ("--lr", "lr", dict(type=FINITE_FLOAT, default=_D.lr, show_default=True, help="Adam learning rate (EDM DDPM++: 1e-3).")),
    ("--lr-rampup", "lr_rampup_kimg", dict(type=FINITE_FLOAT, default=_D.lr_rampup_kimg, show_default=True,
                                           help="Linear learning-rate warm-up in kimg.")),
    ("--ema", "ema_kimg", dict(type=FINITE_FLOAT, default=_D.ema_kimg, show_default=True,
                               help="EMA half-life in kimg (EDM), ramped up as 0.05 * kimg so far.")),
    ("--sigma-data", "sigma_data", dict(type=FINITE_FLOAT, default=_D.sigma_data, show_default=True,
                                        help="Data std assumed by the EDM preconditioning.")),
    ("--p-mean", "P_mean", dict(type=FINITE_FLOAT, default=_D.P_mean, show_default=True, help="Mean of ln(sigma) in training.")),
    ("--p-std", "P_std", dict(type=FINITE_FLOAT, default=_D.P_std, show_default=True, help="Std of ln(sigma) in training.")),
    ("--arch", "arch", dict(type=click.Choice(["auto", "unet", "mlp"]), default="auto", show_default=True,
                            help="Network: U-Net for images, MLP for points.")),
    ("--channels", "channels", dict(type=int, default=None, help="U-Net base channels [32] or MLP width [256].")),
    ("--channel-mult", "channel_mult", dict(type=str, default=_D.channel_mult, show_default=True,
                                            help="U-Net width multipliers per resolution level.")),
    ("--blocks", "blocks", dict(type=int, default=None, help="U-Net blocks per level [2] or MLP layers [4].")),
    ("--dropout", "dropout", dict(type=FINITE_FLOAT, default=_D.dropout, show_default=True, help="Dropout in the U-Net blocks.")),
    ("--cond", "cond", dict(is_flag=True, default=False, help="Class-conditional model (needs labels).")),
    ("--mirror", "mirror", dict(is_flag=True, default=False, help="Add x-flipped copies of the images.")),
    ("--max-size", "max_size", dict(type=int, default=None, help="Use at most this many dataset items.")),
    ("--seed", "seed", dict(type=SEED, default=_D.seed, show_default=True, help="Random seed.")),
    ("--tick", "tick", dict(type=FINITE_FLOAT, default=None, help="kimg per status line [4 images, 20 points].")),
    ("--snap", "snap", dict(type=int, default=_D.snap, show_default=True, help="Ticks between checkpoints.")),
    ("--keep", "keep", dict(type=int, default=_D.keep, show_default=True, help="Checkpoints kept (0 = all).")),
    ("--workers", "workers", dict(type=int_range(0, 1024), default=_D.workers, show_default=True, help="Data-loader workers.")),
    ("--device", "device", dict(type=DEVICE, default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")),
    ("--pictures/--no-pictures", "pictures", dict(default=True, show_default=True,
                                                  help="Write samples (Heun, 18 steps) at each checkpoint.")),
    ("--allow-nonfinite", "allow_nonfinite", dict(is_flag=True, default=False,
                                                  help="Keep training when the loss or weights become non-finite "
                                                       "(default: stop with exit status 3).")),
]


def _make_command() -> click.Command:
    params = [click.Option([flag, field], **kw) for flag, field, kw in OPTIONS]
    params += [
        click.Option(["--outdir"], type=str, default="score-runs", show_default=True, help="Where run folders go."),
        click.Option(["--resume"], type=str, default=None,
                     help="Continue exactly from a score checkpoint or the newest one in a run folder."),
    ]

    def callback(outdir, resume, **kwargs):
        from click.core import ParameterSource
        if kwargs["data"] is None and not resume:
            raise click.UsageError("Missing option '--data' (the dataset to learn the score of).")
        ctx = click.get_current_context()
        user_set = {f for _, f, _ in OPTIONS if ctx.get_parameter_source(f) not in (ParameterSource.DEFAULT, None)}
        if kwargs["data"] is None:
            kwargs["data"] = _D.data  # replaced by the checkpoint's dataset
        cfg = ScoreTrainConfig(**kwargs).mark_user_set(user_set)
        run_training(cfg, outdir, resume=resume)

    return click.Command(
        "train-score", params=params, callback=callback,
        help="Train a small EDM-preconditioned denoiser (U-Net for images, MLP for points) for --smart-score "
             "and the cmgan teacher. Same status line, checkpoints (score-snapshot-*.pt) and exact --resume as "
             "'ganstack train'.",
        epilog="A resumed run takes its options from the checkpoint; only "
               + ", ".join("--" + n.replace("_", "-") for n in RESUME_MUTABLE) + " may change.")


train_score_command = _make_command()
