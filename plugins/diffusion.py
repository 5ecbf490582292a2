"""Diffusion-GAN: adaptive forward-diffusion instance noise (Wang et al., ICLR 2023).

Everything D sees, real or fake, is first diffused to a random step ``t`` of a forward chain
(paper Sec. 3.1, Eq. 2)::

    y = sqrt(abar_t) * x + sqrt(1 - abar_t) * sigma * eps,    eps ~ N(0, I),

with a linear beta schedule ``beta_1..beta_T = linspace(beta_start, beta_end, T)`` rebuilt for the
current ``T`` (App. G, "Diffusion config"; the official ``training/diffusion.py`` does the same) and
``abar_0 = 1``, so ``t = 0`` leaves ``x`` untouched. The operation is differentiable, so G learns
through it (Sec. 3.2), and R1 is taken with respect to the un-diffused real (``dy/dx = sqrt(abar_t)``).

**t per sample.** Each sample of each D evaluation draws its own ``t`` uniformly from the exploration
list ``t_epl`` and its own ``eps`` (Algorithm 1, Steps I and II). ``t_epl`` has 64 entries: 32 zeros and
32 draws from ``p_pi`` over ``{1..T}``, 'priority' (``P(t) ∝ t``, Eq. 6) or 'uniform'. It is resampled
only when T is updated (Algorithm 1, Step III).

**Adaptive T** (Sec. 3.3, Eq. 5). Every ``--diffusion-interval`` (4) steps the plugin averages
``r_d = E[sign(D(y, t))]`` on the real branch (``Loss/signs/real``: the logits' sign, i.e. the paper's
``sign(D - 0.5)`` for a sigmoid output; all-reduced over GPUs by the loop, so every rank takes the
same decision) and moves a level ``p`` in [0, 1] by ``sign(r_d - target) * batch * interval /
(ada_kimg * 1000)``; ``T = round(T_min + p (T_max - T_min))``. This is how the official code
(``training_loop.py``) implements Eq. 5's ``T <- T + sign(r_d - d_target) C``: the step
``C = (T_max - T_min) * batch * interval / (ada_kimg * 1000)`` T-units per update (about 1.3 at batch 64,
T_max 500, ada_kimg 100), accumulated in ``p`` so that sub-unit steps are not lost.

**t-conditioning of D** (Sec. 4 and App. H: "t is injected via the mapping network"). The plugin grows
D's conditioning width ``c_dim`` in ``network_kwargs`` and appends an embedding of ``t`` to ``x.c`` in
``augment_d_input``. The StyleGAN2 D feeds ``c`` through its label mapping network and projects the
epilogue output on it; the MLP toy D concatenates ``c`` to its input. Class labels, when present, stay
in front of the t columns, so conditional and unconditional models both work. ``--diffusion-t-embed``:
``sincos`` (default; ``t_dim`` sinusoidal features of t, as in DDPM's timestep embedding) or ``raw``
(one column holding t itself, exactly what the official code concatenates to c; on the MLP D that puts
numbers up to T_max next to coordinates of order 1, so ``sincos`` is the better default).

**Order with other augments.** ``--plugins ada,diffusion`` augments with ADA first and diffuses the
result: the paper's ``--aug ada`` option (official ``Diffusion.forward`` runs ``self.aug`` before
``q_sample``). ``--plugins diffusion,ada`` diffuses first and augments the noisy sample. Both are legal.
Unlike the official ``--aug ada``, which drives ADA's p with diffusion's own level capped at
``ada_maxp`` 0.25, here each plugin adapts its own level from the same real-sign statistic.

**State** (checkpoints): ``p``, ``T``, ``t_epl``, the private generator that draws ``t_epl`` (seeded
from ``--seed``, identical on every rank), the partial ``r_d`` accumulator and the step counter, so a
resumed run continues with the same T and the same future ``t_epl`` lists.

Defaults: ``beta`` 1e-4 -> 0.02 and ``target`` 0.6 (App. G); ``T_min`` 5 (App. G, Table 5); ``T_max``
automatic: 1000 with 'priority' and 500 with 'uniform' t-sampling, the two pixel configs of Table 5
(the official default is priority with 1000); ``ts_dist`` priority (Table 6, CIFAR-10/STL-10/LSUN;
official default); ``ada_kimg`` 100 (official ``train.py`` default; the paper gives no number for C).

**sigma depends on the data's scale.** App. G: "the image pixels are usually rescaled to [-1, 1] so we set
sigma = 0.05" (and 0.5 for features). On images the default (``--diffusion-sigma 0``, auto) is that 0.05.
On point data it is ``SIGMA_PER_STD`` times the data's std (``info()['data_std']``), so a user's .npy or
.csv at any spacing gets the same relative noise; on ``toy:gaussians25`` (std 2.83) 0.05 would be one
mode's std, and T then never grows (r_d stays near 0). The factor 0.35 is the sigma of 1.0 that issue #11
found to keep the most modes on toy:gaussians25 (std 2.83), expressed relative to the data's std; the
README's Evidence section compares it with the image value 0.05 on that data.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ganstack.training.api import Option, OptionValues, Plugin, PluginError, SignController, hookimpl

T_EPL_SIZE = 64  # Algorithm 1: t_epl has 64 entries ...
T_EPL_ZEROS = 32  # ... of which 32 are zeros.
T_MAX_FOR = {"priority": 1000, "uniform": 500}  # Table 5, pixel configs
IMAGE_SIGMA = 0.05  # App. G, pixels in [-1, 1]
SIGMA_PER_STD = 0.35  # point data: sigma = this x the data's std (see the module docstring)


def linear_schedule(T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """``abar_t`` for ``t = 0..T`` (float64, ``abar_0 = 1``) of the linear beta schedule over T steps."""
    if T <= 0:
        return torch.ones(1, dtype=torch.float64)
    betas = torch.from_numpy(np.linspace(beta_start, beta_end, T, dtype=np.float64))
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])


def sample_t_epl(T: int, ts_dist: str, gen: torch.Generator) -> list[int]:
    """Algorithm 1, Step III: 32 zeros followed by 32 draws from ``p_pi`` over ``{1..T}`` (Eq. 6)."""
    n = T_EPL_SIZE - T_EPL_ZEROS
    if T <= 0:
        draws = torch.zeros(n, dtype=torch.int64)
    elif ts_dist == "priority":
        weights = torch.arange(1, T + 1, dtype=torch.float64)  # P(t) = t / sum(1..T)
        draws = torch.multinomial(weights, n, replacement=True, generator=gen) + 1
    else:
        draws = torch.randint(1, T + 1, (n,), generator=gen)
    return [0] * T_EPL_ZEROS + draws.tolist()


def embed_t(t: torch.Tensor, kind: str, dim: int) -> torch.Tensor:
    """``[N]`` integer steps -> ``[N, dim]`` conditioning columns for D (``dim`` 1 for 'raw')."""
    t = t.to(torch.float32)
    if kind == "raw":
        return t[:, None]
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def q_sample(x: torch.Tensor, t: torch.Tensor, abar: torch.Tensor, sigma: float,
             noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. 2: ``sqrt(abar_t) x + sqrt(1 - abar_t) sigma eps`` with one ``t`` per sample of ``x``."""
    if noise is None:
        noise = torch.randn_like(x)
    shape = [x.shape[0]] + [1] * (x.ndim - 1)
    a = abar.to(x.device)[t]
    scale_x = a.sqrt().to(x.dtype).reshape(shape)
    scale_n = ((1.0 - a).sqrt() * sigma).to(x.dtype).reshape(shape)
    return x * scale_x + noise * scale_n


