"""Checks that need no training, run before a run folder exists (and by ``--dry-run``).

``ganstack train`` used to find some mistakes only after tick 0 or at the first checkpoint: a metric
name that does not exist or does not fit the data (``fid50k_full`` on 2-D points, ``toy`` on images), a
missing or broken Inception/VGG file or digit classifier, ``--tensorboard`` without the package, a plugin
that cannot work on this kind of data (``ada`` on points). :func:`preflight` asks all of them at start-up.
It uses the plugin stack only through its public calls (the ``network_kwargs`` chain is where plugins
refuse a data kind), and builds nothing.
"""
from __future__ import annotations

from typing import Callable, Optional

from ganstack.stylegan_base.errors import GanstackError
from ganstack.training.api import ConfigError


def check_metrics(names, data_info: dict, flag: str = "--metrics", detectors: Optional[dict] = None,
                  classifier: Optional[str] = None, device="cpu", log: Callable = print) -> None:
    """Each metric exists, fits the data, and finds (and loads) the networks it needs."""
    from ganstack.metrics import registry

    for name in names:
        try:
            registry.check_applicable(name, data_info)
        except GanstackError as exc:
            raise type(exc)(f"{flag} {name}: {exc}") from None
    needed = sorted({det for name in names for det in registry.required_detectors(name)})
    if needed:
        from ganstack.metrics.detectors import load_detector
        for det in needed:
            load_detector(det, (detectors or {}).get(det), device=device, log=log)
    if any(registry.needs_classifier(name) for name in names):
        from ganstack.metrics.digits import load_classifier
        load_classifier(classifier, device)


def check_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package, which is not installed: "
                          "pip install 'ganstack[tensorboard]' (or drop --tensorboard).") from None


def check_plugins_fit(stack, cfg, data_info: dict) -> None:
    """Plugins refuse data they cannot work on in ``network_kwargs`` (called here on the backbone arguments,
    as the network builder will)."""
    from ganstack.training.nets import backbone_kwargs

    G_kwargs, D_kwargs = backbone_kwargs(cfg, data_info)
    stack.hooks.network_kwargs(G_kwargs, role="G", data_info=data_info, cfg=cfg)
    stack.hooks.network_kwargs(D_kwargs, role="D", data_info=data_info, cfg=cfg)


def preflight(cfg, stack, data_info: dict, device="cpu", log: Callable = print) -> None:
    """Every start-up check of a training run (see the module docstring); raises GanstackError."""
    check_plugins_fit(stack, cfg, data_info)
    stack.hooks.check_startup(data_info=data_info, cfg=cfg)
    if cfg.metrics:
        check_metrics(cfg.metrics, data_info, device=device, log=log)
    if cfg.tensorboard:
        check_tensorboard()
