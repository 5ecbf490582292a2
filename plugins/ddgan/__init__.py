"""Denoising Diffusion GAN (Xiao, Kreis and Vahdat, ICLR 2022) as a ganstack plugin.

A ``T``-step VP diffusion (T = 4, beta_min 0.1, beta_max 20; Appendix C, Eq. 16) whose every denoising
step ``p(x_{t-1} | x_t)`` is a conditional GAN: ``G(x_t, z, t)`` predicts ``x_0`` and ``x_{t-1}`` is drawn
from the Gaussian posterior ``q(x_{t-1} | x_t, x_0)`` (Appendix A); ``D(x_{t-1}, x_t, t)`` tells real
pairs from generated ones with the non-saturating loss and R1 on ``x_{t-1}``.

How it sits on the loop:

* ``build_generator`` / ``build_discriminator`` replace the backbone networks (:mod:`.networks`).
* ``prepare_reals`` turns each phase's real batch ``x_0`` into the pair: D's image input becomes
  ``x_{t-1}`` (so the core R1 differentiates with respect to ``x_{t-1}`` exactly), and ``x_t`` and ``t``
  travel in ``DInput.extra`` (``Capabilities(d_input="pair")``).
* ``sampler`` makes the training fake ``x_{t-1}`` from the same real ``x_t`` (the loop's training-pairs path:
  ``from_reals=True``, so each fake keeps its real's label and G is conditioned on that label), and runs the
  whole chain ``x_T ~ N(0, I) -> ... -> x_0`` (T generator calls; the last returns G's ``x_0`` prediction) for
  snapshots, metrics and ``ganstack generate``. Checkpoints record the plugin stack, so loading a
  ddgan checkpoint rebuilds this sampler without flags.
* ``configure`` applies the paper's recommended settings where the user did not set them. Which plugins can
  stack is decided by the declarations: ddgan's G has no W space and no single latent per sample, and its
  training fakes are chain states rather than clean samples, so smart and clr are refused; its D judges
  ``(x_{t-1}, x_t)`` pairs, so augments that only declare plain inputs (ada, diffaug, diffusion) are refused.
* ``lr_schedule``: the paper's cosine learning-rate decay of G and D (Appendix C, "cosine learning rate
  decay ... for training both the generator and discriminator"; official ``CosineAnnealingLR(..., eta_min=1e-5)``),
  over the run's steps. ``--ddgan-lr-decay auto`` uses it on image presets and keeps a constant lr on the 2-D toy
  (Appendix C.5 gives one constant lr, 1e-4, for the 25-Gaussian experiment).

G_ema: the loop's EMA is a half-life in kimg, ``beta = 0.5 ** (batch / (ema_kimg * 1000))``, so the
paper's per-step decay is converted for the run's batch (0.9999 at batch 128 is 887 kimg). By default
(``ema_decay = -1``) image presets get Table 8's 0.9999 and ``--cfg toy`` keeps the toy preset's 1-kimg
half-life (Appendix C.5's 2-D setup lists no EMA; 0.9999 at batch 256 would be a 1774-kimg
half-life, longer than a toy run). Whenever a decay is applied and the preset has no rampup, the
half-life is capped at 5% of the images seen (StyleGAN2-ADA's ``ema_rampup`` 0.05), so a short run's
G_ema follows G instead of staying at its initial weights. ``--ema`` given by the user always wins.

Pre-D augment plugins: an augment that changes ``x_{t-1}`` but not ``x_t`` breaks the pair D judges, and
instance noise (diffusion) is a second forward process on top of this one, so they are refused. A
third-party augment that applies the same transform to ``x.extra['x_t']`` as to ``x.img`` declares
``Capabilities(augments="plain, pair")`` and is then allowed.
"""
from __future__ import annotations

import math

import torch

from ganstack.plugins.ddgan.networks import (DDGANImageDiscriminator, DDGANImageGenerator, DDGANPointDiscriminator,
                                    DDGANPointGenerator)
from ganstack.plugins.ddgan.schedule import VPSchedule
from ganstack.stylegan_base.errors import CheckpointError
from ganstack.training.api import Capabilities, DInput, Option, Plugin, PluginError, hookimpl

__all__ = ["DDGANPlugin", "VPSchedule", "ema_kimg_for_decay", "sample_chain"]

