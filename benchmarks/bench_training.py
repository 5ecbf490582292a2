"""Training throughput (s/kimg) of the full loop for StyleGAN2-ADA presets, on whatever device is present.

    python benchmarks/bench_training.py                       # cifar @32 and paper256 @256
    python benchmarks/bench_training.py --configs cifar:32 --batch 16 --steps 6
    python benchmarks/bench_training.py --plugins ada         # with a plugin stack

Data is the built-in procedural image set at the preset's resolution (no files needed). Each config
runs ``--warmup`` steps (not timed) and then ``--steps`` timed steps of the real Trainer (all phases,
lazy regularization at its true frequency, G_ema); s/kimg = time / images * 1000. On a GPU the
device is synchronized before reading the clock; peak memory is reported from
``torch.cuda.max_memory_allocated``. Absolute CPU numbers on shared machines are noise: compare
configurations measured in one run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ganstack.stylegan_base.datasets import open_dataset  # noqa: E402
from ganstack.training.config import TrainConfig, resolve  # noqa: E402
from ganstack.training.loop import Trainer  # noqa: E402
from ganstack.training.plugin_manager import PluginStack, parse_stack  # noqa: E402


def measure(preset: str, res: int, batch, steps: int, warmup: int, device: str, plugins: str, amp: str):
    data = f"shapes{res}?n={max(256, 2 * (batch or 64))}"
    cfg = TrainConfig(data=data, cfg=preset, batch=batch, workers=0, amp=amp)
    cfg.mark_user_set({"data", "cfg", "workers", "amp"} | ({"batch"} if batch else set()))
    ds = open_dataset(data, use_labels=False)
    resolve(cfg, ds.info())
    stack = PluginStack(parse_stack(plugins), {})
    stack.configure(cfg)
    tr = Trainer(cfg, stack, ds, run_dir=None, device=device, log=lambda *_: None)
    sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
    # Steps 0 and 16/4 carry the lazy regularizers; start timing at a step where the mix of phases
    # over the timed window is representative by timing a multiple of 16 steps when asked for >= 16.
    for _ in range(warmup):
        tr.step()
    if tr.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.step()
    sync()
    dt = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if tr.device.type == "cuda" else float("nan")
    n_g = sum(p.numel() for p in tr.G.parameters()) / 1e6
    n_d = sum(p.numel() for p in tr.D.parameters()) / 1e6
    return dict(config=f"{preset}@{res}", batch=cfg.batch, steps=steps, sec_per_kimg=dt / (steps * cfg.batch) * 1000,
                ms_per_step=dt / steps * 1000, gpumem_gb=mem, G_M=n_g, D_M=n_d, device=str(tr.device))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="cifar:32,paper256:256", help="preset:resolution,...")
    ap.add_argument("--batch", type=int, default=None, help="override the preset batch (CPU: use small)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 32 on GPU, 4 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 8 on GPU, 1 on CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--plugins", default="", help="plugin stack, e.g. ada")
    ap.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    steps = args.steps or (32 if gpu else 4)
    warmup = args.warmup if args.warmup is not None else (8 if gpu else 1)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    rows = []
    for spec in args.configs.split(","):
        preset, res = spec.split(":")
        r = measure(preset, int(res), args.batch, steps, warmup, args.device, args.plugins, args.amp)
        rows.append(r)
        print(f"{r['config']:<14} batch {r['batch']:<4} {r['sec_per_kimg']:8.2f} s/kimg  {r['ms_per_step']:9.1f} ms/step  "
              f"gpumem {r['gpumem_gb']:.2f} GB  G {r['G_M']:.2f}M D {r['D_M']:.2f}M  [{r['device']}, {steps} steps, "
              f"plugins: {args.plugins or 'none'}, torch {torch.__version__}, threads {torch.get_num_threads()}]",
              flush=True)


if __name__ == "__main__":
    main()
