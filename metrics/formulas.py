"""The mathematics of the standard GAN metrics, independent of any feature network.

Every function takes features (or class probabilities) as arrays and returns plain floats, so each
can be checked against a closed form or a direct computation (``tests/test_metrics.py``). The
estimators follow the StyleGAN2-ADA metric code (``metrics/*.py`` of NVlabs/stylegan2-ada-pytorch):

* :func:`frechet_distance` - FID (Heusel et al. 2017) between two Gaussians ``(mu, cov)``;
* :func:`kernel_distance` - KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial
  kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets;
* :func:`precision_recall` - improved precision and recall (Kynkaanniemi et al. 2019) with k-NN
  manifolds (``k = 3`` in ``pr50k3``);
* :func:`inception_score` - IS (Salimans et al. 2016), mean and std over splits;
* :func:`categorical_kl` - KL(q || p) of a histogram, used for mode coverage (StackedMNIST, 2-D mixtures).
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import scipy.linalg
import torch


class FeatureStats:
    """Running statistics of a feature stream: all features and/or their mean and covariance.

    The covariance is the biased (``1/N``) one, accumulated in float64, as StyleGAN2-ADA does.
    """

    def __init__(self, capture_all: bool = False, capture_mean_cov: bool = False, max_items: Optional[int] = None):
        self.capture_all = capture_all
        self.capture_mean_cov = capture_mean_cov
        self.max_items = max_items
        self.num_items = 0
        self.num_features: Optional[int] = None
        self._all: list[np.ndarray] = []
        self._sum: Optional[np.ndarray] = None
        self._outer: Optional[np.ndarray] = None

    def is_full(self) -> bool:
        return self.max_items is not None and self.num_items >= self.max_items

    def append(self, x) -> None:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"features must be [N, F], got shape {list(x.shape)}")
        if self.max_items is not None:
            x = x[: max(self.max_items - self.num_items, 0)]
        if len(x) == 0:
            return
        if self.num_features is None:
            self.num_features = x.shape[1]
            self._sum = np.zeros([self.num_features], np.float64)
            self._outer = np.zeros([self.num_features, self.num_features], np.float64)
        elif x.shape[1] != self.num_features:
            raise ValueError(f"feature width changed from {self.num_features} to {x.shape[1]}")
        self.num_items += len(x)
        if self.capture_all:
            self._all.append(x)
        if self.capture_mean_cov:
            x64 = x.astype(np.float64)
            self._sum += x64.sum(0)
            self._outer += x64.T @ x64

    def get_all(self) -> np.ndarray:
        if not self.capture_all:
            raise RuntimeError("these statistics were collected without capture_all")
        return np.concatenate(self._all) if self._all else np.zeros([0, self.num_features or 0], np.float32)

    def get_mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.capture_mean_cov:
            raise RuntimeError("these statistics were collected without capture_mean_cov")
        mean = self._sum / self.num_items
        cov = self._outer / self.num_items - np.outer(mean, mean)
        return mean, cov

    # Saved as .npz (no pickle), so a cache file can never run code.
    def save(self, path: str) -> None:
        arrays = dict(num_items=np.int64(self.num_items), capture_all=np.bool_(self.capture_all),
                      capture_mean_cov=np.bool_(self.capture_mean_cov))
        if self.capture_all:
            arrays["all"] = self.get_all()
        if self.capture_mean_cov:
            arrays["sum"] = self._sum
            arrays["outer"] = self._outer
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str) -> "FeatureStats":
        with np.load(path, allow_pickle=False) as z:
            s = cls(capture_all=bool(z["capture_all"]), capture_mean_cov=bool(z["capture_mean_cov"]))
            s.num_items = int(z["num_items"])
            if s.capture_all:
                s._all = [z["all"]]
                s.num_features = z["all"].shape[1]
            if s.capture_mean_cov:
                s._sum, s._outer = z["sum"], z["outer"]
                s.num_features = len(s._sum)
        return s


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """``||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2})`` (FID, as in StyleGAN2-ADA)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    m = np.square(mu1 - mu2).sum()
    with warnings.catch_warnings():
        # A singular product (dead feature dimensions, few samples) is expected; it is handled below.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        s = scipy.linalg.sqrtm(cov1 @ cov2)
        if isinstance(s, tuple):  # older scipy returns (sqrtm, errest) with disp=False
            s = s[0]
        if not np.all(np.isfinite(s)):
            # Regularise as pytorch-fid does.
            eps = 1e-6 * np.eye(len(mu1))
            s = scipy.linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
            s = s[0] if isinstance(s, tuple) else s
    return float(np.real(m + np.trace(cov1 + cov2 - 2 * s)))


