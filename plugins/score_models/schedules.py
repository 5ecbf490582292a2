"""Noise schedules and the conversions between the VP and EDM parameterisations.

Two ways to write the same Gaussian corruption of a clean sample ``x0``:

* **VP** (DDPM, ADM, SMaRt's Eq. 3): ``x_t = alpha_t x0 + sigma_t eps`` with ``alpha_t^2 + sigma_t^2 = 1``
  and an integer timestep ``t`` in ``[0, T)`` of a ``T``-step schedule (``alpha_t^2`` is DDPM's
  ``alphas_cumprod[t]``). A network predicts ``eps_theta(x_t, t)``.
* **EDM** (Karras et al. 2022): ``x = x0 + sigma n`` with the noise level ``sigma`` and a denoiser
  ``D(x; sigma) ~ E[x0 | x]``.

They are one process up to a scale: ``x = x_t / alpha_t`` and ``sigma = sigma_t / alpha_t``, and
the noise is the same, ``eps = n``. Hence

    eps_theta(x_t, t) = (x - D(x; sigma)) / sigma          (x = x_t / alpha_t)
    D(x; sigma)       = x - sigma * eps
    score_x(x; sigma) = (D(x; sigma) - x) / sigma^2 = -eps / sigma
    score_{x_t}(x_t)  = -eps / sigma_t                   (the VP score, Tweedie)

Schedules follow the official ADM code (openai/guided-diffusion ``get_named_beta_schedule``):
``linear`` is DDPM's beta from 1e-4 to 0.02 over 1000 steps (scaled by ``1000 / T`` for other
``T``), ``cosine`` is Nichol & Dhariwal's ``alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2``
discretised into betas clipped at 0.999. Timestep ``t`` is the 0-based index into
``alphas_cumprod`` as in ADM (``t = 0`` is one diffusion step).
"""
from __future__ import annotations

import math
from typing import Union

import torch

SCHEDULES = ("linear", "cosine")
Number = Union[float, int]


def _betas(kind: str, num_steps: int) -> torch.Tensor:
    if kind == "linear":
        scale = 1000.0 / num_steps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
    if kind == "cosine":
        def alpha_bar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
                             for i in range(num_steps)], dtype=torch.float64)
    raise ValueError(f"unknown VP schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")


