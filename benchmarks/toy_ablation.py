"""The toy ablation of issue 7: every method alone and the stack diffusion,smart,clr against the plain GAN,
on toy:grid49 and toy:gaussians25, 3 seeds each, one budget for every cell.

    python benchmarks/toy_ablation.py --outdir /tmp/ablation            # 2 datasets x 7 stacks x 3 seeds
    python benchmarks/toy_ablation.py --outdir /tmp/ablation --kimg 100 --datasets grid49 --seeds 0

It only calls ``ganstack.training.ablate.ablate`` (the ``ganstack ablate`` command), once per dataset, so the
same grid is::

    ganstack ablate --outdir OUT/grid49 --data toy:grid49 --kimg 300 --seeds 0-2 \\
        --stacks "none;diffusion;smart;clr;ddgan;cmgan;diffusion,smart,clr" \\
        --opt smart.score=analytic --opt cmgan.teacher=analytic --set image_snap=1000

SMaRt and CM-GAN use the exact (analytic) score of the mixture, as in SMaRt's 2-D experiment; every
other option is the plugin's paper default. Re-running the script resumes an interrupted grid and
skips finished cells. Results: ``OUT/<dataset>/results.md``, ``results.csv``, ``metrics_vs_kimg.png``,
``final_samples.png``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

STACKS = ["none", "diffusion", "smart", "clr", "ddgan", "cmgan", "diffusion,smart,clr"]
SHARED_OPTS = ["smart.score=analytic", "cmgan.teacher=analytic"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--kimg", type=float, default=300)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--datasets", default="grid49,gaussians25")
    ap.add_argument("--stacks", default=";".join(STACKS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from ganstack.training.ablate import ablate, train_settings

    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.datasets.split(","):
        t0 = time.time()
        # image_snap: no per-tick scatter PNGs inside the cells (the ablation draws its own final grid).
        settings = train_settings(dict(data=f"toy:{name}", kimg=args.kimg, workers=0, image_snap=1000))
        ablate(os.path.join(args.outdir, name), args.stacks.split(";"), seeds, settings, shared_opts=SHARED_OPTS,
               log=print)
        print(f"{name}: {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
