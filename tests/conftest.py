"""Shared helpers for the tests: tiny configs that train in well under a second per step on a CPU."""
from __future__ import annotations

import os

import pytest
import torch

from ganstack.stylegan_base.datasets import open_dataset
from ganstack.training import distributed
from ganstack.training.config import TrainConfig, resolve
from ganstack.training.loop import Trainer
from ganstack.training.plugin_manager import PluginStack

torch.set_num_threads(min(2, os.cpu_count() or 1))

# A tiny image setup: 16x16 procedural shapes, small channel counts.
TINY_IMAGE = dict(data="shapes16?n=256", cfg="stylegan2", cbase=512, cmax=32, map_depth=2, z_dim=16, w_dim=16,
                  batch=4, mbstd_group=2, workers=0)
TINY_POINTS = dict(data="toy:gaussians25?n=2048", cfg="toy", batch=32, mlp_hidden=32, workers=0,
                   mlp_g="paper")  # the small paper G: fast, and independent of --batch-gpu (no BatchNorm)


def run_cli(args) -> int:
    """``ganstack ARGS`` in this process; its exit status."""
    from ganstack.training.cli import main
    try:
        main(args)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def make_config(**kw) -> TrainConfig:
    base = dict(TINY_POINTS)
    if str(kw.get("data", "")).startswith("shapes") or kw.get("image"):
        base = dict(TINY_IMAGE)
    kw.pop("image", None)
    base.update(kw)
    cfg = TrainConfig(**{k: v for k, v in base.items()})
    cfg.mark_user_set(set(kw))
    return cfg


def make_trainer(names=(), options=None, extra_plugins=None, run_dir=None, resume=None, **cfg_kw):
    """A Trainer for a tiny config; ``extra_plugins`` maps names to plugin classes defined in a test."""
    cfg = make_config(**cfg_kw)
    ds = open_dataset(cfg.data, use_labels=cfg.cond, mirror=cfg.mirror)
    resolve(cfg, ds.info(), distributed.world_size())
    stack = PluginStack(list(names), options or {}, extra_plugins=extra_plugins)
    stack.configure(cfg)
    return Trainer(cfg, stack, ds, run_dir=run_dir, resume=resume, device="cpu", log=lambda *_: None)


def state_equal(a: dict, b: dict) -> bool:
    """Bitwise equality of two (nested) state dicts of tensors."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(state_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture
def tiny_trainer():
    return make_trainer
