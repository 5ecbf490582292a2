"""CM-GAN vs plain consistency distillation (CD) on MNIST with the same teacher, networks and budget
(the paper's Sec. 4 and Fig. 2, scaled down for a CPU). Prints FID in the digit classifier's features
(``digits_fid``) for each model and for the teacher's own 18-step Heun sampler, and writes a sample grid
with a shared eps per column (row 1 CD, row 2 CM-GAN, as the paper's Fig. 2) and the loss curves.

Prerequisites (all written outside the repo)::

    ganstack dataset convert --source ../shared/data/mnist --dest /tmp/me/mnist32.zip
    ganstack train-score --data /tmp/me/mnist32.zip --channels 16 --blocks 1 --kimg 300 --outdir /tmp/me/teacher
    ganstack train-classifier --data ../shared/data/mnist --out /tmp/me/digit-classifier.pt

    python benchmarks/mnist_cmgan.py --data /tmp/me/mnist32.zip --teacher /tmp/me/teacher \\
        --classifier /tmp/me/digit-classifier.pt --kimg 20 --outdir /tmp/me/mnist_cmgan \\
        --opt channels=16 --opt blocks=1

Each mode trains in-process (``ganstack.training.loop.Trainer``) from the same seed; ``--modes 'cd;cmgan;gan'`` adds the
pure GAN of Appendix A. The final G_ema of each mode is saved to ``<outdir>/<run>.pt`` (a normal
ganstack checkpoint, usable with ``ganstack generate``), so ``--eval-only`` re-evaluates without training and
``--skip-trained`` finishes an interrupted comparison (or adds a run) without retraining the runs already saved
in ``<outdir>`` (it refuses an outdir trained with other data/teacher/kimg/seed/options).

CPU etiquette: one thread. Everything is small: a 16-channel U-Net, a narrow StyleGAN2 D, a few tens of
kimg. The numbers say which way the method moves a model at this scale, not what it reaches on a GPU.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ganstack.metrics import registry  # noqa: E402
from ganstack.stylegan_base.datasets import open_dataset  # noqa: E402
from ganstack.training.config import TrainConfig, resolve  # noqa: E402
from ganstack.training.loop import Trainer  # noqa: E402
from ganstack.training.plugin_manager import PluginStack  # noqa: E402
from ganstack.training.snapshots import save_image_grid  # noqa: E402

# A CPU-sized StyleGAN2 D (the 'cifar' preset otherwise: R1 gamma 0.01, no path length, no style mixing).
TRAIN_DEFAULTS = dict(cfg="cifar", batch=32, cbase=2048, cmax=64, mbstd_group=4, workers=0, tick=1.0)
CURVE_KEYS = ("Loss/G/loss", "Loss/D/loss", "Loss/cmgan/cd", "Loss/cmgan/cd_unweighted", "Loss/signs/real",
              "Loss/signs/fake", "Loss/scores/real", "Loss/scores/fake")


def parse_mode(spec: str) -> tuple:
    """``'cmgan:cd_norm=sum'`` -> ``('cmgan', {'cd_norm': 'sum'})``."""
    mode, *rest = [p.strip() for p in spec.split(":") if p.strip()]
    return mode, dict(item.split("=", 1) for item in rest)


def slug(spec: str) -> str:
    return spec.replace(":", "_").replace("=", "-").replace(",", "-")


def make_trainer(data, mode, cmgan_opts, kimg, seed, train):
    settings = dict(TRAIN_DEFAULTS)
    settings.update(train)
    cfg = TrainConfig(data=data, kimg=kimg, seed=seed, **settings)
    cfg.mark_user_set(set(settings) | {"data", "kimg", "seed"})
    ds = open_dataset(data, use_labels=False)
    resolve(cfg, ds.info())
    opts = dict(cmgan_opts, mode=mode)
    if mode == "gan":
        opts.pop("teacher", None)
        opts["init"] = "random"
    stack = PluginStack(["cmgan"], {"cmgan": opts})
    stack.configure(cfg)
    return Trainer(cfg, stack, ds, run_dir=None, device="cpu", log=lambda *_: None), ds


def train_mode(args, spec, cmgan_opts, train):
    mode, extra = parse_mode(spec)
    tr, _ = make_trainer(args.data, mode, {**cmgan_opts, **extra}, args.kimg, args.seed, train)
    curves, acc = [], {}
    t0 = time.time()
    while tr.cur_nimg < tr.cfg.total_nimg:
        stats = tr.step()
        for k in CURVE_KEYS:
            if k in stats:
                acc.setdefault(k, []).append(stats[k])
        if tr.batch_idx % args.record_every == 0 or tr.cur_nimg >= tr.cfg.total_nimg:
            curves.append(dict(kimg=tr.cur_nimg / 1000, **{k: float(np.mean(v)) for k, v in acc.items()}))
            acc = {}
            last = curves[-1]
            print(f"  {spec} {last['kimg']:.2f} kimg  " + "  ".join(f"{k.split('/', 1)[1]} {v:.4f}"
                  for k, v in last.items() if k != "kimg") + f"  ({time.time() - t0:.0f} s)", flush=True)
    wall = time.time() - t0
    path = os.path.join(args.outdir, f"{slug(spec)}.pt")
    torch.save(tr.checkpoint_dict(), path)
    return dict(curves=curves, wall_s=wall, iterations=tr.batch_idx, checkpoint=path)


def load_G(path):
    from ganstack.training.inference import load_model
    return load_model(path, device="cpu")


def evaluate(args, model, label):
    opts = registry.MetricOptions(classifier=args.classifier, cache_dir=os.path.join(args.outdir, "cache"),
                                  log=lambda *_: None, batch=100)
    ds = open_dataset(args.data, use_labels=False)
    res = registry.compute(f"digits_fid{args.num_fid}", G=model.G, stack=model.stack, dataset=ds, device="cpu",
                           opts=opts)
    print(f"  {label}: digits_fid {res['digits_fid']:.3f} ({args.num_fid} samples, nfe {res['nfe']:g}, "
          f"{res['sec']:.0f} s)", flush=True)
    return res


class _TeacherAsG(torch.nn.Module):
    """The teacher seen as a 'G' for the metric code: each call of forward is one denoiser evaluation (so the
    metric's NFE counter counts them), and :class:`_TeacherStack` runs EDM's deterministic Heun sampler with it."""

    def __init__(self, teacher, shape):
        super().__init__()
        self.teacher, self.shape = teacher, tuple(shape)
        self.z_dim, self.c_dim = int(np.prod(shape)), 0

    def forward(self, x, sigma, c=None):
        return self.teacher.denoise(x, sigma, c)

    def denoise(self, x, sigma, c=None):
        return self(x, sigma, c)


class _TeacherStack:
    def __init__(self, steps=18):
        self.steps = steps

    def first(self, hook, G, z, c, ctx, G_kwargs):
        from ganstack.plugins.score_models.edm import edm_sample
        from ganstack.training.api import DInput
        return DInput(img=edm_sample(G, z.reshape([-1, *G.shape]), num_steps=self.steps), c=c)


def evaluate_teacher(args, shape):
    from types import SimpleNamespace

    from ganstack.plugins.score_models import load_score_model
    model = SimpleNamespace(G=_TeacherAsG(load_score_model(args.teacher), shape), stack=_TeacherStack())
    return evaluate(args, model, "teacher (Heun, 18 steps)")


def sample_grid(models, path, n=16, seed=7):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn([n, models[0][1].G.z_dim], generator=g)
    rows = []
    for _, m in models:
        torch.manual_seed(seed)
        rows.append(m.sample(z))
    save_image_grid(torch.cat(rows), path, (n, len(rows)))


def plot_curves(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for mode, res in results.items():
        kimg = [c["kimg"] for c in res["curves"]]
        axes[0].plot(kimg, [c.get("Loss/G/loss", np.nan) for c in res["curves"]], label=mode)
        axes[1].plot(kimg, [c.get("Loss/D/loss", np.nan) for c in res["curves"]], label=mode)
        axes[2].plot(kimg, [c.get("Loss/cmgan/cd_unweighted", np.nan) for c in res["curves"]], label=mode)
    for ax, t in zip(axes, ("G: -log D(f(x_t, t))", "D loss", "CD distance (unweighted)")):
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("kimg")
        ax.legend(fontsize=7)
    axes[2].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="MNIST zip from `ganstack dataset convert`")
    ap.add_argument("--teacher", required=True, help="train-score checkpoint or run folder")
    ap.add_argument("--classifier", required=True, help="digit classifier from `ganstack train-classifier`")
    ap.add_argument("--modes", default="cd;cmgan", help="';'-separated runs: a --cmgan-mode (cd, cmgan, gan), "
                    "optionally with ':'-separated cmgan options, e.g. 'cd;cmgan;cmgan:cd_norm=mean'")
    ap.add_argument("--kimg", type=float, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--opt", action="append", default=[], help="cmgan option key=value for every mode")
    ap.add_argument("--train", action="append", default=[], help="TrainConfig key=value override")
    ap.add_argument("--num-fid", type=int, default=2000, help="generated samples per digits_fid")
    ap.add_argument("--record-every", type=int, default=25)
    ap.add_argument("--eval-only", action="store_true", help="evaluate the saved <outdir>/<run>.pt")
    ap.add_argument("--skip-trained", action="store_true", help="do not retrain a run whose <outdir>/<run>.pt and "
                    "results.json entry exist (finish an interrupted comparison with the same options)")
    ap.add_argument("--skip-teacher-fid", action="store_true")
    ap.add_argument("--outdir", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.outdir, exist_ok=True)
    cmgan_opts = {"teacher": args.teacher}
    for item in args.opt:
        k, _, v = item.partition("=")
        cmgan_opts[k.strip()] = v.strip()
    train = {}
    for item in args.train:
        k, _, v = item.partition("=")
        train[k.strip()] = ast.literal_eval(v.strip())
    modes = [m.strip() for m in args.modes.split(";") if m.strip()]
    summary_path = os.path.join(args.outdir, "results.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
    prev = summary.get("args")
    if args.skip_trained and prev:
        keys = ("data", "teacher", "kimg", "seed", "opt", "train")
        diff = [k for k in keys if prev.get(k) != vars(args)[k]]
        if diff:
            raise SystemExit(f"--skip-trained: {args.outdir} was trained with other {', '.join(diff)} "
                             f"({', '.join(f'{k}={prev.get(k)!r}' for k in diff)}); use the same or a new --outdir")
    summary.update(args=vars(args), cmgan_opts=cmgan_opts, train={**TRAIN_DEFAULTS, **train})
    results = summary.setdefault("runs", {})
    if not args.eval_only:
        for mode in modes:
            done = results.get(mode)
            if args.skip_trained and done and os.path.exists(os.path.join(args.outdir, f"{slug(mode)}.pt")):
                print(f"reusing {mode}: {done['iterations']} iterations already trained", flush=True)
                continue
            print(f"training {mode} for {args.kimg:g} kimg ...", flush=True)
            results[mode] = train_mode(args, mode, cmgan_opts, train)
            json.dump(summary, open(summary_path, "wt"), indent=1, default=float)
    models = [(mode, load_G(os.path.join(args.outdir, f"{slug(mode)}.pt"))) for mode in modes]
    fids = summary.setdefault("digits_fid", {})
    for mode, m in models:
        fids[mode] = evaluate(args, m, mode)
        json.dump(summary, open(summary_path, "wt"), indent=1, default=float)
    if not args.skip_teacher_fid:
        fids["teacher_heun18"] = evaluate_teacher(args, tuple(models[0][1].G.sample_shape))
        json.dump(summary, open(summary_path, "wt"), indent=1, default=float)
    grid = os.path.join(args.outdir, "grid_" + "__".join(slug(m) for m in modes) + ".png")
    sample_grid(models, grid)
    print(f"sample grid (rows: {', '.join(modes)}; shared eps per column): {grid}")
    if results:
        curves = os.path.join(args.outdir, "losses.png")
        plot_curves({m: r for m, r in results.items() if m in modes}, curves)
        print(f"loss curves: {curves}")
    print()
    res = open_dataset(args.data, use_labels=False).info()["resolution"]
    print(f"MNIST {res}x{res}, {args.kimg:g} kimg per run, seed {args.seed}; digits_fid on {args.num_fid} samples")
    for key, r in fids.items():
        it = results.get(key, {})
        extra = f"  ({it['iterations']} iterations, {it['wall_s']:.0f} s)" if it else ""
        print(f"  {key:<24s} digits_fid {r['digits_fid']:8.3f}  nfe {r['nfe']:g}{extra}")


if __name__ == "__main__":
    main()
