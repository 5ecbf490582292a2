"""Discovery, validation and ordered calling of ganstack plugins.

Plugins are found through the entry-point group ``ganstack.plugins`` (the built-in ones are
registered there by ganstack's own ``setup.cfg``, so the loop never imports them). An entry point
names a class (instantiated once per run) or a module.

A :class:`PluginStack` is one run's set of enabled plugins, in ``--plugins`` order, plus the always-on
``core`` plugin that supplies the StyleGAN2 defaults.
"""
from __future__ import annotations

import importlib.metadata as importlib_metadata
import inspect
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import pluggy

from ganstack.training import hookspecs
from ganstack.training.api import ENTRY_POINT_GROUP, PROJECT, Option, OptionValues, PluginError

CORE_NAME = "core"
BUILTIN_DIST = "ganstack"
# Hooks that at most one enabled plugin may implement (the core default excepted).
EXCLUSIVE_HOOKS = ("sampler", "build_generator", "build_discriminator")
_EXCLUSIVE_WHAT = {
    "sampler": "the sampler (how fakes are made)",
    "build_generator": "the generator network",
    "build_discriminator": "the discriminator network",
}


@dataclass
class PluginInfo:
    """Where a plugin comes from (for ``ganstack plugins list``)."""

    name: str
    value: str  # entry point target, e.g. "ganstack.plugins.ada:AdaPlugin"
    dist: str  # distribution name ("ganstack" for the built-ins)
    version: str

    @property
    def builtin(self) -> bool:
        return self.dist == BUILTIN_DIST

    @property
    def source(self) -> str:
        return "built-in" if self.builtin else f"{self.dist} {self.version}"


def discover(extra_entry_points: Optional[Iterable] = None) -> dict[str, tuple[PluginInfo, Any]]:
    """Return ``{name: (info, entry_point)}`` for every plugin in the entry-point group.

    Two distributions that register the same name are an error rather than a silent override.
    """
    eps = list(importlib_metadata.entry_points(group=ENTRY_POINT_GROUP))
    eps += list(extra_entry_points or [])
    found: dict[str, tuple[PluginInfo, Any]] = {}
    for ep in eps:
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            value=ep.value,
            dist=dist.metadata["Name"] if dist is not None else "unknown",
            version=dist.version if dist is not None else "?",
        )
        if ep.name == CORE_NAME:
            raise PluginError(f"Plugin name {CORE_NAME!r} is reserved; {info.dist} must register another name.")
        if ep.name in found and found[ep.name][0].value != ep.value:
            other = found[ep.name][0]
            raise PluginError(
                f"Two installed packages register the plugin name {ep.name!r}: {other.dist} ({other.value}) "
                f"and {info.dist} ({info.value}). Uninstall one of them."
            )
        found[ep.name] = (info, ep)
    return dict(sorted(found.items()))


def _instantiate(name: str, target: Any) -> Any:
    obj = target() if inspect.isclass(target) else target
    try:
        obj.name = name
    except (AttributeError, TypeError):
        pass
    return obj


def hook_names() -> list[str]:
    """The names of all hookspecs, in definition order."""
    return [n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, PROJECT + "_spec")]


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugin(name: str, registry: dict) -> Any:
    """Import and instantiate one plugin by name, with a clear error for unknown names."""
    if name not in registry:
        available = ", ".join(registry) or "(none installed)"
        raise PluginError(f"Unknown plugin {name!r}. Available plugins: {available}. "
                          f"See 'ganstack plugins list'.")
    info, ep = registry[name]
    try:
        target = ep.load()
    except Exception as exc:  # a broken third-party package must not look like our bug
        raise PluginError(f"Plugin {name!r} from {info.source} ({info.value}) failed to import: {exc!r}") from exc
    return _instantiate(name, target)


def plugin_option_schema(plugin: Any) -> list[Option]:
    """The options a plugin object declares through its ``add_options`` hook (no manager needed)."""
    fn = getattr(plugin, "add_options", None)
    if fn is None:
        return []
    opts = fn() or []
    names = [o.name for o in opts]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise PluginError(f"Plugin {getattr(plugin, 'name', plugin)!r} declares option(s) {sorted(dup)} twice.")
    return list(opts)


