"""The always-on ``core`` plugin: the StyleGAN2 defaults behind every plugin.

It builds the backbone networks, makes fakes with ``G(z, c)``, and declares the two StyleGAN2
regularizers: R1 on D (every ``--r1-interval`` = 16 steps, weight ``gamma / 2``) and path length on G
(every ``--pl-interval`` = 4 steps, weight ``--pl-weight`` = 2, batch shrink 2, decay 0.01).
It is registered first, so every enabled plugin runs before it and can replace what it provides.
Path length and style mixing need a generator with a W space (the ``w_space`` feature); when the stack's
generator has none they default to 0, and an explicit non-zero value is refused.
"""
from __future__ import annotations

import math

import torch

from ganstack.stylegan_base import networks
from ganstack.training.api import Capabilities, DInput, LazyRegularizer, PluginError, hookimpl


def r1_penalty(D_out_fn, real: DInput) -> tuple[torch.Tensor, torch.Tensor]:
    """R1 = ||d D(x) / d x||^2 per sample, differentiable (create_graph) for D's update.

    ``D_out_fn(x)`` maps a DInput to D's logits, including every pre-D augment, so the gradient is
    taken with respect to the un-augmented real input as in StyleGAN2-ADA.
    """
    img = real.img.detach().requires_grad_(True)
    logits = D_out_fn(real.replace(img=img))
    (grad,) = torch.autograd.grad(outputs=[logits.sum()], inputs=[img], create_graph=True)
    penalty = grad.square().flatten(1).sum(1)
    return penalty, logits


def path_length_penalty(img: torch.Tensor, ws: torch.Tensor, pl_mean: torch.Tensor, decay: float):
    """Path-length penalty of StyleGAN2: ``(||J_w^T y|| - a)^2`` with ``y ~ N(0, I) / sqrt(H W)``.

    Returns ``(penalty per sample, new running mean a)``.
    """
    pl_noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad(outputs=[(img * pl_noise).sum()], inputs=[ws], create_graph=True)
    lengths = grad.square().sum(2).mean(1).sqrt()
    new_mean = pl_mean.lerp(lengths.mean().detach(), decay)
    return (lengths - new_mean).square(), new_mean


class CorePlugin:
    """StyleGAN2 defaults: backbone G and D, the sampler G(z, c), R1 and path length. Its state is the
    path-length running mean."""

    name = "core"
    # The StyleGAN2 G (images) and the MLP G (points) both map one latent to one sample; only the StyleGAN2 G
    # has a W space.
    capabilities = Capabilities(provides="one_latent_per_sample, sample_fakes, one_step",
                                provides_on={"image": "w_space"}, d_input=None)

    def __init__(self):
        self.pl_mean = torch.zeros([])

    @hookimpl
    def configure(self, cfg, features):
        if "w_space" in features:
            return
        for name, what in (("pl_weight", "StyleGAN2's path-length regularizer"), ("style_mixing", "style mixing")):
            cfg.set_default(name, 0.0)
            value = getattr(cfg, name)
            if value:
                flag = "--" + name.replace("_", "-")
                raise PluginError(f"{flag} {value:g} asks for {what}, which needs a generator with a W space "
                                  f"(per-layer styles ws); this stack's generator has none (the 'w_space' feature "
                                  f"is missing: the MLP toy backbone, or a plugin's own G). Use {flag} 0.")

    @hookimpl
    def build_generator(self, kwargs, data_info):
        cls = networks.Generator if data_info["kind"] == "image" else networks.MLPGenerator
        return cls(**kwargs)

    @hookimpl
    def build_discriminator(self, kwargs, data_info):
        cls = networks.Discriminator if data_info["kind"] == "image" else networks.MLPDiscriminator
        return cls(**kwargs)

    @hookimpl
    def sampler(self, G, z, c, G_kwargs):
        return DInput(img=G(z, c, **G_kwargs), c=c)

    @hookimpl
    def lazy_regularizers(self, cfg):
        regs = []
        if cfg.gamma > 0:
            regs.append(LazyRegularizer("r1", "D", cfg.r1_interval, lambda ctx: self._r1(ctx, cfg)))
        if cfg.pl_weight > 0:
            regs.append(LazyRegularizer("pl", "G", cfg.pl_interval, lambda ctx: self._pl(ctx, cfg)))
        return regs

    def _r1(self, ctx, cfg):
        penalty, logits = r1_penalty(lambda x: ctx.run_D(x, is_real=True).logits, ctx.reals)
        ctx.report("Loss/scores/real_reg", logits)
        ctx.report("Loss/r1_penalty", penalty)
        loss = penalty * (cfg.gamma / 2)
        ctx.report("Loss/D/reg", loss)
        return loss + logits.squeeze(1) * 0  # keeps every D parameter in the graph

    def _pl(self, ctx, cfg):
        n = max(ctx.z.shape[0] // cfg.pl_batch_shrink, 1)
        img, ws = ctx.G(ctx.z[:n], ctx.c[:n], style_mixing_prob=cfg.style_mixing, return_ws=True)
        self.pl_mean = self.pl_mean.to(img.device)
        penalty, new_mean = path_length_penalty(img, ws, self.pl_mean, cfg.pl_decay)
        # All ranks average their running means so that they stay identical.
        self.pl_mean = ctx.all_reduce_mean(new_mean)
        ctx.report("Loss/pl_penalty", penalty)
        loss = penalty * cfg.pl_weight
        ctx.report("Loss/G/reg", loss)
        return loss + img[:, 0, 0, 0] * 0

    @hookimpl
    def state_dict(self):
        return {"pl_mean": self.pl_mean.detach().cpu().clone()}

    @hookimpl
    def load_state_dict(self, state):
        self.pl_mean = state["pl_mean"].clone()
