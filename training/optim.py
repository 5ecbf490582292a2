"""G's and D's optimizers: base settings from the configuration, plugin parameter groups and lr schedules.

The base optimizer of a network is Adam with ``--glr``/``--dlr``, the configuration's betas and eps, and
StyleGAN2's lazy-regularization correction for the network's *base* reg interval ``b``: lr x ``b/(b+1)`` and
betas ^ ``b/(b+1)`` (StyleGAN2-ADA's ``mb_ratio``). The base intervals are a function of the configuration and
the backbone only (:func:`base_reg_intervals`), never of the loss-only plugins that are enabled: a plugin's lazy
regularizer runs on the base reg steps or inside the main phase (see :class:`~ganstack.training.api.LazyRegularizer`),
so it never adds an optimizer step that would call for another correction.

Plugins may add parameter groups (``param_groups`` hook) and set one learning-rate schedule per network
(``lr_schedule`` hook); schedules are stepped after every training step and saved in checkpoints.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ganstack.training.api import LRSchedule, PluginError


def base_reg_intervals(cfg, features, data_kind: str) -> dict[str, int]:
    """``{'G': b_G, 'D': b_D}``: the networks' base lazy-regularization intervals (1 = no reg phase).

    As StyleGAN2-ADA's ``train.py`` (``G_reg_interval = 4``, ``D_reg_interval = 16`` whatever the weights):
    a generator with a W space (the StyleGAN2 backbone) has its path-length interval even when ``--pl-weight`` is
    0 (the ``cifar`` preset), and an image discriminator its R1 interval even when ``--gamma`` is 0. Other
    networks (the toy MLPs, a plugin's G without W space) have a reg phase only for a base regularizer that is on.
    """
    g = cfg.pl_interval if cfg.pl_interval > 1 and ("w_space" in features or cfg.pl_weight > 0) else 1
    d = cfg.r1_interval if cfg.r1_interval > 1 and (data_kind == "image" or cfg.gamma > 0) else 1
    return {"G": int(g), "D": int(d)}


def lazy_mb_ratio(interval: int) -> float:
    """StyleGAN2's lazy-regularization correction ``k / (k + 1)`` for a base reg interval ``k`` (1: none)."""
    k = int(interval)
    return k / (k + 1) if k > 1 else 1.0


def make_optimizer(module: torch.nn.Module, lr: float, betas, eps: float, mb_ratio: float,
                   extra_groups: Optional[list] = None) -> torch.optim.Adam:
    """Adam over ``module``'s parameters with the corrected base settings, plus plugin groups.

    Parameters that a plugin group names leave the base group; a group's missing keys take the base settings.
    """
    extra = [dict(g, params=list(g["params"])) for g in (extra_groups or [])]
    claimed = {id(p) for g in extra for p in g["params"]}
    base = [p for p in module.parameters() if id(p) not in claimed]
    return torch.optim.Adam([{"params": base}] + extra, lr=lr * mb_ratio, betas=[b ** mb_ratio for b in betas],
                            eps=eps)


class Optimizers:
    """G's and D's Adam optimizers and their learning-rate schedules for one run."""

    def __init__(self, stack, cfg, G: torch.nn.Module, D: torch.nn.Module, data_kind: str):
        self.intervals = base_reg_intervals(cfg, stack.features, data_kind)
        self.mb_ratio = {net: lazy_mb_ratio(k) for net, k in self.intervals.items()}
        settings = {"G": (G, cfg.glr, cfg.g_betas), "D": (D, cfg.dlr, cfg.d_betas)}
        self.opts: dict[str, torch.optim.Optimizer] = {}
        for net, (module, lr, betas) in settings.items():
            groups = [g for lst in stack.hooks.param_groups(net=net, module=module, cfg=cfg) for g in lst]
            self.opts[net] = make_optimizer(module, lr, betas, cfg.adam_eps, self.mb_ratio[net], groups)
        total_steps = max(math.ceil(cfg.total_nimg / cfg.batch), 1)
        self.schedules: dict[str, LRSchedule] = {}
        for net, opt in self.opts.items():
            found = stack.hooks.lr_schedule(net=net, optimizer=opt, cfg=cfg, total_steps=total_steps)
            if len(found) > 1:
                who = [i.plugin_name for i in stack.implementations("lr_schedule")]
                raise PluginError(f"More than one plugin sets a learning-rate schedule for {net} (plugins "
                                  f"implementing lr_schedule: {', '.join(who)}); only one schedule per network is "
                                  f"allowed. Drop one of them.")
            if found:
                if not isinstance(found[0], LRSchedule):
                    raise PluginError(f"The lr_schedule hook returned a {type(found[0]).__name__} for {net}; it must "
                                      f"have step(), state_dict() and load_state_dict() (a torch lr_scheduler).")
                self.schedules[net] = found[0]

    @property
    def G(self) -> torch.optim.Optimizer:
        return self.opts["G"]

    @property
    def D(self) -> torch.optim.Optimizer:
        return self.opts["D"]

    def step_schedules(self) -> None:
        for sched in self.schedules.values():
            sched.step()

    def schedule_state(self) -> dict:
        return {net: sched.state_dict() for net, sched in self.schedules.items()}

    def load_schedule_state(self, state: dict) -> None:
        state = dict(state or {})
        if set(state) != set(self.schedules):
            raise PluginError(f"The checkpoint has learning-rate schedules for {sorted(state) or 'no network'} but "
                              f"this stack sets them for {sorted(self.schedules) or 'no network'}; resume with the "
                              f"plugins and options it was trained with.")
        for net, sched in self.schedules.items():
            sched.load_state_dict(state[net])
