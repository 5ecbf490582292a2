"""The public plugin API of ganstack: the one import a plugin author needs.

::

    from ganstack.api import hookimpl, Option, Capabilities, DInput, PhaseContext, ...

(``ganstack.api`` re-exports this module.) A plugin is a class (or a module) whose methods are marked with
``@hookimpl``; every hook, with its kind, arguments and return type, is in :mod:`ganstack.training.hookspecs`
and in the README's hook reference. What flows between the loop and the plugins is defined here:

* :class:`Option` - one typed plugin option (flag ``--<plugin>-<name>``; its default is declared only here).
* :class:`Capabilities` - what a plugin replaces, provides and requires, as data; the plugin manager checks
  a stack's declarations at start-up (see :data:`FEATURES`).
* :class:`DataInfo` - the dataset's description (a dict with typed properties).
* :class:`DInput` / :class:`DOutput` - what the discriminator is shown and what it returns; a sampler's
  result is a ``DInput`` too.
* :class:`PhaseContext` - everything one training phase offers to the per-phase hooks.
* :class:`LoopState`, :class:`Networks`, :class:`LazyRegularizer`, :class:`SignController`,
  :class:`LRSchedule`, :func:`autocast`.
* :class:`GeneratorProtocol` / :class:`DiscriminatorProtocol` - the attributes every G and D declares.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Mapping, Optional, Protocol, Sequence, runtime_checkable

import pluggy
import torch

from ganstack.stylegan_base.errors import GanstackError

__all__ = [
    "PROJECT", "ENTRY_POINT_GROUP", "hookspec", "hookimpl", "EACH", "CHAIN", "COLLECT", "EXCLUSIVE", "HOOK_KINDS",
    "PluginError", "ConfigError", "Option", "OptionValues", "Capabilities", "FEATURES", "SLOTS", "D_INPUTS",
    "DataInfo", "DInput", "DOutput", "LazyRegularizer", "SignController", "LRSchedule", "Networks", "LoopState",
    "PhaseContext", "GeneratorProtocol", "DiscriminatorProtocol", "autocast", "Plugin",
]

PROJECT = "ganstack"
ENTRY_POINT_GROUP = "ganstack.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# The kinds of hooks (declared once per hook in hookspecs.py; see the README's hook reference).
EACH = "each"  # once per plugin, with that plugin's own arguments; results are kept per plugin
CHAIN = "chain"  # in --plugins order, each implementation receives the previous one's result
COLLECT = "collect"  # every implementation's result is collected (pluggy's plain call)
EXCLUSIVE = "exclusive"  # at most one enabled plugin implements it (pluggy's firstresult), else the core default
HOOK_KINDS = (EACH, CHAIN, COLLECT, EXCLUSIVE)


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
    """One typed plugin option; its default is declared here and nowhere else.

    ``name`` uses underscores (``ada_kimg``); on the command line it becomes ``--<plugin>-ada-kimg``
    and in ablation sweeps ``<plugin>.ada_kimg``. ``type`` is one of int, float, str, bool.
    ``choices`` restricts str options; ``min``/``max`` bound numbers (inclusive). A ``default`` of
    None means "not set" and is allowed only when ``type`` is str (for example an optional path).
    ``requires`` maps an option value to the :data:`FEATURES` the plugin needs when the option has that
    value (``{"w": ("w_space",)}``: ``--clr-target w`` needs a generator with a W space); the plugin
    manager adds them to the plugin's :class:`Capabilities`.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: Optional[Sequence[str]] = None
    min: Optional[float] = None
    max: Optional[float] = None
    requires: Mapping[Any, Sequence[str]] = field(default_factory=dict)

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

    @classmethod
    def defaults(cls, schema: Iterable[Option]) -> "OptionValues":
        """The declared defaults of a schema (what a plugin sees before ``configure``)."""
        return cls({o.name: o.default for o in schema})

    def __repr__(self):
        return f"OptionValues({self._values!r})"


# ----------------------------------------------------------------------------------------------
# Capabilities: what a plugin replaces, provides and requires

# The slots a plugin may fill instead of the core: the generator, the discriminator, the sampler.
SLOTS = {"G": "the generator", "D": "the discriminator", "sampler": "the sampler"}