AUTO_EMA = -1.0  # ema_decay's "automatic" value (see DDGANPlugin._apply_ema)
PAPER_EMA_DECAY = 0.9999  # Table 8, CIFAR-10 (and StackedMNIST, Appendix C.5: "same as CIFAR-10")

LR_DECAY_MIN = 1e-5  # eta_min of the official CosineAnnealingLR


def ema_kimg_for_decay(decay: float, batch: int) -> float:
    """The G_ema half-life in kimg equal to a per-step EMA ``decay`` at total batch ``batch``.

    The loop uses ``beta = 0.5 ** (batch / (ema_kimg * 1000))``; solving ``beta = decay`` gives
    ``ema_kimg = batch * ln(0.5) / ln(decay) / 1000`` (0.9999 at batch 128: 887 kimg).
    """
    if decay <= 0:
        return 0.0
    return batch * math.log(0.5) / math.log(decay) / 1000


def _g_call_kwargs(G_kwargs: dict) -> dict:
    keep = ("truncation_psi", "truncation_cutoff", "update_emas", "fused_modconv")
    return {k: v for k, v in (G_kwargs or {}).items() if k in keep}


def _sample_shape(G, n: int) -> list:
    if G.is_image:
        return [n, G.img_channels, G.img_resolution, G.img_resolution]
    return [n, G.out_dim]


@torch.no_grad()
def sample_chain(G, schedule: VPSchedule, z: torch.Tensor, c: torch.Tensor, G_kwargs=None,
                 return_steps: bool = False):
    """Ancestral sampling: ``x_T ~ N(0, I)``, then ``T`` generator calls.

    Step ``t`` predicts ``x_0 = G(x_t, z_t, t)`` and draws ``x_{t-1}`` from the posterior; the last step
    (t = 1, zero posterior variance) returns the ``x_0`` prediction. ``z`` is the latent of the first
    call; later calls draw fresh latents, as the official sampler does. Random draws use the global
    torch RNG (callers such as ``generate`` and the metrics seed or fork it).
    """
    n = z.shape[0]
    kwargs = _g_call_kwargs(G_kwargs)
    x = torch.randn(_sample_shape(G, n), device=z.device)
    steps = []
    for step in range(schedule.T, 0, -1):
        t = torch.full([n], step, dtype=torch.int64, device=z.device)
        x0 = G(x, z if step == schedule.T else torch.randn_like(z), t, c, **kwargs)
        steps.append(x0)
        x = x0 if step == 1 else schedule.posterior_sample(x0, x, t)
    return (x, steps) if return_steps else x


