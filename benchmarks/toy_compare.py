"""Train several plugin stacks on a 2-D toy mixture with the same seed and budget; print the mixture
metrics table and write one side-by-side scatter PNG.

    python benchmarks/toy_compare.py --data toy:gaussians25 --kimg 1000 --seed 0 \\
        --stacks "none;diffusion" --outdir /tmp/me/toy

    # several seeds, a per-stack option, a training override:
    python benchmarks/toy_compare.py --stacks "none;diffusion;diffusion:diffusion.ts_dist=uniform" \\
        --seed 0,1,2 --opt diffusion.t_max=1000 --train glr=0.0005 --outdir /tmp/me/toy

``--stacks`` separates stacks with ';'. A stack is a comma-separated plugin list ('none' or '' for the
bare backbone), optionally followed by ':'-separated ``plugin.key=value`` options for that stack only.
``--opt plugin.key=value`` (repeatable) applies to every stack that enables the plugin. ``--train
key=value`` (repeatable) overrides a TrainConfig field (batch, glr, dlr, gamma, z_dim, mlp_hidden, ...).

Metrics (``metrics/toy.py``, VEEGAN/PacGAN protocol) are computed on ``--samples`` draws from G_ema
through the stack's sampler: modes covered (a mode holding >= 1/4 of its ideal share as samples within 3 std), the share
of high-quality samples (within 3 std of their nearest mode), KL(q || uniform) over nearest modes.
The PNG has one panel per stack (first seed), fakes over the data in grey. The script also prints
each stack's last plugin statistics (e.g. diffusion/T) and wall time.

Reuse from Python::

    from benchmarks.toy_compare import compare
    rows = compare("toy:gaussians25", kimg=200, seeds=[0], stacks="none;diffusion", outdir="/tmp/me/x")

CPU etiquette: this calls ``torch.set_num_threads(1)``; one 1000-kimg run takes about 30-60 s.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ganstack.metrics.toy import mixture_metrics  # noqa: E402
from ganstack.metrics.registry import draw_samples  # noqa: E402
from ganstack.stylegan_base.datasets import open_dataset  # noqa: E402
from ganstack.training.config import TrainConfig, resolve  # noqa: E402
from ganstack.training.loop import Trainer  # noqa: E402
from ganstack.training.plugin_manager import PluginStack, parse_stack  # noqa: E402
from ganstack.training.snapshots import save_scatter_panels  # noqa: E402


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_assignments(items: Sequence[str]) -> dict:
    """``['diffusion.sigma=0.1', ...]`` -> ``{'diffusion': {'sigma': '0.1'}}`` (values parsed by the plugin)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        plugin, dot, opt = key.strip().partition(".")
        if not sep or not dot or not plugin or not opt:
            raise SystemExit(f"--opt expects plugin.key=value, got {item!r}")
        out.setdefault(plugin, {})[opt] = value.strip()
    return out


def parse_stacks(spec: str) -> list[tuple[str, list[str], dict]]:
    """``'none;diffusion;diffusion:diffusion.t_max=1000'`` -> ``[(label, names, options), ...]``."""
    out = []
    for raw in spec.split(";"):
        raw = raw.strip()
        parts = raw.split(":")
        names = parse_stack(parts[0])
        opts = parse_assignments(parts[1:])
        label = raw if raw else "none"
        if not names and not parts[1:]:
            label = "none"
        out.append((label, names, opts))
    return out


def train_one(data: str, names: list[str], options: dict, kimg: float, seed: int,
              train_overrides: Optional[dict] = None, num_samples: int = 2500, device: str = "cpu",
              log: Callable[[str], None] = print, record_every: int = 40, net: str = "G_ema") -> dict:
    """Train one stack on a toy dataset and return metrics, samples and the plugin-stat trajectory.

    ``net``: which generator the metrics and the scatter plot use, 'G_ema' (default) or 'G'.
    """
    overrides = dict(train_overrides or {})
    cfg = TrainConfig(data=data, cfg="toy", kimg=kimg, seed=seed, workers=0, **overrides)
    cfg.mark_user_set({"data", "cfg", "kimg", "seed", "workers"} | set(overrides))
    ds = open_dataset(data, use_labels=False)
    info = ds.info()
    if not info.get("toy", {}).get("centers"):
        raise SystemExit(f"{data!r} is not a built-in toy mixture with known mode centers (toy:gaussians25, ...).")
    resolve(cfg, info)
    stack = PluginStack(names, {k: v for k, v in options.items() if k in names})
    stack.configure(cfg)
    tr = Trainer(cfg, stack, ds, run_dir=None, device=device, log=lambda *_: None)
    trajectory = []
    t0 = time.time()
    last = {}
    while tr.cur_nimg < cfg.total_nimg:
        last = tr.step()
        if tr.batch_idx % record_every == 0 or tr.cur_nimg >= cfg.total_nimg:
            trajectory.append(dict(kimg=tr.cur_nimg / 1000, **stack.report_stats(),
                                   signs_real=last.get("Loss/signs/real"), signs_fake=last.get("Loss/signs/fake")))
    wall = time.time() - t0
    fake = draw_samples(tr.G_ema if net == "G_ema" else tr.G, stack, num_samples, tr.device).cpu().numpy()
    toy = info["toy"]
    m = mixture_metrics(fake, np.asarray(toy["centers"]), float(toy["std"]))
    return dict(metrics=m, samples=fake, trajectory=trajectory, wall_s=wall, final_stats=stack.report_stats(),
                reference=np.asarray(ds.get_batch(list(range(min(2000, len(ds)))))[0]),
                centers=np.asarray(toy["centers"]))


