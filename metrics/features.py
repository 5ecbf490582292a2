"""Feature statistics of real data (cached on disk) and of generated samples (through the sampler hook).

The StyleGAN2-ADA protocol, which every image metric here follows:

* fakes are made by the plugin stack's ``sampler`` hook (so DDGAN's chain and CM-GAN's multistep
  sampler are measured as they generate) and **quantised to uint8** exactly like saved PNGs,
  ``(x * 127.5 + 128).clamp(0, 255)``, before any feature network sees them;
* real statistics use the **full dataset** (no ``max_size`` subset, no x-flips) and are cached on
  disk under a key made of the dataset's content fingerprint, the feature network's SHA-256 and the
  statistic's options, so a changed dataset or another network never reuses stale numbers;
* the generator's cost is measured, not declared: a forward pre-hook counts the rows that pass
  through G while sampling, so ``nfe`` = G evaluations per sample (1 for a GAN, T for DDGAN).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from ganstack.metrics.formulas import FeatureStats
from ganstack.stylegan_base.errors import DatasetError
from ganstack.stylegan_base.progress import progress

CACHE_VERSION = 1


def quantize(img: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images to uint8, as StyleGAN2-ADA's metrics (and PNG snapshots) do."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


class ForwardCounter(contextlib.AbstractContextManager):
    """Counts the samples that pass through ``module.forward`` while active (a forward pre-hook).

    ``rows`` is the total batch size of all calls (the leading dimension of the first tensor
    argument) and ``calls`` the number of calls; ``nfe(n)`` = rows per sample for ``n`` samples.
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.rows = 0
        self.calls = 0
        self._handle = None

    def _hook(self, _module, args, kwargs):
        first = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)), None)
        self.calls += 1
        self.rows += int(first.shape[0]) if first is not None and first.ndim > 0 else 1

    def __enter__(self):
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False

    def nfe(self, num_samples: int) -> float:
        return self.rows / max(num_samples, 1)


def label_sampler(G, dataset) -> Optional[Callable]:
    """For conditional G: labels drawn at random from the dataset (StyleGAN2-ADA's metric protocol)."""
    c_dim = int(getattr(G, "c_dim", 0) or 0)
    if c_dim == 0:
        return None
    if dataset is None or getattr(dataset, "label_dim", 0) != c_dim:
        have = getattr(dataset, "label_dim", 0) if dataset is not None else 0
        raise DatasetError(f"The generator is class-conditional ({c_dim} classes), so the metrics draw labels from "
                           f"the dataset, but the dataset gives {have or 'no'} label columns. Compare with the "
                           f"dataset the model was trained on (--data, with its dataset.json labels).")

    def sample(n, gen):
        idx = torch.randint(len(dataset), (n,), generator=gen, device=gen.device).cpu().tolist()
        return torch.from_numpy(np.stack([dataset.get_label(i) for i in idx]))
    return sample


