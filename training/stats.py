"""Statistics reported during training: per step (for ``after_step``) and per tick (status line,
``stats.jsonl``, TensorBoard).

``report(name, value)`` only queues device tensors; nothing synchronises with the GPU until the step
ends, when all queued values are reduced in one all-reduce across ranks.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch

from ganstack.training import distributed


class StatCollector:
    def __init__(self, device):
        self.device = torch.device(device)
        self._pending: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._tick: dict[str, list[float]] = {}

    def report(self, name: str, value, mask=None) -> None:
        """Add ``value``'s elements to statistic ``name``; with a boolean ``mask`` of the same shape, only the
        selected ones (without the host sync that indexing ``value[mask]`` costs on a GPU)."""
        v = torch.as_tensor(value).detach().to(self.device, torch.float64).flatten()
        if mask is not None:
            w = torch.as_tensor(mask).detach().to(self.device, torch.float64).flatten()
            if w.shape != v.shape:
                raise ValueError(f"report({name!r}): mask has {w.numel()} elements, value {v.numel()}")
            self._pending[name].append(torch.stack([w.sum(), (v * w).sum(), (v.square() * w).sum()]))
        elif v.numel():
            count = torch.full([], float(v.numel()), dtype=torch.float64, device=self.device)  # no host copy
            self._pending[name].append(torch.stack([count, v.sum(), v.square().sum()]))

    def end_step(self) -> dict[str, float]:
        """Reduce this step's reports over ranks; return ``{name: mean}`` and add them to the tick."""
        names = sorted(self._pending)
        gathered = distributed.all_gather_object(names)
        if any(g != names for g in gathered):
            # Ranks reported different names (a data-dependent branch): reduce the union.
            names = sorted(set().union(*gathered))
        if not names:
            return {}
        rows = []
        for n in names:
            vals = self._pending.get(n)
            rows.append(torch.stack(vals).sum(0) if vals else torch.zeros(3, dtype=torch.float64, device=self.device))
        table = distributed.all_reduce_sum_(torch.stack(rows)).cpu().tolist()
        self._pending.clear()
        means = {}
        for n, (cnt, s, sq) in zip(names, table):
            if cnt > 0:
                means[n] = s / cnt
                acc = self._tick.setdefault(n, [0.0, 0.0, 0.0])
                acc[0] += cnt
                acc[1] += s
                acc[2] += sq
        return means

    def end_tick(self) -> dict[str, dict]:
        """``{name: {num, mean, std}}`` over the tick, then reset (the stats.jsonl format of StyleGAN2-ADA)."""
        out = {}
        for n, (cnt, s, sq) in sorted(self._tick.items()):
            mean = s / cnt
            var = max(sq / cnt - mean * mean, 0.0)
            out[n] = {"num": cnt, "mean": mean, "std": math.sqrt(var)}
        self._tick = {}
        return out
