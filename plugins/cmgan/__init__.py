"""CM-GAN (Lu et al., ICML-W 2023): a consistency-distillation constraint plus adversarial training.

The generator is a consistency function ``f_theta(x, sigma)`` (:class:`.consistency.ConsistencyFunction`):
``c_skip x + c_out F_theta(c_in x, c_noise)`` with the consistency scalings, so ``f(x, sigma_min) = x``
exactly, and EDM's ``c_in`` and ``c_noise``. ``F_theta`` is the score-model package's U-Net (images) or
residual MLP (points). As a GAN, ``G(eps) = f_theta(sigma_max eps, sigma_max)``.

Training (paper Eq. 5) draws ``n ~ U{1..N-1}`` on the ascending Karras grid ``t_1 = sigma_min < ... <
t_N = T = sigma_max`` (rho 7) and noises this phase's real batch: ``x_{t_{n+1}} = x + t_{n+1} eps``. Then

* **adversarial term**: D sees the reals ``x`` against ``f_theta(x_{t_{n+1}}, t_{n+1})`` (Eq. 9-10; the loop's
  non-saturating logistic loss, R1 and pre-D augments apply as usual);
* **consistency distillation** (Eq. 4, added in ``g_loss``): one Heun step (or Euler) of the teacher's
  PF-ODE from ``t_{n+1}`` to ``t_n`` gives ``x_hat_{t_n}``, and
  ``lambda(t_n) d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta_bar(x_hat_{t_n}, t_n))`` with
  ``lambda(t_n) = exp(alpha (t_n - T)(1 - gamma^I))`` (Eq. 6; alpha 0.025, gamma 0.99995, I = iterations so
  far) and ``d`` the squared L2 distance, summed over the sample's values (``--cmgan-cd-norm sum``, the
  default: Eq. 4 as printed) or averaged (``mean``, the official CM code's ``l2``). Eq. 5 adds the CD term
  to the adversarial loss with weight 1, so this choice sets their balance: with ``mean`` the CD term of a
  16x16 image is 256 times weaker, and on MNIST (benchmarks/mnist_cmgan.py, 30 kimg) CM-GAN then drifted
  far from the teacher (digits FID 88.7 vs 25.7 with ``sum`` and 26.1 for plain CD). Pure CD (``cd`` mode)
  is practically unaffected: Adam's update does not depend on a constant loss scale.

**Noise levels follow the data's scale.** CM/EDM's sigma_min 0.002 and sigma_max 80 are for images of
sigma_data 0.5. By default (``--cmgan-sigma-min/--cmgan-sigma-max 0``) point data gets both scaled by its
std / 0.5 (``info()['data_std']``), so a user's .npy at another spacing gets the same grid relative to the
data, and t in Eq. 6's weighting is measured in units of ``sigma_max / 80``: alpha keeps the paper's meaning
(on images, or with sigma_max 80 given, the weighting is Eq. 6 as printed).

The same forward pass ``f_theta(x_{t_{n+1}}, t_{n+1})`` feeds D and the CD term, so the adversarial loss
sees the levels ``t_2 .. t_N`` (``t_N = T`` is the one-step generator itself) rather than Eq. 9's
``t_1 .. t_{N-1}``; at ``t_1`` the output is the real image itself (the boundary condition), which carries
no signal. ``eps`` is the loop's latent ``z`` (one value per data value), ``n`` comes from the global
torch RNG; both are restored by checkpoints.

Modes (``--cmgan-mode``): ``cmgan`` (Eq. 5); ``cd`` (pure consistency distillation, Eq. 4 with the official
uniform weighting lambda = 1, so alpha and gamma are ignored: D is still trained on the same fakes and its
losses are logged, but no adversarial gradient reaches ``f_theta``, so G's loss is the CD term alone); ``gan`` (Appendix A's pure GAN: same ``f_theta`` architecture, fakes
``f(T eps, T)`` only, no teacher, no CD term). All three share the networks, optimizers and budget, so
``ganstack ablate --stacks "cmgan cmgan.mode=gan;cmgan cmgan.mode=cd;cmgan"`` compares them.

Teacher (``--cmgan-teacher``): ``analytic`` (exact score of the built-in ``toy:*`` mixtures),
``empirical`` (ideal denoiser of the training set) or a ``ganstack train-score`` checkpoint / run folder
(:func:`ganstack.plugins.score_models.make_score_model`). It is loaded when training starts, never saved in
checkpoints, and not needed by ``ganstack generate``. With a trained teacher, ``f_theta``'s network starts
from the teacher's weights (``--cmgan-init teacher``, as the official consistency distillation does); its
architecture options must then match the teacher's.

Networks, optimizers and EMAs, compared with the paper / official CM code:

* **G's optimizer** (the loop's Adam) trains ``theta``. ``configure`` recommends Adam betas (0.9, 0.999)
  (PyTorch defaults, as in the official ``cm_train.py``) and, for images, lr 1e-4 (``cm_train.py``'s
  default); the toy preset keeps its lr. D keeps StyleGAN2's optimizer and R1.
* **The target network theta_bar** (CM's ``target_model``, ``target_ema_mode fixed, start_ema 0.95``) lives in
  this plugin's state: initialised to theta when training starts, updated in ``after_step`` as
  ``theta_bar <- mu theta_bar + (1 - mu) theta`` (``--cmgan-target-ema``, 0.95), saved and resumed with the
  iteration count ``I``.
* **The loop's G_ema** is CM's evaluation EMA (``ema_rate``): snapshots, metrics and ``generate`` sample
  from it; it plays no part in the loss.
* Path length and style mixing do not apply to ``f_theta`` (no W space): they default to 0 and are refused
  if set.

Sampling (``sampler`` with ``ctx=None``): one step ``f(sigma_max eps, sigma_max)`` by default; multistep
consistency sampling (CM Algorithm 1) with ``--cmgan-sample-ts 0,9`` (indices into the descending grid,
the official ``--ts`` without its end marker).
"""
from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch

