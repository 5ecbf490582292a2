"""The StyleGAN2 loss, phase by phase, with every plugin contribution entering through hooks.

Phases (as in StyleGAN2-ADA): ``Gmain`` (non-saturating logistic loss on fakes plus ``g_loss`` terms),
``Greg`` (G's lazy regularizers that are due on a base reg step), ``Dmain`` (logistic loss on reals and fakes
plus ``d_loss`` terms), ``Dreg`` (D's). Where a regularizer runs follows one rule
(:class:`~ganstack.training.api.LazyRegularizer`): interval 1 inside the main phase; interval ``k`` on the steps
divisible by ``k``, with gain ``k``, in the reg phase when the step is a base reg step of its network and inside
the main phase otherwise.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ganstack.training import distributed
from ganstack.training.api import DInput, PhaseContext, PluginError, autocast

__all__ = ["GANLoss", "PhaseContext"]


class GANLoss:
    """Non-saturating logistic GAN loss with hooks; one object per run (the ``engine`` of a PhaseContext)."""

    def __init__(self, stack, G, D, cfg, stats, device, regularizers, base_intervals: Optional[dict] = None):
        self.stack = stack
        self.hooks = stack.hooks
        self.G = G
        self.D = D
        self.cfg = cfg
        self.stats = stats
        self.device = torch.device(device)
        self.regs = {"G": [r for r in regularizers if r.net == "G"],
                     "D": [r for r in regularizers if r.net == "D"]}
        self.base = dict(base_intervals or {"G": 1, "D": 1})
        self._labels_differ: Optional[torch.Tensor] = None

    def autocast(self):
        return autocast(self.cfg.amp, self.device)

    @staticmethod
    def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_mean(value)

    # -- where regularizers run ----------------------------------------------------------------
    def _base_step(self, net: str, step: int) -> bool:
        b = self.base.get(net, 1)
        return b > 1 and step % b == 0

    def lazy_due(self, net: str, step: int) -> list:
        """The regularizers of ``net`` that run in its reg phase at ``step`` (empty: no reg phase)."""
        if not self._base_step(net, step):
            return []
        return [r for r in self.regs[net] if r.interval > 1 and step % r.interval == 0]

    def in_main_phase(self, net: str, step: int) -> list:
        """The regularizers of ``net`` evaluated inside its main phase at ``step``."""
        base = self._base_step(net, step)
        return [r for r in self.regs[net] if r.interval == 1 or (step % r.interval == 0 and not base)]

    def _main_phase_regs(self, ctx: PhaseContext, total: torch.Tensor) -> torch.Tensor:
        for reg in self.in_main_phase(ctx.net, ctx.step):
            value = reg.loss(ctx).mean()
            total = total + (value if reg.interval == 1 else value * reg.interval)
        return total

    # -- the contract of training pairs --------------------------------------------------------
    def check_labels_kept(self, fakes: DInput, reals: DInput) -> None:
        """Fakes derived from reals must carry those reals' labels (queued on the device; see :meth:`verify`)."""
        n = len(fakes)
        want = reals.c[:n]
        if n > len(reals) or tuple(fakes.c.shape) != tuple(want.shape):
            raise PluginError(self._label_message(f"labels of shape {tuple(fakes.c.shape)} for {n} fakes, but the "
                                                  f"reals' labels have shape {tuple(want.shape)}"))
        if fakes.c.numel():
            differ = (fakes.c.to(want.dtype) != want).any()
            self._labels_differ = differ if self._labels_differ is None else self._labels_differ | differ

    def _label_message(self, what: str) -> str:
        who = self.stack.filler("sampler")
        return (f"The sampler of {who} made training fakes from this phase's reals (from_reals=True) but returned "
                f"{what}. A fake derived from a real must keep that real's label: return "
                f"DInput(..., c=ctx.reals.c[:N], from_reals=True) and condition G on ctx.reals.c, not on the "
                f"loop's random labels.")

    def verify(self) -> None:
        """Raise if any fakes derived from reals carried other labels since the last check (one host read)."""
        flag, self._labels_differ = self._labels_differ, None
        if flag is not None and bool(flag):
            raise PluginError(self._label_message("labels that differ from those reals' labels"))

    # -- the phases ----------------------------------------------------------------------------
    def _add_hook_terms(self, results: dict, total: torch.Tensor) -> torch.Tensor:
        for plugin, terms in results.items():
            for name, value in terms.items():
                value = torch.as_tensor(value, device=total.device, dtype=torch.float32)
                self.stats.report(f"Loss/{plugin}/{name}", value)
                total = total + value.mean()
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
            loss = self._add_hook_terms(self.hooks.g_loss(ctx=ctx, fake=out, fakes=fakes), loss)
            loss = self._main_phase_regs(ctx, loss)
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
            loss = self._add_hook_terms(self.hooks.d_loss(ctx=ctx, real=real_out, fake=fake_out), loss)
            loss = self._main_phase_regs(ctx, loss)
        elif phase in ("Greg", "Dreg"):
            loss = torch.zeros([], device=self.device)
            for reg in self.lazy_due(ctx.net, ctx.step):
                loss = loss + reg.loss(ctx).mean() * reg.interval
        else:
            raise ValueError(f"unknown phase {phase!r}")
        (loss * scale).backward()