def kernel_distance(real, fake, num_subsets: int = 100, max_subset_size: int = 1000,
                    rng: Optional[np.random.Generator] = None) -> float:
    """KID: the mean over ``num_subsets`` random subsets of size ``m`` of the unbiased MMD^2

    ``1/(m(m-1)) sum_{i!=j} [k(x_i, x_j) + k(y_i, y_j)] - 2/m^2 sum_{i,j} k(x_i, y_j)``

    with ``k(a, b) = (a.b / d + 1)^3``, ``x`` fakes and ``y`` reals (StyleGAN2-ADA's estimator).
    """
    real, fake = np.asarray(real), np.asarray(fake)  # float64 per subset only: the real set may be 1M x 2048
    rng = rng if rng is not None else np.random.default_rng(0)
    d = real.shape[1]
    m = min(len(real), len(fake), max_subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 real and 2 generated samples")
    t = 0.0
    for _ in range(num_subsets):
        x = fake[rng.choice(len(fake), m, replace=False)].astype(np.float64)
        y = real[rng.choice(len(real), m, replace=False)].astype(np.float64)
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


def _pairwise_dist(rows: torch.Tensor, cols: torch.Tensor, col_batch: int) -> torch.Tensor:
    return torch.cat([torch.cdist(rows, c) for c in cols.split(col_batch)], dim=1)


def knn_radii(manifold: torch.Tensor, k: int, row_batch: int = 10000, col_batch: int = 10000) -> torch.Tensor:
    """Distance from every manifold point to its k-th nearest other point (itself excluded)."""
    out = []
    for rows in manifold.split(row_batch):
        d = _pairwise_dist(rows, manifold, col_batch)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the smallest distance is the point itself
    return torch.cat(out)


def manifold_coverage(manifold: torch.Tensor, probes: torch.Tensor, k: int, row_batch: int = 10000,
                      col_batch: int = 10000) -> float:
    """Share of ``probes`` inside the union of k-NN balls around the ``manifold`` points."""
    radii = knn_radii(manifold, k, row_batch, col_batch)
    inside = []
    for rows in probes.split(row_batch):
        d = _pairwise_dist(rows, manifold, col_batch)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(real, fake, k: int = 3, row_batch: int = 10000, col_batch: int = 10000,
                     device="cpu") -> tuple[float, float]:
    """Improved precision (fakes on the real manifold) and recall (reals on the fake manifold).

    As StyleGAN2-ADA's ``pr50k3`` but in float32 (the official code stores features in float16 to save
    GPU memory, which moves ties by a rounding error). The distances run on ``device``: use the GPU for
    ``pr50k3_full`` (200k reals), which takes hours on a CPU.
    """
    real = torch.as_tensor(np.asarray(real), dtype=torch.float32, device=device)
    fake = torch.as_tensor(np.asarray(fake), dtype=torch.float32, device=device)
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples on each side")
    precision = manifold_coverage(real, fake, k, row_batch, col_batch)
    recall = manifold_coverage(fake, real, k, row_batch, col_batch)
    return precision, recall


def inception_score(probs, num_splits: int = 10) -> tuple[float, float]:
    """``exp(E_x KL(p(y|x) || p(y)))`` per split; returns the mean and std over the splits."""
    probs = np.asarray(probs, np.float64)
    n = len(probs)
    scores = []
    for i in range(num_splits):
        part = probs[i * n // num_splits: (i + 1) * n // num_splits]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(part.mean(0, keepdims=True))), 0.0)
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def categorical_kl(counts, reference=None) -> float:
    """``KL(q || p)`` for the histogram ``counts`` (normalised to ``q``) against ``p`` (uniform if None).

    Empty bins of ``q`` contribute 0; this is the KL of the StackedMNIST and 2-D mixture protocols
    (VEEGAN, PacGAN), 0 for a perfect match and ``log K`` for total collapse onto one of K modes.
    """
    counts = np.asarray(counts, np.float64)
    q = counts / counts.sum()
    p = np.full_like(q, 1.0 / len(q)) if reference is None else np.asarray(reference, np.float64) / np.sum(reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(np.where(q > 0, q * (np.log(q) - np.log(p)), 0.0)))
