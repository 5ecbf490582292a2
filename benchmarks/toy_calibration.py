"""Calibrate the toy metric before trusting it: score trivial baselines on every built-in mixture.

    python benchmarks/toy_calibration.py [--samples 2500] [--seed 0]

Rows: uniform noise over the data's bounding square (centers +- 3 std), the real data, a generator
collapsed onto 3 modes (real samples of modes 0, 5 and 7), and "smeared" samples (10% real, 90% noise).
A metric that scores noise like a good model measures nothing: ``modes_covered`` must be 0 for noise and
M for the data, while ``modes_loose`` (the old count, >= 1 high-quality sample) and ``kl_modes`` on their
own cannot tell noise from data. Takes a second.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ganstack.metrics.toy import mixture_metrics, uniform_box_samples  # noqa: E402
from ganstack.stylegan_base.datasets import open_dataset  # noqa: E402

KEYS = ("modes_covered", "hq_share", "kl_modes", "mean_dist", "modes_loose")


def baselines(name: str, n: int, seed: int) -> dict:
    ds = open_dataset(f"toy:{name}?n={max(40 * n, 20000)}", seed=seed)
    toy = ds.info()["toy"]
    centers, std = np.asarray(toy["centers"]), float(toy["std"])
    rng = np.random.default_rng(seed)
    pts, modes = ds.points, ds.modes
    real = pts[rng.choice(len(pts), n, replace=False)]
    keep = np.nonzero(np.isin(modes, [0, 5, 7]))[0]
    collapsed = pts[rng.choice(keep, n, replace=False)]
    smeared = np.concatenate([real[: n // 10], uniform_box_samples(centers, std, n - n // 10, seed=seed + 1)])
    rows = {"uniform noise": uniform_box_samples(centers, std, n, seed=seed), "real data": real,
            "collapsed (3 modes)": collapsed, "smeared (10% real)": smeared}
    return {k: mixture_metrics(v, centers, std) for k, v in rows.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2500, help="samples per row (the protocol's 2500)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(f"| data | what is scored | modes_covered | hq_share | kl_modes | mean_dist | modes_loose (secondary) |")
    print("|---|---|---|---|---|---|---|")
    for name in ("gaussians25", "grid49", "ring8"):
        for label, m in baselines(name, args.samples, args.seed).items():
            print(f"| toy:{name} | {label} | {m['modes_covered']}/{m['num_modes']} | {m['hq_share']:.3f} | "
                  f"{m['kl_modes']:.3f} | {m['mean_dist']:.3f} | {m['modes_loose']}/{m['num_modes']} |")


if __name__ == "__main__":
    main()
