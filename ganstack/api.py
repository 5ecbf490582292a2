"""The plugin author's import: ``from ganstack.api import hookimpl, Option, ...``.

A re-export of :mod:`ganstack.training.api`, where everything is defined and documented.
"""
from ganstack.training.api import *  # noqa: F401,F403
from ganstack.training.api import __all__  # noqa: F401
