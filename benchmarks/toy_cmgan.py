"""CM-GAN on a 2-D mixture: pure GAN vs pure consistency distillation vs CM-GAN (and an alpha sweep),
same f_theta architecture, optimizer, seed and budget, analytic teacher. Prints the mixture metrics
(final and over training, to show stability) and writes one PNG with samples and loss curves.

    python benchmarks/toy_cmgan.py --kimg 300 --batch 64 --outdir /tmp/me/toy_cmgan
    python benchmarks/toy_cmgan.py --configs "gan;cd;cmgan:alpha=0.005;cmgan:alpha=0.025;cmgan:alpha=0.25" ...

``--configs`` separates runs with ';': a ``--cmgan-mode`` (gan, cd, cmgan) optionally followed by
':'-separated cmgan options (``cmgan:alpha=0.25:solver=euler``). ``--opt key=value`` applies a cmgan
option to every run, ``--train key=value`` a TrainConfig field.

Per run it records every ``--record-every`` steps the losses of that step (``Loss/G/loss`` = the
non-saturating loss -log D(fake), ``Loss/D/loss``, the CD term) and every ``--eval-every`` kimg the
metrics of 2500 one-step samples of G_ema (modes within 3 std, high-quality share, KL over modes).
The table reports the final values and the min-max of modes / hq share over the second half of
training (a stable run has a narrow range). The paper's Appendix A plots G's and D's losses (its Fig. 4);
ours are the same quantities per step.

CPU etiquette: one thread; a 600 kimg run at batch 64 (9375 iterations) took 7-9 minutes per config on the
shared 2-core machine.
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

from ganstack.metrics.registry import draw_samples  # noqa: E402
from ganstack.metrics.toy import mixture_metrics  # noqa: E402
from ganstack.stylegan_base.datasets import open_dataset  # noqa: E402
from ganstack.training.config import TrainConfig, resolve  # noqa: E402
from ganstack.training.loop import Trainer  # noqa: E402
from ganstack.training.plugin_manager import PluginStack  # noqa: E402

LOSS_KEYS = ("Loss/G/loss", "Loss/D/loss", "Loss/cmgan/cd", "Loss/cmgan/cd_unweighted", "Loss/signs/real",
             "Loss/signs/fake")


def parse_configs(text: str) -> list:
    out = []
    for raw in text.split(";"):
        parts = [p.strip() for p in raw.strip().split(":") if p.strip()]
        if not parts:
            continue
        opts = {"mode": parts[0]}
        for item in parts[1:]:
            k, sep, v = item.partition("=")
            if not sep:
                raise SystemExit(f"config option {item!r} is not key=value")
            opts[k.strip()] = v.strip()
        out.append((raw.strip(), opts))
    return out


def train_one(data, opts, kimg, seed, batch, train_overrides, record_every, eval_every_kimg, num_samples, log):
    cfg = TrainConfig(data=data, cfg="toy", kimg=kimg, seed=seed, batch=batch, workers=0, **train_overrides)
    cfg.mark_user_set({"data", "cfg", "kimg", "seed", "batch", "workers"} | set(train_overrides))
    ds = open_dataset(data, use_labels=False)
    info = ds.info()
    resolve(cfg, info)
    stack = PluginStack(["cmgan"], {"cmgan": dict(opts)})
    stack.configure(cfg)
    tr = Trainer(cfg, stack, ds, run_dir=None, device="cpu", log=lambda *_: None)
    toy = info["toy"]
    centers, std = np.asarray(toy["centers"]), float(toy["std"])
    curves, evals = [], []
    acc: dict = {}
    next_eval = 0.0
    t0 = time.time()
    while tr.cur_nimg < cfg.total_nimg:
        stats = tr.step()
        for k in LOSS_KEYS:
            if k in stats:
                acc.setdefault(k, []).append(stats[k])
        if tr.batch_idx % record_every == 0:
            curves.append(dict(kimg=tr.cur_nimg / 1000, **{k: float(np.mean(v)) for k, v in acc.items()}))
            acc = {}
        if tr.cur_nimg / 1000 >= next_eval or tr.cur_nimg >= cfg.total_nimg:
            fake = draw_samples(tr.G_ema, stack, num_samples, tr.device, seed=123).cpu().numpy()
            m = mixture_metrics(fake, centers, std)
            evals.append(dict(kimg=tr.cur_nimg / 1000, **{k: m[k] for k in ("modes_covered", "hq_share", "kl_modes")}))
            next_eval += eval_every_kimg
    wall = time.time() - t0
    fake = draw_samples(tr.G_ema, stack, num_samples, tr.device, seed=0).cpu().numpy()
    m = mixture_metrics(fake, centers, std)
    log(f"  done in {wall:.0f} s, {tr.batch_idx} iterations: modes {m['modes_covered']}/{m['num_modes']}, "
        f"hq {m['hq_share']:.3f}, kl {m['kl_modes']:.3f}, {stack.report_stats()}")
    return dict(metrics=m, samples=fake, curves=curves, evals=evals, wall_s=wall, iterations=tr.batch_idx,
                reference=np.asarray(ds.get_batch(np.arange(2000))[0]), centers=centers)


def summarize(label, res) -> dict:
    ev = res["evals"]
    late = ev[len(ev) // 2:]
    m = res["metrics"]
    return dict(config=label, modes=m["modes_covered"], num_modes=m["num_modes"], hq_share=m["hq_share"],
                kl_modes=m["kl_modes"], late_modes_min=min(e["modes_covered"] for e in late),
                late_modes_max=max(e["modes_covered"] for e in late), late_hq_min=min(e["hq_share"] for e in late),
                late_hq_max=max(e["hq_share"] for e in late), wall_s=res["wall_s"], iterations=res["iterations"])


def plot(results, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(results)
    fig, axes = plt.subplots(3, n, figsize=(3.2 * n, 9.6), squeeze=False)
    for j, (label, res) in enumerate(results):
        ax = axes[0, j]
        ax.scatter(res["reference"][:, 0], res["reference"][:, 1], s=1, c="0.8")
        s = res["samples"]
        ax.scatter(s[:, 0], s[:, 1], s=1, c="C3")
        ax.set_xlim(-6, 6)
        ax.set_ylim(-6, 6)
        ax.set_aspect("equal")
        m = res["metrics"]
        ax.set_title(f"{label}\n{m['modes_covered']}/{m['num_modes']} modes, hq {m['hq_share']:.2f}", fontsize=8)
        ax = axes[1, j]
        kimg = [c["kimg"] for c in res["curves"]]
        for key, name in (("Loss/G/loss", "G: -log D(fake)"), ("Loss/D/loss", "D loss")):
            ax.plot(kimg, [c.get(key, np.nan) for c in res["curves"]], label=name, lw=0.8)
        if any("Loss/cmgan/cd" in c for c in res["curves"]):
            ax.plot(kimg, [c.get("Loss/cmgan/cd", np.nan) for c in res["curves"]], label="CD term", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("kimg")
        ax.legend(fontsize=6)
        ax = axes[2, j]
        ek = [e["kimg"] for e in res["evals"]]
        ax.plot(ek, [e["modes_covered"] for e in res["evals"]], label="modes (of 25)")
        ax.plot(ek, [25 * e["hq_share"] for e in res["evals"]], label="25 x hq share")
        ax.set_ylim(0, 26)
        ax.set_xlabel("kimg")
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="toy:gaussians25")
    ap.add_argument("--configs", default="gan;cd;cmgan")
    ap.add_argument("--opt", action="append", default=[], help="cmgan option key=value for every run")
    ap.add_argument("--train", action="append", default=[], help="TrainConfig key=value override")
    ap.add_argument("--kimg", type=float, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record-every", type=int, default=25, help="steps per loss-curve point")
    ap.add_argument("--eval-every", type=float, default=20, help="kimg between metric evaluations")
    ap.add_argument("--samples", type=int, default=2500)
    ap.add_argument("--outdir", required=True, help="where the PNG and results.json go (outside the repo)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    shared = {"teacher": "analytic", "channels": "128", "blocks": "3"}
    for item in args.opt:
        k, _, v = item.partition("=")
        shared[k.strip()] = v.strip()
    train = {}
    for item in args.train:
        k, _, v = item.partition("=")
        train[k.strip()] = ast.literal_eval(v.strip())
    os.makedirs(args.outdir, exist_ok=True)
    results, rows = [], []
    for label, opts in parse_configs(args.configs):
        o = dict(shared)
        o.update(opts)
        if o["mode"] == "gan":
            o.pop("teacher", None)
        print(f"{label}: cmgan options {o}", flush=True)
        res = train_one(args.data, o, args.kimg, args.seed, args.batch, train, args.record_every, args.eval_every,
                        args.samples, log=lambda s: print(s, flush=True))
        results.append((label, res))
        rows.append(summarize(label, res))
        with open(os.path.join(args.outdir, "results.json"), "wt") as f:
            json.dump(dict(args=vars(args), shared=shared, rows=rows,
                           curves={lab: r["curves"] for lab, r in results},
                           evals={lab: r["evals"] for lab, r in results}), f, indent=1, default=float)
    print()
    print(f"{args.data}, {args.kimg:g} kimg, batch {args.batch}, seed {args.seed}; final = G_ema one-step samples")
    print(f"{'config':<22s} {'modes':>6s} {'hq':>6s} {'KL':>6s}   {'modes 2nd half':>14s} {'hq 2nd half':>13s} {'iters':>6s} {'sec':>5s}")
    for r in rows:
        print(f"{r['config']:<22s} {r['modes']:>3d}/{r['num_modes']:<2d} {r['hq_share']:>6.3f} {r['kl_modes']:>6.3f}   "
              f"{r['late_modes_min']:>6d}-{r['late_modes_max']:<7d} {r['late_hq_min']:>6.3f}-{r['late_hq_max']:<6.3f} "
              f"{r['iterations']:>6d} {r['wall_s']:>5.0f}")
    png = os.path.join(args.outdir, "toy_cmgan.png")
    plot(results, png, f"{args.data}, {args.kimg:g} kimg, batch {args.batch}: top samples of G_ema (one step), "
                       f"middle losses per step, bottom metrics over training")
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