class VPSchedule:
    """A discrete variance-preserving schedule of ``num_steps`` steps (``linear`` or ``cosine``).

    All tables are float64 on the CPU; the accessors return tensors on the device and in the dtype
    of the ``like`` argument (float32 by default), shaped like ``t``.
    """

    def __init__(self, kind: str = "linear", num_steps: int = 1000):
        if int(num_steps) != num_steps or num_steps < 2:
            raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
        self.kind = kind
        self.num_steps = int(num_steps)
        self.betas = _betas(kind, self.num_steps)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        # EDM noise level of every step: sigma / alpha = sqrt((1 - abar) / abar); increasing in t.
        self.edm_sigmas = ((1.0 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.alphas = self.alphas_cumprod.sqrt()
        self.sigmas = (1.0 - self.alphas_cumprod).sqrt()
        self._device_tables = {}

    def __repr__(self):
        return f"VPSchedule({self.kind!r}, num_steps={self.num_steps})"

    def _lookup(self, table: torch.Tensor, t, like=None) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.is_floating_point():
            if not torch.equal(t, t.round()):
                raise ValueError("VP timesteps are integers in [0, num_steps); for a continuous noise level use the EDM form, ScoreModel.denoise(x, sigma)")
            t = t.long()
        dtype = like.dtype if isinstance(like, torch.Tensor) and like.is_floating_point() else torch.float32
        device = like.device if isinstance(like, torch.Tensor) else t.device
        if t.device.type == "cpu" and ((t < 0).any() or (t >= self.num_steps).any()):
            raise ValueError(f"timesteps must lie in [0, {self.num_steps - 1}]")  # checked where it costs no sync
        key = (id(table), device, dtype)
        cached = self._device_tables.get(key)
        if cached is None:  # one copy per table, device and dtype: no host round trip per call
            cached = self._device_tables[key] = table.to(device=device, dtype=dtype)
        return cached[t.to(device)]

    def alpha(self, t, like=None) -> torch.Tensor:
        """``alpha_t = sqrt(alphas_cumprod[t])``."""
        return self._lookup(self.alphas, t, like)

    def sigma(self, t, like=None) -> torch.Tensor:
        """``sigma_t = sqrt(1 - alphas_cumprod[t])`` (the VP noise std, not the EDM one)."""
        return self._lookup(self.sigmas, t, like)

    def edm_sigma(self, t, like=None) -> torch.Tensor:
        """The EDM noise level of step ``t``: ``sigma_t / alpha_t``."""
        return self._lookup(self.edm_sigmas, t, like)

    def t_from_edm_sigma(self, sigma) -> torch.Tensor:
        """The integer step whose EDM noise level is nearest to ``sigma`` (in log space)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        d = (sigma.cpu().log().unsqueeze(-1) - self.edm_sigmas.log()).abs()
        return d.argmin(-1).to(sigma.device)

    def sample_t(self, n: int, t_min: int, t_max: int, device=None, generator=None) -> torch.Tensor:
        """``n`` integer steps uniform in ``[t_min, t_max]`` (both ends included), global RNG by default."""
        if not 0 <= t_min <= t_max < self.num_steps:
            raise ValueError(f"need 0 <= t_min <= t_max < {self.num_steps}, got [{t_min}, {t_max}]")
        return torch.randint(t_min, t_max + 1, (n,), device=device, generator=generator)


# ------------------------------------------------------------------------------------------------
# Conversions (pure functions; ``sigma``/``alpha`` broadcast against ``x``)

def expand_like(v, x: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample ``[N]`` (or already broadcastable) value shaped ``[N, 1, ..., 1]`` for ``x``."""
    v = torch.as_tensor(v, device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    if v.ndim == 0:
        return v.reshape([1] * x.ndim)
    if v.ndim == 1:
        if v.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"per-sample value of length {v.shape[0]} does not match batch {x.shape[0]}")
        return v.reshape([-1] + [1] * (x.ndim - 1))
    return v


def vp_to_edm(x_t: torch.Tensor, alpha, sigma_t):
    """VP sample ``x_t`` (with its ``alpha_t``, ``sigma_t``) -> EDM ``(x, sigma)``."""
    alpha = expand_like(alpha, x_t)
    sigma_t = expand_like(sigma_t, x_t)
    return x_t / alpha, sigma_t / alpha


def edm_to_vp(x: torch.Tensor, sigma):
    """EDM ``(x, sigma)`` -> VP ``(x_t, alpha_t, sigma_t)`` with ``alpha_t = 1 / sqrt(1 + sigma^2)``."""
    sigma = expand_like(sigma, x)
    alpha = (1.0 + sigma.square()).rsqrt()
    return x * alpha, alpha, sigma * alpha


def eps_from_denoised(x: torch.Tensor, sigma, denoised: torch.Tensor) -> torch.Tensor:
    """``eps = (x - D(x; sigma)) / sigma``."""
    return (x - denoised) / expand_like(sigma, x)


def denoised_from_eps(x: torch.Tensor, sigma, eps: torch.Tensor) -> torch.Tensor:
    """``D(x; sigma) = x - sigma * eps``."""
    return x - expand_like(sigma, x) * eps


def score_from_denoised(x: torch.Tensor, sigma, denoised: torch.Tensor) -> torch.Tensor:
    """``grad_x log p_sigma(x) = (D(x; sigma) - x) / sigma^2`` (Tweedie)."""
    return (denoised - x) / expand_like(sigma, x).square()
