"""SMaRt on images with a score model trained by ``ganstack train-score`` (scaled down for a CPU).

Steps (each skipped when its output is given):

1. ``train-score`` on the dataset (``--score-kimg``), unless ``--score RUN_OR_FILE`` is given;
2. two GAN runs with the same seed and budget: ``smart`` with ``--smart-weight`` (default 0.01) and a
   control whose weight is ``--control-weight`` (default 1e-6: the term is measured on the same
   schedule but has no effect on training);
3. a table of the regularity ``Loss/smart/score`` (Eq. 10, mean over pixels) per tick for both runs,
   read from their ``stats.jsonl`` (noisy: a few lazy evaluations per tick), and the same quantity
   measured on every snapshot's G with one fixed batch of ``--eval-n`` latents, timesteps and
   noises (the low-noise comparison).

    ganstack dataset convert --source ../shared/data/mnist --dest /tmp/me/smnist16.zip --stacked 10000 --resolution 16
    python benchmarks/smart_images.py --data /tmp/me/smnist16.zip --outdir /tmp/me/img \\
        --score-kimg 100 --gan-kimg 20
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def read_series(run_dir: str, key: str = "Loss/smart/score"):
    rows = []
    with open(os.path.join(run_dir, "stats.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if key in rec:
                rows.append((rec["Progress/kimg"], rec[key]["mean"], rec.get("Loss/G/loss", {}).get("mean")))
    return rows


@torch.no_grad()
def fixed_batch_regularity(run_dir: str, score_path: str, n: int = 256, seed: int = 123):
    """Eq. 10 of every snapshot's G on one fixed batch (same z, t, eps for every snapshot)."""
    from ganstack.plugins.score_models import VPSchedule, load_score_model
    from ganstack.plugins.smart import smart_loss
    from ganstack.training import checkpoint as ckpt_io
    from ganstack.training.inference import load_model
    score = load_score_model(score_path)
    sched = VPSchedule("linear")
    out = []
    for snap in ckpt_io.list_snapshots(run_dir):
        model = load_model(snap, device="cpu", which="G")  # G_ema's 10-kimg half-life outlasts short runs
        g = torch.Generator().manual_seed(seed)
        z = torch.randn([n, model.G.z_dim], generator=g)
        x = model.sample(z, noise_mode="const")
        t = torch.randint(40, 61, (n,), generator=g)
        eps = torch.randn(x.shape, generator=g)
        _, mse = smart_loss(score, x, t, eps, sched, 1.0)
        out.append((model.checkpoint["cur_nimg"] / 1000, float(mse.mean())))
    return out


def gan_config(args, seed):
    from ganstack.training.config import TrainConfig
    values = dict(data=args.data, cfg="stylegan2", kimg=args.gan_kimg, batch=args.batch, cbase=args.cbase,
                  cmax=args.cmax, map_depth=2, z_dim=args.z_dim, w_dim=args.z_dim, mbstd_group=4, gamma=args.gamma,
                  pl_weight=0.0, tick=args.tick, snap=args.snap, keep=0, seed=seed, workers=1)
    cfg = TrainConfig(**values)
    cfg.mark_user_set(set(values))
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="an image dataset (zip), e.g. StackedMNIST at 16x16")
    ap.add_argument("--outdir", required=True, help="runs go here (outside the repo)")
    ap.add_argument("--score", default=None, help="an existing score checkpoint or train-score run folder")
    ap.add_argument("--score-kimg", type=float, default=100)
    ap.add_argument("--score-channels", type=int, default=32)
    ap.add_argument("--score-mult", default="1,2")
    ap.add_argument("--score-blocks", type=int, default=1)
    ap.add_argument("--gan-kimg", type=float, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cbase", type=int, default=4096)
    ap.add_argument("--cmax", type=int, default=128)
    ap.add_argument("--z-dim", type=int, default=128)
    ap.add_argument("--gamma", type=float, default=0.05)
    ap.add_argument("--tick", type=float, default=2)
    ap.add_argument("--snap", type=int, default=2, help="ticks between GAN snapshots (each is evaluated)")
    ap.add_argument("--eval-n", type=int, default=256)
    ap.add_argument("--runs", default=None, help="'SMART_RUN,CONTROL_RUN': skip training, only evaluate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smart-weight", type=float, default=0.01)
    ap.add_argument("--control-weight", type=float, default=1e-6)
    ap.add_argument("--smart-opt", action="append", default=[], help="extra smart option key=value")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ganstack.plugins.score_models.train import ScoreTrainConfig
    from ganstack.plugins.score_models.train import run_training as train_score
    from ganstack.training.cli import run_training as train_gan

    score = args.score
    if score is None:
        cfg = ScoreTrainConfig(data=args.data, kimg=args.score_kimg, channels=args.score_channels,
                               channel_mult=args.score_mult, blocks=args.score_blocks, seed=args.seed, workers=1,
                               tick=max(args.score_kimg / 10, 1), snap=5)
        score = train_score(cfg, os.path.join(args.outdir, "score"))
    extra = dict(kv.split("=", 1) for kv in args.smart_opt)
    runs = {}
    if args.runs:
        runs = dict(zip(("smart", "control"), args.runs.split(",")))
    for label, weight in (("smart", args.smart_weight), ("control", args.control_weight)):
        if label not in runs:
            opts = {"smart": dict(score=score, weight=weight, **extra)}
            runs[label] = train_gan(gan_config(args, args.seed), ["smart"], opts, os.path.join(args.outdir, label))
    series = {k: read_series(v) for k, v in runs.items()}
    print(f"\nLoss/smart/score (Eq. 10, mean over pixels; t in [40, 60] unless overridden) per tick, "
          f"{args.data}, seed {args.seed}; smart lambda {args.smart_weight}, control lambda {args.control_weight}")
    print(f"{'kimg':>8s} {'smart':>10s} {'control':>10s}")
    for (k, s, _), (_, c, _) in zip(series["smart"], series["control"]):
        print(f"{k:>8.1f} {s:>10.4f} {c:>10.4f}")
    for label, rows in series.items():
        vals = [v for _, v, _ in rows]
        third = max(len(vals) // 3, 1)
        print(f"{label}: first third mean {np.mean(vals[:third]):.4f} -> last third mean {np.mean(vals[-third:]):.4f}")
    fixed = {k: fixed_batch_regularity(v, score, args.eval_n) for k, v in runs.items()}
    print(f"\nEq. 10 on one fixed batch of {args.eval_n} (z, t in [40, 60], eps) for every snapshot's G:")
    print(f"{'kimg':>8s} {'smart':>10s} {'control':>10s}")
    for (k, s_), (_, c) in zip(fixed["smart"], fixed["control"]):
        print(f"{k:>8.2f} {s_:>10.4f} {c:>10.4f}")
    print("runs: " + ", ".join(f"{k} {v}" for k, v in runs.items()) + f"; score model: {score}")


if __name__ == "__main__":
    main()
