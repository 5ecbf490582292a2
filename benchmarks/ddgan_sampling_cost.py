"""Sampling cost of Denoising Diffusion GAN against the one-step StyleGAN2 backbone (paper Table 1).

Builds both generators for the same image size and capacity through the plugin stack (so the ddgan
sampler is the one ``generate`` and the metrics use), then draws 100 samples with each and prints
the number of generator calls (NFE) and the wall time (median of ``--reps``). Weights are untrained:
cost does not depend on them. Example::

    python benchmarks/ddgan_sampling_cost.py --res 32 --cbase 4096 --cmax 128 --T 1,2,4,8

The paper measures 0.21 s (T = 4, NFE 4) against 0.04 s for StyleGAN2 on a V100 for 100 CIFAR-10
images (Table 1); its NCSN++ generator is much larger than StyleGAN2's, so compare ratios, not seconds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ganstack.training.config import TrainConfig, resolve  # noqa: E402
from ganstack.training.nets import build_networks  # noqa: E402
from ganstack.training.plugin_manager import PluginStack  # noqa: E402


def build(names, options, args, device):
    info = {"kind": "image", "resolution": args.res, "num_channels": 3, "label_dim": 0, "name": "bench"}
    kw = dict(data="bench", cfg="cifar", cbase=args.cbase, cmax=args.cmax, batch=64)
    cfg = TrainConfig(**kw)
    cfg.mark_user_set(set(kw))
    resolve(cfg, info)
    stack = PluginStack(names, options)
    stack.configure(cfg)
    torch.manual_seed(0)
    nets = build_networks(stack, cfg, info, device)
    return stack, nets.G_ema


@torch.no_grad()
def time_sampling(stack, G, n, reps, device, fused):
    calls = [0]
    handle = G.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    z = torch.randn([n, G.z_dim], device=device)
    c = torch.zeros([n, 0], device=device)

    def once():
        out = stack.hooks.sampler(G=G, z=z, c=c, ctx=None, G_kwargs=dict(noise_mode="const", fused_modconv=fused))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    once()  # warm-up
    calls[0] = 0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    handle.remove()
    return statistics.median(times), calls[0] // reps, sum(p.numel() for p in G.parameters())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--cbase", type=int, default=4096, help="channel_base of both generators (cifar preset: 32768)")
    p.add_argument("--cmax", type=int, default=128, help="channel_max of both generators (cifar preset: 512)")
    p.add_argument("--n", type=int, default=100, help="samples per draw (the paper times a batch of 100)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--T", default="4", help="comma-separated ddgan step counts")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fused", choices=["auto", "on", "off"], default="auto",
                   help="fused (grouped) modulated convs for both models; auto = on for CUDA, off for CPU, where "
                        "grouped convs over 100 samples are slow")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fused = device.type == "cuda" if args.fused == "auto" else args.fused == "on"
    print(f"device {device}  threads {torch.get_num_threads()}  {args.n} samples of {args.res}x{args.res}x3  "
          f"cbase {args.cbase}  cmax {args.cmax}  fused_modconv {fused}  median of {args.reps}")
    stack, G = build([], {}, args, device)
    base_s, base_nfe, base_params = time_sampling(stack, G, args.n, args.reps, device, fused)
    print(f"{'model':<22} {'NFE':>4} {'params':>9} {'time_s':>8} {'ratio':>6} {'per_call_ratio':>15}")
    print(f"{'StyleGAN2 (one step)':<22} {base_nfe:>4} {base_params / 1e6:>8.2f}M {base_s:>8.3f} {1.0:>6.2f} "
          f"{1.0:>15.2f}")
    for T in [int(x) for x in args.T.split(",")]:
        stack, G = build(["ddgan"], {"ddgan": {"steps": T}}, args, device)
        s, nfe, params = time_sampling(stack, G, args.n, args.reps, device, fused)
        print(f"{'DDGAN T=' + str(T):<22} {nfe:>4} {params / 1e6:>8.2f}M {s:>8.3f} {s / base_s:>6.2f} "
              f"{s / nfe / base_s:>15.2f}")


if __name__ == "__main__":
    main()