from ganstack.plugins.cmgan.consistency import (ConsistencyFunction, cd_distance, cd_weighting, consistency_scalings,
                                       karras_grid, multistep_sample, ode_step, parse_sample_ts, update_target)
from ganstack.stylegan_base.errors import CheckpointError
from ganstack.training.api import Capabilities, DInput, Option, Plugin, PluginError, hookimpl

__all__ = ["CMGANPlugin", "ConsistencyFunction", "cd_distance", "cd_weighting", "consistency_scalings",
           "karras_grid", "multistep_sample", "ode_step", "update_target"]

MODES = ("cmgan", "cd", "gan")
EDM_SIGMAS = (0.002, 80.0)  # CM/EDM's sigma_min, sigma_max for images of sigma_data 0.5


def _arch_for(data_info: dict, c_dim: int, opts) -> dict:
    """The F_theta architecture (the score-model package's networks, train-score's defaults when 0)."""
    if data_info["kind"] == "image":
        mult = tuple(int(m) for m in str(opts.channel_mult).split(",") if m.strip())
        return {"name": "unet", "kwargs": dict(img_resolution=int(data_info["resolution"]),
                                               img_channels=int(data_info["num_channels"]), label_dim=int(c_dim),
                                               model_channels=opts.channels or 32, channel_mult=mult,
                                               num_blocks=opts.blocks or 2, dropout=0.0)}
    return {"name": "mlp", "kwargs": dict(point_dim=int(data_info["point_dim"]), label_dim=int(c_dim),
                                          hidden=opts.channels or 256, num_layers=opts.blocks or 4)}


def _same_arch(a: dict, b: dict) -> bool:
    norm = lambda d: {"name": d["name"], "kwargs": {k: (list(v) if isinstance(v, (list, tuple)) else v)  # noqa: E731
                                                    for k, v in d["kwargs"].items() if k != "dropout"}}
    return norm(a) == norm(b)


