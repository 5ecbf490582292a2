"""Sanity numbers of the digit metrics: what a perfect and a collapsed generator score.

    ganstack train-classifier --data ../shared/data/mnist --out /tmp/clf.pt       # once
    python benchmarks/digit_metrics.py --classifier /tmp/clf.pt --mnist ../shared/data/mnist

Only the digits the classifier did *not* train on are used (the held-out part of the same fixed split,
``--holdout`` and ``--seed`` as given to train-classifier), so the numbers are honest:

* classifier accuracy on single held-out digits and on StackedMNIST triples (all three right);
* StackedMNIST modes out of 1000 and KL(q || uniform) for "real" stacked samples made of held-out
  digits (a perfect generator) at 10k and 26k samples, next to the noise floor of a truly uniform
  sampler with as many samples (finite-sample KL), and for a collapsed generator whose red channel only
  ever shows the digits 0-4 (expected 500 modes);
* digits FID between two disjoint halves of the held-out digits (about 0), and against the same
  digits with Gaussian pixel noise or with only one class.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--mnist", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist"))
    ap.add_argument("--holdout", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from ganstack.metrics import digits, formulas

    net, digest = digits.load_classifier(args.classifier)
    images, labels, desc = digits.load_digits(args.mnist)
    held = np.random.RandomState(args.seed).permutation(len(images))[:args.holdout]
    x, y = torch.from_numpy(images[held]), torch.from_numpy(labels[held])
    pred = digits.classify_channels(net, x)[:, 0]
    print(f"classifier {args.classifier} (sha256 {digest[:12]}): held-out digit accuracy "
          f"{(pred == y).float().mean() * 100:.2f}% on {len(y)} digits of {desc}")

    def stacked(n, rng, red_classes=None):
        pool_r = np.arange(len(y)) if red_classes is None else np.nonzero(np.isin(y.numpy(), red_classes))[0]
        idx = np.stack([rng.choice(pool_r, n), rng.integers(0, len(y), n), rng.integers(0, len(y), n)], 1)
        return idx

    def batches(idx, bs=2000):
        for i in range(0, len(idx), bs):
            yield x[torch.from_numpy(idx[i:i + bs])][:, :, 0]  # [B, 3, 32, 32] uint8

    rng = np.random.default_rng(1)
    for n in (10000, 26000):
        t0 = time.time()
        idx = stacked(n, rng)
        counts = digits.mode_histogram(net, batches(idx), 3)
        true_modes = (y[idx] * torch.tensor([100, 10, 1])).sum(1).numpy()
        pred_modes = np.concatenate([digits.mode_of(digits.classify_channels(net, b)).numpy() for b in batches(idx)])
        floor = np.mean([formulas.categorical_kl(np.random.default_rng(s).multinomial(n, np.full(1000, 1e-3)))
                         for s in range(20)])
        print(f"StackedMNIST from held-out digits, {n} samples: modes {int((counts > 0).sum())}/1000, "
              f"KL {formulas.categorical_kl(counts):.4f} (uniform sampler noise floor {floor:.4f}), "
              f"triple accuracy {(pred_modes == true_modes).mean() * 100:.2f}%  [{time.time() - t0:.0f} s]")
    idx = stacked(26000, rng, red_classes=[0, 1, 2, 3, 4])
    counts = digits.mode_histogram(net, batches(idx), 3)
    print(f"Collapsed generator (red channel only 0-4), 26000 samples: modes {int((counts > 0).sum())}/1000 "
          f"(expected 500), KL {formulas.categorical_kl(counts):.4f} (log 2 = {np.log(2):.4f})")

    def fid(a, b):
        fa = digits.channel_features(net, a).double().numpy()
        fb = digits.channel_features(net, b).double().numpy()
        return formulas.frechet_distance(fa.mean(0), np.cov(fa, rowvar=False, bias=True),
                                         fb.mean(0), np.cov(fb, rowvar=False, bias=True))
    half = len(x) // 2
    a, b = x[:half], x[half:]
    noisy = (b.float() + torch.randn(b.shape, generator=torch.Generator().manual_seed(0)) * 0.2 * 255)
    noisy = noisy.clamp(0, 255).to(torch.uint8)
    ones = x[y == 1]
    print(f"digits FID: held-out half vs other half {fid(a, b):.3f}; vs the other half with N(0, 0.2) pixel noise "
          f"{fid(a, noisy):.3f}; vs only the digit 1 ({len(ones)} images) {fid(a, ones):.3f}")


if __name__ == "__main__":
    main()
