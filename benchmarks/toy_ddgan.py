"""Vanilla GAN vs Denoising Diffusion GAN on a 2-D mixture, same budget and seed (paper Fig. 6).

Trains each variant with the in-process API (the same code path as ``ganstack train``), then draws
samples from G_ema through the stack's sampler (ddgan: the full T-step chain) and prints modes
covered, high-quality share (within 3 std of a mode) and KL over modes, plus one scatter PNG with a
panel per variant. Variants (``--variants``, comma-separated):

* ``vanilla``          - the MLP backbone with the toy preset (Adam lr 1e-3, betas (0, 0.99)).
* ``ddgan``            - ddgan with the settings its ``configure`` recommends on 2-D data (Appendix C.5:
                         Adam lr 1e-4 for G and D; betas (0.5, 0.9) and R1 gamma 0.05 every step from
                         the image setup, Appendix C.2).
* ``ddgan_toyopt``     - ddgan with the vanilla run's optimiser settings (lr 1e-3, betas (0, 0.99),
                         gamma 0), to separate the method from the optimiser.
* ``vanilla_ddganopt`` - the backbone with ddgan's optimiser settings.

Every variant uses the same MLP size, batch, kimg, EMA half-life (``--ema``, default 1 kimg = the toy
preset's, which is also what ddgan keeps on 2-D data) and seed. The paper's toy run is 50k iterations
at batch 512 (25,600 kimg, Appendix C.5); CPU runs here are 3000 kimg, so lr 1e-4 is undertrained and
``ddgan_toyopt`` shows the method at the vanilla optimiser's speed. Example::

    python benchmarks/toy_ddgan.py --kimg 1000 --seeds 0 --outdir /tmp/ddgan/toy
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

from ganstack.metrics.registry import draw_samples  # noqa: E402
from ganstack.metrics.toy import mixture_metrics  # noqa: E402
from ganstack.stylegan_base.datasets import open_dataset  # noqa: E402
from ganstack.training.config import TrainConfig, resolve  # noqa: E402
from ganstack.training.loop import Trainer  # noqa: E402
from ganstack.training.plugin_manager import PluginStack  # noqa: E402
from ganstack.training.snapshots import save_scatter_panels  # noqa: E402

DDGAN_OPT = dict(glr=1e-4, dlr=1e-4, g_betas=(0.5, 0.9), d_betas=(0.5, 0.9), gamma=0.05, r1_interval=1)
TOY_OPT = dict(glr=1e-3, dlr=1e-3, g_betas=(0.0, 0.99), d_betas=(0.0, 0.99), gamma=0.0)
VARIANTS = {
    "vanilla": ([], {}),
    "ddgan": (["ddgan"], {}),
    "ddgan_toyopt": (["ddgan"], TOY_OPT),
    "vanilla_ddganopt": ([], DDGAN_OPT),
}


def train_one(names, overrides, args, seed, T):
    kw = dict(data=args.data, cfg="toy", kimg=args.kimg, seed=seed, batch=args.batch, mlp_hidden=args.mlp_hidden,
              ema_kimg=args.ema, workers=0, tick=1e9)
    kw.update(overrides)
    cfg = TrainConfig(**kw)
    cfg.mark_user_set(set(kw))
    ds = open_dataset(cfg.data)
    resolve(cfg, ds.info())
    stack = PluginStack(names, {"ddgan": {"steps": T}} if "ddgan" in names else {})
    stack.configure(cfg)
    tr = Trainer(cfg, stack, ds, run_dir=None, device="cpu", log=lambda *_: None)
    t0 = time.time()
    while tr.cur_nimg < cfg.total_nimg:
        tr.step()
    secs = time.time() - t0
    x = draw_samples(tr.G_ema, stack, args.samples, "cpu", seed=1234).numpy()
    info = ds.info()["toy"]
    m = mixture_metrics(x, np.asarray(info["centers"]), float(info["std"]))
    return x, m, secs, np.asarray(info["centers"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="toy:gaussians25")
    p.add_argument("--kimg", type=float, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--mlp-hidden", type=int, default=128)
    p.add_argument("--ema", type=float, default=1.0, help="G_ema half-life in kimg, the same for every variant")
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--seeds", default="0")
    p.add_argument("--samples", type=int, default=2500)
    p.add_argument("--variants", default="vanilla,ddgan,ddgan_toyopt,vanilla_ddganopt")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--outdir", required=True, help="where the PNG and results.jsonl go (not the repo)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.outdir, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    print(f"data {args.data}  kimg {args.kimg:g}  batch {args.batch}  mlp {args.mlp_hidden}x2  ema {args.ema:g} kimg  "
          f"T {args.T}  samples {args.samples}")
    print(f"{'variant':<18} {'seed':>4} {'modes':>6} {'hq_share':>9} {'kl_modes':>9} {'mean_dist':>10} {'train_s':>8}")
    for seed in seeds:
        panels = []
        centers = None
        for v in variants:
            names, overrides = VARIANTS[v]
            x, m, secs, centers = train_one(names, overrides, args, seed, args.T)
            print(f"{v:<18} {seed:>4} {m['modes_covered']:>3}/{m['num_modes']:<2} {m['hq_share']:>9.3f} {m['kl_modes']:>9.3f} "
                  f"{m['mean_dist']:>10.3f} {secs:>8.1f}", flush=True)
            with open(os.path.join(args.outdir, "results.jsonl"), "a") as f:
                f.write(json.dumps(dict(variant=v, seed=seed, kimg=args.kimg, batch=args.batch, T=args.T,
                                        mlp_hidden=args.mlp_hidden, ema=args.ema, train_s=secs, **m)) + "\n")
            np.save(os.path.join(args.outdir, f"samples_{v}_seed{seed}.npy"), x)
            panels.append((f"{v}: {m['modes_covered']}/{m['num_modes']} modes, hq {m['hq_share']:.2f}", x))
        png = os.path.join(args.outdir, f"toy_ddgan_seed{seed}.png")
        if save_scatter_panels(panels, png, centers=centers, lim=5.5,
                               suptitle=f"{args.data}, {args.kimg:g} kimg, seed {seed}"):
            print(f"wrote {png}")


if __name__ == "__main__":
    main()
