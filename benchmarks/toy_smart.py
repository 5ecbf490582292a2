"""SMaRt on the 49-Gaussian grid (paper Sec. 4.2, Fig. 2) and a small version of its Table 3 ablation.

The toy uses the exact ("ground-truth") score of the diffused mixture (``--smart-score analytic``).
It reuses ``benchmarks/toy_compare.py`` (``train_one``) to train every stack with the same seed and budget.

    # vanilla vs Diffusion-GAN vs SMaRt, one PNG with the three scatter plots:
    python benchmarks/toy_smart.py compare --kimg 1000 --seed 0 --outdir /tmp/me/toy

    # lambda x t-interval x lazy frequency (Table 3's knobs), shorter runs:
    python benchmarks/toy_smart.py ablation --kimg 300 --weights 0.01,0.1,0.3 --intervals 4,8,32 \\
        --t-ranges 5-15,40-60,225-275 --outdir /tmp/me/ablation

Metrics (``metrics/toy.py``): modes covered out of 49 (a mode holding >= 1/4 of its ideal share as samples within 3 std
= 0.03 of it), the share of samples within 3 std of a grid point, and the mean distance to the
nearest grid point (SMaRt's "on the grid" signal; a uniform spread over the square gives ~0.38).
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

from benchmarks.toy_compare import parse_assignments, train_one  # noqa: E402
from ganstack.training.snapshots import save_scatter_panels  # noqa: E402


def _table(rows, title):
    lines = [title, f"{'stack':<20s} {'seeds':>5s} {'modes/49':>9s} {'within 3 std':>13s} {'mean dist':>10s} "
                    f"{'KL(modes)':>10s}"]
    for label in dict.fromkeys(r["stack"] for r in rows):
        rs = [r for r in rows if r["stack"] == label]
        lines.append(f"{label:<20s} {len(rs):>5d} {np.mean([r['modes_covered'] for r in rs]):>9.1f} "
                     f"{np.mean([r['hq_share'] for r in rs]):>13.4f} {np.mean([r['mean_dist'] for r in rs]):>10.4f} "
                     f"{np.mean([r['kl_modes'] for r in rs]):>10.3f}")
    return "\n".join(lines)


def run_compare(args):
    """vanilla, diffusion and smart (one stack per lambda) with the same seeds and budget."""
    seeds = [int(s) for s in args.seed.split(",")]
    extra = parse_assignments(args.opt)
    stacks = [("vanilla", [], {}), ("diffusion", ["diffusion"], {k: v for k, v in extra.items() if k == "diffusion"})]
    for w in args.weight.split(","):
        stacks.append((f"smart lambda {w}", ["smart"], {"smart": dict(score="analytic", weight=w, interval=args.interval,
                                                                      t_min=args.t_min, t_max=args.t_max)}))
    rows, panels, ref, centers = [], [], None, None
    for label, names, opts in stacks:
        for i, seed in enumerate(seeds):
            res = train_one(args.data, names, opts, args.kimg, seed, num_samples=args.samples, log=lambda *_: None)
            m = res["metrics"]
            rows.append(dict(stack=label, seed=seed, **{k: m[k] for k in ("modes_covered", "hq_share", "mean_dist", "kl_modes")},
                             wall_s=res["wall_s"], final_stats=res["final_stats"]))
            print(f"{label:<18s} seed {seed}: modes {m['modes_covered']:>2d}/49  within-3-std {m['hq_share']:.4f}  "
                  f"mean dist {m['mean_dist']:.4f}  KL {m['kl_modes']:.3f}  ({res['wall_s']:.0f} s)", flush=True)
            if i == 0:
                panels.append((f"{label}: {m['modes_covered']}/49 modes, {100 * m['hq_share']:.1f}% on grid, "
                               f"dist {m['mean_dist']:.3f}", res["samples"]))
                ref, centers = res["reference"], res["centers"]
    print()
    print(_table(rows, f"{args.data}, {args.kimg:g} kimg, seeds {args.seed}: smart with t in [{args.t_min}, "
                       f"{args.t_max}], every {args.interval} steps, exact mixture score"))
    if args.outdir:
        os.makedirs(args.outdir, exist_ok=True)
        png = os.path.join(args.outdir, "toy_smart_compare.png")
        if save_scatter_panels(panels, png, reference=ref, centers=centers,
                               suptitle=f"{args.data}, {args.kimg:g} kimg, seed {seeds[0]}, G_ema samples"):
            print(f"scatter plot: {png}")
        with open(os.path.join(args.outdir, "compare.json"), "wt") as f:
            json.dump(dict(data=args.data, kimg=args.kimg, seeds=seeds, rows=rows), f, indent=1, default=float)


def run_ablation(args):
    weights = [float(w) for w in args.weights.split(",")]
    intervals = [int(k) for k in args.intervals.split(",")]
    t_ranges = [tuple(int(v) for v in r.split("-")) for r in args.t_ranges.split(",")]
    seed = int(args.seed.split(",")[0])
    results = []
    base = train_one(args.data, [], {}, args.kimg, seed, num_samples=args.samples, log=lambda *_: None)
    print(f"vanilla: modes {base['metrics']['modes_covered']}/49, within-3-std {base['metrics']['hq_share']:.4f}, "
          f"mean dist {base['metrics']['mean_dist']:.4f} ({base['wall_s']:.0f} s)", flush=True)
    panels = [("vanilla", base["samples"])]
    for k in intervals:
        for lo, hi in t_ranges:
            for w in weights:
                opts = {"smart": dict(score="analytic", weight=w, interval=k, t_min=lo, t_max=hi)}
                t0 = time.time()
                res = train_one(args.data, ["smart"], opts, args.kimg, seed, num_samples=args.samples,
                                log=lambda *_: None)
                m = res["metrics"]
                results.append(dict(interval=k, t=[lo, hi], weight=w, modes=m["modes_covered"], hq_share=m["hq_share"],
                                    mean_dist=m["mean_dist"], kl_modes=m["kl_modes"], wall_s=time.time() - t0))
                print(f"freq {k:>3d}  t [{lo:>3d}, {hi:>3d}]  lambda {w:<6g}: modes {m['modes_covered']:>2d}/49  "
                      f"within-3-std {m['hq_share']:.4f}  mean dist {m['mean_dist']:.4f}  ({time.time() - t0:.0f} s)",
                      flush=True)
                if k == 8 and (lo, hi) == (40, 60):
                    panels.append((f"smart freq {k}, t [{lo},{hi}], lambda {w}", res["samples"]))
    print()
    print(f"{args.data}, {args.kimg:g} kimg, seed {seed}. Each cell: modes/49 | within-3-std share | mean dist to "
          f"nearest grid point (vanilla: {base['metrics']['modes_covered']} | {base['metrics']['hq_share']:.4f} | "
          f"{base['metrics']['mean_dist']:.4f}). Lambda = {', '.join(map(str, weights))} left to right.")
    for k in intervals:
        print(f"Freq. = {k}")
        for lo, hi in t_ranges:
            cells = [r for r in results if r["interval"] == k and tuple(r["t"]) == (lo, hi)]
            print(f"  t in [{lo:>3d}, {hi:>3d}]: " + "   ".join(
                f"{r['modes']:>2d} | {r['hq_share']:.3f} | {r['mean_dist']:.3f}" for r in cells))
    if args.outdir:
        os.makedirs(args.outdir, exist_ok=True)
        with open(os.path.join(args.outdir, "ablation.json"), "wt") as f:
            json.dump(dict(data=args.data, kimg=args.kimg, seed=seed, vanilla=base["metrics"], rows=results), f,
                      indent=1, default=float)
        png = os.path.join(args.outdir, "toy_smart_ablation.png")
        if save_scatter_panels(panels, png, reference=base["reference"], centers=base["centers"]):
            print(f"scatter plot: {png}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["compare", "ablation"])
    ap.add_argument("--data", default="toy:grid49")
    ap.add_argument("--kimg", type=float, default=1000)
    ap.add_argument("--seed", default="0", help="seed(s), comma-separated (ablation uses the first)")
    ap.add_argument("--samples", type=int, default=2500)
    ap.add_argument("--weight", default="0.01", help="compare: lambda, or several comma-separated (one smart stack "
                                                     "each; paper CIFAR default 0.01)")
    ap.add_argument("--interval", type=int, default=8, help="compare: lazy frequency (paper: 8)")
    ap.add_argument("--t-min", type=int, default=40)
    ap.add_argument("--t-max", type=int, default=60)
    ap.add_argument("--opt", action="append", default=[], help="plugin.key=value for every stack with that plugin")
    ap.add_argument("--weights", default="0.01,0.1,0.3")
    ap.add_argument("--intervals", default="4,8,32")
    ap.add_argument("--t-ranges", default="5-15,40-60,225-275")
    ap.add_argument("--outdir", default=None, help="PNG/JSON destination (outside the repo)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    (run_compare if args.mode == "compare" else run_ablation)(args)


if __name__ == "__main__":
    main()
