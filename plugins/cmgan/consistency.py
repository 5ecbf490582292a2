"""The consistency-model pieces of CM-GAN: the Karras grid, ``f_theta``, the teacher ODE step, the weighting
lambda(t_n), the target-network EMA and the one-step / multistep samplers.

Notation follows the CM-GAN paper (Lu et al. 2023, Sec. 2.2 and 3): the grid is ascending,
``sigma_min = t_1 < t_2 < ... < t_N = T = sigma_max``; a training pair is ``(t_n, t_{n+1})`` with
``n ~ U{1, ..., N-1}``. The official consistency-model code (openai/consistency_models,
``cm/karras_diffusion.py``) indexes the same grid in descending order (index 0 = sigma_max); its
sampler indices ``--ts`` are used as they are by :func:`multistep_sample`.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from ganstack.plugins.score_models.edm import build_arch
from ganstack.training.nets import update_ema


# ------------------------------------------------------------------------------------------------
# Noise levels

def karras_grid(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                dtype=torch.float64, device=None) -> torch.Tensor:
    """The ascending Karras discretisation ``t_1 < ... < t_N`` (EDM Eq. 5, CM Sec. 4):

    ``t_i = (sigma_min^(1/rho) + (i - 1) / (N - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``.
    ``t_1 == sigma_min`` and ``t_N == sigma_max`` exactly.
    """
    if num_steps < 2:
        raise ValueError(f"the grid needs at least 2 noise levels, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    i = torch.arange(num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    t = (lo + i / (num_steps - 1) * (hi - lo)) ** rho
    t[0], t[-1] = sigma_min, sigma_max  # exact end points (rounding of the power would move them)
    return t.to(dtype=dtype, device=device)


def cd_weighting(t_n, T: float, alpha: float, gamma: float, iteration) -> torch.Tensor:
    """CM-GAN's weighting, paper Eq. 6: ``lambda(t_n) = exp(alpha (t_n - T) (1 - gamma^I))``.

    Equals 1 at ``I = 0`` and at ``t_n = T``; for ``t_n < T`` it decays with the iteration count ``I``
    towards ``exp(alpha (t_n - T))`` (the consistency constraint loosens as training proceeds, faster
    for small ``t_n``).
    """
    t_n = torch.as_tensor(t_n, dtype=torch.float64)
    progress = 1.0 - float(gamma) ** float(iteration)
    return torch.exp(float(alpha) * (t_n - float(T)) * progress)


# ------------------------------------------------------------------------------------------------
# f_theta

def consistency_scalings(sigma: torch.Tensor, sigma_min: float, sigma_data):
    """``(c_skip, c_out, c_in, c_noise)`` of the consistency parameterisation (CM Appendix C).

    ``c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2)`` and ``c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2)``
    make ``f(x, sigma_min) = x`` exactly; ``c_in = 1 / sqrt(sigma^2 + sd^2)`` and ``c_noise = ln(sigma) / 4`` are EDM's.
    """
    sd2 = sigma_data * sigma_data
    shifted = sigma - sigma_min
    c_skip = sd2 / (shifted * shifted + sd2)
    c_out = shifted * sigma_data / (sigma * sigma + sd2).sqrt()
    c_in = 1 / (sigma * sigma + sd2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class ConsistencyFunction(torch.nn.Module):
    """``f_theta(x, sigma, c) = c_skip(sigma) x + c_out(sigma) F_theta(c_in(sigma) x, c_noise(sigma), c)``.

    ``F_theta`` is one of the score-model networks (:class:`ganstack.plugins.score_models.edm.UNet` for images,
    :class:`~ganstack.plugins.score_models.edm.MLPNet` for points), so a ``train-score`` teacher of the same
    architecture can initialise it, as consistency distillation does. ``sigma_data`` is a buffer: it
    travels with the weights (checkpoints, G_ema) and may be set once the teacher is known.

    As a GAN generator: ``z_dim`` is the number of values of one sample, ``G(eps) = f(sigma_max eps,
    sigma_max)`` (:meth:`generate`). ``forward`` is one network evaluation, so the metrics' NFE counter
    counts one per call.
    """

    w_dim = None  # no W space (ganstack.api.GeneratorProtocol)
    num_ws = None

    def __init__(self, arch: dict, sample_shape: Sequence[int], c_dim: int = 0, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, sigma_data: float = 0.5):
        super().__init__()
        self.arch, self.net = build_arch(arch, "f_theta")
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.z_dim = int(math.prod(self.sample_shape))
        self.c_dim = int(c_dim)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.register_buffer("sigma_data", torch.tensor(float(sigma_data)))
        self.is_image = len(self.sample_shape) == 3
        self.img_channels = self.sample_shape[0] if self.is_image else None
        self.img_resolution = self.sample_shape[-1] if self.is_image else None
        self.out_dim = None if self.is_image else self.sample_shape[0]

    def _sigma(self, sigma, x: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if s.ndim == 0:
            s = s.expand(x.shape[0])
        return s.reshape([x.shape[0]] + [1] * (x.ndim - 1))

    def forward(self, x: torch.Tensor, sigma, c: Optional[torch.Tensor] = None, **ignored) -> torch.Tensor:
        sigma = self._sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = consistency_scalings(sigma, self.sigma_min, self.sigma_data.to(x.device))
        labels = c if (self.c_dim and c is not None and c.shape[1]) else None
        F_x = self.net(c_in * x, c_noise.flatten(), labels)
        return c_skip * x + c_out * F_x.to(x.dtype)

    def latent_to_sample_shape(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[1:] != (self.z_dim,):
            raise ValueError(f"f_theta takes latents eps of {self.z_dim} values (one per output value), "
                             f"got {tuple(z.shape)}")
        return z.reshape([z.shape[0], *self.sample_shape])

    def generate(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The one-step GAN generator ``G(eps) = f(sigma_max eps, sigma_max)``, ``eps = z ~ N(0, I)``."""
        return self(self.sigma_max * self.latent_to_sample_shape(z), self.sigma_max, c)