class CMGANPlugin(Plugin):
    """CM-GAN: consistency model f_theta as G, consistency-distillation loss plus adversarial loss (Lu et al. 2023)."""

    # Replaces G and the sampler (its hooks say so). f_theta's training fakes f(x_{t_{n+1}}, t_{n+1}) are
    # predictions of clean data; f_theta has no W space and its input is image-shaped noise, not one latent vector
    # a D head could predict (so it declares neither w_space nor one_latent_per_sample).
    capabilities = Capabilities(provides="sample_fakes")

    def __init__(self):
        self.opts = None
        self.grid: Optional[torch.Tensor] = None  # ascending t_1 .. t_N (float64, CPU)
        self.sample_ts = [0]
        self.data_info: Optional[dict] = None
        self.teacher = None
        self.target: Optional[ConsistencyFunction] = None
        self.iteration = 0
        self._pending_target: Optional[dict] = None

    # ------------------------------------------------------------------------------------------
    # Start-up

    @hookimpl
    def add_options(self):
        return [
            Option("mode", str, "cmgan", "cmgan: adversarial + consistency distillation (Eq. 5); cd: consistency "
                   "distillation only (Eq. 4, D trained but ignored by f_theta); gan: Appendix A's pure GAN with the "
                   "same f_theta (fakes f(T eps, T), no teacher)", choices=MODES),
            Option("teacher", str, None, "the PF-ODE teacher: a `ganstack train-score` checkpoint or run folder, "
                   "'analytic' (exact score of a built-in toy:* mixture) or 'empirical' (ideal denoiser of the data)"),
            Option("alpha", float, 0.025, "alpha of the weighting lambda(t_n) = exp(alpha (t_n - T)(1 - gamma^I)) "
                   "(paper Sec. 4: 0.025; Fig. 3 sweeps 0.005, 0.01, 0.025, 0.25); cmgan mode only, cd uses lambda = 1",
                   min=0.0),
            Option("gamma", float, 0.99995, "gamma of the weighting: how fast it loosens with the iteration count I "
                   "(paper Sec. 4: 0.99995)", min=0.0, max=1.0),
            Option("num_steps", int, 18, "N, noise levels of the Karras grid (CM: 18 on CIFAR-10, 40 on ImageNet)",
                   min=2, max=10000),
            Option("sigma_min", float, 0.0, "sigma_min = t_1, where f(x, sigma_min) = x; 0 = auto: CM/EDM's 0.002 for "
                   "images, 0.002 / 0.5 x the data's std for points", min=0.0),
            Option("sigma_max", float, 0.0, "sigma_max = T = t_N, the generator's noise level; 0 = auto: CM/EDM's 80 for "
                   "images (160 x their sigma_data 0.5), 160 x the data's std for points", min=0.0),
            Option("rho", float, 7.0, "rho of the Karras grid (EDM/CM: 7)", min=1e-3),
            Option("solver", str, "heun", "teacher ODE step from t_{n+1} to t_n (official CD: heun; the paper's "
                   "text: Euler)", choices=("heun", "euler")),
            Option("target_ema", float, 0.95, "mu of the target network theta_bar <- mu theta_bar + (1 - mu) theta "
                   "(official CD: fixed 0.95)", min=0.0, max=1.0),
            Option("cd_norm", str, "sum", "distance of the CD term: squared L2 summed over the sample's values "
                   "(Eq. 4-5 as printed; sets the CD/adversarial balance) or averaged (official CM 'l2', which "
                   "makes the CD term dim(x) times weaker against D)", choices=("sum", "mean")),
            Option("sigma_data", float, 0.0, "sigma_data of the scalings; 0 = auto: the teacher network's (0.5 from "
                   "train-score), else 0.5 for images (EDM) and the data's std for points", min=0.0),
            Option("init", str, "teacher", "start f_theta from the teacher network's weights when the teacher is a "
                   "train-score checkpoint (official CD), or from random weights", choices=("teacher", "random")),
            Option("channels", int, 0, "width of F_theta: U-Net base channels (0 = 32) or MLP width (0 = 256), "
                   "as train-score", min=0),
            Option("channel_mult", str, "1,2,2", "U-Net width multipliers per resolution level, as train-score"),
            Option("blocks", int, 0, "U-Net blocks per level (0 = 2) or MLP layers (0 = 4), as train-score", min=0),
            Option("sample_ts", str, "0", "sampling: indices into the descending grid where f is evaluated; '0' is "
                   "one step f(T eps, T); '0,9' two-step consistency sampling (official --ts minus its end)"),
        ]

    @hookimpl
    def configure(self, opts, cfg, stack):
        self.opts = opts
        if opts.sigma_min and opts.sigma_max and opts.sigma_min >= opts.sigma_max:
            raise PluginError(f"--cmgan-sigma-min {opts.sigma_min} must be below --cmgan-sigma-max {opts.sigma_max} "
                              f"(CM/EDM: 0.002 and 80).")
        if opts.mode != "gan" and not opts.teacher:
            raise PluginError(f"--cmgan-mode {opts.mode} distils a PF-ODE teacher: give --cmgan-teacher PATH (a "
                              f"checkpoint or run folder of `ganstack train-score --data SAME_DATA`), "
                              f"--cmgan-teacher analytic (exact score of toy:* mixtures) or --cmgan-teacher empirical. "
                              f"--cmgan-mode gan trains the same f_theta as a plain GAN without a teacher.")
        try:
            mult = [int(m) for m in str(opts.channel_mult).split(",") if m.strip()]
            if not mult or min(mult) < 1:
                raise ValueError
        except ValueError:
            raise PluginError(f"--cmgan-channel-mult {opts.channel_mult!r} must be comma-separated positive integers, "
                              f"for example 1,2,2.") from None
        try:
            self.sample_ts = parse_sample_ts(opts.sample_ts, opts.num_steps)
        except ValueError as exc:
            raise PluginError(f"--cmgan-sample-ts: {exc}. Use 0 for one-step sampling or, e.g., 0,{opts.num_steps // 2} "
                              f"for two steps on the N = {opts.num_steps} grid.") from None
        self._set_sigmas({"kind": "image"})  # until build_generator sees the data
        # f_theta has no W space: the core sets path length and style mixing to 0 (and refuses them if given).
        # Official consistency-distillation optimizer settings (cm_train.py: Adam(W) defaults, lr 1e-4).
        cfg.set_default("g_betas", (0.9, 0.999))
        if str(cfg.cfg) != "toy":
            cfg.set_default("glr", 1e-4)

    def _set_sigmas(self, data_info: dict) -> None:
        """Resolve sigma_min/sigma_max against the data's scale (``EDM_SIGMAS`` at the images' sigma_data 0.5)
        and build the grid. The weighting's t is measured in units of ``sigma_max / 80`` (``t_unit``), so alpha
        keeps the paper's meaning at every data scale (``t_unit`` = 1 on images and whenever sigma_max is 80)."""
        o = self.opts
        scale = 1.0
        if data_info.get("kind") == "points" and data_info.get("data_std"):
            scale = float(data_info["data_std"]) / 0.5
        self.sigma_min = o.sigma_min or EDM_SIGMAS[0] * scale
        self.sigma_max = o.sigma_max or EDM_SIGMAS[1] * scale
        if self.sigma_min >= self.sigma_max:
            raise PluginError(f"cmgan's sigma_min {self.sigma_min:g} must be below sigma_max {self.sigma_max:g} "
                              f"(set --cmgan-sigma-min and --cmgan-sigma-max, CM/EDM: 0.002 and 80 for images).")
        self.t_unit = self.sigma_max / EDM_SIGMAS[1]
        self.grid = karras_grid(o.num_steps, self.sigma_min, self.sigma_max, o.rho)

    def _weighting(self, t_n, alpha: float):
        return cd_weighting(torch.as_tensor(t_n, dtype=torch.float64) / self.t_unit, self.sigma_max / self.t_unit,
                            alpha, self.opts.gamma, self.iteration)

    @hookimpl
    def build_generator(self, kwargs, data_info, cfg):
        o = self.opts
        self._set_sigmas(data_info)
        if data_info["kind"] == "image":
            shape = (int(data_info["num_channels"]), int(data_info["resolution"]), int(data_info["resolution"]))
        else:
            shape = (int(data_info["point_dim"]),)
        arch = _arch_for(data_info, kwargs.get("c_dim", 0), o)
        return ConsistencyFunction(arch, shape, c_dim=kwargs.get("c_dim", 0), sigma_min=self.sigma_min,
                                   sigma_max=self.sigma_max, sigma_data=o.sigma_data or 0.5)

    @hookimpl
    def check_startup(self):
        if self.opts.mode != "gan":
            from ganstack.plugins.score_models import check_score_spec
            check_score_spec(self.opts.teacher, who="--cmgan-teacher")

    @hookimpl
    def start_training(self, nets, data_info, device, cfg):
        """Load the teacher, settle sigma_data, initialise f_theta (G and G_ema alike) from the teacher and create
        the target network. A resumed run's target is then restored by ``load_state_dict``."""
        self._start_training(nets, data_info, device, cfg)

    def _start_training(self, nets, data_info, device, cfg) -> None:
        G = nets.G
        self.data_info = dict(data_info)
        o = self.opts
        if o.mode != "gan" and self.teacher is None:
            from ganstack.plugins.score_models import make_score_model
            self.teacher = make_score_model(o.teacher, self.data_info, use_labels=bool(cfg.cond), dataset_spec=cfg.data,
                                            device=device, who="--cmgan-teacher")
        sigma_data = o.sigma_data
        init_from = None
        if self.teacher is not None and hasattr(self.teacher, "arch") and o.init == "teacher":
            if not _same_arch(self.teacher.arch, G.arch):
                ta = self.teacher.arch["kwargs"]
                hint = (f"--cmgan-channels {ta.get('model_channels')} --cmgan-channel-mult "
                        f"{','.join(str(m) for m in ta.get('channel_mult', []))} --cmgan-blocks {ta.get('num_blocks')}"
                        if self.teacher.arch["name"] == "unet" else
                        f"--cmgan-channels {ta.get('hidden')} --cmgan-blocks {ta.get('num_layers')}")
                raise PluginError(f"--cmgan-init teacher copies the teacher's network into f_theta, but the teacher "
                                  f"{getattr(self.teacher, 'checkpoint_path', o.teacher)!r} is a {self.teacher.arch} "
                                  f"and these options build {G.arch}. Pass {hint} to match it, or --cmgan-init random.")
            init_from = self.teacher
        if not sigma_data and self.teacher is not None and hasattr(self.teacher, "arch"):
            sigma_data = float(self.teacher.sigma_data)  # a train-score network's own sigma_data
        if not sigma_data:
            sigma_data = 0.5 if G.is_image else self._points_std(cfg)
        for g in (nets.G, nets.G_ema):
            if g is None:
                continue
            if init_from is not None:
                g.net.load_state_dict(init_from.net.state_dict())
            g.sigma_data.fill_(float(sigma_data))
        if o.mode == "gan":
            return  # Appendix A's GAN has no CD term and needs no target network
        self.target = copy.deepcopy(G).eval().requires_grad_(False)
        if self._pending_target is not None:
            self._load_target(self._pending_target)
            self._pending_target = None

    @staticmethod
    def _points_std(cfg) -> float:
        from ganstack.stylegan_base.datasets import open_dataset
        ds = open_dataset(cfg.data, use_labels=False, max_size=cfg.max_size)
        x = np.asarray(ds.get_batch(np.arange(min(len(ds), 20000)))[0], dtype=np.float64)
        return float(x.std())

    # ------------------------------------------------------------------------------------------
    # Every phase

    def _teacher_denoise(self, x, sigma, c):
        return self.teacher.denoise(x, sigma, c if self.teacher.label_dim else None)

    @hookimpl
    def sampler(self, G, z, c, ctx, G_kwargs):
        if ctx is None:
            return DInput(img=multistep_sample(G, z, c, self.sample_ts, self.opts.num_steps, self.opts.rho), c=c)
        if self.opts.mode == "gan":
            return DInput(img=G.generate(z, c), c=c)
        reals = ctx.reals
        m = z.shape[0]
        if m > len(reals):
            raise ValueError(f"cmgan noises this phase's {len(reals)} reals and cannot make {m} fakes from them")
        x0, c_real = reals.img[:m], reals.c[:m]
        k = torch.randint(0, self.opts.num_steps - 1, [m], device=x0.device)  # n - 1, n ~ U{1..N-1}
        grid = self.grid.to(device=x0.device, dtype=torch.float32)
        t_hi = grid[k + 1]
        x_hi = x0 + t_hi.reshape([m] + [1] * (x0.ndim - 1)) * G.latent_to_sample_shape(z)
        out = G(x_hi, t_hi, c_real)
        img = out if self.opts.mode == "cmgan" else out.detach()
        # Training pairs: row i noises real i and keeps its label; g_loss finds the draws in ``info``.
        return DInput(img=img, c=c_real, from_reals=True, info={"cmgan": {"k": k, "x_hi": x_hi, "out": out}})

    @hookimpl
    def g_loss(self, ctx, fakes):
        if self.opts.mode == "gan":
            return None
        s = fakes.info.get("cmgan") if fakes is not None else None
        if s is None:
            raise RuntimeError("cmgan's g_loss got fakes that cmgan's sampler did not make")
        o = self.opts
        k, x_hi, out, c = s["k"], s["x_hi"], s["out"], fakes.c
        grid = self.grid.to(device=x_hi.device, dtype=torch.float32)
        t_lo, t_hi = grid[k], grid[k + 1]
        dist = cd_distance(out, self.target, self._teacher_denoise, x_hi, t_hi, t_lo, c, o.solver, o.cd_norm)
        # cd mode is the plain consistency-distillation baseline: the official uniform weighting.
        alpha = o.alpha if o.mode == "cmgan" else 0.0
        lam = self._weighting(t_lo.double(), alpha).to(dist.dtype)
        ctx.report("Loss/cmgan/cd_unweighted", dist.detach())
        ctx.report("Loss/cmgan/lambda", lam)
        return {"cd": lam * dist}

    @hookimpl
    def after_step(self, state):
        if self.target is not None:
            update_target(self.target, state.G, self.opts.target_ema)
        self.iteration += 1

    @hookimpl
    def report_stats(self):
        o = self.opts
        alpha = o.alpha if o.mode == "cmgan" else 0.0
        lam_min = float(self._weighting(self.sigma_min, alpha))
        return {"I": self.iteration, "lambda_t1": lam_min}

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    @hookimpl
    def state_dict(self):
        target = None if self.target is None else {k: v.detach().cpu().clone()
                                                    for k, v in self.target.state_dict().items()}
        if target is None and self._pending_target is not None:
            target = self._pending_target
        return {"iteration": int(self.iteration), "target": target, "mode": self.opts.mode,
                "grid": self.grid.tolist()}

    @hookimpl
    def load_state_dict(self, state):
        saved = state.get("grid")
        if saved is not None and (len(saved) != len(self.grid) or
                                  any(abs(a - b) > 1e-9 * max(1.0, abs(b)) for a, b in zip(saved, self.grid.tolist()))):
            raise CheckpointError(f"The checkpoint's cmgan noise grid ({len(saved)} levels, {saved[0]:g}..{saved[-1]:g}) "
                                  f"differs from the one these options build ({len(self.grid)} levels, "
                                  f"{float(self.grid[0]):g}..{float(self.grid[-1]):g}). Resume with the cmgan options "
                                  f"it was trained with (they are stored in the checkpoint).")
        self.iteration = int(state["iteration"])
        if state.get("target") is None:
            return
        if self.target is None:
            self._pending_target = state["target"]  # loading for sampling only: the target is not needed
        else:
            self._load_target(state["target"])

    def _load_target(self, target_state: dict) -> None:
        device = next(self.target.parameters()).device
        self.target.load_state_dict({k: v.to(device) for k, v in target_state.items()})
