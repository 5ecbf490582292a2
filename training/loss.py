"""The StyleGAN2 loss, phase by phase, with every plugin contribution entering through hooks.

Phases (as in StyleGAN2-ADA): ``Gmain`` (non-saturating logistic loss on fakes plus ``g_loss``
terms), ``Greg`` (G's lazy regularizers that are due), ``Dmain`` (logistic loss on reals and fakes plus
``d_loss`` terms), ``Dreg`` (D's lazy regularizers that are due). Regularizers with interval 1 are
evaluated inside the main phase instead.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

from ganstack.training import distributed
from ganstack.training.api import DInput, DOutput


class PhaseContext:
    """Everything one phase (one round of it, with ``--batch-gpu``) offers to the hooks.

    Attributes: ``phase``, ``net`` ('G' or 'D'), ``step`` (training steps done before this one),
    ``cur_nimg``, ``G``, ``D``, ``reals`` (DInput after ``prepare_reals``), ``z``, ``c``,
    ``cfg``, ``device``, ``scratch`` (a dict the hooks of this phase share).
    """

    def __init__(self, loss: "GANLoss", phase: str, step: int, cur_nimg: int, reals: DInput,
                 z: torch.Tensor, c: torch.Tensor):
        self._loss = loss
        self.phase = phase
        self.net = phase[0]
        self.step = step
        self.cur_nimg = cur_nimg
        self.G = loss.G
        self.D = loss.D
        self.cfg = loss.cfg
        self.device = loss.device
        self.z = z
        self.c = c
        self.scratch: dict = {}
        self.reals = loss.stack.chain("prepare_reals", "reals", reals, ctx=self)

    def augment(self, x: DInput, is_real: bool) -> DInput:
        """Run the ``augment_d_input`` chain in ``--plugins`` order."""
        return self._loss.stack.chain("augment_d_input", "x", x, ctx=self, is_real=is_real)

    def run_D(self, x: DInput, is_real: bool) -> DOutput:
        """Augment ``x`` and evaluate D on it; returns logits ``[N, 1]`` and features ``[N, F]``."""
        x = self.augment(x, is_real)
        with self._loss.autocast():
            logits, features = self.D(x.img, x.c, return_features=True, **x.extra)
        return DOutput(logits=logits.float(), features=features.float())

    def sample(self, z: Optional[torch.Tensor] = None, c: Optional[torch.Tensor] = None, **G_kwargs) -> DInput:
        """Make fakes through the ``sampler`` hook (default latents and labels: this phase's)."""
        z = self.z if z is None else z
        c = self.c if c is None else c
        kwargs = dict(style_mixing_prob=self.cfg.style_mixing)
        kwargs.update(G_kwargs)
        with self._loss.autocast():
            out = self._loss.stack.first("sampler", G=self.G, z=z, c=c, ctx=self, G_kwargs=kwargs)
        return out.replace(img=out.img.float())

    def report(self, name: str, value, mask=None) -> None:
        """Record a statistic (a tensor of any shape, or a number; ``mask`` selects elements without a GPU
        sync); see ``ganstack.training.stats``."""
        self._loss.stats.report(name, value, mask)

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average a tensor over all GPUs (identity on one process)."""
        return distributed.all_reduce_mean(value)


class GANLoss:
    """Non-saturating logistic GAN loss with hooks; one object per run."""

    def __init__(self, stack, G, D, cfg, stats, device, regularizers):
        self.stack = stack
        self.G = G
        self.D = D
        self.cfg = cfg
        self.stats = stats
        self.device = torch.device(device)
        self.regs = {"G": [r for r in regularizers if r.net == "G"],
                     "D": [r for r in regularizers if r.net == "D"]}

    def autocast(self):
        if self.cfg.amp == "off" or self.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def lazy_due(self, net: str, step: int):
        """The lazy regularizers (interval > 1) of ``net`` due at ``step``."""
        return [r for r in self.regs[net] if r.interval > 1 and step % r.interval == 0]

    def _add_hook_terms(self, hook: str, ctx: PhaseContext, total: torch.Tensor, **kwargs) -> torch.Tensor:
        for plugin, terms in self.stack.collect(hook, ctx=ctx, **kwargs):
            for name, value in terms.items():
                value = torch.as_tensor(value, device=total.device, dtype=torch.float32)
                self.stats.report(f"Loss/{plugin}/{name}", value)
                total = total + value.mean()
        return total

    def _every_step_regs(self, net: str, ctx: PhaseContext, total: torch.Tensor) -> torch.Tensor:
        for reg in self.regs[net]:
            if reg.interval == 1:
                total = total + reg.loss(ctx).mean()
        return total

    def accumulate_gradients(self, ctx: PhaseContext, scale: float = 1.0) -> None:
        """Compute the phase's loss and backpropagate ``loss * scale`` (``scale`` = 1 / rounds)."""
        phase = ctx.phase
        if phase == "Gmain":
            fakes = ctx.sample(update_emas=False)
            out = ctx.run_D(fakes, is_real=False)
            self.stats.report("Loss/scores/fake", out.logits)
            self.stats.report("Loss/signs/fake", out.logits.sign())
            loss = F.softplus(-out.logits).mean()  # -log(sigmoid(logits))
            self.stats.report("Loss/G/loss", loss)
            loss = self._add_hook_terms("g_loss", ctx, loss, fake=out, fakes=fakes)
            loss = self._every_step_regs("G", ctx, loss)
        elif phase == "Dmain":
            with torch.no_grad():
                fakes = ctx.sample(update_emas=True)
            fake_out = ctx.run_D(fakes, is_real=False)
            self.stats.report("Loss/scores/fake", fake_out.logits)
            self.stats.report("Loss/signs/fake", fake_out.logits.sign())
            real_out = ctx.run_D(ctx.reals, is_real=True)
            self.stats.report("Loss/scores/real", real_out.logits)
            self.stats.report("Loss/signs/real", real_out.logits.sign())
            loss = F.softplus(fake_out.logits).mean() + F.softplus(-real_out.logits).mean()
            self.stats.report("Loss/D/loss", loss)
            loss = self._add_hook_terms("d_loss", ctx, loss, real=real_out, fake=fake_out)
            loss = self._every_step_regs("D", ctx, loss)
        elif phase in ("Greg", "Dreg"):
            loss = torch.zeros([], device=self.device)
            for reg in self.lazy_due(ctx.net, ctx.step):
                loss = loss + reg.loss(ctx).mean() * reg.interval
        else:
            raise ValueError(f"unknown phase {phase!r}")
        (loss * scale).backward()