# Known features: name -> (who provides it, what it means). "G" features come from whatever fills the G slot;
# "sampler" features from the sampler slot; "fakes" features from the sampler slot when a plugin replaces
# the sampler, else from the G slot (the core sampler returns G(z, c) itself). Features not listed here
# (a third-party plugin may invent its own) are provided by any plugin that declares them.
FEATURES: dict[str, tuple[Optional[str], str]] = {
    "w_space": ("G", "G has a W space: G.mapping(z, c) gives ws [N, num_ws, w_dim], G.synthesis(ws) draws them, "
                     "and G.num_ws / G.w_dim are set"),
    "one_latent_per_sample": ("G", "G(z, c) maps one latent vector z [N, z_dim] to one sample, so a latent "
                                   "predicted for a sample can be fed back into G"),
    "sample_fakes": ("fakes", "the training fakes are clean samples of the model's distribution, not "
                              "intermediate states of a sampling chain"),
    "one_step": ("sampler", "drawing a sample for generate and metrics takes one G call"),
}

# What D may judge. The plugin that makes D judge something other than plain samples declares it with
# Capabilities(d_input=...); every plugin that augments D's input must declare that it handles it.
D_INPUTS = {
    "plain": "the image (or point) batch itself",
    "pair": "pairs (x_{t-1}, x_t) of a denoising step t: DInput.img is x_{t-1}, and x_t and t travel in "
            "DInput.extra",
}


def _fset(value) -> frozenset:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(v.strip() for v in value.split(",") if v.strip())
    return frozenset(value)


@dataclass(frozen=True)
class Capabilities:
    """A plugin's declarations, as data (a class attribute ``capabilities = Capabilities(...)``).

    * ``replaces``: slots of :data:`SLOTS` the plugin fills ("G", "D", "sampler"). Implementing
      ``build_generator`` / ``build_discriminator`` / ``sampler`` declares it too; a plugin that wraps G in
      ``modify_networks`` declares ``replaces="G"`` itself. Two plugins filling one slot are refused.
    * ``provides``: :data:`FEATURES` of what it fills (and any feature of its own); ``provides_on`` adds
      features per data kind (``{"image": {"w_space"}}``).
    * ``requires``: features the stack must provide; ``reasons`` says why, per feature, for the refusal
      message. Options add requirements through :attr:`Option.requires`.
    * ``d_input``: what its D judges, when it changes that (a key of :data:`D_INPUTS`, e.g. "pair").
    * ``augments``: the D-input kinds its ``augment_d_input`` transforms consistently (default "plain").
    * ``data``: the data kinds it supports ("image", "points").

    Strings may list several values separated by commas (``requires="w_space, one_latent_per_sample"``).
    The manager checks every declaration at start-up and explains any refusal in one paragraph;
    ``ganstack plugins show NAME`` lists them.
    """

    replaces: frozenset = frozenset()
    provides: frozenset = frozenset()
    requires: frozenset = frozenset()
    provides_on: Mapping[str, frozenset] = field(default_factory=dict)
    reasons: Mapping[str, str] = field(default_factory=dict)
    d_input: Optional[str] = None
    augments: frozenset = frozenset({"plain"})
    data: frozenset = frozenset({"image", "points"})

    def __post_init__(self):
        for name in ("replaces", "provides", "requires", "augments", "data"):
            object.__setattr__(self, name, _fset(getattr(self, name)))
        object.__setattr__(self, "provides_on", {k: _fset(v) for k, v in dict(self.provides_on).items()})
        object.__setattr__(self, "reasons", dict(self.reasons))
        bad = sorted(self.replaces - set(SLOTS))
        if bad:
            raise ValueError(f"Capabilities.replaces names {bad}; the slots are {', '.join(SLOTS)}")
        for kind in (self.augments | ({self.d_input} if self.d_input else set())):
            if kind not in D_INPUTS:
                raise ValueError(f"unknown D input kind {kind!r}; known: {', '.join(D_INPUTS)}")
        bad = sorted(self.data - {"image", "points"})
        if bad:
            raise ValueError(f"Capabilities.data names {bad}; the data kinds are image and points")

    def features_for(self, data_kind: Optional[str]) -> frozenset:
        """``provides`` plus what ``provides_on`` adds for this data kind."""
        return self.provides | self.provides_on.get(data_kind, frozenset())

    def with_(self, **changes) -> "Capabilities":
        return dataclasses.replace(self, **changes)

    def describe(self) -> list[str]:
        """Lines for ``ganstack plugins show``."""
        def names(s):
            return ", ".join(sorted(s)) or "none"
        lines = [f"replaces: {names(self.replaces)}"]
        prov = names(self.provides)
        for kind, extra in sorted(self.provides_on.items()):
            prov += f"; on {kind} data also {names(extra)}"
        lines.append(f"provides: {prov}")
        req = [f"{r} ({self.reasons[r]})" if r in self.reasons else r for r in sorted(self.requires)]
        lines.append(f"requires: {', '.join(req) or 'none'}")
        if self.d_input:
            lines.append(f"d_input: {self.d_input} ({D_INPUTS[self.d_input]})")
        lines.append(f"augments D inputs: {names(self.augments)}")
        lines.append(f"data: {names(self.data)}")
        return lines