def parse_stack(spec) -> list[str]:
    """``'ada,diffusion'`` -> ``['ada', 'diffusion']``; ``''``/``'none'``/None -> ``[]``.

    Repeating a plugin is an error.
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        names = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        names = [str(s).strip() for s in spec]
    names = [n for n in names if n.lower() != "none"]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PluginError(f"--plugins names {', '.join(dup)} more than once; give each plugin once.")
    return names


class PluginStack:
    """The enabled plugins of one run, registered with pluggy, plus the core plugin.

    ``options`` maps plugin name to ``{option: value}`` (strings or Python values; parsed and
    range-checked here). Unknown plugins, unknown options, options for plugins that are not enabled
    and conflicting exclusive hooks are :class:`~ganstack.training.api.PluginError` at construction.
    """

    def __init__(self, names, options: Optional[dict] = None, registry: Optional[dict] = None,
                 core: Any = None, extra_plugins: Optional[dict] = None):
        self.names = parse_stack(names)
        self.registry = discover() if registry is None else registry
        self.pm = _new_manager()
        self.plugins: dict[str, Any] = {}
        extra_plugins = extra_plugins or {}
        for name in self.names:
            if name in extra_plugins:
                self.plugins[name] = _instantiate(name, extra_plugins[name])
            else:
                self.plugins[name] = load_plugin(name, self.registry)
        if core is None:
            from ganstack.training.core import CorePlugin
            core = CorePlugin()
        self.core = core
        # pluggy calls the most recently registered implementation first; register the core first so
        # that every plugin runs before it (exclusive hooks: a plugin's result wins over the default).
        self.pm.register(core, name=CORE_NAME)
        for name in self.names:
            try:
                self.pm.register(self.plugins[name], name=name)
            except pluggy.PluginValidationError as exc:
                raise PluginError(f"Plugin {name!r} does not fit the hook specifications: {exc}. "
                                  f"Hooks: {', '.join(hook_names())}.") from None
        try:
            self.pm.check_pending()  # hookimpls for hooks that do not exist
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"{exc}. Known hooks: {', '.join(hook_names())}.") from None
        self._check_exclusive()
        self.schemas = {name: plugin_option_schema(p) for name, p in self.plugins.items()}
        self.options = self._parse_options(options or {})

    # -- validation ----------------------------------------------------------------------------
    def _parse_options(self, given: dict) -> dict[str, OptionValues]:
        given = {k: dict(v) for k, v in given.items()}
        for pname in given:
            if pname not in self.plugins:
                if pname in self.registry:
                    raise PluginError(
                        f"Options were given for plugin {pname!r}, which is not enabled. "
                        f"Add it to --plugins (now: {','.join(self.names) or 'none'}) or drop its options.")
                raise PluginError(f"Options were given for unknown plugin {pname!r}. "
                                  f"Available plugins: {', '.join(self.registry) or '(none)'}.")
        parsed = {}
        for pname, schema in self.schemas.items():
            by_name = {o.name: o for o in schema}
            values = {}
            for key, value in given.get(pname, {}).items():
                key_norm = key.replace("-", "_")
                if key_norm not in by_name:
                    known = ", ".join(by_name) or "(it has no options)"
                    raise PluginError(f"Plugin {pname!r} has no option {key!r}. Its options: {known}. "
                                      f"See 'ganstack plugins show {pname}'.")
                values[key_norm] = by_name[key_norm].parse(value, where=f"--{pname}-{key_norm.replace('_', '-')}")
            for opt in schema:
                values.setdefault(opt.name, opt.default)
            parsed[pname] = OptionValues(values)
        return parsed

    def _check_exclusive(self):
        for hook in EXCLUSIVE_HOOKS:
            providers = [impl.plugin_name for impl in getattr(self.pm.hook, hook).get_hookimpls()
                         if impl.plugin_name != CORE_NAME]
            if len(providers) > 1:
                providers = [n for n in self.names if n in providers]
                raise PluginError(
                    f"Plugins {' and '.join(providers)} both replace {_EXCLUSIVE_WHAT[hook]} "
                    f"(hook '{hook}'); only one plugin may. Enable one of them.")

    # -- calling -------------------------------------------------------------------------------
    def impls(self, hook: str, include_core: bool = True):
        """Implementations of ``hook`` in ``--plugins`` order (core last)."""
        by_name = {impl.plugin_name: impl for impl in getattr(self.pm.hook, hook).get_hookimpls()}
        order = list(self.names) + ([CORE_NAME] if include_core else [])
        return [by_name[n] for n in order if n in by_name]

    @staticmethod
    def _call_impl(impl, kwargs):
        return impl.function(*[kwargs[a] for a in impl.argnames])

    def chain(self, hook: str, value_arg: str, value: Any, **kwargs) -> Any:
        """Call a chain hook in ``--plugins`` order, feeding each result to the next."""
        for impl in self.impls(hook):
            out = self._call_impl(impl, {value_arg: value, **kwargs})
            if out is not None:
                value = out
        return value

    def collect(self, hook: str, **kwargs) -> list[tuple[str, Any]]:
        """Call a hook on every plugin in ``--plugins`` order; return ``[(plugin, result)]`` without Nones."""
        out = []
        for impl in self.impls(hook):
            res = self._call_impl(impl, kwargs)
            if res is not None:
                out.append((impl.plugin_name, res))
        return out

    def first(self, hook: str, **kwargs) -> Any:
        """Call an exclusive hook: the one plugin's result, else the core default."""
        for impl in self.impls(hook):
            res = self._call_impl(impl, kwargs)
            if res is not None:
                return res
        return None

    def has_impl(self, hook: str, name: str) -> bool:
        return any(impl.plugin_name == name for impl in self.impls(hook))

    # -- per-plugin conveniences ----------------------------------------------------------------
    def configure(self, cfg) -> None:
        for impl in self.impls("configure", include_core=False):
            name = impl.plugin_name
            self._call_impl(impl, {"opts": self.options[name], "cfg": cfg, "stack": list(self.names)})

    def state_dict(self) -> dict:
        return {name: state for name, state in self.collect("state_dict")}

    def load_state_dict(self, states: dict) -> None:
        states = dict(states or {})
        for impl in self.impls("load_state_dict"):
            if impl.plugin_name in states:
                self._call_impl(impl, {"state": states.pop(impl.plugin_name)})
        missing_loader = sorted(states)
        if missing_loader:
            raise PluginError(f"The checkpoint holds state for plugin(s) {missing_loader} that cannot load it "
                              f"(not enabled, or no load_state_dict hook).")

    def report_stats(self) -> dict:
        out = {}
        for name, values in self.collect("report_stats", ):
            for key, value in values.items():
                out[f"{name}/{key}"] = value
        return out

    def options_dict(self) -> dict:
        """``{plugin: {option: value}}`` with every option, for checkpoints and run descriptions."""
        return {name: self.options[name].as_dict() for name in self.names}
