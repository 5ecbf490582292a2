"""Quality signals for 2-D Gaussian mixtures (VEEGAN / PacGAN protocol), calibrated so that noise fails.

For ``N`` samples and a mixture of ``M`` equally weighted modes of standard deviation ``std``:

* a sample is *high quality* (hq) when it lies within ``n_std = 3`` std of its nearest mode center;
  ``hq_share`` is their share of all samples (exact data: ``1 - exp(-4.5) = 0.989`` in 2-D);
* ``modes_covered`` (the headline count): a mode is covered when its high-quality samples make up at least
  ``min_share = 1/4`` of its ideal share ``1/M`` of *all* samples, i.e. ``hq_count_k >= N / (4 M)``;
* ``kl_modes``: the reverse KL, KL(q || p), of the share ``q`` of samples per nearest mode (every sample is
  assigned, hq or not) against the data's equal weights ``p``: 0 means every mode gets its share and
  log(M) total collapse. It says nothing about quality (uniform noise has a small KL too), so read it
  beside ``hq_share``;
* ``mean_dist``: the mean distance to the nearest center (SMaRt's "on the grid" signal);
* ``modes_loose`` (secondary, **not** a coverage measure): modes with at least one hq sample, the count
  used before. Uniform noise over the data's bounding square scores all 25 modes of ``toy:gaussians25``
  on it at 2500 samples, so it is kept only for comparison with older figures.

Why ``1/4`` of the ideal share, counted against all samples: the threshold must sit far above what noise
puts on a mode and far below what a good generator does. Uniform noise over the square of
``toy:gaussians25`` has ``hq_share`` about 0.024, i.e. 0.024/M per mode, 10x below the threshold; a
generator that covers a mode at half its ideal weight with 90% hq samples holds 0.45/M, almost twice
the threshold. At the protocol's N = 2500 samples the threshold is 25 samples per mode on
``gaussians25`` (13 on ``grid49``), several binomial standard deviations away from both. Counting against
the hq samples instead would let noise pass (its few hq samples are spread evenly over all modes).
"""
from __future__ import annotations

import math

import numpy as np

MIN_SHARE = 0.25  # of the ideal share 1/M, see the module docstring
N_STD = 3.0


def mixture_metrics(samples: np.ndarray, centers: np.ndarray, std: float, min_share: float = MIN_SHARE,
                    n_std: float = N_STD) -> dict:
    """The metrics above for ``samples [N, >=2]`` against ``centers [M, 2]`` of modes with ``std``."""
    samples = np.asarray(samples, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    if samples.ndim != 2 or len(samples) == 0 or samples.shape[1] < 2:
        raise ValueError("samples must be a non-empty [N, 2] array")
    samples = samples[:, :2]
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share is a fraction of the ideal share 1/M in (0, 1], got {min_share}")
    n, m = len(samples), len(centers)
    d = np.linalg.norm(samples[:, None, :] - centers[None, :, :], axis=2)
    nearest = d.argmin(1)
    dist = d[np.arange(n), nearest]
    hq = dist <= n_std * std
    hq_counts = np.bincount(nearest[hq], minlength=m)
    counts = np.bincount(nearest, minlength=m)
    q = counts / n
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = float(np.sum(np.where(q > 0, q * np.log(q * m), 0.0)))
    threshold = min_share * n / m
    return {
        "modes_covered": int((hq_counts >= threshold).sum()),
        "num_modes": m,
        "hq_share": float(hq.mean()),
        "kl_modes": kl,
        "mean_dist": float(dist.mean()),
        "modes_loose": int((hq_counts >= 1).sum()),
        "mode_threshold": int(math.ceil(threshold)),
        "num_samples": int(n),
    }


def uniform_box_samples(centers: np.ndarray, std: float, n: int, seed: int = 0, margin_std: float = N_STD) -> np.ndarray:
    """Uniform noise over the data's bounding square (centers +- ``margin_std`` std): the calibration floor."""
    centers = np.asarray(centers, dtype=np.float64)
    lo = centers.min() - margin_std * std
    hi = centers.max() + margin_std * std
    return np.random.default_rng(seed).uniform(lo, hi, size=(n, 2))
