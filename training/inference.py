"""Loading a trained model from a checkpoint, with its plugin stack, for sampling and metrics."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ganstack.stylegan_base.errors import CheckpointError
from ganstack.training import checkpoint as ckpt_io
from ganstack.training.api import DataInfo, DInput
from ganstack.training.config import TrainConfig
from ganstack.training.nets import build_networks
from ganstack.training.plugin_manager import PluginStack, discover

# The slots a plugin must not have filled for sampling to work without it.
SAMPLING_SLOTS = {"G", "sampler"}


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
        out: DInput = self.stack.hooks.sampler(G=self.G, z=z, c=c, ctx=None, G_kwargs=G_kwargs)
        return out.img


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def sampling_stack(ckpt: dict, registry: Optional[dict] = None,
                   warn: Callable[[str], None] = _warn) -> tuple[list[str], dict, list[str]]:
    """The checkpoint's plugins that sampling needs and are installed: ``(names, options, skipped)``.

    A recorded plugin that is not installed is skipped with a warning when its recorded capabilities say it only
    changed training (it replaced neither G nor the sampler); otherwise the error names the package to install.
    """
    registry = discover() if registry is None else registry
    provenance = ckpt.get("plugin_provenance") or {}
    names, skipped = [], []
    for name in ckpt["plugins"]:
        if name in registry:
            names.append(name)
            continue
        prov = provenance.get(name)
        source = f"{prov['dist']} {prov['version']}" if prov else "an unknown package"
        if prov is None or set(prov.get("replaces", [])) & SAMPLING_SLOTS:
            need = ("it replaced " + " and ".join(sorted(set(prov["replaces"]) & SAMPLING_SLOTS))
                    if prov else "the checkpoint does not record what it did")
            install = f"pip install '{prov['dist']}=={prov['version']}'" if prov and prov["dist"] != "unknown" else \
                "install the package that provides it"
            raise CheckpointError(f"The checkpoint was trained with plugin {name!r} (from {source}), which is not "
                                  f"installed, and sampling needs it: {need}. {install}, then try again.")
        warn(f"plugin {name!r} (from {source}) recorded in the checkpoint is not installed; it only changed training "
             f"(losses, augments, D), so sampling works without it.")
        skipped.append(name)
    options = {k: v for k, v in (ckpt.get("plugin_options") or {}).items() if k in names}
    return names, options, skipped


def load_checkpoint_or_pickle(path: str, flag: str = "--network", networks=("G_ema",)) -> dict:
    """A checkpoint dict for sampling from a ganstack checkpoint (file or run folder) or an official pickle."""
    import os

    from ganstack.stylegan_base import legacy
    if os.path.isfile(os.path.expanduser(str(path))) and legacy.looks_like_pickle(os.path.expanduser(str(path))):
        from ganstack.training.transfer import checkpoint_from_pkl
        ckpt = checkpoint_from_pkl(os.path.expanduser(str(path)))
        ckpt["path"] = os.path.expanduser(str(path))
        return ckpt
    return ckpt_io.load(path, flag=flag, purpose="sample", networks=networks)


def load_model(path: str, device=None, which: str = "G_ema", warn: Callable[[str], None] = _warn,
               flag: str = "--network") -> LoadedModel:
    """Rebuild the networks and plugins recorded in a checkpoint and load ``which`` (G_ema or G).

    ``path`` may also be an official StyleGAN2-ADA / StyleGAN3 ``network-snapshot-*.pkl``: it is read without its
    embedded code and converted in memory (as ``ganstack import-pkl`` would). ``flag`` names the option the path
    came from in error messages.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt = load_checkpoint_or_pickle(path, flag=flag, networks=(which,))
    cfg = TrainConfig.from_dict(ckpt["config"])
    names, options, skipped = sampling_stack(ckpt, warn=warn)
    stack = PluginStack(names, options)
    data_info = DataInfo(ckpt["dataset"])
    stack.configure(cfg, data_info)
    with torch.random.fork_rng():
        nets = build_networks(stack, cfg, data_info, device)
    G = nets.G_ema if which == "G_ema" else nets.G
    try:
        G.load_state_dict(ckpt[which])
    except (RuntimeError, KeyError, TypeError) as exc:
        extra = f" (plugins skipped as not installed: {', '.join(skipped)})" if skipped else ""
        raise CheckpointError(f"{flag} {ckpt['path']!r}: its {which} weights do not fit the network its own options "
                              f"build{extra} ({str(exc).strip().splitlines()[0][:200]}); the file is damaged or was "
                              f"edited. Use another snapshot of the run.") from None
    G.eval()
    stack.load_state_dict(ckpt["plugin_state"], ignore=skipped)
    return LoadedModel(G=G, stack=stack, cfg=cfg, data_info=data_info, checkpoint=ckpt, device=device)
