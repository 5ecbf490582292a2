"""Step-time overhead of plugin stacks relative to the bare backbone, measured in one run.

    python benchmarks/bench_plugin_overhead.py                                   # image backbone, CPU-sized
    python benchmarks/bench_plugin_overhead.py --stacks "none;diffusion" --data toy:gaussians25
    python benchmarks/bench_plugin_overhead.py --res 32 --cfg cifar --cbase 16384 --batch 64 --device cuda

Every stack gets its own Trainer on the same data, config and seed. After ``--warmup`` steps each, the
stacks are timed in interleaved rounds (one step of each stack per round, ``--rounds`` rounds), so
that load changes on a shared machine hit all stacks alike. A step is the whole loop step (Gmain,
Dmain, the lazy R1 phase every 16 steps, G_ema): what a user pays. With the default 16 rounds every
stack times exactly one R1 step; the table reports the mean step time over the rounds (R1 included,
as in a real run), the median (R1 excluded) and the mean's ratio to the first stack (normally
'none').

By default ADA runs at a fixed ``p`` (``--opt ada.p=0.6 --opt ada.adaptive=false``): at the adaptive
start ``p = 0`` the pipeline is skipped and costs nothing, so a fixed, typical ``p`` is the honest
number. Diffusion's cost does not depend on T. ``--opt plugin.key=value`` overrides these.

The Diffusion-GAN paper (Sec. 4.1) reports, for CIFAR-10 on four V100s, 8.0 s (StyleGAN2), 9.8 s
(+ADA) and 9.5 s (Diffusion-StyleGAN2) per 4k images, i.e. ADA +22.5% and diffusion +18.8%.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ganstack.stylegan_base.datasets import open_dataset  # noqa: E402
from toy_compare import parse_assignments, parse_stacks  # noqa: E402
from ganstack.training.config import TrainConfig, resolve  # noqa: E402
from ganstack.training.loop import Trainer  # noqa: E402
from ganstack.training.plugin_manager import PluginStack  # noqa: E402

DEFAULT_OPTS = ["ada.p=0.6", "ada.adaptive=false"]


def build(data, cfg_name, names, options, overrides, device):
    cfg = TrainConfig(data=data, cfg=cfg_name, workers=0, **overrides)
    cfg.mark_user_set({"data", "cfg", "workers"} | set(overrides))
    ds = open_dataset(data, use_labels=False)
    resolve(cfg, ds.info())
    stack = PluginStack(names, {k: v for k, v in options.items() if k in names})
    stack.configure(cfg)
    return Trainer(cfg, stack, ds, run_dir=None, device=device, log=lambda *_: None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stacks", default="none;ada;diffaug;diffusion;ada,diffusion")
    ap.add_argument("--data", default=None, help="default: shapes<res>?n=512 (procedural images)")
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--cfg", default="cifar", help="preset (toy for point data)")
    ap.add_argument("--cbase", type=int, default=4096, help="channel base (CPU-sized default; cifar uses 32768)")
    ap.add_argument("--cmax", type=int, default=128)
    ap.add_argument("--batch", type=int, default=None, help="default: 16 for images (CPU-sized), the preset's for points")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=16, help="timed steps per stack (16 = one lazy R1 period)")
    ap.add_argument("--opt", action="append", default=[], help="plugin.key=value (after the defaults)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = args.data or f"shapes{args.res}?n=512"
    options = parse_assignments(DEFAULT_OPTS + args.opt)
    image = not data.startswith("toy:") and not data.endswith((".npy", ".csv"))
    overrides = {} if args.batch is None else dict(batch=args.batch)
    if image:
        overrides.update(cbase=args.cbase, cmax=args.cmax)
        overrides.setdefault("batch", 16)
    cfg_name = args.cfg if image else "toy"
    stacks = parse_stacks(args.stacks)
    trainers = []
    for label, names, stack_opts in stacks:
        opts = {k: dict(v) for k, v in options.items()}
        for k, v in stack_opts.items():
            opts.setdefault(k, {}).update(v)
        trainers.append((label, build(data, cfg_name, names, opts, overrides, args.device)))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for _, tr in trainers:
        for _ in range(args.warmup):
            tr.step()
    times = {label: [] for label, _ in trainers}
    for _ in range(args.rounds):
        for label, tr in trainers:
            sync()
            t0 = time.perf_counter()
            tr.step()
            sync()
            times[label].append(time.perf_counter() - t0)
    tr0 = trainers[0][1]
    print(f"data {data}  cfg {cfg_name}  batch {tr0.cfg.batch}" + (f"  cbase {args.cbase} cmax {args.cmax}" if image else "")
          + f"  device {args.device}  threads {args.threads}  rounds {args.rounds}")
    print(f"options: {', '.join(DEFAULT_OPTS + args.opt)}")
    base = statistics.mean(times[trainers[0][0]])
    print(f"{'stack':<24s} {'mean ms/step':>12s} {'median':>8s} {'s/kimg':>8s} {'vs ' + trainers[0][0]:>10s}   plugin state")
    for label, tr in trainers:
        mean, med = statistics.mean(times[label]), statistics.median(times[label])
        state = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in tr.stack.report_stats().items())
        print(f"{label:<24s} {mean * 1000:>12.1f} {med * 1000:>8.1f} {mean / tr.cfg.batch * 1000:>8.2f} "
              f"{mean / base:>9.3f}x   {state}")

if __name__ == "__main__":
    main()
