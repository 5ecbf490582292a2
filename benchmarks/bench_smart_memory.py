"""Memory and time of SMaRt's regularization step, with and without the score network's Jacobian.

The paper (Table 5 / Table 7, Aurora on ImageNet 64) reports 36.1 GB without the regularity, 56.0 GB
with it, and 37.2 GB when the U-Net Jacobian is omitted (DreamFusion's trick). This script measures
the same three cases for one G regularization step here: ``G(z)`` forward, the regularity (or, for
the baseline, a plain ``mean(G(z)^2)`` stand-in), backward into G.

* ``baseline``: G forward + backward only (what a step without the regularity costs);
* ``smart``: Eq. 10 with backpropagation through the score U-Net (``--smart-omit-jacobian false``);
* ``smart-omit``: the surrogate whose gradient is ``(eps_pred - eps) * dx_t/dG`` (no U-Net backward).

Each case runs in its own subprocess (so peak RSS is its own). Reported per case: median seconds per
step over ``--reps`` steps after one warm-up; on CUDA the peak allocated memory of the step
(``torch.cuda.max_memory_allocated``); on the CPU the bytes autograd saves for backward during the
forward pass (counted with ``saved_tensors_hooks``, unique storages) and the process's peak RSS.
The networks are random: memory and time do not depend on the weights.

    python benchmarks/bench_smart_memory.py --res 32 --batch 32 --outdir /tmp/me/mem
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CASES = ("baseline", "smart", "smart-omit")


def build(args, device):
    from ganstack.plugins.score_models import EDMPrecond
    from ganstack.stylegan_base.networks import Generator
    torch.manual_seed(0)
    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=args.res, img_channels=3,
                  mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=args.cbase, channel_max=512)).to(device).train()
    mult = [int(m) for m in args.channel_mult.split(",")]
    score = EDMPrecond({"name": "unet", "kwargs": dict(img_resolution=args.res, img_channels=3,
                                                       model_channels=args.score_channels, channel_mult=mult,
                                                       num_blocks=args.score_blocks)})
    torch.nn.init.normal_(score.net.conv_out.weight, std=0.02)
    score = score.to(device).eval().requires_grad_(False)
    return G, score


class SavedBytes:
    """Bytes of the distinct tensors autograd saves for backward inside the context."""

    def __init__(self):
        self.seen = {}

    def pack(self, t):
        try:
            key = (t.untyped_storage().data_ptr(), t.device)
            self.seen[key] = max(self.seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    @staticmethod
    def unpack(t):
        return t

    @property
    def total(self):
        return sum(self.seen.values())


def run_case(case: str, args) -> dict:
    from ganstack.plugins.score_models import VPSchedule
    from ganstack.plugins.smart import smart_loss
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    G, score = build(args, device)
    sched = VPSchedule("linear")

    def step(count=None):
        G.zero_grad(set_to_none=True)
        z = torch.randn(args.batch, 512, device=device)
        hooks = torch.autograd.graph.saved_tensors_hooks(count.pack, count.unpack) if count else None
        if hooks:
            hooks.__enter__()
        x = G(z, None)
        if case == "baseline":
            loss = x.square().mean()
        else:
            t = sched.sample_t(args.batch, 40, 60, device=device)
            loss = smart_loss(score, x, t, torch.randn_like(x), sched, 0.01,
                              omit_jacobian=(case == "smart-omit"))[0].mean()
        if hooks:
            hooks.__exit__(None, None, None)
        loss.backward()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    count = SavedBytes()
    step(count)
    out = dict(case=case, sec_per_step=float(np.median(times)), saved_for_backward_mb=count.total / 2 ** 20,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if device.type == "cuda":
        out["cuda_peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cbase", type=int, default=16384, help="G capacity (channel_base)")
    ap.add_argument("--score-channels", type=int, default=32, help="U-Net base channels (train-score default 32)")
    ap.add_argument("--channel-mult", default="1,2,2")
    ap.add_argument("--score-blocks", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--outdir", default=None, help="where results.json goes (outside the repo)")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    rows = []
    for case in CASES:
        cmd = [sys.executable, os.path.abspath(__file__), "--case", case] + [a for a in (argv or sys.argv[1:])]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"SMaRt regularization step: G {args.res}x{args.res} (cbase {args.cbase}), batch {args.batch}, "
          f"score U-Net {args.score_channels} ch x ({args.channel_mult}) x {args.score_blocks} blocks, "
          f"device {args.device}, {args.threads} thread(s), median of {args.reps}")
    cuda = "cuda_peak_mb" in rows[0]
    head = f"{'case':<12s} {'s/step':>8s} {'saved for bwd MB':>17s} {'peak RSS MB':>12s}" + (
        f" {'CUDA peak MB':>13s}" if cuda else "")
    print(head)
    for r in rows:
        line = f"{r['case']:<12s} {r['sec_per_step']:>8.3f} {r['saved_for_backward_mb']:>17.1f} {r['peak_rss_mb']:>12.0f}"
        if cuda:
            line += f" {r['cuda_peak_mb']:>13.1f}"
        print(line)
    b, f, o = rows
    key = "cuda_peak_mb" if cuda else "saved_for_backward_mb"
    print(f"ratios vs baseline ({key}): smart {f[key] / b[key]:.2f}x, smart-omit {o[key] / b[key]:.2f}x;  "
          f"time: smart {f['sec_per_step'] / b['sec_per_step']:.2f}x, smart-omit {o['sec_per_step'] / b['sec_per_step']:.2f}x")
    print("paper (Aurora, ImageNet 64, Table 5/7): memory 36.10 -> 56.00 GB (1.55x) with the Jacobian, "
          "37.22 GB (1.03x) without")
    if args.outdir:
        os.makedirs(args.outdir, exist_ok=True)
        with open(os.path.join(args.outdir, "bench_smart_memory.json"), "wt") as fh:
            json.dump(dict(args=vars(args), rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