def iter_fakes(G, stack, n: int, device, seed: int = 0, batch: int = 64, c_sampler: Optional[Callable] = None,
               counter: Optional[ForwardCounter] = None, desc: str = "generating", **G_kwargs) -> Iterator[torch.Tensor]:
    """Yield ``n`` fakes in batches through the ``sampler`` hook (``ctx=None``: the full chain).

    Latents come from a private generator seeded with ``seed``, and the global RNG is forked and
    seeded too (for samplers that draw their own noise), so training is never disturbed and the same
    seed gives the same samples.
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        g = torch.Generator(device=device).manual_seed(seed)
        with (counter if counter is not None else contextlib.nullcontext()), \
                progress(total=n, desc=desc, unit="img") as bar:
            for i in range(0, n, batch):
                m = min(batch, n - i)
                z = torch.randn([m, G.z_dim], generator=g, device=device)
                if c_sampler is not None:
                    c = c_sampler(m, g).to(device)
                else:
                    c = torch.zeros([m, int(getattr(G, "c_dim", 0) or 0)], device=device)
                with torch.no_grad():
                    out = stack.hooks.sampler(G=G, z=z, c=c, ctx=None, G_kwargs=dict(G_kwargs))
                bar.update(m)
                yield out.img.float()


def generated_stats(G, stack, extractor: Callable[[torch.Tensor], torch.Tensor], num_gen: int, device,
                    seed: int = 0, batch: int = 64, c_sampler=None, capture_all=False, capture_mean_cov=False,
                    G_kwargs: Optional[dict] = None) -> tuple[FeatureStats, float]:
    """Features of ``num_gen`` quantised fakes; returns ``(stats, nfe per sample)``."""
    stats = FeatureStats(capture_all=capture_all, capture_mean_cov=capture_mean_cov, max_items=num_gen)
    counter = ForwardCounter(G)
    for img in iter_fakes(G, stack, num_gen, device, seed=seed, batch=batch, c_sampler=c_sampler, counter=counter,
                          desc="features of generated images", **(G_kwargs or {})):
        stats.append(extractor(quantize(img)))
    return stats, counter.nfe(num_gen)


# ------------------------------------------------------------------------------------------------
# Real data

def full_dataset(dataset):
    """The dataset with every item and no x-flips (the ``*_full`` protocol), reopened from its spec."""
    from ganstack.stylegan_base.datasets import open_dataset

    if not dataset.mirror and dataset.max_size is None:
        return dataset
    return open_dataset(dataset.spec, mirror=False, max_size=None, use_labels=False)


def stats_cache_key(dataset_fingerprint: str, extractor_id: str, options: dict) -> str:
    """SHA-256 over what the real statistics depend on: data content, feature network and options."""
    blob = json.dumps(dict(version=CACHE_VERSION, data=dataset_fingerprint, extractor=extractor_id, options=options),
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def stats_cache_path(dataset, extractor_name: str, extractor_id: str, options: dict,
                     cache_dir: Optional[str] = None) -> str:
    from ganstack.metrics.detectors import cache_root

    key = stats_cache_key(dataset.fingerprint(), extractor_id, options)
    folder = cache_dir or os.path.join(cache_root(), "gan-metrics")
    return os.path.join(folder, f"{dataset.name}-{extractor_name}-{key[:24]}.npz")


def real_stats(dataset, extractor: Callable[[torch.Tensor], torch.Tensor], extractor_name: str, extractor_id: str,
               max_items: Optional[int] = None, capture_all=False, capture_mean_cov=False, device="cpu",
               batch: int = 64, cache: bool = True, cache_dir: Optional[str] = None, log=None) -> FeatureStats:
    """Features of the real images (uint8 as stored), cached on disk (see :func:`stats_cache_key`)."""
    dataset = full_dataset(dataset)
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    options = dict(max_items=n, capture_all=capture_all, capture_mean_cov=capture_mean_cov)
    path = stats_cache_path(dataset, extractor_name, extractor_id, options, cache_dir)
    if cache and os.path.isfile(path):
        try:
            return FeatureStats.load(path)
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is only a recomputation
            if log:
                log(f"  the cached statistics {path} are damaged ({type(exc).__name__}); recomputing them")
    if log:
        log(f"  computing {extractor_name} features of {n} real images of {dataset.spec} (cached afterwards)")
    stats = FeatureStats(capture_all=capture_all, capture_mean_cov=capture_mean_cov, max_items=n)
    with progress(total=n, desc=f"{extractor_name} features of real images", unit="img") as bar:
        for i in range(0, n, batch):
            x, _ = dataset.get_batch(np.arange(i, min(i + batch, n)))
            stats.append(extractor(x.to(device)))
            bar.update(x.shape[0])
    if cache and stats.num_items:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.npz"
        stats.save(tmp)
        os.replace(tmp, path)  # atomic: concurrent runs never read half a file
    return stats
