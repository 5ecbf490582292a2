"""Calibrate the StackedMNIST metric before trusting it: score trivial baselines through the digit classifier.

    python benchmarks/stackedmnist_calibration.py --data smnist16.zip --classifier digit-clf.pt [--samples 10000]

``--data`` is a StackedMNIST zip (``ganstack dataset convert --source ../shared/data/mnist --stacked 10000
--resolution 16 --dest smnist16.zip``) and ``--classifier`` the file ``ganstack train-classifier`` wrote.
Rows: real images; uniform noise; Gaussian noise with the data's mean and std; the mean real image plus
noise (a generator that learnt only the average); real images with their pixels shuffled; blank images;
10 real images repeated (a collapsed generator). A metric that scores noise like data measures nothing:
``modes_covered`` must be near 0 for every kind of noise and near 1000 for the data, while the papers'
count (``modes_protocol``, a mode with at least one sample) cannot tell them apart well. The last columns
show how the high-quality share moves with the confidence threshold (the metric uses ``CONFIDENCE``).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ganstack.metrics import digits  # noqa: E402
from ganstack.stylegan_base.datasets import open_dataset  # noqa: E402


def baselines(real: np.ndarray, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = len(real)
    f = real.astype(np.float64)
    mean_img = f.mean(0, keepdims=True)

    def u8(x):
        return np.clip(np.round(x), 0, 255).astype(np.uint8)
    flat = real.reshape(n, real.shape[1], -1)
    shuffled = np.stack([r[:, rng.permutation(flat.shape[2])] for r in flat]).reshape(real.shape)
    return {"real data": real,
            "uniform noise": rng.integers(0, 256, real.shape, dtype=np.uint8),
            "Gaussian noise (data mean, std)": u8(rng.normal(f.mean(), f.std(), real.shape)),
            "mean image + noise (std 20)": u8(mean_img + rng.normal(0, 20, real.shape)),
            "pixel-shuffled real": shuffled,
            "blank": np.zeros_like(real),
            "collapsed (10 real images)": real[rng.integers(0, 10, n)]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="StackedMNIST zip")
    ap.add_argument("--classifier", required=True, help="ganstack train-classifier output")
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = open_dataset(args.data)
    idx = np.random.default_rng(args.seed).choice(len(ds), min(args.samples, len(ds)), replace=False)
    real = np.stack([ds[int(i)][0] for i in idx])
    net, digest = digits.load_classifier(args.classifier)
    taus = (0.3, 0.5, 0.7, 0.9)
    print(f"classifier sha256 {digest[:12]}, {len(real)} samples of {real.shape[1:]}; modes threshold "
          f"{digits.MIN_SHARE} x ideal share, confidence {digits.CONFIDENCE}")
    print("| what is scored | modes_covered | hq_share | kl_uniform | modes_protocol (papers') | "
          + " | ".join(f"hq at p>={t}" for t in taus) + " |")
    print("|---|---|---|---|---|" + "---|" * len(taus))
    for label, x in baselines(real, args.seed).items():
        batches = [torch.from_numpy(x[i:i + 1000]) for i in range(0, len(x), 1000)]
        pred = digits.mode_predictions(net, batches)
        m = digits.stacked_mode_metrics(*digits.mode_histograms(net, None, x.shape[1], predictions=pred))
        probs = torch.from_numpy(pred[1])
        print(f"| {label} | {m['modes_covered']}/{m['num_modes']} | {m['hq_share']:.3f} | {m['kl_uniform']:.3f} | "
              f"{m['modes_protocol']}/{m['num_modes']} | "
              + " | ".join(f"{(probs >= t).float().mean().item():.3f}" for t in taus) + " |", flush=True)


if __name__ == "__main__":
    main()
