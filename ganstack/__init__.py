"""ganstack: a StyleGAN2-ADA-style GAN trainer whose loop exposes pluggy hooks.

The design card fixes the source folders at the top of the repository (``stylegan_base/``,
``training/``, ``plugins/``, ``metrics/``); they are installed as the subpackages ``ganstack.<folder>``
so that they never collide with a StyleGAN2-ADA checkout's own ``training`` or ``metrics`` packages.
In a source checkout (and in the editable install, and when running from the repository root) the
folders are found next to this package.
"""
from __future__ import annotations

import os as _os

__version__ = "0.2.0"

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "training", "hookspecs.py")) and _root not in __path__:
    __path__.append(_root)  # source checkout: ganstack.training -> <repo>/training
