"""Exact denoisers: diffused Gaussian mixtures and the diffused empirical distribution of a dataset.

Both are the ideal ``D(x; sigma) = E[x0 | x0 + sigma n = x]``, so their scores are the ground truth
(SMaRt's toy uses such a "ground-truth score", Sec. 4.2).

* A mixture ``sum_k w_k N(mu_k, s_k^2 I)`` diffused by ``N(0, sigma^2 I)`` is the mixture
  ``sum_k w_k N(mu_k, (s_k^2 + sigma^2) I)``. With the responsibilities
  ``r_k(x) ∝ w_k N(x; mu_k, (s_k^2 + sigma^2) I)``,
  ``D(x; sigma) = sum_k r_k [mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)]``.
* The empirical distribution of points ``y_i`` is the mixture with ``s = 0`` and equal weights:
  ``D(x; sigma) = sum_i softmax_i(-|x - y_i|^2 / (2 sigma^2)) y_i``. It is evaluated in chunks of the
  data with a running log-sum-exp, so memory is ``batch x chunk`` whatever the dataset size.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ganstack.plugins.score_models.base import ScoreModel, sigma_as_tensor


def _sigma_column(sigma, x2d: torch.Tensor) -> torch.Tensor:
    """``sigma`` as ``[N, 1]`` (or ``[1, 1]``) for a flattened batch ``[N, D]``."""
    s = torch.as_tensor(sigma, dtype=x2d.dtype, device=x2d.device)
    if s.ndim == 0:
        return s.reshape(1, 1)
    s = s.reshape(s.shape[0], -1)[:, :1]
    if s.shape[0] not in (1, x2d.shape[0]):
        raise ValueError(f"sigma has {s.shape[0]} entries for a batch of {x2d.shape[0]}")
    return s


class GaussianMixtureScore(ScoreModel):
    """Exact denoiser of a diffused isotropic Gaussian mixture (points in any dimension).

    ``centers [M, D]``, ``std`` (a number or ``[M]``), ``weights [M]`` (uniform by default). With
    ``conditional=True`` the labels ``c [N, M]`` select the component (one-hot; a soft vector
    reweights the components), so the model is the class-conditional score of a labelled toy.
    """

    def __init__(self, centers, std, weights=None, conditional: bool = False):
        super().__init__()
        centers = torch.as_tensor(np.asarray(centers), dtype=torch.float64)
        if centers.ndim != 2:
            raise ValueError(f"centers must be [M, D], got shape {tuple(centers.shape)}")
        m, d = centers.shape
        std = torch.as_tensor(std, dtype=torch.float64).expand(m).clone()
        if (std < 0).any():
            raise ValueError("mixture std must be >= 0")
        weights = torch.full([m], 1.0 / m, dtype=torch.float64) if weights is None else \
            torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        if weights.shape != (m,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be [M] non-negative with a positive sum")
        self.register_buffer("centers", centers)
        self.register_buffer("std", std)
        self.register_buffer("log_weights", (weights / weights.sum()).log())
        self.kind = "points"
        self.point_dim = d
        self.label_dim = m if conditional else 0

    @classmethod
    def from_data_info(cls, data_info: dict, conditional: bool = False) -> "GaussianMixtureScore":
        """The mixture of a built-in toy dataset (``data_info['toy']`` of ``toy:NAME`` datasets)."""
        toy = data_info.get("toy") or {}
        if toy.get("centers") is None:
            raise ValueError(f"dataset {data_info.get('name')!r} is not a built-in Gaussian mixture")
        return cls(toy["centers"], toy["std"], toy.get("mode_weights"), conditional=conditional)

    def _log_resp(self, x2d, sigma, c):
        var = self.std.to(x2d.dtype).square().unsqueeze(0) + sigma.square()  # [N or 1, M]
        d2 = (x2d.unsqueeze(1) - self.centers.to(x2d.dtype).unsqueeze(0)).square().sum(-1)  # [N, M]
        logw = self.log_weights.to(x2d.dtype).unsqueeze(0)
        if c is not None:
            logw = logw + c.to(x2d.dtype).clamp_min(0).log()
        dim = x2d.shape[1]
        log_joint = logw - 0.5 * dim * (2 * math.pi * var).log() - d2 / (2 * var)
        return log_joint, var

    def denoise(self, x, sigma, c=None):
        c = self._check_labels(x, c)
        x2d = x.reshape(x.shape[0], -1)
        s = _sigma_column(sigma, x2d)
        log_joint, var = self._log_resp(x2d, s, c)
        r = torch.softmax(log_joint, dim=1)
        shrink = self.std.to(x2d.dtype).square().unsqueeze(0) / var  # s_k^2 / (s_k^2 + sigma^2)
        out = (r * shrink).sum(1, keepdim=True) * x2d + (r * (1 - shrink)) @ self.centers.to(x2d.dtype)
        return out.reshape(x.shape)

    def log_density(self, x, sigma, c=None):
        """``log p_sigma(x)`` of the diffused mixture (per sample), for checks and plots."""
        c = self._check_labels(x, c)
        x2d = x.reshape(x.shape[0], -1)
        log_joint, _ = self._log_resp(x2d, _sigma_column(sigma, x2d), c)
        return torch.logsumexp(log_joint, dim=1)


class EmpiricalScore(ScoreModel):
    """Exact denoiser of the diffused empirical distribution of ``data [N, ...]`` (the ideal denoiser).

    Works for points ``[N, D]`` and images ``[N, C, H, W]`` alike. ``labels [N, K]`` (one-hot) make it
    class-conditional: ``c`` then restricts the average to the points of class ``argmax(c)``.
    Distances are computed ``chunk`` data points at a time: as direct differences in float32 for
    low-dimensional points (D <= 16), else through a matrix product in float64 (``compute_dtype``),
    because at small ``sigma`` the logits ``|x - y|^2 / 2 sigma^2`` amplify the cancellation error of
    ``|x|^2 + |y|^2 - 2 x.y``.
    """

    def __init__(self, data, labels=None, chunk: int = 8192, compute_dtype=None, kind: Optional[str] = None):
        super().__init__()
        data = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
        if data.ndim < 2 or data.shape[0] == 0:
            raise ValueError("data must be a non-empty [N, ...] array")
        data = data.to(torch.float32)
        self.register_buffer("data", data.reshape(data.shape[0], -1).contiguous())
        self.register_buffer("sq_norms", self.data.to(torch.float64).square().sum(1))
        self.shape = tuple(data.shape[1:])
        self.chunk = int(chunk)
        self.direct = self.data.shape[1] <= 16
        self.compute_dtype = compute_dtype or (torch.float32 if self.direct else torch.float64)
        if kind is None:
            kind = "image" if data.ndim == 4 else "points"
        self.kind = kind
        if kind == "image":
            self.img_channels, self.img_resolution = int(data.shape[1]), int(data.shape[2])
        else:
            self.point_dim = int(np.prod(self.shape))
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
            if labels.ndim != 2 or labels.shape[0] != data.shape[0] or labels.shape[1] == 0:
                raise ValueError("labels must be [N, K] one-hot, one row per data point")
            self.register_buffer("classes", labels.argmax(1))
            self.label_dim = int(labels.shape[1])
        else:
            self.classes = None

    @classmethod
    def from_dataset(cls, dataset, max_points: Optional[int] = None, **kwargs) -> "EmpiricalScore":
        """All (or the first ``max_points``) items of a ganstack dataset, images mapped to [-1, 1]."""
        n = len(dataset) if max_points is None else min(len(dataset), int(max_points))
        x, labels = dataset.get_batch(np.arange(n))
        x = torch.as_tensor(x)
        if dataset.kind == "image":
            x = x.to(torch.float32) / 127.5 - 1
        labels = labels if getattr(dataset, "label_dim", 0) else None
        return cls(x, labels=labels, kind=dataset.kind, **kwargs)

    def denoise(self, x, sigma, c=None):
        c = self._check_labels(x, c)
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"expected samples of shape {self.shape}, got {tuple(x.shape[1:])}")
        cd = self.compute_dtype
        x2d = x.reshape(x.shape[0], -1).to(cd)
        s = _sigma_column(sigma, x2d)
        inv_two_var = 1.0 / (2 * s.square())
        x_sq = None if self.direct else x2d.square().sum(1, keepdim=True)
        want = c.argmax(1).unsqueeze(1) if c is not None else None
        run_max = torch.full([x.shape[0], 1], -math.inf, dtype=cd, device=x.device)
        run_sum = torch.zeros([x.shape[0], 1], dtype=cd, device=x.device)
        run_acc = torch.zeros_like(x2d)
        for i in range(0, self.data.shape[0], self.chunk):
            y = self.data[i:i + self.chunk].to(cd)
            if self.direct:
                d2 = (x2d.unsqueeze(1) - y.unsqueeze(0)).square().sum(-1)
            else:
                d2 = (x_sq + self.sq_norms[i:i + self.chunk].to(cd).unsqueeze(0) - 2 * x2d @ y.T).clamp_min(0)
            logits = -d2 * inv_two_var
            if want is not None:
                logits = logits.masked_fill(self.classes[i:i + self.chunk].unsqueeze(0) != want, -math.inf)
            new_max = torch.maximum(run_max, logits.max(1, keepdim=True).values)
            safe = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
            scale = torch.exp(run_max - safe)
            p = torch.exp(logits - safe)
            run_sum = run_sum * scale + p.sum(1, keepdim=True)
            run_acc = run_acc * scale + p @ y
            run_max = new_max
        if (run_sum == 0).any():
            raise ValueError("no data point has the requested label")
        return (run_acc / run_sum).to(x.dtype).reshape(x.shape)


__all__ = ["GaussianMixtureScore", "EmpiricalScore", "sigma_as_tensor"]
