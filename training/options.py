"""What the option records of ``train`` and ``train-score`` share: which options the user gave, defaults that
respect them, and the checkpoint round trip.

:class:`RunOptions` is the base of :class:`ganstack.training.config.TrainConfig` and of train-score's
``ScoreTrainConfig``; the resume rules that use it live in :mod:`ganstack.training.run`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterable, Optional

from ganstack.stylegan_base.errors import CheckpointError


@dataclass
class RunOptions:
    """Base of the option records saved in checkpoints, with the data options both commands share (``--data``,
    ``--cond``, ``--mirror``, ``--max-size``). Subclasses are dataclasses whose fields all have defaults;
    ``TUPLE_FIELDS`` are stored as lists and restored as tuples."""

    _user_set: set = field(default_factory=set, repr=False, compare=False)
    # the data, as both commands take it
    data: str = "toy:gaussians25"
    cond: bool = False
    mirror: bool = False
    max_size: Optional[int] = None

    TUPLE_FIELDS = ()
    WHAT = "training options"

    # -- which options the user gave --------------------------------------------------------------
    @property
    def user_set(self) -> frozenset:
        """The options the user gave explicitly (command line, ``ablate --set``)."""
        return frozenset(self._user_set)

    def mark_user_set(self, names: Iterable[str]) -> "RunOptions":
        """Record that the user gave these options (plugins' recommended defaults must not override them)."""
        unknown = sorted(set(names) - set(self.option_names()))
        if unknown:
            raise AttributeError(f"{type(self).__name__} has no option(s) {unknown}")
        self._user_set = set(self._user_set) | set(names)
        return self

    def is_user_set(self, name: str) -> bool:
        """True when the user gave ``name`` explicitly (plugins must not override those)."""
        return name in self._user_set

    def set_default(self, name: str, value) -> bool:
        """Set ``name`` unless the user set it; return whether it was set. For plugin presets."""
        if name not in self.option_names():
            raise AttributeError(f"{type(self).__name__} has no option {name!r}")
        if self.is_user_set(name):
            return False
        setattr(self, name, value)
        return True

    # -- checkpoints ------------------------------------------------------------------------------
    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]

    def to_dict(self) -> dict:
        out = {}
        for name in self.option_names():
            v = getattr(self, name)
            out[name] = list(v) if isinstance(v, tuple) else v
        out["user_set"] = sorted(self._user_set)
        return out

    @classmethod
    def from_dict(cls, d: dict):
        d = dict(d)
        user_set = set(d.pop("user_set", []))
        unknown = sorted(set(d) - set(cls.option_names()))
        if unknown:
            raise CheckpointError(f"The checkpoint's {cls.WHAT} include {unknown}, which this version of "
                                  f"ganstack does not know. Use the ganstack version that wrote it.")
        for key in cls.TUPLE_FIELDS:
            if key in d and isinstance(d[key], list):
                d[key] = tuple(d[key])
        obj = cls(**d)
        obj._user_set = user_set
        return obj

    @property
    def total_nimg(self) -> int:
        return int(round(self.kimg * 1000))