# ------------------------------------------------------------------------------------------------
# The teacher's probability-flow ODE

Denoiser = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def _col(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t.reshape([x.shape[0]] + [1] * (x.ndim - 1))


@torch.no_grad()
def ode_step(denoise: Denoiser, x: torch.Tensor, t_cur, t_next, c=None, solver: str = "heun") -> torch.Tensor:
    """One step of the PF-ODE ``dx/dt = (x - D(x; t)) / t`` (= ``-t grad log p_t``, paper Eq. 3) from ``t_cur``
    to ``t_next`` with the teacher's denoiser ``D``: Euler, or Heun (EDM Algorithm 1, the official CD solver).
    """
    t_cur, t_next = _col(t_cur, x), _col(t_next, x)
    d = (x - denoise(x, t_cur.flatten(), c)) / t_cur
    x_euler = x + (t_next - t_cur) * d
    if solver == "euler":
        return x_euler
    if solver != "heun":
        raise ValueError(f"unknown ODE solver {solver!r}; expected heun or euler")
    d_next = (x_euler - denoise(x_euler, t_next.flatten(), c)) / t_next
    return x + (t_next - t_cur) * (0.5 * d + 0.5 * d_next)


def cd_distance(online_out: torch.Tensor, target_fn, denoise: Denoiser, x_hi: torch.Tensor, t_hi, t_lo, c=None,
                solver: str = "heun", norm: str = "sum") -> torch.Tensor:
    """The per-sample distance of paper Eq. 4 (without lambda): ``d(f_theta(x_{t_{n+1}}, t_{n+1}),
    f_theta_bar(x_hat_{t_n}, t_n))`` where ``online_out = f_theta(x_hi, t_hi)`` (carries the graph),
    ``x_hat_{t_n}`` is one teacher ODE step from ``(x_hi, t_hi)`` to ``t_lo`` and ``target_fn(x, t, c)`` is the
    target network (no gradient). ``d`` is the squared L2 distance summed (``sum``, Eq. 4 as printed) or
    averaged (``mean``) over the sample's values.
    """
    with torch.no_grad():
        x_lo = ode_step(denoise, x_hi, t_hi, t_lo, c, solver)
        target = target_fn(x_lo, t_lo, c)
    sq = (online_out - target).square().flatten(1)
    if norm == "mean":
        return sq.mean(1)
    if norm == "sum":
        return sq.sum(1)
    raise ValueError(f"unknown CD norm {norm!r}; expected mean or sum")


# ------------------------------------------------------------------------------------------------
# Target network

@torch.no_grad()
def update_target(target: torch.nn.Module, online: torch.nn.Module, mu: float) -> None:
    """``theta_bar <- mu theta_bar + (1 - mu) theta`` (CM Algorithm 2, ``target_ema``); buffers are copied."""
    update_ema(target, online, mu)


# ------------------------------------------------------------------------------------------------
# Sampling

def parse_sample_ts(text: Optional[str], num_steps: int) -> list:
    """``'0,22'`` -> ``[0, 22]``: indices into the descending grid (0 = sigma_max) at which f is evaluated.

    Empty/None means one step (``[0]``). The official CD sampler's ``--ts 0,22,39`` (N = 40) is ``0,22``
    here: its last entry only marks the end of the chain.
    """
    if text is None or not str(text).strip():
        return [0]
    try:
        ts = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not ts or ts[0] != 0:
        raise ValueError(f"the first index must be 0 (sampling starts at sigma_max), got {text!r}")
    if any(b <= a for a, b in zip(ts, ts[1:])) or ts[-1] > num_steps - 1:
        raise ValueError(f"indices must increase strictly and stay below N = {num_steps}, got {text!r}")
    return ts


@torch.no_grad()
def multistep_sample(G: ConsistencyFunction, z: torch.Tensor, c: Optional[torch.Tensor], ts: Sequence[int],
                     num_steps: int, rho: float = 7.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Consistency sampling (CM Algorithm 1): ``x = f(sigma_max eps, sigma_max)``, then for each later time
    ``tau``: ``x = f(x + sqrt(tau^2 - sigma_min^2) n, tau)``. ``len(ts)`` network evaluations; ``ts = [0]`` is
    the one-step generator. Fresh noise comes from ``generator`` or the global torch RNG.
    """
    desc = karras_grid(num_steps, G.sigma_min, G.sigma_max, rho).flip(0)
    x = G.generate(z, c)
    for idx in ts[1:]:
        tau = float(desc[idx])
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = G(x + math.sqrt(max(tau * tau - G.sigma_min ** 2, 0.0)) * noise, tau, c)
    return x
