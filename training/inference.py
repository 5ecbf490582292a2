"""Loading a trained model from a checkpoint, with its plugin stack, for sampling and metrics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ganstack.stylegan_base.errors import CheckpointError
from ganstack.training import checkpoint as ckpt_io
from ganstack.training.api import DInput
from ganstack.training.config import TrainConfig
from ganstack.training.nets import build_networks
from ganstack.training.plugin_manager import PluginStack


@dataclass
class LoadedModel:
    """A generator with the sampler of the plugin stack it was trained with."""

    G: torch.nn.Module
    stack: PluginStack
    cfg: TrainConfig
    data_info: dict
    checkpoint: dict
    device: torch.device

    @torch.no_grad()
    def sample(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, **G_kwargs) -> torch.Tensor:
        """Samples for latents ``z`` through the ``sampler`` hook (DDGAN's chain, for example)."""
        if c is None:
            c = torch.zeros([z.shape[0], self.G.c_dim], device=self.device)
        out: DInput = self.stack.first("sampler", G=self.G, z=z, c=c, ctx=None, G_kwargs=G_kwargs)
        return out.img


def load_model(path: str, device=None, which: str = "G_ema", flag: str = "--network") -> LoadedModel:
    """Rebuild the networks and plugins recorded in a checkpoint and load ``which`` (G_ema or G).

    ``flag`` names the option the path came from in error messages.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt = ckpt_io.load(path, flag=flag, purpose="sample", networks=(which,))
    cfg = TrainConfig.from_dict(ckpt["config"])
    stack = PluginStack(ckpt["plugins"], ckpt["plugin_options"])
    stack.configure(cfg)
    with torch.random.fork_rng():
        nets = build_networks(stack, cfg, ckpt["dataset"], device)
    G = nets.G_ema if which == "G_ema" else nets.G
    try:
        G.load_state_dict(ckpt[which])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{flag} {ckpt['path']!r}: its {which} weights do not fit the network its own options "
                              f"build ({str(exc).strip().splitlines()[0][:200]}); the file is damaged or was edited. "
                              f"Use another snapshot of the run.") from None
    G.eval()
    stack.load_state_dict(ckpt["plugin_state"])
    return LoadedModel(G=G, stack=stack, cfg=cfg, data_info=ckpt["dataset"], checkpoint=ckpt, device=device)
