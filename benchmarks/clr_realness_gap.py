"""The realness gap of CLR-GAN's Fig. 4: D's mean logit on reals minus its mean logit on fakes over
training, vanilla StyleGAN2 vs ``clr`` (and any other stack), same seed and budget.

    ganstack dataset convert --source ../shared/data/mnist --dest /tmp/me/stackedmnist.zip --stacked 10000
    python benchmarks/clr_realness_gap.py --data /tmp/me/stackedmnist.zip --kimg 20 --outdir /tmp/me/gap
    python benchmarks/clr_realness_gap.py --data ... --stacks "none;clr;ada" ...

Each stack trains with the real ``ganstack`` loop (``Trainer.run``) into ``--outdir/<stack>/`` and the
script reads that run's ``stats.jsonl``: per tick, ``Loss/scores/real`` (D's logits on reals, Dmain) and
``Loss/scores/fake`` (D's logits on fakes, Gmain and Dmain), exactly the fields StyleGAN2-ADA logs.
It prints them per tick, the gap ``real - fake``, the mean gap over the second half of training, and
writes ``realness.png`` with the scores smoothed by an exponentially weighted moving average, as in the
paper's figure (which used LSUN-Church at 256x256 for ~25 Mimg; this is a CPU-sized stand-in).

The network is deliberately tiny so that it runs on a CPU (defaults: 32x32, ``--cbase 1024 --cmax 64``,
z_dim = w_dim = 64, mapping depth 2, batch 32, R1 gamma 0.05, no path length). With z_dim equal to D's
epilogue width (64) the clr head is the identity, as in the official code (512 = 512).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ganstack.stylegan_base.datasets import open_dataset  # noqa: E402
from ganstack.training.config import TrainConfig, resolve  # noqa: E402
from ganstack.training.loop import Trainer  # noqa: E402
from ganstack.training.plugin_manager import PluginStack, parse_stack  # noqa: E402


def train(data, names, outdir, kimg, seed, tick, overrides):
    cfg = TrainConfig(data=data, cfg="stylegan2", kimg=kimg, seed=seed, tick=tick, snap=10_000, workers=0,
                      **overrides)
    cfg.mark_user_set({"data", "cfg", "kimg", "seed", "tick", "snap", "workers"} | set(overrides))
    ds = open_dataset(data, use_labels=False)
    resolve(cfg, ds.info())
    stack = PluginStack(names, {})
    stack.configure(cfg)
    os.makedirs(outdir, exist_ok=True)
    lines = []
    tr = Trainer(cfg, stack, ds, run_dir=outdir, device="cpu", log=lines.append)
    t0 = time.time()
    tr.run()
    with open(os.path.join(outdir, "log.txt"), "wt") as f:
        f.write("\n".join(lines) + "\n")
    return time.time() - t0


def read_scores(run_dir):
    rows = []
    with open(os.path.join(run_dir, "stats.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "Loss/scores/real" not in r:
                continue
            rows.append(dict(kimg=r["Progress/kimg"], real=r["Loss/scores/real"]["mean"],
                             fake=r["Loss/scores/fake"]["mean"],
                             rec=r.get("Loss/clr/rec_dist", {}).get("mean"),
                             lat=r.get("Loss/clr/latent_dist", {}).get("mean"),
                             sec_per_kimg=r.get("Timing/sec/kimg")))
    return rows


def ewma(x, alpha=0.3):
    out, m = [], None
    for v in x:
        m = v if m is None else alpha * v + (1 - alpha) * m
        out.append(m)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="image zip, e.g. a StackedMNIST zip")
    ap.add_argument("--stacks", default="none;clr", help="';'-separated plugin stacks ('none' = vanilla)")
    ap.add_argument("--kimg", type=float, default=20)
    ap.add_argument("--tick", type=float, default=1.0, help="kimg per stats.jsonl line")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cbase", type=int, default=1024)
    ap.add_argument("--cmax", type=int, default=64)
    ap.add_argument("--z-dim", type=int, default=64)
    ap.add_argument("--gamma", type=float, default=0.05)
    ap.add_argument("--outdir", required=True, help="run folders and realness.png (outside the repo)")
    ap.add_argument("--reuse", action="store_true", help="only re-read existing run folders")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    overrides = dict(batch=args.batch, cbase=args.cbase, cmax=args.cmax, z_dim=args.z_dim, w_dim=args.z_dim,
                     map_depth=2, gamma=args.gamma, pl_weight=0.0, mbstd_group=4, ema_kimg=args.batch * 10 / 32,
                     ema_rampup=0.05)
    results = {}
    for spec in args.stacks.split(";"):
        names = parse_stack(spec)
        label = ",".join(names) or "vanilla"
        run_dir = os.path.join(args.outdir, label.replace(",", "+"))
        if not args.reuse:
            wall = train(args.data, names, run_dir, args.kimg, args.seed, args.tick, overrides)
            print(f"{label}: trained {args.kimg:g} kimg in {wall:.0f} s -> {run_dir}", flush=True)
        results[label] = read_scores(run_dir)

    labels = list(results)
    print("\nD logits per tick (mean over the tick): real / fake / gap = real - fake")
    header = f"{'kimg':>6s}" + "".join(f" | {lab[:22]:>22s}" for lab in labels)
    print(header)
    n = min(len(v) for v in results.values())
    for i in range(n):
        cells = []
        for lab in labels:
            r = results[lab][i]
            cells.append(f"{r['real']:+6.2f} {r['fake']:+6.2f} {r['real'] - r['fake']:6.2f}")
        print(f"{results[labels[0]][i]['kimg']:6.1f}" + "".join(f" | {c:>22s}" for c in cells))
    print("\nsummary (second half of training, ticks after kimg/2):")
    summary = {}
    for lab in labels:
        rows = [r for r in results[lab] if r["kimg"] > args.kimg / 2]
        gap = np.array([r["real"] - r["fake"] for r in rows])
        summary[lab] = dict(mean_gap=float(gap.mean()), mean_real=float(np.mean([r["real"] for r in rows])),
                            mean_fake=float(np.mean([r["fake"] for r in rows])),
                            sec_per_kimg=float(np.mean([r["sec_per_kimg"] for r in rows if r["sec_per_kimg"]])))
        extra = ""
        if rows and rows[-1]["rec"] is not None:
            extra = f"  last rec_dist {rows[-1]['rec']:.3f}  last latent_dist {rows[-1]['lat']:.3f}"
        print(f"  {lab:<24s} mean gap {gap.mean():.3f} (real {summary[lab]['mean_real']:+.3f}, "
              f"fake {summary[lab]['mean_fake']:+.3f}), {summary[lab]['sec_per_kimg']:.1f} s/kimg{extra}")
    with open(os.path.join(args.outdir, "realness.json"), "wt") as f:
        json.dump(dict(args=vars(args), per_tick=results, summary=summary), f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for lab in labels:
        k = [r["kimg"] for r in results[lab]]
        axes[0].plot(k, ewma([r["fake"] for r in results[lab]]), label=lab)
        axes[1].plot(k, ewma([r["real"] for r in results[lab]]), label=lab)
        axes[2].plot(k, ewma([r["real"] - r["fake"] for r in results[lab]]), label=lab)
    for ax, title in zip(axes, ["realness score of fakes (EWMA)", "realness score of reals (EWMA)",
                                "gap real - fake (EWMA)"]):
        ax.set_xlabel("kimg")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{os.path.basename(args.data)}, seed {args.seed}, tiny StyleGAN2 on CPU")
    fig.tight_layout()
    png = os.path.join(args.outdir, "realness.png")
    fig.savefig(png, dpi=90)
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