def resolve_sigma(sigma: float, data_info: dict) -> float:
    """``--diffusion-sigma``, with 0 replaced by the data-scale-aware default (module docstring)."""
    if sigma:
        return float(sigma)
    if data_info.get("kind") == "points" and data_info.get("data_std"):
        return SIGMA_PER_STD * float(data_info["data_std"])
    return IMAGE_SIGMA


class DiffusionPlugin(Plugin):
    """Diffusion-GAN: adaptive forward-diffusion noise on D's inputs, D conditioned on t."""

    def __init__(self):
        defaults = OptionValues.defaults(self.add_options()).as_dict()
        defaults["t_max"] = defaults["t_max"] or T_MAX_FOR[defaults["ts_dist"]]
        self._setup(defaults, seed=0)  # until configure runs

    # -- options ------------------------------------------------------------------------------
    @hookimpl
    def add_options(self):
        return [
            Option("sigma", float, 0.0, "noise scale sigma of y = sqrt(abar_t) x + sqrt(1-abar_t) sigma eps; 0 = auto: "
                   f"0.05 for images in [-1, 1] (paper App. G), {SIGMA_PER_STD:g} x the data's std for point data",
                   min=0.0),
            Option("beta_start", float, 1e-4, "first beta of the linear schedule (App. G, after Ho et al.)",
                   min=0.0, max=1.0),
            Option("beta_end", float, 0.02, "last beta of the linear schedule over T steps (App. G)",
                   min=0.0, max=1.0),
            Option("t_min", int, 5, "lower clip of the adaptive T (App. G/H, Table 5)", min=0, max=1000),
            Option("t_max", int, 0, "upper clip of the adaptive T; 0 = auto: 1000 with priority t-sampling, 500 with "
                   "uniform (Table 5 and the official default)", min=0, max=1000),
            Option("target", float, 0.6, "d_target: T grows while r_d = E[sign(D(y,t))] on reals exceeds it "
                   "(Eq. 5, App. G)", min=0.0, max=1.0),
            Option("adaptive", bool, True, "adapt T from r_d (Sec. 3.3); false keeps T at "
                   "T_min + p (T_max - T_min)"),
            Option("p", float, 0.0, "initial (or, with --diffusion-adaptive false, fixed) level p in [0, 1]; "
                   "T = round(T_min + p (T_max - T_min)) (official diffusion_p)", min=0.0, max=1.0),
            Option("ada_kimg", float, 100.0, "speed of T: kimg for p to move from 0 to 1, i.e. T from T_min to "
                   "T_max (official train.py default)", min=1e-3),
            Option("interval", int, 4, "update T every this many steps (Algorithm 1: every 4 minibatches)",
                   min=1),
            Option("ts_dist", str, "priority", "p_pi of the 32 non-zero t_epl entries: priority (P(t) ∝ t) "
                   "or uniform (Eq. 6)", choices=["priority", "uniform"]),
            Option("t_embed", str, "sincos", "how D sees t through its conditioning path: sincos features "
                   "or raw t (the official code)", choices=["sincos", "raw"]),
            Option("t_dim", int, 16, "width of the sincos t embedding (even)", min=2, max=512),
        ]

    @hookimpl
    def configure(self, opts, cfg, stack):
        o = opts.as_dict()
        if not o["t_max"]:
            o["t_max"] = T_MAX_FOR[o["ts_dist"]]
        if o["t_min"] > o["t_max"]:
            raise PluginError(f"--diffusion-t-min {o['t_min']} is above --diffusion-t-max {o['t_max']}; "
                              f"T is clipped to [t_min, t_max], so choose t_min <= t_max (paper: 5 and 500 or 1000).")
        if o["beta_start"] > o["beta_end"]:
            raise PluginError(f"--diffusion-beta-start {o['beta_start']:g} is above --diffusion-beta-end "
                              f"{o['beta_end']:g}; the schedule increases linearly from start to end "
                              f"(paper: 1e-4 to 0.02).")
        if o["t_embed"] == "sincos" and o["t_dim"] % 2:
            raise PluginError(f"--diffusion-t-dim {o['t_dim']} must be even (half cosines, half sines).")
        self._setup(o, seed=cfg.seed)

    def _setup(self, o: dict, seed: int) -> None:
        self.o = dict(o)
        self.sigma = o["sigma"] or IMAGE_SIGMA  # until network_kwargs sees the data
        self.cond_dim = 1 if o["t_embed"] == "raw" else o["t_dim"]
        self.gen = torch.Generator().manual_seed(int(seed) + 0x5EED)
        self.ctl = SignController(target=o["target"], interval=o["interval"], speed_kimg=o["ada_kimg"],
                                  adaptive=o["adaptive"], p=float(o["p"]))
        self._set_T(self.T_from_p(self.p))
        self.t_epl = sample_t_epl(self.T, o["ts_dist"], self.gen)
        self._t_epl_dev = None

    # -- the diffusion ------------------------------------------------------------------------
    def T_from_p(self, p: float) -> int:
        o = self.o
        return int(np.clip(o["t_min"] + round(p * (o["t_max"] - o["t_min"])), o["t_min"], o["t_max"]))

    def _set_T(self, T: int) -> None:
        self.T = int(T)
        self.abar = linear_schedule(self.T, self.o["beta_start"], self.o["beta_end"])
        self._abar_dev = None

    def draw_t(self, n: int, device) -> torch.Tensor:
        """``n`` steps drawn uniformly with replacement from ``t_epl`` (global RNG: checkpointed per rank)."""
        if self._t_epl_dev is None or self._t_epl_dev.device != torch.device(device):
            self._t_epl_dev = torch.tensor(self.t_epl, dtype=torch.int64, device=device)
        idx = torch.randint(len(self.t_epl), (n,), device=device)
        return self._t_epl_dev[idx]

    def diffuse(self, img: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self._abar_dev is None or self._abar_dev.device != img.device:
            self._abar_dev = self.abar.to(device=img.device, dtype=torch.float32)
        return q_sample(img, t, self._abar_dev, self.sigma)

    # -- hooks --------------------------------------------------------------------------------
    @hookimpl
    def network_kwargs(self, role, kwargs, data_info):
        if role == "D":
            self.sigma = resolve_sigma(self.o["sigma"], data_info)
            return dict(kwargs, c_dim=kwargs.get("c_dim", 0) + self.cond_dim)

    @hookimpl
    def augment_d_input(self, x, is_real):
        t = self.draw_t(len(x), x.img.device)
        y = self.diffuse(x.img, t)
        cond = embed_t(t, self.o["t_embed"], self.o["t_dim"]).to(x.c.device)
        return x.replace(img=y, c=torch.cat([x.c.to(torch.float32), cond], dim=1))

    @property
    def p(self) -> float:
        """The level p in [0, 1] behind T, adapted by :class:`ganstack.training.api.SignController`."""
        return self.ctl.p

    @property
    def r_d(self) -> float:
        """The interval mean of E[sign(D(y, t))] on reals behind the latest T update (nan before it)."""
        return self.ctl.r

    @hookimpl
    def after_step(self, state, stats):
        if not self.ctl.update(stats, state.batch_size):
            return
        T = self.T_from_p(self.p)
        if T != self.T:
            self._set_T(T)
        # Algorithm 1, Step III: a fresh exploration list at every T update.
        self.t_epl = sample_t_epl(self.T, self.o["ts_dist"], self.gen)
        self._t_epl_dev = None

    @hookimpl
    def report_stats(self):
        out = {"T": self.T, "p": self.p}
        if math.isfinite(self.r_d):  # measured at the first T update
            out["r_d"] = self.r_d
        return out

    @hookimpl
    def state_dict(self):
        return dict(self.ctl.state_dict(), T=self.T, t_epl=list(self.t_epl), gen=self.gen.get_state())

    @hookimpl
    def load_state_dict(self, state):
        self.ctl.load_state_dict(state)
        self._set_T(int(state["T"]))
        self.t_epl = [int(t) for t in state["t_epl"]]
        self._t_epl_dev = None
        self.gen.set_state(state["gen"])