# ----------------------------------------------------------------------------------------------
# What flows through the loop


class DataInfo(dict):
    """The dataset's description (``dataset.info()``): a plain dict with typed properties.

    Keys: ``kind`` ('image' or 'points'), ``name``, ``spec`` (as given to ``--data``), ``len``, ``label_dim``,
    and for images ``resolution`` and ``num_channels``, for points ``point_dim`` (and ``toy`` with the
    mixture's ``centers`` and ``std`` for the built-in ``toy:*`` data). ``data_info["kind"]`` and
    ``data_info.kind`` are the same. Checkpoints store it as a plain dict.
    """

    @property
    def kind(self) -> str:
        return self["kind"]

    @property
    def is_image(self) -> bool:
        return self.get("kind") == "image"

    @property
    def name(self) -> str:
        return self.get("name", "data")

    @property
    def size(self) -> int:
        return int(self.get("len", 0))

    @property
    def label_dim(self) -> int:
        return int(self.get("label_dim") or 0)

    @property
    def resolution(self) -> Optional[int]:
        return self.get("resolution")

    @property
    def num_channels(self) -> Optional[int]:
        return self.get("num_channels")

    @property
    def point_dim(self) -> Optional[int]:
        return self.get("point_dim")

    @property
    def toy(self) -> Optional[dict]:
        return self.get("toy")

    def to_dict(self) -> dict:
        return dict(self)


