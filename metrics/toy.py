"""Quality signals for 2-D Gaussian mixtures (VEEGAN / PacGAN protocol).

* a sample is *high quality* when it lies within ``3 std`` of its nearest mode center;
* a mode is *covered* when at least ``min_count`` high-quality samples have it as nearest center;
* ``kl_modes`` is the reverse KL, KL(q || p), of the share ``q`` of samples per nearest mode against the
  data's equal mode weights ``p``: 0 means every mode gets its share and log(M) means total collapse;
* ``mean_dist`` is the mean distance to the nearest center (SMaRt's "on the grid" signal).
"""
from __future__ import annotations

import numpy as np


def mixture_metrics(samples: np.ndarray, centers: np.ndarray, std: float, min_count: int = 1,
                    n_std: float = 3.0) -> dict:
    samples = np.asarray(samples, dtype=np.float64)[:, :2]
    centers = np.asarray(centers, dtype=np.float64)
    if samples.ndim != 2 or len(samples) == 0:
        raise ValueError("samples must be a non-empty [N, 2] array")
    d = np.linalg.norm(samples[:, None, :] - centers[None, :, :], axis=2)
    nearest = d.argmin(1)
    dist = d[np.arange(len(samples)), nearest]
    hq = dist <= n_std * std
    m = len(centers)
    hq_counts = np.bincount(nearest[hq], minlength=m)
    counts = np.bincount(nearest, minlength=m)
    q = counts / counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = float(np.sum(np.where(q > 0, q * np.log(q * m), 0.0)))
    return {
        "modes": int((hq_counts >= min_count).sum()),
        "num_modes": m,
        "hq_share": float(hq.mean()),
        "kl_modes": kl,
        "mean_dist": float(dist.mean()),
        "num_samples": int(len(samples)),
    }