class DDGANPlugin(Plugin):
    """Denoising Diffusion GAN: T denoising steps, each a conditional GAN G(x_t, z, t) vs D(x_{t-1}, x_t, t)."""

    # Replaces G, D and the sampler (its hooks say so); its D judges (x_{t-1}, x_t) pairs. Its G provides none of
    # the backbone's features: no W space, not one latent per sample, and training fakes that are chain states.
    capabilities = Capabilities(d_input="pair")

    def __init__(self):
        self.schedule = VPSchedule()
        self.ema_decay = None  # the per-step G_ema decay configure applied (None: preset's or user's --ema)
        self.lr_decay = False  # cosine lr decay in force (configure decides)

    # ------------------------------------------------------------------------------------------
    # Start-up

    @hookimpl
    def add_options(self):
        return [
            Option("steps", int, 4, "number of denoising steps T (Appendix C.2: 4 for all datasets; Table 2 "
                   "ablates 1, 2, 4, 8; the official CelebA-HQ command uses 2)", min=1, max=1000),
            Option("beta_min", float, 0.1, "VP-SDE beta_min of the forward process (Appendix C.2, Eq. 16)", min=0.0),
            Option("beta_max", float, 20.0, "VP-SDE beta_max of the forward process (Appendix C.2, Eq. 16)", min=0.0),
            Option("t_eps", float, 0.0, "start of the VP time grid: 0 is Eq. 16 as printed, the official code "
                   "uses 1e-3", min=0.0, max=0.5),
            Option("ema_decay", float, AUTO_EMA, "per-step G EMA decay, converted to --ema kimg for the run's batch "
                   "(Table 8: 0.9999 CIFAR-10, 0.999 CelebA-HQ/LSUN; 0 = no EMA). -1 (default) = automatic: 0.9999 on "
                   "image presets; on --cfg toy the preset's own 1-kimg EMA, since Appendix C.5 lists no EMA for the "
                   "2-D data. Where the preset has no EMA rampup, a decay's half-life is capped at 5% of the images seen "
                   "(StyleGAN2-ADA's rampup 0.05). --ema wins if given", min=-1.0, max=0.999999),
            Option("lr_decay", str, "auto", "cosine learning-rate decay of G and D to 1e-5 over the run (paper "
                   "Appendix C, official CosineAnnealingLR with eta_min 1e-5), or off. auto = cosine on image presets, "
                   "off on --cfg toy (Appendix C.5: one constant lr for the 2-D data)", choices=("auto", "cosine", "off")),
        ]

    @hookimpl
    def configure(self, opts, cfg, stack):
        if opts.beta_max < opts.beta_min:
            raise PluginError(f"--ddgan-beta-max {opts.beta_max} is below --ddgan-beta-min {opts.beta_min}; the VP "
                              f"schedule needs beta_min <= beta_max (paper: 0.1 and 20).")
        self.schedule = VPSchedule(opts.steps, opts.beta_min, opts.beta_max, opts.t_eps)
        images = str(cfg.cfg) != "toy"
        self.lr_decay = opts.lr_decay == "cosine" or (opts.lr_decay == "auto" and images)
        # Recommended settings where the user gave none: Appendix C.2 and Table 8 (CIFAR-10) for images,
        # Appendix C.5 for the 2-D toy data (Adam lr 1e-4 for both networks).
        cfg.set_default("g_betas", (0.5, 0.9))
        cfg.set_default("d_betas", (0.5, 0.9))
        cfg.set_default("glr", 1.6e-4 if images else 1e-4)
        cfg.set_default("dlr", 1e-4)
        cfg.set_default("gamma", 0.05)
        cfg.set_default("r1_interval", 1)  # the paper applies R1 every step; --r1-interval k makes it lazy
        # Path length and style mixing: the core sets them to 0 (and refuses them) since this G has no W space.
        self.ema_decay = self._apply_ema(opts.ema_decay, cfg, images)
        if images:
            cfg.set_default("z_dim", 256)  # Table 6, CIFAR-10: latent dimension 256, 3 mapping layers
            cfg.set_default("map_depth", 3)

    @hookimpl
    def lr_schedule(self, optimizer, total_steps):
        """Cosine decay of G's and D's learning rates to 1e-5 over the run (official CosineAnnealingLR)."""
        if not self.lr_decay:
            return None
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=LR_DECAY_MIN)

    @staticmethod
    def _apply_ema(decay: float, cfg, images: bool):
        """Set G_ema's half-life from the per-step ``decay`` where the user gave no ``--ema``.

        Returns the per-step decay in force (None where the preset's or the user's ``--ema`` is kept).
        ``AUTO_EMA`` means Table 8's 0.9999 on images and the toy preset's own EMA on 2-D data: Appendix
        C.5's 25-Gaussian setup lists no EMA, and 0.9999 per step at the toy batch of 256 is a
        1774-kimg half-life, longer than the toy runs, which would leave G_ema at its initialisation.
        """
        if decay != AUTO_EMA and decay < 0:
            raise PluginError(f"--ddgan-ema-decay {decay} is not a per-step EMA decay: give a value in [0, 1) "
                              f"(0.9999 in Table 8 for CIFAR-10, 0 for no EMA), or -1 for the automatic choice.")
        if cfg.is_user_set("ema_kimg"):
            return None
        if decay == AUTO_EMA:
            if not images:
                return None  # keep the toy preset's half-life
            decay = PAPER_EMA_DECAY
        cfg.set_default("ema_kimg", ema_kimg_for_decay(decay, cfg.batch))
        if cfg.ema_rampup is None:
            # A half-life of thousands of steps would leave a short run's G_ema near its initial weights;
            # StyleGAN2-ADA's rampup (half-life <= 5% of the images seen) only binds early in long runs.
            cfg.set_default("ema_rampup", 0.05)
        return decay

    @hookimpl
    def build_generator(self, kwargs, data_info, cfg):
        if data_info["kind"] == "image":
            syn = kwargs.get("synthesis_kwargs", {})
            return DDGANImageGenerator(
                z_dim=kwargs["z_dim"], c_dim=kwargs["c_dim"], w_dim=kwargs["w_dim"],
                img_resolution=kwargs["img_resolution"], img_channels=kwargs["img_channels"],
                channel_base=syn.get("channel_base", 32768), channel_max=syn.get("channel_max", 512),
                map_depth=kwargs.get("mapping_kwargs", {}).get("num_layers", 3), conv_clamp=syn.get("conv_clamp"))
        return DDGANPointGenerator(z_dim=kwargs["z_dim"], c_dim=kwargs["c_dim"], out_dim=kwargs["out_dim"],
                                   hidden=kwargs["hidden"], num_hidden_layers=kwargs["num_hidden_layers"])

    @hookimpl
    def build_discriminator(self, kwargs, data_info, cfg):
        if data_info["kind"] == "image":
            return DDGANImageDiscriminator(
                c_dim=kwargs["c_dim"], img_resolution=kwargs["img_resolution"], img_channels=kwargs["img_channels"],
                channel_base=kwargs.get("channel_base", 32768), channel_max=kwargs.get("channel_max", 512),
                mbstd_group_size=kwargs.get("epilogue_kwargs", {}).get("mbstd_group_size", 4),
                conv_clamp=kwargs.get("conv_clamp"))
        return DDGANPointDiscriminator(c_dim=kwargs["c_dim"], in_dim=kwargs["in_dim"], hidden=kwargs["hidden"],
                                       num_hidden_layers=kwargs["num_hidden_layers"])

    # ------------------------------------------------------------------------------------------
    # Every phase

    @hookimpl
    def prepare_reals(self, reals, ctx):
        x0 = reals.img
        t = torch.randint(1, self.schedule.T + 1, [x0.shape[0]], device=x0.device)  # per-sample, uniform
        x_prev, x_t = self.schedule.q_sample_pairs(x0, t)
        return reals.replace(img=x_prev, extra={**reals.extra, "x_t": x_t, "t": t})

    @hookimpl
    def sampler(self, G, z, c, ctx, G_kwargs):
        if ctx is None:
            return DInput(img=sample_chain(G, self.schedule, z, c, G_kwargs), c=c)
        reals = ctx.reals  # the pairs prepare_reals made: denoise the same x_t, keep each real's label
        if "x_t" not in reals.extra:
            raise RuntimeError("ddgan's sampler ran in a training phase whose reals were not prepared by ddgan's "
                               "prepare_reals hook")
        t, x_t, c_real = reals.extra["t"], reals.extra["x_t"], reals.c
        if z.shape[0] != x_t.shape[0]:
            raise ValueError(f"ddgan denoises this phase's x_t ({x_t.shape[0]} samples) and needs as many latents, "
                             f"got {z.shape[0]}")
        x0 = G(x_t, z, t, c_real, **_g_call_kwargs(G_kwargs))
        x_prev = self.schedule.posterior_sample(x0, x_t, t)
        return DInput(img=x_prev, c=c_real, extra={"x_t": x_t, "t": t}, from_reals=True)

    @hookimpl
    def d_loss(self, ctx, real, fake):
        # Diagnostics only (the paper's Fig. 10): D's loss per denoising step; adds no term.
        t = ctx.reals.extra["t"]
        per_sample = (torch.nn.functional.softplus(-real.logits) + torch.nn.functional.softplus(fake.logits))
        per_sample = per_sample.detach().flatten()
        for step in range(1, self.schedule.T + 1):  # steps no sample drew count 0 and are skipped
            ctx.report(f"Loss/ddgan/D_t{step}", per_sample, mask=t.flatten() == step)
        return None

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    @hookimpl
    def report_stats(self):
        return {"T": self.schedule.T}

    @hookimpl
    def state_dict(self):
        return {"model": "ddgan", "schedule": self.schedule.describe()}

    @hookimpl
    def load_state_dict(self, state):
        saved = state.get("schedule", {})
        mine = self.schedule.describe()
        if saved.get("T") != mine["T"] or any(abs(a - b) > 1e-12 for a, b in
                                               zip(saved.get("alpha_bars", []), mine["alpha_bars"])):
            raise CheckpointError(f"The checkpoint's ddgan schedule (T={saved.get('T')}, alpha_bar "
                                  f"{saved.get('alpha_bars')}) differs from the one these options build "
                                  f"(T={mine['T']}, alpha_bar {mine['alpha_bars']}). Load it with the ddgan "
                                  f"options it was trained with (they are stored in the checkpoint).")