@dataclass
class DInput:
    """What the discriminator is shown, and what a sampler returns.

    * ``img``: images ``[N, C, H, W]`` in [-1, 1] (or points ``[N, D]``). R1 differentiates D's output
      with respect to the ``img`` of the real batch *before* the pre-D augments.
    * ``c``: the conditioning vector ``[N, c_dim]`` (class labels, width 0 when unconditional).
      Plugins that condition D on more (a diffusion timestep) append to it and grow D's ``c_dim``
      through the ``network_kwargs`` hook.
    * ``extra``: more keyword inputs, passed as ``D(img, c, **extra)``. Only a plugin that replaced
      or wrapped D to accept them may add entries.
    * ``from_reals``: set by a sampler whose fakes were derived from this phase's reals (``ctx.reals``), row
      i from real row i (training pairs of multi-step samplers). Such fakes **must keep their reals' labels**
      (``c == ctx.reals.c[:N]``), and G must be conditioned on them; the loop checks it.
    * ``info``: what the sampler passes on to the loss hooks of the same phase (``g_loss`` receives these
      fakes); never shown to D.
    """

    img: torch.Tensor
    c: torch.Tensor
    extra: dict = field(default_factory=dict)
    from_reals: bool = False
    info: dict = field(default_factory=dict)

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
    """A regularizer of G or D evaluated every ``interval`` training steps, multiplied by ``interval``.

    ``loss(ctx)`` returns a per-sample or scalar loss tensor for the phase context ``ctx``. Where it runs
    (one rule, which never changes an optimizer's settings):

    * ``interval == 1``: inside the network's main phase, on every step, without gain.
    * ``interval == k > 1``: on the steps ``s`` with ``s % k == 0``, multiplied by ``k`` (the lazy gain); in the
      network's reg phase (``Greg``/``Dreg``) when that step is one of the network's *base* reg steps,
      otherwise inside its main phase.

    The base reg steps and the optimizers' StyleGAN2 lazy correction (lr x ``b/(b+1)``, betas ^ ``b/(b+1)``) follow
    from the configuration alone (``ganstack.training.optim.base_reg_intervals``: the ``--r1-interval`` and
    ``--pl-interval`` of the backbone), so enabling a plugin never changes G's or D's learning rate.
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


@runtime_checkable
class LRSchedule(Protocol):
    """A learning-rate schedule from the ``lr_schedule`` hook: stepped once after every training step.

    Any ``torch.optim.lr_scheduler`` object qualifies. Its ``state_dict()`` is saved in checkpoints and
    restored on resume (together with the optimizer's own state), so a resumed run continues bitwise.
    """

    def step(self) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Networks:
    """The trained networks of a run. ``G_ema`` is made from ``G`` after ``modify_networks``."""

    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: Optional[torch.nn.Module] = None


@dataclass
class LoopState:
    """What ``after_step`` receives: the counters and the networks after the step."""

    step: int
    cur_nimg: int
    batch_size: int
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    cfg: object
    device: torch.device
    total_nimg: int = 0


@runtime_checkable
class GeneratorProtocol(Protocol):
    """What every generator declares (the backbones and the plugins' own G).

    ``z_dim``/``c_dim``: latent and label widths. ``is_image``: images ``[N, img_channels, img_resolution,
    img_resolution]`` or points ``[N, out_dim]``. ``w_dim``/``num_ws``: the W space (``num_ws`` is None when G has
    none; then ``mapping``/``synthesis`` do not exist). A plugin that needs more declares it as a feature.
    """

    z_dim: int
    c_dim: int
    is_image: bool
    w_dim: Optional[int]
    num_ws: Optional[int]


@runtime_checkable
class DiscriminatorProtocol(Protocol):
    """What every discriminator declares: ``c_dim``, ``is_image`` and ``feature_dim`` (width of the epilogue
    features that ``D(x, c, return_features=True)`` returns beside the logits)."""

    c_dim: int
    is_image: bool
    feature_dim: int


def autocast(amp: str, device) -> ContextManager:
    """The one way into mixed precision: ``--amp bf16|fp16`` on a CUDA device, else a no-op context.

    Plugins use ``ctx.autocast()``, which calls this with the run's ``--amp`` and device.
    """
    device = torch.device(device)
    if amp == "off" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class PhaseContext:
    """Everything one phase (one round of it, with ``--batch-gpu``) offers to the per-phase hooks.

    Attributes: ``phase`` ('Gmain', 'Greg', 'Dmain', 'Dreg'), ``net`` ('G' or 'D'), ``step`` (training steps
    done before this one), ``cur_nimg``, ``G``, ``D``, ``reals`` (the real batch, a :class:`DInput`, after
    ``prepare_reals``), ``z``/``c`` (this phase's latents and random labels), ``cfg``, ``device``, ``scratch``
    (a dict the hooks of this phase share; prefer ``DInput.extra``/``DInput.info`` for data that belongs to a batch).

    Helpers: :meth:`run_D`, :meth:`augment`, :meth:`sample`, :meth:`report`, :meth:`all_reduce_mean`,
    :meth:`autocast`. ``engine`` is the loop's loss object (``ganstack.training.loss.GANLoss``).
    """

    def __init__(self, engine, phase: str, step: int, cur_nimg: int, reals: DInput, z: torch.Tensor,
                 c: torch.Tensor):
        self._engine = engine
        self.phase = phase
        self.net = phase[0]
        self.step = step
        self.cur_nimg = cur_nimg
        self.G = engine.G
        self.D = engine.D
        self.cfg = engine.cfg
        self.device = engine.device
        self.z = z
        self.c = c
        self.scratch: dict = {}
        self.reals: DInput = engine.hooks.prepare_reals(reals, ctx=self)

    def augment(self, x: DInput, is_real: bool) -> DInput:
        """Run the ``augment_d_input`` chain in ``--plugins`` order."""
        return self._engine.hooks.augment_d_input(x, ctx=self, is_real=is_real)

    def run_D(self, x: DInput, is_real: bool) -> DOutput:
        """Augment ``x`` and evaluate D on it; returns logits ``[N, 1]`` and features ``[N, F]``."""
        x = self.augment(x, is_real)
        with self.autocast():
            logits, features = self.D(x.img, x.c, return_features=True, **x.extra)
        return DOutput(logits=logits.float(), features=features.float())

    def sample(self, z: Optional[torch.Tensor] = None, c: Optional[torch.Tensor] = None, **G_kwargs) -> DInput:
        """Make fakes through the ``sampler`` hook (default latents and labels: this phase's).

        Fakes derived from the reals (``from_reals``) are checked to carry the reals' labels.
        """
        z = self.z if z is None else z
        c = self.c if c is None else c
        kwargs = dict(style_mixing_prob=self.cfg.style_mixing)
        kwargs.update(G_kwargs)
        with self.autocast():
            out = self._engine.hooks.sampler(G=self.G, z=z, c=c, ctx=self, G_kwargs=kwargs)
        if out.from_reals:
            self._engine.check_labels_kept(out, self.reals)
        return out.replace(img=out.img.float())

    def report(self, name: str, value, mask=None, status: bool = False) -> None:
        """Record a statistic: a tensor of any shape, or a number. ``mask`` selects elements without a GPU sync.

        Every statistic reaches ``stats.jsonl`` under ``name`` (``{num, mean, std}`` over the tick); with
        ``status=True`` its tick mean also appears in the status line under the same name. Nothing is copied
        to the host before the tick ends.
        """
        self._engine.stats.report(name, value, mask, status=status)

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average a tensor over all GPUs (identity on one process)."""
        return self._engine.all_reduce_mean(value)

    def autocast(self) -> ContextManager:
        """Mixed precision as ``--amp`` asks (the loop's one entry into autocast)."""
        return autocast(self.cfg.amp, self.device)


@dataclass
class SignController:
    """StyleGAN2-ADA's adaptive heuristic (Sec. 3), also Diffusion-GAN's Eq. 5, as a small resumable object.

    Call :meth:`update` from an ``after_step`` hook with the step's all-reduced statistics. It averages
    ``stats[key]`` (default: the mean sign of D's real logits) over ``interval`` steps, then moves ``p``
    by ``sign(r - target) * batch_size * interval / (speed_kimg * 1000)`` and clips it to [0, 1], so
    ``p`` can travel from 0 to 1 in ``speed_kimg`` thousand images. Every rank sees the same
    statistics and so takes the same decision. With ``adaptive=False`` ``p`` stays where it is set.
    The per-step values are accumulated on the device; only the update every ``interval`` steps reads one
    number back (as StyleGAN2-ADA does).
    """

    target: float
    interval: int
    speed_kimg: float
    adaptive: bool = True
    p: float = 0.0
    key: str = "Loss/signs/real"
    steps: int = 0
    acc_sum: Any = 0.0
    acc_n: Any = 0
    r: float = float("nan")  # the interval mean behind the latest update (nan before the first one)

    def update(self, stats, batch_size: int) -> bool:
        """Count one training step; return True when this step moved (or re-clipped) ``p``."""
        self.steps += 1
        if not self.adaptive:
            return False
        value = stats.tensor(self.key) if hasattr(stats, "tensor") else stats.get(self.key)
        if value is not None:
            v = torch.as_tensor(value, dtype=torch.float64)
            finite = torch.isfinite(v)
            self.acc_sum = torch.where(finite, v, torch.zeros_like(v)) + self.acc_sum
            self.acc_n = finite.to(torch.int64) + self.acc_n
        if self.steps % self.interval != 0:
            return False
        n = int(self.acc_n)
        if n == 0:
            return False
        self.r = float(self.acc_sum) / n
        self.acc_sum, self.acc_n = 0.0, 0
        sign = (self.r > self.target) - (self.r < self.target)
        self.p = min(max(self.p + sign * batch_size * self.interval / (self.speed_kimg * 1000), 0.0), 1.0)
        return True

    def state_dict(self) -> dict:
        return {"p": self.p, "steps": self.steps, "acc_sum": float(self.acc_sum), "acc_n": int(self.acc_n),
                "r": self.r}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.steps = float(state["p"]), int(state["steps"])
        self.acc_sum, self.acc_n, self.r = float(state["acc_sum"]), int(state["acc_n"]), float(state["r"])


class Plugin:
    """Optional base class for class-based plugins.

    The plugin manager instantiates the class once per run with no arguments and sets ``name`` to the
    entry-point name. Options arrive through the ``configure`` hook (their defaults live in the option
    schema only). ``capabilities`` declares what the plugin replaces, provides and requires. Nothing here
    is required: a module with ``@hookimpl`` functions is a valid stateless plugin too.
    """

    name: str = ""
    capabilities: Capabilities = Capabilities()
