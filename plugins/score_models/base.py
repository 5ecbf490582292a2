"""The one interface every score model implements: an EDM denoiser ``D(x; sigma, c)``."""
from __future__ import annotations

from typing import Optional

import torch

from ganstack.plugins.score_models.schedules import (VPSchedule, eps_from_denoised, expand_like,
                                            score_from_denoised, vp_to_edm)


class ScoreModel(torch.nn.Module):
    """A (frozen or trainable) denoiser in EDM form, with VP and score helpers.

    Subclasses implement :meth:`denoise`. Everything else derives from it:

    * ``denoise(x, sigma, c=None)`` -> ``D(x; sigma)``, the estimate of ``E[x0 | x]`` for
      ``x = x0 + sigma * n``. ``sigma`` is a number, a per-sample ``[N]`` tensor, or a tensor that
      broadcasts against ``x``. ``c`` is ``[N, label_dim]`` (one-hot class labels) or None.
    * ``eps_edm(x, sigma, c)`` -> ``(x - D) / sigma``, the noise estimate.
    * ``score(x, sigma, c)`` -> ``(D - x) / sigma^2`` = ``grad_x log p_sigma(x)``.
    * ``eps(x_t, t, c, schedule)`` -> ``eps_theta(x_t, t)`` in VP form for integer steps ``t`` of a
      :class:`VPSchedule` (DDPM linear by default): ``x = x_t / alpha_t``, ``sigma = sigma_t / alpha_t``.

    Attributes describing what the model accepts (checked by the loader and the plugins):
    ``kind`` ('image' or 'points'), ``img_resolution``/``img_channels`` (images) or ``point_dim``
    (points), ``label_dim`` (0 = unconditional) and ``sigma_data`` (the data std the model assumes;
    None when it has no such assumption).
    """

    kind: str = "points"
    img_resolution: Optional[int] = None
    img_channels: Optional[int] = None
    point_dim: Optional[int] = None
    label_dim: int = 0
    sigma_data: Optional[float] = None

    def denoise(self, x: torch.Tensor, sigma, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x, sigma, c=None):
        return self.denoise(x, sigma, c)

    # -- derived quantities --------------------------------------------------------------------
    def eps_edm(self, x: torch.Tensor, sigma, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        return eps_from_denoised(x, sigma, self.denoise(x, sigma, c))

    def score(self, x: torch.Tensor, sigma, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        return score_from_denoised(x, sigma, self.denoise(x, sigma, c))

    def eps(self, x_t: torch.Tensor, t, c: Optional[torch.Tensor] = None,
            schedule: Optional[VPSchedule] = None) -> torch.Tensor:
        schedule = schedule or default_schedule()
        x, sigma = vp_to_edm(x_t, schedule.alpha(t, like=x_t), schedule.sigma(t, like=x_t))
        return eps_from_denoised(x, sigma, self.denoise(x, sigma, c))

    # -- description ---------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple:
        """The shape of one sample: ``(C, H, W)`` or ``(D,)``."""
        if self.kind == "image":
            return (self.img_channels, self.img_resolution, self.img_resolution)
        return (self.point_dim,)

    def describe(self) -> str:
        what = (f"{self.img_channels}x{self.img_resolution}x{self.img_resolution} images" if self.kind == "image"
                else f"{self.point_dim}-D points")
        cond = f", conditional on {self.label_dim} labels" if self.label_dim else ", unconditional"
        return f"{type(self).__name__} for {what}{cond}"

    def _check_labels(self, x: torch.Tensor, c: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if c is not None and c.ndim == 2 and c.shape[1] == 0:
            c = None
        if self.label_dim and c is None:
            raise ValueError(f"{self.describe()} needs labels c [N, {self.label_dim}]")
        if c is not None:
            if not self.label_dim:
                raise ValueError(f"{self.describe()} takes no labels, got c of shape {tuple(c.shape)}")
            if c.shape != (x.shape[0], self.label_dim):
                raise ValueError(f"labels must be [N, {self.label_dim}] = [{x.shape[0]}, {self.label_dim}], "
                                 f"got {tuple(c.shape)}")
        return c


_DEFAULT = {}


def default_schedule() -> VPSchedule:
    """DDPM's linear 1000-step schedule (cached)."""
    if "linear" not in _DEFAULT:
        _DEFAULT["linear"] = VPSchedule("linear", 1000)
    return _DEFAULT["linear"]


def sigma_as_tensor(sigma, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` shaped ``[N, 1, ..., 1]`` (or ``[1, ...]`` for a scalar) on ``x``'s device and dtype."""
    return expand_like(sigma, x)