def compare(data: str = "toy:gaussians25", kimg: float = 1000, seeds: Sequence[int] = (0,),
            stacks: str = "none;diffusion", options: Optional[dict] = None, outdir: Optional[str] = None,
            train_overrides: Optional[dict] = None, num_samples: int = 2500, log: Callable[[str], None] = print,
            png_name: str = "toy_compare.png", net: str = "G_ema") -> list[dict]:
    """Train every stack for every seed; print a table; write ``outdir/png_name`` and ``outdir/results.json``.

    Returns one row per (stack, seed): ``stack, seed, modes, num_modes, hq_share, kl_modes, mean_dist,
    wall_s, final_stats``.
    """
    options = options or {}
    parsed = parse_stacks(stacks)
    rows, panels = [], []
    ref = centers = None
    for label, names, stack_opts in parsed:
        opts = {k: dict(v) for k, v in options.items()}
        for k, v in stack_opts.items():
            opts.setdefault(k, {}).update(v)
        for i, seed in enumerate(seeds):
            res = train_one(data, names, opts, kimg, seed, train_overrides, num_samples, log=log, net=net)
            m = res["metrics"]
            row = dict(stack=label, seed=seed, **{k: m[k] for k in ("modes_covered", "num_modes", "hq_share", "kl_modes",
                                                                     "mean_dist")},
                       wall_s=res["wall_s"], final_stats=res["final_stats"], trajectory=res["trajectory"])
            rows.append(row)
            log(f"{label:<28s} seed {seed}: modes {m['modes_covered']}/{m['num_modes']}  hq {m['hq_share']:.3f}  "
                f"kl {m['kl_modes']:.3f}  ({res['wall_s']:.0f} s)  {_fmt_stats(res['final_stats'])}")
            if i == 0:
                panels.append((f"{label} (seed {seed}): {m['modes_covered']}/{m['num_modes']} modes, "
                               f"hq {m['hq_share']:.2f}", res["samples"]))
                ref, centers = res["reference"], res["centers"]
    log("")
    log(format_table(rows, data, kimg))
    if outdir:
        os.makedirs(outdir, exist_ok=True)
        png = os.path.join(outdir, png_name)
        if save_scatter_panels(panels, png, reference=ref, centers=centers,
                               suptitle=f"{data}, {kimg:g} kimg, {net} samples, same seed and budget per stack"):
            log(f"scatter plot: {png}")
        with open(os.path.join(outdir, "results.json"), "wt") as f:
            json.dump(dict(data=data, kimg=kimg, seeds=list(seeds), stacks=stacks, options=options, net=net,
                           train=train_overrides or {}, rows=rows), f, indent=1, default=float)
    return rows


def _fmt_stats(stats: dict) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())


def format_table(rows: list[dict], data: str, kimg: float) -> str:
    lines = [f"{data}, {kimg:g} kimg: mean over seeds (min-max)",
             f"{'stack':<28s} {'seeds':>5s} {'modes':>16s} {'hq share':>20s} {'KL(modes)':>10s}"]
    for label in dict.fromkeys(r["stack"] for r in rows):
        rs = [r for r in rows if r["stack"] == label]
        modes = [r["modes_covered"] for r in rs]
        hq = [r["hq_share"] for r in rs]
        kl = [r["kl_modes"] for r in rs]
        n = rs[0]["num_modes"]
        lines.append(f"{label:<28s} {len(rs):>5d} {np.mean(modes):>6.1f}/{n} ({min(modes)}-{max(modes)})"
                     f" {np.mean(hq):>8.3f} ({min(hq):.3f}-{max(hq):.3f}) {np.mean(kl):>10.3f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="toy:gaussians25", help="a built-in mixture: toy:gaussians25, toy:grid49, toy:ring8")
    ap.add_argument("--kimg", type=float, default=1000, help="training length per run")
    ap.add_argument("--seed", default="0", help="seed, or comma-separated seeds (each stack runs every seed)")
    ap.add_argument("--stacks", default="none;diffusion", help="';'-separated stacks (see the module docstring)")
    ap.add_argument("--opt", action="append", default=[], help="plugin.key=value for every stack with that plugin")
    ap.add_argument("--train", action="append", default=[], help="key=value TrainConfig override (batch, glr, ...)")
    ap.add_argument("--samples", type=int, default=2500, help="fakes drawn for the metrics")
    ap.add_argument("--net", default="G_ema", choices=["G_ema", "G"], help="generator to evaluate and plot")
    ap.add_argument("--png", default="toy_compare.png", help="file name of the scatter PNG in --outdir")
    ap.add_argument("--outdir", default=None, help="where the PNG and results.json go (keep it outside the repo)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (be kind to shared machines)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in str(args.seed).split(",") if s.strip()]
    train = {}
    for item in args.train:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"--train expects key=value, got {item!r}")
        train[k.strip()] = _value(v.strip())
    compare(args.data, args.kimg, seeds, args.stacks, parse_assignments(args.opt), args.outdir, train,
            args.samples, png_name=args.png, net=args.net)


if __name__ == "__main__":
    main()
