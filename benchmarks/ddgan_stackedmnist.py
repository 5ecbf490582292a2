"""StackedMNIST mode coverage of trained runs (paper Table 3), with the real data as the reference.

Counts modes out of 1000 (calibrated against noise: ``benchmarks/stackedmnist_calibration.py``), the
high-quality share and KL(q || uniform) with the project's digit classifier (``metrics/digits.py``, the
``stackedmnist`` metric; the papers' loose count is the ``protocol`` column), for the real images and for
each run's G_ema drawn through its checkpoint's sampler (ddgan: the T-step chain; ``nfe`` says how many generator
calls per sample). The real-data row, on the same number of samples, is the ceiling this protocol
can show with this classifier. Also writes an 8x8 sample grid per run to ``--outdir``.

The whole pipeline on a CPU (scaled down; the paper trains 150k iterations at batch 128 on 32x32)::

    ganstack dataset convert --source ../shared/data/mnist --stacked 10000 --resolution 16 --dest /tmp/me/smnist16.zip
    ganstack train-classifier --data ../shared/data/mnist --out /tmp/me/digit-clf.pt
    for p in none ddgan; do
      ganstack train --data /tmp/me/smnist16.zip --cfg cifar --cbase 512 --cmax 32 --batch 32 --kimg 60 \\
          --plugins $p --snap 1000 --tick 2 --workers 0 --seed 0 --outdir /tmp/me/smnist
    done
    python benchmarks/ddgan_stackedmnist.py --classifier /tmp/me/digit-clf.pt \\
        --runs "/tmp/me/smnist/00000-*,/tmp/me/smnist/00001-*" --num 10000 --outdir /tmp/me/smnist
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ganstack.metrics import registry  # noqa: E402
from ganstack.metrics.digits import load_classifier, mode_histograms, stacked_mode_metrics  # noqa: E402
from ganstack.stylegan_base.datasets import open_dataset  # noqa: E402
from ganstack.training.checkpoint import resolve_resume  # noqa: E402
from ganstack.training.inference import load_model  # noqa: E402
from ganstack.training.snapshots import save_image_grid  # noqa: E402


def real_reference(dataset, net, num, seed=0, batch=500):
    idx = np.random.RandomState(seed).choice(len(dataset), size=min(num, len(dataset)), replace=False)

    def batches():
        for i in range(0, len(idx), batch):
            yield torch.from_numpy(np.stack([dataset[int(j)][0] for j in idx[i:i + batch]]))
    return stacked_mode_metrics(*mode_histograms(net, batches(), dataset.info()["num_channels"]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="comma-separated run folders or checkpoints (globs allowed)")
    p.add_argument("--classifier", required=True)
    p.add_argument("--num", type=int, default=10000, help="samples per model (the protocol uses 26k)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--outdir", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.outdir, exist_ok=True)
    runs = [r for spec in args.runs.split(",") for r in sorted(glob.glob(spec))]
    net, digest = load_classifier(args.classifier)
    opts = registry.MetricOptions(classifier=args.classifier, seed=0, batch=250)
    rows, data_spec = [], None
    for run in runs:
        path = resolve_resume(run)
        model = load_model(path, device="cpu")
        data_spec = model.cfg.data
        dataset = open_dataset(model.cfg.data)
        t0 = time.time()
        res = registry.compute(f"stackedmnist{args.num}", G=model.G, stack=model.stack, dataset=dataset, device="cpu",
                               cfg=model.cfg, opts=opts)
        name = ",".join(model.stack.names) or "none"
        rows.append((name, model.checkpoint["cur_nimg"] / 1000, res, time.time() - t0))
        with torch.random.fork_rng():
            torch.manual_seed(0)
            z = torch.randn([64, model.G.z_dim], generator=torch.Generator().manual_seed(0))
            img = model.sample(z, noise_mode="const")
        png = os.path.join(args.outdir, f"stackedmnist-{name}-{os.path.basename(os.path.dirname(path))}.png")
        save_image_grid(img, png, (8, 8))
        print(f"wrote {png}", flush=True)
    ref = real_reference(open_dataset(data_spec), net, args.num)
    print(f"classifier sha256 {digest[:12]}  data {data_spec}")
    print(f"{'model':<12} {'kimg':>6} {'modes':>9} {'hq':>6} {'KL':>7} {'protocol':>9} {'nfe':>4} {'samples':>8} "
          f"{'eval_s':>7}")

    def line(name, kimg, res, nfe, secs):
        print(f"{name:<12} {kimg:>6} {res['modes_covered']:>4}/{res['num_modes']} {res['hq_share']:>6.3f} "
              f"{res['kl_uniform']:>7.3f} {res['modes_protocol']:>4}/{res['num_modes']} {nfe:>4} "
              f"{res['num_samples']:>8} {secs:>7}")
    line("real data", "", ref, "", "")
    for name, kimg, res, secs in rows:
        line(name, f"{kimg:.1f}", res, f"{res['nfe']:g}", f"{secs:.1f}")


if __name__ == "__main__":
    main()
