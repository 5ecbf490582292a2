"""Statistics reported during training: per step (for ``after_step``) and per tick (status line,
``stats.jsonl``, TensorBoard).

``report(name, value)`` only queues device tensors. At the end of a step the queued values are reduced on the
device (one all-reduce across ranks) into per-step means, which ``after_step`` receives as a
:class:`StepStats` (reading a value as a float waits for the GPU; ``stats.tensor(name)`` does not), and into
the tick's sums, which stay on the device until the tick ends. The only host copy is one per tick.

On more than one process the ranks first agree on the list of names reported in the step (an object
all-gather: a data-dependent branch may report a name on some ranks only); that collective runs on the host
every step, the one per-step synchronisation that remains (StyleGAN2-ADA avoids it by requiring every rank to
report the same names in the same order; ``mask=`` gives a plugin that guarantee without a sync).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Iterator, Optional

import torch

from ganstack.training import distributed


class StepStats(Mapping):
    """One step's all-reduced means. ``stats.tensor(name)`` is the 0-dim device tensor (NaN when nothing was
    counted) and costs no sync; ``stats[name]``, iteration and ``in`` read the whole table to the host once
    (names with nothing counted are left out then)."""

    def __init__(self, names: list[str], table: Optional[torch.Tensor] = None):
        self._names = names
        self._index = {n: i for i, n in enumerate(names)}
        self._table = table
        self._dev_means: Optional[torch.Tensor] = None
        self._host: Optional[dict[str, float]] = None

    def tensor(self, name: str) -> Optional[torch.Tensor]:
        i = self._index.get(name)
        if i is None:
            return None
        if self._dev_means is None:
            self._dev_means = self._table[:, 1] / self._table[:, 0]
        return self._dev_means[i]

    def _values(self) -> dict[str, float]:
        if self._host is None:
            self._host = {}
            if self._names:
                for n, (cnt, s, _) in zip(self._names, self._table.cpu().tolist()):
                    if cnt > 0:
                        self._host[n] = s / cnt
        return self._host

    def __getitem__(self, name: str) -> float:
        return self._values()[name]

    def __contains__(self, name) -> bool:
        return name in self._values()

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())


class StatCollector:
    def __init__(self, device):
        self.device = torch.device(device)
        self._pending: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._tick: dict[str, torch.Tensor] = {}
        self.status_names: list[str] = []

    def report(self, name: str, value, mask=None, status: bool = False) -> None:
        """Add ``value``'s elements to statistic ``name``; with a boolean ``mask`` of the same shape, only the
        selected ones (without the host sync that indexing ``value[mask]`` costs on a GPU). ``status=True`` also
        shows the tick mean in the status line."""
        if status and name not in self.status_names:
            self.status_names.append(name)
        v = torch.as_tensor(value).detach().to(self.device, torch.float64).flatten()
        if mask is not None:
            w = torch.as_tensor(mask).detach().to(self.device, torch.float64).flatten()
            if w.shape != v.shape:
                raise ValueError(f"report({name!r}): mask has {w.numel()} elements, value {v.numel()}")
            self._pending[name].append(torch.stack([w.sum(), (v * w).sum(), (v.square() * w).sum()]))
        elif v.numel():
            count = torch.full([], float(v.numel()), dtype=torch.float64, device=self.device)  # no host copy
            self._pending[name].append(torch.stack([count, v.sum(), v.square().sum()]))

    def end_step(self) -> StepStats:
        """Reduce this step's reports over ranks on the device; return the step means and add them to the tick."""
        names = sorted(self._pending)
        if distributed.world_size() > 1:
            gathered = distributed.all_gather_object(names)
            if any(g != names for g in gathered):
                # Ranks reported different names (a data-dependent branch): reduce the union.
                names = sorted(set().union(*gathered))
        if not names:
            return StepStats([])
        rows = []
        for n in names:
            vals = self._pending.get(n)
            rows.append(torch.stack(vals).sum(0) if vals else torch.zeros(3, dtype=torch.float64, device=self.device))
        table = distributed.all_reduce_sum_(torch.stack(rows))
        self._pending.clear()
        for i, n in enumerate(names):
            acc = self._tick.get(n)
            self._tick[n] = table[i] if acc is None else acc + table[i]
        return StepStats(names, table)

    def end_tick(self) -> dict[str, dict]:
        """``{name: {num, mean, std}}`` over the tick, then reset (the stats.jsonl format of StyleGAN2-ADA).
        One host copy for the whole table."""
        names = sorted(self._tick)
        out = {}
        if names:
            table = torch.stack([self._tick[n] for n in names]).cpu().tolist()
            for n, (cnt, s, sq) in zip(names, table):
                if cnt <= 0:
                    continue
                mean = s / cnt
                var = max(sq / cnt - mean * mean, 0.0)
                out[n] = {"num": cnt, "mean": mean, "std": math.sqrt(var) if math.isfinite(var) else float("nan")}
        self._tick = {}
        return out

    def status_values(self, tick_record: dict) -> dict:
        """The tick means of the statistics reported with ``status=True``, for the status line."""
        return {n: tick_record[n]["mean"] for n in self.status_names if n in tick_record}
