"""CPU thread counts for training runs that share a small machine: s/kimg of 1 and of N parallel runs.

Toy runs (the MLP backbone on a 2-D mixture) take about 0.01 s/kimg alone, but slowed to ~1.4 s/kimg
when three other jobs shared 2 cores: every run's intra-op OpenMP threads spin while they wait for
work, and spinning threads take the cores the other runs need. This measures, for each setting, the
s/kimg of one run alone and of ``--parallel`` runs started together (each a fresh process, so the
OpenMP environment is read at import as in a real ``ganstack train``):

* ``threads``: ``torch.set_num_threads`` (1, or all cores);
* ``wait``: ``OMP_WAIT_POLICY`` (``default`` = the runtime's spin-then-sleep, ``PASSIVE`` = sleep at once);
* ``kind``: ``points`` (toy MLP, ``--cfg toy``) or ``image`` (a small StyleGAN2 at 16x16).

    python benchmarks/bench_threads.py                         # points, threads 1/all x wait default/PASSIVE, 1 and 2 runs
    python benchmarks/bench_threads.py --kinds points,image --parallel 1,2,4 --kimg 20

Each number is the median s/kimg over the runs' ticks after the first (warm-up) tick. The reading
depends on what else the machine runs: take the final one on a quiet machine, and compare settings
within one invocation (they run interleaved, setting by setting).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

WORKER = r"""
import json, sys, time
import torch
threads, kind, kimg = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
torch.set_num_threads(threads)
sys.path.insert(0, sys.argv[4])
from ganstack.stylegan_base.datasets import open_dataset
from ganstack.training.config import TrainConfig, resolve
from ganstack.training.loop import Trainer
from ganstack.training.plugin_manager import PluginStack
if kind == "points":
    kw = dict(data="toy:gaussians25", cfg="toy", workers=0)
else:
    kw = dict(data="shapes16?n=256", cfg="stylegan2", cbase=1024, cmax=64, map_depth=2, z_dim=32, w_dim=32,
              batch=16, mbstd_group=4, workers=0)
cfg = TrainConfig(**kw)
cfg.mark_user_set(kw)
ds = open_dataset(cfg.data)
resolve(cfg, ds.info())
stack = PluginStack([], {})
stack.configure(cfg)
tr = Trainer(cfg, stack, ds, run_dir=None, device="cpu", log=lambda *_: None)
tick_n = max(cfg.batch, int(kimg * 1000 / 6))  # 6 ticks
ticks, t0, n0 = [], time.perf_counter(), 0
while tr.cur_nimg < kimg * 1000:
    tr.step()
    if tr.cur_nimg - n0 >= tick_n:
        t = time.perf_counter()
        ticks.append((t - t0) / (tr.cur_nimg - n0) * 1000)
        t0, n0 = t, tr.cur_nimg
print(json.dumps(dict(ticks=ticks, threads=torch.get_num_threads(), batch=cfg.batch)))
"""


def run_group(n: int, threads: int, wait: str, kind: str, kimg: float) -> list[float]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OMP_NUM_THREADS", None)
    if wait == "default":
        env.pop("OMP_WAIT_POLICY", None)
    else:
        env["OMP_WAIT_POLICY"] = wait
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(threads), kind, str(kimg), ROOT],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    out = []
    for p in procs:
        so, se = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"worker failed: {se[-2000:]}")
        ticks = json.loads(so.strip().splitlines()[-1])["ticks"]
        out.append(statistics.median(ticks[1:] if len(ticks) > 2 else ticks))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="points")
    ap.add_argument("--threads", default=None, help="comma list; default 1 and the CPU count")
    ap.add_argument("--waits", default="default,PASSIVE")
    ap.add_argument("--parallel", default="1,2")
    ap.add_argument("--kimg", type=float, default=None, help="per run (default 60 points, 2 image)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cpus})
    rows = []
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    print(f"{cpus} CPUs, load average before: {load}", flush=True)
    for kind in args.kinds.split(","):
        kimg = args.kimg or (60.0 if kind == "points" else 2.0)
        for par in [int(p) for p in args.parallel.split(",")]:
            for t in threads:
                for wait in args.waits.split(","):
                    t0 = time.time()
                    secs = run_group(par, t, wait, kind, kimg)
                    row = dict(kind=kind, parallel=par, threads=t, wait=wait, s_per_kimg=secs,
                               median=statistics.median(secs), wall=time.time() - t0)
                    rows.append(row)
                    print(f"{kind:<7} parallel {par}  threads {t}  OMP_WAIT_POLICY {wait:<8} "
                          f"s/kimg {row['median']:.4f}  (runs: {', '.join(f'{s:.4f}' for s in secs)})", flush=True)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    print(f"load average after: {load}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
