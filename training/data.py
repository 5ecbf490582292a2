"""A deterministic, resumable stream of real batches.

Sample ``g`` of the global stream (all ranks together) is element ``g mod N`` of epoch ``g // N``'s
permutation, drawn from ``seed`` and the epoch number. Rank ``r`` of ``W`` takes ``g = start + k W + r``.
The stream's position is therefore a pure function of the number of samples consumed, and resuming
needs no state beyond ``cur_nimg``.
"""
from __future__ import annotations

import weakref

import numpy as np

import torch


class ResumableSampler(torch.utils.data.Sampler):
    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0,
                 shuffle: bool = True):
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start
        self.shuffle = shuffle
        self._epoch = None
        self._perm = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            if self.shuffle:
                rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
                self._perm = rng.permutation(self.size)
            else:
                self._perm = np.arange(self.size)
            self._epoch = epoch
        return self._perm

    def index(self, g: int) -> int:
        return int(self._permutation(g // self.size)[g % self.size])

    def __iter__(self):
        g = self.start + self.rank
        while True:
            yield self.index(g)
            g += self.world_size


def _to_tensor(x, kind):
    x = torch.as_tensor(x)
    if kind == "image":
        return x.to(torch.float32) / 127.5 - 1
    return x.to(torch.float32)


class RealStream:
    """Batches ``(x, labels)`` on ``device``: images in [-1, 1] or points as given.

    Point data (in memory) is indexed directly; images go through a DataLoader with workers.
    """

    def __init__(self, dataset, batch_gpu: int, device, seed: int, rank: int, world_size: int,
                 start: int, workers: int = 2):
        self.dataset = dataset
        self.device = torch.device(device)
        self.kind = dataset.kind
        self.batch = batch_gpu
        self.sampler = ResumableSampler(len(dataset), seed=seed, rank=rank, world_size=world_size, start=start)
        if self.kind == "points" or workers == 0:
            self._indices = iter(self.sampler)
            self._loader = None
        else:
            from ganstack.training.run import stop_signals_ignored, worker_ignores_stop_signals
            # Workers ignore the stop signals (the main process handles them and checkpoints): a SIGTERM to the
            # whole process group must not kill them first. They inherit the ignored disposition at start.
            with stop_signals_ignored():
                self._loader = iter(torch.utils.data.DataLoader(
                    dataset, sampler=self.sampler, batch_size=batch_gpu, num_workers=workers,
                    pin_memory=self.device.type == "cuda", prefetch_factor=2, persistent_workers=True,
                    worker_init_fn=worker_ignores_stop_signals))
            # The workers ignore SIGTERM, which is also how multiprocessing ends daemonic children at interpreter
            # exit: a stream nobody closed would hang the exit there. Shut them down properly first.
            self._finalizer = weakref.finalize(self, _shutdown_loader, self._loader)

    def __next__(self):
        if self._loader is not None:
            x, c = next(self._loader)
        else:
            idx = [next(self._indices) for _ in range(self.batch)]
            x, c = self.dataset.get_batch(idx)
        x = _to_tensor(x, self.kind).to(self.device, non_blocking=True)
        c = torch.as_tensor(c, dtype=torch.float32).to(self.device, non_blocking=True)
        return x, c

    def __iter__(self):
        return self

    def close(self) -> None:
        """Stop the worker processes (the stream cannot be read afterwards). After this, a worker that died does
        not raise in the main process any more."""
        loader, self._loader = self._loader, None
        if loader is not None:
            self._finalizer()
            del loader
        self._indices = iter(())


def _shutdown_loader(loader) -> None:
    """Stop a DataLoader iterator's worker processes (they exit on their queue's sentinel)."""
    shutdown = getattr(loader, "_shutdown_workers", None)
    if shutdown is not None:
        try:
            shutdown()
        except Exception:  # noqa: BLE001 - workers already gone
            pass
