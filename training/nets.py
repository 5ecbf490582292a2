"""Building G, D and G_ema for a run, through the plugin hooks."""
from __future__ import annotations

import copy
from typing import Optional

import torch

from ganstack.training.api import ConfigError, DiscriminatorProtocol, GeneratorProtocol, Networks, PluginError

__all__ = ["Networks", "ema_beta", "update_ema", "backbone_kwargs", "build_networks", "check_protocols"]


def ema_beta(batch: int, cur_nimg: int, halflife_kimg: float, rampup_ratio: Optional[float] = None) -> float:
    """Per-step EMA decay for a half-life of ``halflife_kimg`` thousand images (StyleGAN2-ADA, EDM); with
    ``rampup_ratio`` the half-life is at most that share of the images seen so far."""
    halflife_nimg = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife_nimg = min(halflife_nimg, cur_nimg * rampup_ratio)
    return 0.5 ** (batch / max(halflife_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    """``ema <- beta ema + (1 - beta) net`` for parameters; buffers are copied (G_ema, EDM's EMA, CM's target)."""
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


def backbone_kwargs(cfg, data_info: dict) -> tuple[dict, dict]:
    """Constructor arguments of the backbone G and D for this dataset and config."""
    c_dim = data_info.get("label_dim", 0) if cfg.cond else 0
    if data_info["kind"] == "image":
        conv_clamp = cfg.conv_clamp if cfg.conv_clamp is not None else (256 if cfg.amp != "off" else None)
        G_kwargs = dict(
            z_dim=cfg.z_dim, c_dim=c_dim, w_dim=cfg.w_dim,
            img_resolution=data_info["resolution"], img_channels=data_info["num_channels"],
            mapping_kwargs=dict(num_layers=cfg.map_depth),
            synthesis_kwargs=dict(channel_base=cfg.cbase, channel_max=cfg.cmax, conv_clamp=conv_clamp,
                                  architecture=cfg.g_architecture),
        )
        D_kwargs = dict(
            c_dim=c_dim, img_resolution=data_info["resolution"], img_channels=data_info["num_channels"],
            architecture=cfg.d_architecture, channel_base=cfg.cbase, channel_max=cfg.cmax,
            conv_clamp=conv_clamp, epilogue_kwargs=dict(mbstd_group_size=cfg.mbstd_group),
        )
    else:
        G_kwargs = dict(z_dim=cfg.z_dim, c_dim=c_dim, out_dim=data_info["point_dim"],
                        hidden=cfg.mlp_hidden, num_hidden_layers=cfg.mlp_layers)
        D_kwargs = dict(c_dim=c_dim, in_dim=data_info["point_dim"],
                        hidden=cfg.mlp_hidden, num_hidden_layers=cfg.mlp_layers)
    return G_kwargs, D_kwargs


def check_protocols(nets: Networks, stack=None) -> None:
    """G and D declare the protocol attributes, and a declared W space exists (clear errors, no getattr probing)."""
    for role, net, proto in (("G", nets.G, GeneratorProtocol), ("D", nets.D, DiscriminatorProtocol)):
        if not isinstance(net, proto):
            missing = [a for a in proto.__annotations__ if not hasattr(net, a)]
            who = stack.filler(role) if stack is not None else "?"
            raise PluginError(f"The {role} built by {who} ({type(net).__name__}) lacks the attribute(s) "
                              f"{', '.join(missing)} that every {role} declares "
                              f"(ganstack.api.{proto.__name__}); add them to the network class.")
    if stack is not None and "w_space" in stack.features and nets.G.num_ws is None:
        raise PluginError(f"The stack declares a W space (w_space) but its G ({type(nets.G).__name__}, from "
                          f"{stack.filler('G')}) has num_ws None; declare num_ws/w_dim or drop the w_space claim.")


def build_networks(stack, cfg, data_info: dict, device="cpu") -> Networks:
    """Build G, D (and G_ema) through ``network_kwargs``, ``build_*`` and ``modify_networks``.

    Construction draws from the global torch RNG, so the caller seeds it first for reproducibility.
    """
    G_kwargs, D_kwargs = backbone_kwargs(cfg, data_info)
    G_kwargs = stack.hooks.network_kwargs(G_kwargs, role="G", data_info=data_info, cfg=cfg)
    D_kwargs = stack.hooks.network_kwargs(D_kwargs, role="D", data_info=data_info, cfg=cfg)
    try:
        G = stack.hooks.build_generator(kwargs=G_kwargs, data_info=data_info, cfg=cfg)
        D = stack.hooks.build_discriminator(kwargs=D_kwargs, data_info=data_info, cfg=cfg)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"The networks cannot be built with these options: {exc}") from exc
    nets = Networks(G=G, D=D)
    nets = stack.hooks.modify_networks(nets, cfg=cfg, data_info=data_info)
    check_protocols(nets, stack)
    nets.G.train().requires_grad_(False).to(device)
    nets.D.train().requires_grad_(False).to(device)
    nets.G_ema = copy.deepcopy(nets.G).eval()
    return nets
