"""The public plugin API of ganstack.

A plugin author imports everything from here::

    from ganstack.training.api import hookimpl, Option, DInput

and writes a class (or a module) whose methods are marked with ``@hookimpl``. The hooks themselves,
with what each receives and may return, are documented in :mod:`ganstack.training.hookspecs`.

The types below are what flows between the training loop and the plugins:

* :class:`Option` - one typed plugin option (flag ``--<plugin>-<name>`` on the command line).
* :class:`DInput` - what the discriminator is shown: an image (or point) batch, its conditioning
  vector, and extra keyword inputs. Pre-D augments take a ``DInput`` and return a new one.
* :class:`DOutput` - what the discriminator returns: logits and the epilogue features.
* :class:`LazyRegularizer` - a regularizer that runs every ``interval`` steps on G or D.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import pluggy
import torch

from ganstack.stylegan_base.errors import GanstackError

__all__ = [
    "PROJECT", "ENTRY_POINT_GROUP", "hookspec", "hookimpl", "PluginError", "ConfigError", "Option",
    "OptionValues", "DInput", "DOutput", "LazyRegularizer", "SignController", "Plugin",
]

PROJECT = "ganstack"
ENTRY_POINT_GROUP = "ganstack.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class PluginError(GanstackError):
    """A plugin stack is invalid: unknown name, unknown or bad option, or a declared conflict."""


class ConfigError(GanstackError):
    """A training option is missing, out of range, or incompatible with another option."""


# ----------------------------------------------------------------------------------------------
# Options

_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Option:
    """One typed plugin option.

    ``name`` uses underscores (``ada_kimg``); on the command line it becomes ``--<plugin>-ada-kimg``
    and in ablation sweeps ``<plugin>.ada_kimg``. ``type`` is one of int, float, str, bool.
    ``choices`` restricts str options; ``min``/``max`` bound numbers (inclusive). A ``default`` of
    None means "not set" and is allowed only when ``type`` is str (for example an optional path).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: Optional[Sequence[str]] = None
    min: Optional[float] = None
    max: Optional[float] = None

    def __post_init__(self):
        if self.type not in _TYPE_NAMES:
            raise TypeError(f"Option {self.name!r}: type must be int, float, str or bool, not {self.type!r}")
        if not self.name.isidentifier():
            raise ValueError(f"Option name {self.name!r} must be a Python identifier (use underscores)")
        if self.default is not None:
            self.parse(self.default)  # defaults must themselves be valid

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES[self.type]

    def describe_range(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        lo = "-inf" if self.min is None else f"{self.min:g}"
        hi = "inf" if self.max is None else f"{self.max:g}"
        if self.min is None and self.max is None:
            return "any " + self.type_name
        return f"{self.type_name} in [{lo}, {hi}]"

    def parse(self, value: Any, where: str = "") -> Any:
        """Convert ``value`` (a string from the command line or a Python value) and check its range.

        Raises :class:`PluginError` with a message naming the option, the bad value and what is allowed.
        """
        label = where or self.name
        if value is None:
            if self.type is str:
                return None
            raise PluginError(f"Option {label} needs a value ({self.describe_range()}).")
        try:
            if self.type is bool:
                if isinstance(value, bool):
                    out = value
                elif str(value).strip().lower() in _TRUE:
                    out = True
                elif str(value).strip().lower() in _FALSE:
                    out = False
                else:
                    raise ValueError
            elif self.type is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                out = int(str(value).strip()) if isinstance(value, str) else int(value)
            elif self.type is float:
                out = float(value)
                if not math.isfinite(out):
                    raise ValueError
            else:
                out = str(value)
        except (TypeError, ValueError):
            raise PluginError(
                f"Option {label} got {value!r}, which is not a valid {self.type_name}; "
                f"expected {self.describe_range()}."
            ) from None
        if self.choices is not None and out not in self.choices:
            raise PluginError(f"Option {label} got {out!r}; expected {self.describe_range()}.")
        if self.type in (int, float):
            if (self.min is not None and out < self.min) or (self.max is not None and out > self.max):
                raise PluginError(f"Option {label} got {out!r}, out of range; expected {self.describe_range()}.")
        return out


class OptionValues:
    """The parsed options of one plugin: attribute access (``opts.ada_kimg``) plus ``as_dict()``."""

    def __init__(self, values: dict):
        self.__dict__["_values"] = dict(values)

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("plugin options are read-only once parsed")

    def as_dict(self) -> dict:
        return dict(self._values)

    def __repr__(self):
        return f"OptionValues({self._values!r})"


# ----------------------------------------------------------------------------------------------
# What flows through the loop


@dataclass
class DInput:
    """What the discriminator is shown.

    * ``img``: images ``[N, C, H, W]`` in [-1, 1] (or points ``[N, D]``). R1 differentiates D's output
      with respect to the ``img`` of the real batch *before* the pre-D augments.
    * ``c``: the conditioning vector ``[N, c_dim]`` (class labels, width 0 when unconditional).
      Plugins that condition D on more (a diffusion timestep) append to it and grow D's ``c_dim``
      through the ``network_kwargs`` hook.
    * ``extra``: more keyword inputs, passed as ``D(img, c, **extra)``. Only a plugin that replaced
      or wrapped D to accept them may add entries.
    """

    img: torch.Tensor
    c: torch.Tensor
    extra: dict = field(default_factory=dict)

    def replace(self, **changes) -> "DInput":
        """A shallow copy with some fields replaced (``x.replace(img=y)``)."""
        return dataclasses.replace(self, **changes)

    def __len__(self):
        return self.img.shape[0]


@dataclass
class DOutput:
    """What the discriminator returned: ``logits [N, 1]`` and epilogue ``features [N, F]``."""

    logits: torch.Tensor
    features: torch.Tensor


@dataclass
class LazyRegularizer:
    """A regularizer of G or D evaluated every ``interval`` training steps.

    ``loss(ctx)`` returns a per-sample or scalar loss tensor for the phase context ``ctx``. The loop
    multiplies it by ``interval`` (the lazy gain) and corrects the network's Adam learning rate and
    betas for the extra optimizer steps, as StyleGAN2 does. ``interval == 1`` evaluates it together
    with the main loss on every step (no extra optimizer step, no correction).
    """

    name: str
    net: str  # 'G' or 'D'
    interval: int
    loss: Callable[[Any], torch.Tensor]

    def __post_init__(self):
        if self.net not in ("G", "D"):
            raise ValueError(f"LazyRegularizer {self.name!r}: net must be 'G' or 'D', not {self.net!r}")
        if int(self.interval) != self.interval or self.interval < 1:
            raise ValueError(f"LazyRegularizer {self.name!r}: interval must be an integer >= 1, not {self.interval!r}")


@dataclass
class SignController:
    """StyleGAN2-ADA's adaptive heuristic (Sec. 3), also Diffusion-GAN's Eq. 5, as a small resumable object.

    Call :meth:`update` from an ``after_step`` hook with the step's all-reduced statistics. It averages
    ``stats[key]`` (default: the mean sign of D's real logits) over ``interval`` steps, then moves ``p``
    by ``sign(r - target) * batch_size * interval / (speed_kimg * 1000)`` and clips it to [0, 1], so
    ``p`` can travel from 0 to 1 in ``speed_kimg`` thousand images. Every rank sees the same
    statistics and so takes the same decision. With ``adaptive=False`` ``p`` stays where it is set.
    """

    target: float
    interval: int
    speed_kimg: float
    adaptive: bool = True
    p: float = 0.0
    key: str = "Loss/signs/real"
    steps: int = 0
    acc_sum: float = 0.0
    acc_n: int = 0
    r: float = float("nan")  # the interval mean behind the latest update (nan before the first one)

    def update(self, stats: dict, batch_size: int) -> bool:
        """Count one training step; return True when this step moved (or re-clipped) ``p``."""
        self.steps += 1
        if not self.adaptive:
            return False
        value = stats.get(self.key)
        if value is not None and math.isfinite(value):
            self.acc_sum += float(value)
            self.acc_n += 1
        if self.steps % self.interval != 0 or self.acc_n == 0:
            return False
        self.r = self.acc_sum / self.acc_n
        self.acc_sum, self.acc_n = 0.0, 0
        sign = (self.r > self.target) - (self.r < self.target)
        self.p = min(max(self.p + sign * batch_size * self.interval / (self.speed_kimg * 1000), 0.0), 1.0)
        return True

    def state_dict(self) -> dict:
        return {"p": self.p, "steps": self.steps, "acc_sum": self.acc_sum, "acc_n": self.acc_n, "r": self.r}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.steps = float(state["p"]), int(state["steps"])
        self.acc_sum, self.acc_n, self.r = float(state["acc_sum"]), int(state["acc_n"]), float(state["r"])


class Plugin:
    """Optional base class for class-based plugins.

    The plugin manager instantiates the class once per run with no arguments and sets ``name`` to the
    entry-point name. Options arrive through the ``configure`` hook. Nothing here is required: a
    module with ``@hookimpl`` functions is a valid stateless plugin too.
    """

    name: str = ""
