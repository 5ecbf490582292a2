"""CLR-GAN on 2-D toy mixtures: vanilla vs ``clr`` (same seed and budget), and a toy version of the
lambda1/lambda2 ablation grid of the paper's Table 3.

    # vanilla vs clr on both mixtures, two seeds, curves over training:
    python benchmarks/toy_clr.py compare --data toy:gaussians25,toy:grid49 --kimg 500 --seeds 0,1 \\
        --outdir /tmp/me/clr_toy
    # Table 3 grid (lambda1, lambda2) as a toy:
    python benchmarks/toy_clr.py ablate --data toy:gaussians25 --kimg 500 --seeds 0 --outdir /tmp/me/clr_abl
    # a training override (e.g. a 2-D latent, which G can invert exactly):
    python benchmarks/toy_clr.py compare --train z_dim=2 ...

Every ``--eval-kimg`` the script measures, on G_ema through the stack's sampler, the VEEGAN/PacGAN
mixture metrics of ``metrics/toy.py`` (modes covered, share of high-quality samples within 3 std, KL
over modes) and, for runs with the clr head, two CLR quantities with the *training* G and D:

* ``rec``: the reconstruction error ``mean |G(phi(x)) - x|`` on 1024 fixed held-out reals (the paper's
  L_rec, Eq. 8, always L1 here whatever ``--clr-dist`` is);
* ``lat``: the latent error ``mean |phi(G(z)) - z|`` on 1024 fixed latents (Eq. 6). For z ~ N(0, I) a
  head that knows nothing scores E|z| = 0.798.

Outputs: a table per dataset (final values, mean over seeds), ``results.json``, a PNG of the curves
(modes, hq share and rec vs kimg) and a scatter PNG of the final samples, all in ``--outdir``.
The toy preset (``--cfg toy``: 2 x 128 MLPs, z_dim 32, batch 256, lr 1e-3) is used unless ``--train``
overrides it. CPU etiquette: one thread; a clr run costs about 1.6x a vanilla run.
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
from ganstack.training.snapshots import save_scatter_panels  # noqa: E402

# Table 3 of the paper: (lambda1, lambda2); (0, 0) is the baseline, i.e. the vanilla backbone.
TABLE3 = [(0, 0), (1, 0), (0, 1), (5, 1), (10, 1), (15, 1), (5, 5), (5, 0.5)]


@torch.no_grad()
def clr_errors(tr, reals: torch.Tensor, z: torch.Tensor) -> dict:
    plugin = tr.stack.plugins["clr"]
    c = torch.zeros([len(reals), 0])
    latent = plugin.phi(tr.D, tr.D(reals, c, return_features=True)[1])
    rec = (plugin.reconstruct(tr.G, latent, c) - reals).abs().mean().item()
    out = dict(rec=rec)
    if plugin.target == "z":
        fake = tr.G(z, c)
        out["lat"] = (plugin.phi(tr.D, tr.D(fake, c, return_features=True)[1]) - z).abs().mean().item()
    return out


def run(data, names, options, kimg, seed, eval_kimg, train_overrides, num_samples=2500):
    cfg = TrainConfig(data=data, cfg="toy", kimg=kimg, seed=seed, workers=0, **train_overrides)
    cfg.mark_user_set({"data", "cfg", "kimg", "seed", "workers"} | set(train_overrides))
    ds = open_dataset(data, use_labels=False)
    info = ds.info()
    resolve(cfg, info)
    stack = PluginStack(names, options)
    stack.configure(cfg)
    tr = Trainer(cfg, stack, ds, run_dir=None, device="cpu", log=lambda *_: None)
    centers, std = np.asarray(info["toy"]["centers"]), float(info["toy"]["std"])
    # Held-out reals and fixed latents for the CLR errors (own generators: training RNG untouched).
    g = np.random.default_rng(10_000 + seed)
    reals = torch.as_tensor(ds.get_batch(list(g.choice(len(ds), 1024, replace=False)))[0], dtype=torch.float32)
    z = torch.randn([1024, tr.G.z_dim], generator=torch.Generator().manual_seed(20_000 + seed))
    curve = []
    next_eval = 0.0
    t0 = time.time()
    while True:
        if tr.cur_nimg >= next_eval * 1000 or tr.cur_nimg >= cfg.total_nimg:
            final = tr.cur_nimg >= cfg.total_nimg
            fake = draw_samples(tr.G_ema, stack, num_samples, "cpu").numpy()  # same count at every eval
            m = mixture_metrics(fake, centers, std)
            point = dict(kimg=tr.cur_nimg / 1000, modes=m["modes_covered"], hq_share=m["hq_share"], kl_modes=m["kl_modes"])
            if "clr" in names:
                point.update(clr_errors(tr, reals, z))
            curve.append(point)
            next_eval += eval_kimg
            if final:
                break
        tr.step()
    wall = time.time() - t0
    return dict(curve=curve, final=curve[-1], samples=fake, wall_s=wall, num_modes=len(centers),
                reference=np.asarray(ds.get_batch(list(range(2000)))[0]), centers=centers)


def _fmt(x):
    return "-" if x is None else f"{x:.3f}"


def table(rows, data, kimg, num_modes) -> str:
    lines = [f"{data}, {kimg:g} kimg, final values, mean over seeds [per seed]",
             f"{'run':<26s} {'modes':>22s} {'hq share':>22s} {'KL':>7s} {'rec L1':>7s} {'lat L1':>7s} {'s/run':>6s}"]
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = [r for r in rows if r["label"] == label]
        modes = [r["final"]["modes"] for r in rs]
        hq = [r["final"]["hq_share"] for r in rs]
        kl = np.mean([r["final"]["kl_modes"] for r in rs])
        rec = [r["final"].get("rec") for r in rs]
        lat = [r["final"].get("lat") for r in rs]
        mode_s = f"{np.mean(modes):.1f}/{num_modes} [{','.join(map(str, modes))}]"
        hq_s = f"{np.mean(hq):.3f} [{','.join(f'{h:.2f}' for h in hq)}]"
        rec_s = _fmt(None if rec[0] is None else float(np.mean(rec)))
        lat_s = _fmt(None if lat[0] is None else float(np.mean(lat)))
        lines.append(f"{label:<26s} {mode_s:>22s} {hq_s:>22s} {kl:>7.3f} {rec_s:>7s} {lat_s:>7s} "
                     f"{np.mean([r['wall_s'] for r in rs]):>6.0f}")
    return "\n".join(lines)


def plot_curves(rows, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, label in enumerate(labels):
        for j, r in enumerate(r for r in rows if r["label"] == label):
            k = [p["kimg"] for p in r["curve"]]
            kw = dict(color=colors[i % len(colors)], alpha=0.9 if j == 0 else 0.45,
                      label=label if j == 0 else None)
            axes[0].plot(k, [p["modes"] for p in r["curve"]], **kw)
            axes[1].plot(k, [p["hq_share"] for p in r["curve"]], **kw)
            if "rec" in r["curve"][0]:
                axes[2].plot(k, [p["rec"] for p in r["curve"]], **kw)
    for ax, name in zip(axes, ["modes covered", "high-quality share", "reconstruction L1 |G(phi(x)) - x|"]):
        ax.set_xlabel("kimg")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["compare", "ablate"])
    ap.add_argument("--data", default="toy:gaussians25,toy:grid49", help="comma-separated built-in mixtures")
    ap.add_argument("--kimg", type=float, default=500)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--eval-kimg", type=float, default=50)
    ap.add_argument("--opt", action="append", default=[], help="clr.key=value for every clr run (dist=mse, ...)")
    ap.add_argument("--train", action="append", default=[], help="key=value TrainConfig override (z_dim=2, ...)")
    ap.add_argument("--outdir", required=True, help="PNGs and results.json (outside the repo)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    train = {}
    for item in args.train:
        k, _, v = item.partition("=")
        try:
            train[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            train[k.strip()] = v.strip()
    clr_opts = {}
    for item in args.opt:
        k, _, v = item.partition("=")
        clr_opts[k.strip().removeprefix("clr.")] = v.strip()
    if args.mode == "compare":
        runs = [("vanilla", [], {}), ("clr", ["clr"], {"clr": dict(clr_opts)})]
    else:
        runs = [("vanilla (0, 0)" if (l1, l2) == (0, 0) else f"clr l1={l1:g} l2={l2:g}",
                 [] if (l1, l2) == (0, 0) else ["clr"],
                 {} if (l1, l2) == (0, 0) else {"clr": dict(clr_opts, lambda1=l1, lambda2=l2)})
                for l1, l2 in TABLE3]
    os.makedirs(args.outdir, exist_ok=True)
    everything = {}
    for data in args.data.split(","):
        rows, panels = [], []
        for label, names, options in runs:
            for seed in seeds:
                res = run(data, names, options, args.kimg, seed, args.eval_kimg, train)
                f = res["final"]
                print(f"{data} {label:<24s} seed {seed}: modes {f['modes']}/{res['num_modes']} hq {f['hq_share']:.3f} "
                      f"kl {f['kl_modes']:.3f} rec {_fmt(f.get('rec'))} lat {_fmt(f.get('lat'))} "
                      f"({res['wall_s']:.0f} s)", flush=True)
                rows.append(dict(label=label, seed=seed, final=f, curve=res["curve"], wall_s=res["wall_s"]))
                if seed == seeds[0]:
                    panels.append((f"{label}: {f['modes']}/{res['num_modes']} modes, hq {f['hq_share']:.2f}",
                                   res["samples"]))
                    ref, centers, num_modes = res["reference"], res["centers"], res["num_modes"]
        print()
        print(table(rows, data, args.kimg, num_modes))
        print()
        tag = f"{args.mode}_{data.replace(':', '_')}"
        if save_scatter_panels(panels, os.path.join(args.outdir, f"{tag}_samples.png"), reference=ref,
                               centers=centers, suptitle=f"{data}, {args.kimg:g} kimg, seed {seeds[0]}"):
            print(f"samples: {os.path.join(args.outdir, f'{tag}_samples.png')}")
        if plot_curves(rows, os.path.join(args.outdir, f"{tag}_curves.png"), f"{data}: {args.mode}, seeds {seeds}"):
            print(f"curves: {os.path.join(args.outdir, f'{tag}_curves.png')}")
        everything[data] = rows
    with open(os.path.join(args.outdir, f"results_{args.mode}.json"), "wt") as f:
        json.dump(dict(args=vars(args), results=everything), f, indent=1, default=float)


if __name__ == "__main__":
    main()
