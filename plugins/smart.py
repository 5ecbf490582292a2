"""SMaRt (Xia et al., ICML 2024): a score-matching regularity on the generator from a frozen score model.

The regularity (paper Eq. 10, conditional form Eq. 15) is added to G's loss::

    L_score = E_{z, eps, t} [ || eps_theta(alpha_t G(z) + sigma_t eps, t, c) - eps ||^2 ],   total L_G + lambda L_score

with ``t`` uniform in ``[t_min, t_max]`` of a 1000-step VP schedule and ``||.||^2`` the squared L2 norm,
summed over the sample's values as Eq. 10 prints it. (An earlier version averaged over the values, the
``mean_flat`` of the ADM training loss, which at 32x32x3 made the effective lambda 1/3072 of the paper's;
to get that behaviour back, divide ``--smart-weight`` by the number of values per sample.) By Eq. 11-12 it is proportional to the
squared length of one DDIM refinement step ``R(G(z)) - G(z)``, which vanishes only on the data
manifold, so it keeps pushing off-manifold samples back when the adversarial loss has no gradient.

Paper defaults (Sec. 3.4, Appendix B.1, Table 6): ``lambda = 0.01``, ``t in [40, 60]`` and lazy
frequency 8 for CIFAR-10-sized data; ``lambda = 0.1``, ``t in [25, 35]`` for ImageNet / LSUN.

How it plugs into the loop
--------------------------
* **Lazy, through ``lazy_regularizers``** (the paper's "lazy strategy (Karras et al., 2020)"). The term is a G
  regularizer of interval ``k`` (``--smart-interval``, 8), evaluated on the steps ``s`` with ``s % k == 0``
  (step 0 included) and multiplied by ``k`` (the lazy gain, so its average weight per step is ``lambda``). By
  the loop's one rule it runs in G's ``Greg`` phase when the step is a base reg step (every ``--pl-interval``
  = 4 on the StyleGAN2 presets, ``cifar`` included: SMaRt's every-8th step always is), and inside ``Gmain``
  otherwise (the toy MLP, which has no reg phase). It never adds an optimizer step, so enabling smart leaves
  G's lr and betas exactly as without it (StyleGAN2's correction for the base interval only).
  ``--smart-interval 1`` evaluates the term inside ``Gmain`` on every step, without gain.
* **It regularizes G(z) itself** (``ctx.sample()``, the sampler's output), never the augmented image:
  ADA / DiffAugment / Diffusion-GAN augments act on what D sees only, so ``--plugins ada,diffusion,smart``
  stacks in any order. Labels of a conditional GAN go to the score model when it is conditional.
* **The score model is frozen**: loaded once at start-up (``eval()``, ``requires_grad_(False)``), held
  by the plugin, never registered in G or D, never in the optimizer or the checkpoint. Only its path
  (the option) is saved; the random draws (``t``, ``eps``) use the global torch RNG, which checkpoints
  restore, so resumes are exact.
* **Score models** (``--smart-score``): a checkpoint or run folder of ``ganstack train-score``;
  ``analytic``, the exact score of the built-in ``toy:*`` mixtures (their centers and std come from the
  dataset's ``info()['toy']``, which the ``start_training`` hook receives as ``data_info``); or
  ``empirical``, the exact score of the training set (the ideal denoiser), for point files.
  A model at another resolution is refused unless ``--smart-resize area|bilinear`` asks to compute
  the regularity on G(z) resized to the model's resolution.
* **Omitting the U-Net Jacobian** (``--smart-omit-jacobian``, paper Table 5/7, DreamFusion's trick): the
  score model runs without autograd and the surrogate ``lambda * 2 * sum(sg(eps_pred - eps) * x_t)`` has
  the gradient ``2 lambda alpha_t (eps_pred - eps)`` with respect to G(z): Eq. 10's exact gradient
  ``2 lambda alpha_t J^T (eps_pred - eps)`` with the Jacobian ``J`` of ``eps_theta`` replaced by the identity.
  The factor 2 is kept so that switching modes does not silently halve lambda (tested against finite
  differences of the exact loss with a score network whose Jacobian is the identity).
* **The t range depends on the data's scale.** ``[40, 60]`` of the linear VP schedule means noise
  ``sigma_t / alpha_t`` of 0.15-0.21, a third of the std of images in [-1, 1]. For point data the default
  (``--smart-t-min/--smart-t-max -1``, auto) keeps the paper's range when the data's std is that of
  ``toy:grid49`` (2.0, SMaRt's own toy) and otherwise moves it so that ``sigma_t / alpha_t`` keeps the same
  ratio to the data's std (``info()['data_std']``): data at another spacing gets the same regularity.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ganstack.plugins.score_models import SCHEDULES, VPSchedule, check_score_spec, make_score_model
from ganstack.training.api import Capabilities, LazyRegularizer, Option, PluginError, hookimpl

RESIZE_MODES = ("off", "area", "bilinear")


def smart_loss(model, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: VPSchedule, weight: float,
               c: Optional[torch.Tensor] = None, omit_jacobian: bool = False):
    """SMaRt's term for samples ``x = G(z)``, steps ``t [N]`` and noise ``eps`` (like ``x``).

    Returns ``(loss [N], sq [N])``: ``sq`` is Eq. 10's ``||eps_theta(x_t, t) - eps||^2`` (summed over the
    sample's values), and ``loss`` is what is backpropagated: ``weight * sq`` (exact gradient through the
    score model), or with ``omit_jacobian`` the surrogate ``2 * weight * sum(sg(eps_theta - eps) * x_t)``,
    whose gradient with respect to ``x`` is ``2 * weight * alpha_t * (eps_theta - eps)``, the exact one
    with the score network's Jacobian replaced by the identity.
    """
    shape = [-1] + [1] * (x.ndim - 1)
    alpha = schedule.alpha(t, like=x).reshape(shape)
    sigma = schedule.sigma(t, like=x).reshape(shape)
    x_t = alpha * x + sigma * eps
    if omit_jacobian:
        with torch.no_grad():
            residual = model.eps(x_t.detach(), t, c, schedule) - eps
        sq = residual.square().flatten(1).sum(1)
        loss = 2 * weight * (residual * x_t).flatten(1).sum(1)
    else:
        residual = model.eps(x_t, t, c, schedule) - eps
        sq = residual.square().flatten(1).sum(1)
        loss = weight * sq
    return loss, sq.detach()


PAPER_T_RANGE = (40, 60)  # CIFAR-10 (Sec. 3.4, Table 6)
REFERENCE_POINT_STD = 2.0  # toy:grid49's std: the paper's t range is used as given at this data scale


def t_for_noise_ratio(schedule: VPSchedule, ratio: float) -> int:
    """The step whose noise ``sigma_t / alpha_t`` is closest to ``ratio`` (it increases with t)."""
    return int((schedule.edm_sigmas - ratio).abs().argmin())


def resolve_t_range(opts, schedule: VPSchedule, data_info: dict) -> tuple:
    """``(t_min, t_max)``: the options, with -1 replaced by the data-scale-aware default (module docstring)."""
    auto = list(PAPER_T_RANGE)
    std = data_info.get("data_std") if data_info.get("kind") == "points" else None
    if std:
        paper = VPSchedule("linear", 1000)  # the schedule the paper's range refers to
        auto = [t_for_noise_ratio(schedule, float(paper.edm_sigmas[t]) * float(std) / REFERENCE_POINT_STD)
                for t in PAPER_T_RANGE]
        auto = [min(max(t, 1), schedule.num_steps - 1) for t in auto]
    t_min = opts.t_min if opts.t_min >= 0 else auto[0]
    t_max = opts.t_max if opts.t_max >= 0 else max(auto[1], t_min)
    if t_min > t_max:
        raise PluginError(f"--smart-t-min {t_min} is above --smart-t-max {t_max} (after resolving the automatic "
                          f"default {auto} for this data); give both, with t_min <= t_max.")
    return int(t_min), int(t_max)


class SmartPlugin:
    """SMaRt: score-matching regularity lambda*||eps_theta(alpha_t G(z) + sigma_t eps, t) - eps||^2 on G, lazy every 8 steps.

    A lazy G regularizer (interval k = --smart-interval): evaluated on steps divisible by k, multiplied by k,
    never changing G's optimizer (see the module docstring). Needs fakes that are clean samples. It acts on G(z)
    itself, never on the augmented image, so it stacks with ada, diffaug and diffusion in any order. The score
    model (--smart-score: a train-score checkpoint or run folder, 'analytic' or 'empirical') is frozen, loaded
    once, and never saved; only its path is. --smart-omit-jacobian skips the backward through it.
    """

    capabilities = Capabilities(
        requires="sample_fakes",
        reasons={"sample_fakes": "SMaRt scores the training fakes with a score model of clean data, so they must be "
                                 "clean samples G(z), not states of a denoising chain"})

    def __init__(self):
        self.opts = None
        self.data_info: Optional[dict] = None
        self.model = None
        self.schedule: Optional[VPSchedule] = None
        self._device = None

    @hookimpl
    def add_options(self):
        return [
            Option("score", str, None,
                   "the score model: a `ganstack train-score` checkpoint or run folder; 'analytic' (exact score of a "
                   "built-in toy:* mixture) or 'empirical' (exact score of the training set)"),
            Option("weight", float, 0.01, "lambda_score, the weight of the regularity (paper: 0.01 CIFAR-10, "
                                          "0.1 ImageNet/LSUN)", min=0.0),
            Option("t_min", int, -1, "lowest VP timestep drawn, of --smart-timesteps (paper: 40 CIFAR-10, 25 ImageNet); "
                   "-1 = auto: 40 for images, for points the t whose noise has the same ratio to the data's std "
                   "as t = 40 on toy:grid49", min=-1),
            Option("t_max", int, -1, "highest VP timestep drawn, inclusive (paper: 60 CIFAR-10, 35 ImageNet); -1 = auto "
                   "as for --smart-t-min, from t = 60", min=-1),
            Option("interval", int, 8, "lazy interval k: evaluated every k steps with gain k (paper: 8); "
                                       "1 = every step inside Gmain", min=1),
            Option("schedule", str, "linear", "VP schedule that maps t to (alpha_t, sigma_t): DDPM linear or "
                                              "cosine", choices=SCHEDULES),
            Option("timesteps", int, 1000, "number of steps T of the VP schedule", min=2),
            Option("omit_jacobian", bool, False, "skip backpropagation through the score model (surrogate gradient "
                                                 "(eps_pred - eps) * dx_t/dG; paper Table 5: less memory)"),
            Option("resize", str, "off", "score a G(z) resized to the score model's resolution when they differ "
                                         "(off = refuse)", choices=RESIZE_MODES),
        ]

    @hookimpl
    def configure(self, opts, cfg, stack):
        self.opts = opts
        if not opts.score:
            raise PluginError("The smart plugin needs a score model: give --smart-score PATH (a checkpoint or run "
                              "folder of `ganstack train-score --data SAME_DATA`), --smart-score analytic (the exact "
                              "score of the built-in toy:* mixtures) or --smart-score empirical (the exact score of "
                              "the training points).")
        if not max(opts.t_min, 0) <= (opts.t_max if opts.t_max >= 0 else opts.timesteps - 1) < opts.timesteps:
            raise PluginError(f"--smart-t-min {opts.t_min} and --smart-t-max {opts.t_max} must satisfy "
                              f"0 <= t_min <= t_max < --smart-timesteps {opts.timesteps}; the paper uses [40, 60] "
                              f"(CIFAR-10) or [25, 35] (ImageNet) of 1000 (-1: automatic).")
        self.t_range = None  # resolved against the data's scale at the start of training
        self.schedule = VPSchedule(opts.schedule, opts.timesteps)
        self.use_labels = bool(cfg.cond)
        self.data_spec = cfg.data

    @hookimpl
    def check_startup(self):
        if self.opts.weight:
            check_score_spec(self.opts.score, who="--smart-score")

    @hookimpl
    def start_training(self, data_info, device):
        if self.opts.weight == 0 or self.model is not None:
            return  # loaded once per run, and only when the term is on
        self.data_info = dict(data_info)
        if data_info["kind"] != "image" and self.opts.resize != "off":
            raise PluginError(f"--smart-resize {self.opts.resize} applies to images; the dataset holds points. "
                              f"Drop --smart-resize.")
        self.t_range = resolve_t_range(self.opts, self.schedule, self.data_info)
        self.model = make_score_model(self.opts.score, self.data_info, use_labels=self.use_labels,
                                      resize=self.opts.resize, dataset_spec=self.data_spec, who="--smart-score")
        self._device = torch.device("cpu")

    @hookimpl
    def lazy_regularizers(self, cfg):
        if self.opts.weight == 0:
            return []
        return [LazyRegularizer("smart", "G", self.opts.interval, self._regularity)]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        if model.kind == "image" and x.shape[-1] != model.img_resolution:
            size = (model.img_resolution, model.img_resolution)
            if self.opts.resize == "area":
                x = F.interpolate(x, size=size, mode="area")
            else:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x

    def _regularity(self, ctx) -> torch.Tensor:
        if self._device != ctx.device:
            self.model = self.model.to(ctx.device)
            self._device = ctx.device
        model = self.model
        fakes = ctx.sample()
        x = self._prepare(fakes.img)
        n = x.shape[0]
        t = self.schedule.sample_t(n, *self.t_range, device=x.device)
        eps = torch.randn_like(x)
        c = fakes.c if model.label_dim else None  # the labels of these samples (a sampler may choose its own)
        loss, mse = smart_loss(model, x, t, eps, self.schedule, self.opts.weight, c=c,
                               omit_jacobian=self.opts.omit_jacobian)
        ctx.report("Loss/smart/score", mse, status=True)  # also in the status line, under this one name
        ctx.report("Loss/smart/reg", loss.detach())
        return loss
