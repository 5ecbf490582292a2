"""Named metrics for ``ganstack train --metrics`` and ``ganstack metrics``.

Each metric draws fakes through the plugin stack's ``sampler`` hook (so multi-step samplers are
measured correctly) and returns a flat dict of numbers. Results are appended as JSON lines to
``metric-<name>.jsonl`` in the run folder.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import numpy as np
import torch

from stylegan_base.errors import GanstackError

_METRICS: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        _METRICS[name] = fn
        return fn
    return deco


def available() -> list[str]:
    return sorted(_METRICS)


@torch.no_grad()
def draw_samples(G, stack, n: int, device, c_sampler=None, seed: int = 0, batch: int = 256, **G_kwargs) -> torch.Tensor:
    """``n`` fakes through the sampler hook with a private generator (global RNG is forked)."""
    out = []
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        g = torch.Generator(device=device).manual_seed(seed)
        for i in range(0, n, batch):
            m = min(batch, n - i)
            z = torch.randn([m, G.z_dim], generator=g, device=device)
            c = c_sampler(m, g) if c_sampler is not None else torch.zeros([m, getattr(G, "c_dim", 0)], device=device)
            out.append(stack.first("sampler", G=G, z=z, c=c, ctx=None, G_kwargs=G_kwargs).img.float())
    return torch.cat(out)


@register("toy")
def toy_metric(G, stack, dataset, device, cfg=None, num_samples: int = 2500, **_):
    """Modes covered, high-quality share, KL over modes and mean distance for 2-D mixtures."""
    from metrics.toy import mixture_metrics

    info = dataset.info()
    toy = info.get("toy") or {}
    if info["kind"] != "points" or toy.get("centers") is None:
        raise GanstackError(f"Metric 'toy' needs a built-in 2-D mixture (toy:gaussians25, toy:grid49, toy:ring8); "
                            f"{info.get('name')!r} has no known mode centers.")
    x = draw_samples(G, stack, num_samples, device).cpu().numpy()
    return mixture_metrics(x, np.asarray(toy["centers"]), float(toy["std"]))


def compute(name: str, **kwargs) -> dict:
    if name not in _METRICS:
        raise GanstackError(f"Unknown metric {name!r}. Available: {', '.join(available())}.")
    t0 = time.time()
    result = _METRICS[name](**kwargs)
    result["sec"] = time.time() - t0
    return result


def append_result(run_dir: str, name: str, result: dict, snapshot: str, kimg: float) -> str:
    path = os.path.join(run_dir, f"metric-{name}.jsonl")
    with open(path, "at") as f:
        f.write(json.dumps({"metric": name, "results": result, "snapshot": snapshot, "kimg": kimg,
                            "timestamp": time.time()}) + "\n")
    return path
