"""The forward diffusion of Denoising Diffusion GAN and its Gaussian posterior.

Time steps follow the paper: ``t`` in ``{1, ..., T}``, ``x_0`` is data and ``x_T`` is (almost) pure
noise. The betas are the VP-SDE discretisation of Appendix C, Eq. 16:

    sigma^2(t') = 1 - exp(-beta_min t' - 0.5 (beta_max - beta_min) t'^2),   t' = t / T
    alpha_bar_t = 1 - sigma^2(t / T),   beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}

The posterior ``q(x_{t-1} | x_t, x_0)`` is Appendix A, Eq. 11. At ``t = 1`` its variance is zero and
its mean is ``x_0`` exactly, so the last denoising step returns the generator's ``x_0`` prediction.

``t_eps`` reproduces the official code, which evaluates the VP variance at
``t' = t_eps + (1 - t_eps) t / T`` (``t_eps = 1e-3``) and measures ``alpha_bar`` relative to
``t' = t_eps``; ``t_eps = 0`` (the default) is Eq. 16 as printed.
"""
from __future__ import annotations

import math

import torch


def vp_variance(tp: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    """``sigma^2(t')`` of the VP SDE (Appendix C)."""
    return 1 - torch.exp(-beta_min * tp - 0.5 * (beta_max - beta_min) * tp ** 2)


class VPSchedule:
    """Betas, cumulative alphas and posterior coefficients of a ``T``-step VP diffusion.

    Every table is computed in float64 and indexed by the paper's ``t``: entry 0 belongs to ``x_0``
    (``alpha_bar_0 = 1``), entries ``1..T`` to the noisy steps. ``betas[0]`` is unused and set to 0.
    """

    def __init__(self, T: int = 4, beta_min: float = 0.1, beta_max: float = 20.0, t_eps: float = 0.0):
        if int(T) != T or T < 1:
            raise ValueError(f"T must be an integer >= 1, got {T!r}")
        if not 0 <= beta_min <= beta_max:
            raise ValueError(f"need 0 <= beta_min <= beta_max, got {beta_min}, {beta_max}")
        if not 0 <= t_eps < 1:
            raise ValueError(f"t_eps must be in [0, 1), got {t_eps}")
        self.T = int(T)
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        self.t_eps = float(t_eps)
        tp = t_eps + (1 - t_eps) * torch.arange(self.T + 1, dtype=torch.float64) / self.T
        one_minus_var = 1 - vp_variance(tp, self.beta_min, self.beta_max)
        abar = one_minus_var / one_minus_var[0]  # alpha_bar_0 == 1 exactly
        abar[0] = 1.0
        betas = torch.zeros(self.T + 1, dtype=torch.float64)
        betas[1:] = 1 - abar[1:] / abar[:-1]
        self.alpha_bars = abar
        self.betas = betas
        self.alphas = 1 - betas
        # Appendix A, Eq. 11 (entry 0 unused).
        prev = torch.cat([abar[:1], abar[:-1]])
        denom = (1 - abar).clamp(min=1e-300)
        self.post_coef_x0 = prev.sqrt() * betas / denom
        self.post_coef_xt = self.alphas.sqrt() * (1 - prev) / denom
        self.post_var = (1 - prev) / denom * betas
        for name in ("post_coef_x0", "post_coef_xt", "post_var"):
            getattr(self, name)[0] = 0.0
        self._cache: dict = {}

    def describe(self) -> dict:
        """Numbers that identify the schedule (stored in checkpoints)."""
        return {"T": self.T, "beta_min": self.beta_min, "beta_max": self.beta_max, "t_eps": self.t_eps,
                "alpha_bars": [float(a) for a in self.alpha_bars]}

    # ------------------------------------------------------------------------------------------
    def _table(self, name: str, device, dtype) -> torch.Tensor:
        key = (name, str(device), dtype)
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(device=device, dtype=dtype)
        return self._cache[key]

    def _at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table[t]`` broadcast against ``like`` (``t`` is an int64 tensor ``[N]``)."""
        # float32 tables (float64 for float64 inputs): bf16/fp16 coefficients would round 1 - beta_t.
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        vals = self._table(name, like.device, dtype)[t]
        return vals.reshape([-1] + [1] * (like.ndim - 1))

    def check_t(self, t: torch.Tensor, low: int = 1) -> None:
        if t.dtype != torch.int64 or t.ndim != 1:
            raise ValueError(f"t must be an int64 tensor [N], got {t.dtype} {tuple(t.shape)}")
        if t.device.type == "cpu" and len(t) and (int(t.min()) < low or int(t.max()) > self.T):  # no GPU sync
            raise ValueError(f"t must lie in [{low}, {self.T}], got values in [{int(t.min())}, {int(t.max())}]")

    # ------------------------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)`` (Eq. 8); ``t`` may be 0."""
        abar = self._at("alpha_bars", t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def q_sample_pairs(self, x0: torch.Tensor, t: torch.Tensor, generator=None):
        """The training pair ``(x_{t-1}, x_t)``: ``x_{t-1} ~ q(x_{t-1} | x_0)``, then one forward step
        ``x_t ~ N(sqrt(1 - beta_t) x_{t-1}, beta_t I)`` (Eq. 1), for per-sample ``t`` in ``[1, T]``."""
        self.check_t(t)
        n1 = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        n2 = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_prev = self.q_sample(x0, t - 1, n1)
        x_t = self._at("alphas", t, x0).sqrt() * x_prev + self._at("betas", t, x0).sqrt() * n2
        return x_prev, x_t

    def posterior_mean_var(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean and variance of ``q(x_{t-1} | x_t, x_0)`` (Appendix A, Eq. 11)."""
        mean = self._at("post_coef_x0", t, x_t) * x0 + self._at("post_coef_xt", t, x_t) * x_t
        return mean, self._at("post_var", t, x_t)

    def posterior_sample(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                         noise: torch.Tensor = None) -> torch.Tensor:
        """``x_{t-1} ~ q(x_{t-1} | x_t, x_0)``; at ``t = 1`` this is ``x_0`` itself (zero variance)."""
        self.check_t(t)
        mean, var = self.posterior_mean_var(x0, x_t, t)
        if noise is None:
            noise = torch.randn_like(x_t)
        return mean + var.sqrt() * noise

    def embed_index(self, t: torch.Tensor) -> torch.Tensor:
        """The integer fed to the time embeddings: ``t - 1`` in ``[0, T-1]``, as in the official code."""
        return t - 1


def timestep_embedding(index: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer steps (Ho et al. 2020, as used by DDGAN): ``[N, dim]``."""
    half = dim // 2
    if half < 1:
        raise ValueError(f"embedding dim must be >= 2, got {dim}")
    scale = math.log(max_period) / max(half - 1, 1)
    freqs = torch.exp(-scale * torch.arange(half, device=index.device, dtype=torch.float32))
    args = index.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
