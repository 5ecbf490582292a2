"""Discovery, validation, capability checks and ordered calling of ganstack plugins.

Plugins are found through the entry-point group ``ganstack.plugins`` (the built-in ones are registered there by
ganstack's own ``setup.cfg``, so the loop never imports them). An entry point names a class (instantiated once per
run) or a module.

A :class:`PluginStack` is one run's set of enabled plugins, in ``--plugins`` order, plus the always-on ``core``
plugin that supplies the StyleGAN2 defaults. It registers them with pluggy so that pluggy's own call order is
``--plugins`` order with the core last, and exposes one caller per hook, derived from the hook's declared kind:
``stack.hooks.augment_d_input(x, ctx=ctx, is_real=True)``. Compatibility is decided from the plugins'
:class:`~ganstack.training.api.Capabilities` (never from plugin names) when the stack is configured.
"""
from __future__ import annotations

import importlib.metadata as importlib_metadata
import inspect
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import pluggy

from ganstack.training import hookspecs
from ganstack.training.api import (CHAIN, COLLECT, D_INPUTS, EACH, ENTRY_POINT_GROUP, EXCLUSIVE, FEATURES, PROJECT,
                                   SLOTS, Capabilities, Option, OptionValues, PluginError)

CORE_NAME = "core"
BUILTIN_DIST = "ganstack"
# The exclusive hooks that fill a slot (implementing one declares ``replaces`` for it).
SLOT_HOOKS = {"build_generator": "G", "build_discriminator": "D", "sampler": "sampler"}


@dataclass
class PluginInfo:
    """Where a plugin comes from (for ``ganstack plugins list`` and checkpoint provenance)."""

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


# ------------------------------------------------------------------------------------------------
# The hook specifications

def hook_names() -> list[str]:
    """The names of all hookspecs, in definition order."""
    return [n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, PROJECT + "_spec")]


def hook_kind(name: str) -> str:
    return getattr(getattr(hookspecs, name), hookspecs.KIND_ATTR)


def hook_params(name: str) -> list[str]:
    return list(inspect.signature(getattr(hookspecs, name)).parameters)


def hook_signature(name: str) -> str:
    """``augment_d_input(x: DInput, ctx: Optional[PhaseContext], is_real: bool) -> Optional[DInput]``."""
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" if p.annotation is not inspect.Parameter.empty else p.name
                       for p in sig.parameters.values())
    ret = sig.return_annotation
    return f"{name}({params})" + ("" if ret is inspect.Signature.empty else f" -> {ret}")


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _impl_functions(plugin: Any) -> dict[str, Any]:
    """The ``@hookimpl`` functions of a plugin object (or module), by hook name."""
    out = {}
    for attr in dir(plugin):
        if attr.startswith("__"):
            continue
        try:
            fn = getattr(plugin, attr)
        except Exception:  # noqa: BLE001 - a property that fails is not a hook
            continue
        opts = getattr(fn, PROJECT + "_impl", None)
        if opts is not None and callable(fn):
            out[opts.get("specname") or attr] = (fn, opts)
    return out


def _impl_args(fn) -> list[str]:
    try:
        return [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)]
    except (TypeError, ValueError):
        return []


def validate_implementations(name: str, plugin: Any) -> None:
    """Refuse unknown hooks, wrong argument names and wrappers where they cannot work, with the expected signature."""
    known = set(hook_names())
    for hook, (fn, opts) in _impl_functions(plugin).items():
        if hook not in known:
            raise PluginError(f"Plugin {name!r} implements {hook!r}, which is not a ganstack hook. "
                              f"Known hooks: {', '.join(hook_names())}.")
        wanted = _impl_args(fn)
        allowed = hook_params(hook)
        bad = [a for a in wanted if a not in allowed]
        if bad:
            raise PluginError(
                f"Plugin {name!r} implements {hook}({', '.join(wanted)}), but {', '.join(map(repr, bad))} "
                f"{'is' if len(bad) == 1 else 'are'} not an argument of that hook. The hook is "
                f"{hook_signature(hook)}; an implementation may accept any subset of these arguments, by name.")
        if (opts.get("wrapper") or opts.get("hookwrapper")) and hook_kind(hook) in (CHAIN, EACH):
            raise PluginError(f"Plugin {name!r} implements {hook} as a hook wrapper, but {hook} is a "
                              f"{hook_kind(hook)} hook, whose implementations run one by one; only collect and "
                              f"exclusive hooks take wrappers. Implement it as a plain @hookimpl.")


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


def declared_capabilities(plugin: Any) -> Capabilities:
    """A plugin's :class:`Capabilities`: its ``capabilities`` attribute (or dict) plus the slots its exclusive
    hooks fill."""
    caps = getattr(plugin, "capabilities", None)
    if caps is None:
        caps = Capabilities()
    elif isinstance(caps, dict):
        caps = Capabilities(**caps)
    elif not isinstance(caps, Capabilities):
        raise PluginError(f"Plugin {getattr(plugin, 'name', plugin)!r}: 'capabilities' must be a "
                          f"ganstack.api.Capabilities (or a dict of its fields), not {type(caps).__name__}.")
    implemented = set(_impl_functions(plugin))
    slots = {slot for hook, slot in SLOT_HOOKS.items() if hook in implemented}
    return caps.with_(replaces=caps.replaces | slots) if slots - caps.replaces else caps


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


class PerPlugin(dict):
    """Per-plugin values of one argument of an ``each`` hook: ``{plugin name: value}``. A plugin absent from
    the mapping is not called."""


# ------------------------------------------------------------------------------------------------
# Calling

class Hooks:
    """One caller per hook, derived from the hook's declared kind (``stack.hooks.<name>(...)``).

    * exclusive and collect hooks are pluggy's own calls (``firstresult``; the list of results);
    * chain hooks take the flowing value as their first argument: ``hooks.prepare_reals(reals, ctx=ctx)``;
    * each hooks return ``{plugin: result}`` without Nones; an argument given as :class:`PerPlugin` differs per
      plugin.
    """

    def __init__(self, stack: "PluginStack"):
        for name in hook_names():
            setattr(self, name, self._make(stack, name))

    @staticmethod
    def _make(stack: "PluginStack", name: str):
        kind = hook_kind(name)
        pluggy_hook = getattr(stack.pm.hook, name)
        params = hook_params(name)

        if kind in (EXCLUSIVE, COLLECT):
            def call(**kwargs):
                return pluggy_hook(**kwargs)
        elif kind == CHAIN:
            value_arg = params[0]

            def call(value, **kwargs):
                for impl in stack.implementations(name):
                    args = dict(kwargs)
                    args[value_arg] = value
                    out = impl.function(*[args[a] for a in impl.argnames])
                    if out is not None:
                        value = out
                return value
        else:
            def call(**kwargs):
                results = {}
                for impl in stack.implementations(name):
                    args = {}
                    skip = False
                    for k, v in kwargs.items():
                        if isinstance(v, PerPlugin):
                            if impl.plugin_name not in v:
                                skip = True
                                break
                            v = v[impl.plugin_name]
                        args[k] = v
                    if skip:
                        continue
                    out = impl.function(*[args[a] for a in impl.argnames])
                    if out is not None:
                        results[impl.plugin_name] = out
                return results
        call.__name__ = name
        call.__doc__ = f"[{kind}] " + (getattr(hookspecs, name).__doc__ or "").strip().splitlines()[0]
        return call


# ------------------------------------------------------------------------------------------------
# The stack

class PluginStack:
    """The enabled plugins of one run, registered with pluggy, plus the core plugin.

    ``options`` maps plugin name to ``{option: value}`` (strings or Python values; parsed and range-checked
    here). Unknown plugins, unknown options, options for plugins that are not enabled, implementations that do
    not fit the hook specifications and two plugins filling one slot are
    :class:`~ganstack.training.api.PluginError` at construction; the capability check runs in :meth:`configure`,
    when the data kind is known.
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
        # pluggy calls the most recently registered implementation first: the core first and the plugins in
        # reverse order make pluggy's own order --plugins order with the core last.
        for name, plugin in [(CORE_NAME, core)] + [(n, self.plugins[n]) for n in reversed(self.names)]:
            validate_implementations(name, plugin)
            try:
                self.pm.register(plugin, name=name)
            except pluggy.PluginValidationError as exc:
                raise PluginError(f"Plugin {name!r} does not fit the hook specifications: {exc}.") from None
        try:
            self.pm.check_pending()  # hookimpls for hooks that do not exist
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"{exc}. Known hooks: {', '.join(hook_names())}.") from None
        self.hooks = Hooks(self)
        self.schemas = {name: plugin_option_schema(p) for name, p in self.plugins.items()}
        self.options = self._parse_options(options or {})
        self.capabilities = {name: self._effective_capabilities(name) for name in self.names}
        self.capabilities[CORE_NAME] = declared_capabilities(core)
        self.fillers = self._fill_slots()
        self.features: frozenset = frozenset()
        self.d_input = "plain"
        self.data_kind: Optional[str] = None

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

    def _effective_capabilities(self, name: str) -> Capabilities:
        """Declared capabilities plus the requirements that the plugin's option values add."""
        caps = declared_capabilities(self.plugins[name])
        extra, reasons = set(), dict(caps.reasons)
        values = self.options[name].as_dict()
        for opt in self.schemas[name]:
            for value, feats in dict(opt.requires).items():
                if values.get(opt.name) == value:
                    for f in ([feats] if isinstance(feats, str) else feats):
                        extra.add(f)
                        reasons.setdefault(f, f"--{name}-{opt.name.replace('_', '-')} {value}")
        return caps.with_(requires=caps.requires | extra, reasons=reasons) if extra else caps

    def _fill_slots(self) -> dict[str, str]:
        fillers = {}
        for slot, what in SLOTS.items():
            who = [n for n in self.names if slot in self.capabilities[n].replaces]
            if len(who) > 1:
                hook = {v: k for k, v in SLOT_HOOKS.items()}[slot]
                raise PluginError(f"Plugins {' and '.join(who)} both replace {what} (they declare replaces: "
                                  f"{slot}, or implement '{hook}'); only one plugin may. Enable one of them.")
            fillers[slot] = who[0] if who else CORE_NAME
        return fillers

    def filler(self, slot: str) -> str:
        """The plugin that fills a slot ('G', 'D', 'sampler'), or 'core'."""
        return self.fillers[slot]

    def _describe_filler(self, slot: str, data_kind: Optional[str] = None) -> str:
        who = self.fillers[slot]
        if who == CORE_NAME:
            backbone = {"image": "StyleGAN2 backbone", "points": "MLP toy backbone"}.get(data_kind, "backbone")
            return f"{SLOTS[slot]} is the core's {backbone}"
        return f"{SLOTS[slot]} is replaced by {who}"

    def provided_features(self, data_kind: Optional[str]) -> frozenset:
        """The features this stack provides on data of ``data_kind`` (see :data:`~ganstack.training.api.FEATURES`)."""
        out = set()
        fakes_from = self.fillers["sampler"] if self.fillers["sampler"] != CORE_NAME else self.fillers["G"]
        for name in [CORE_NAME] + self.names:
            for f in self.capabilities[name].features_for(data_kind):
                slot = FEATURES.get(f, (None, ""))[0]
                if slot is None or (slot == "fakes" and name == fakes_from) or \
                        (slot in SLOTS and self.fillers[slot] == name):
                    out.add(f)
        return frozenset(out)

    def check_capabilities(self, data_kind: Optional[str]) -> None:
        """Refuse a stack whose declarations do not fit, with one paragraph per refusal (the first one found)."""
        features = self.provided_features(data_kind)
        setters = [n for n in self.names if self.capabilities[n].d_input]
        if len(setters) > 1:
            raise PluginError(f"Plugins {' and '.join(setters)} both decide what D judges (d_input "
                              f"{', '.join(self.capabilities[n].d_input for n in setters)}); only one may.")
        d_input = self.capabilities[setters[0]].d_input if setters else "plain"
        for name in self.names:
            caps = self.capabilities[name]
            if data_kind is not None and data_kind not in caps.data:
                raise PluginError(
                    f"Plugin {name!r} works on {' and '.join(sorted(caps.data))} data only (it declares data: "
                    f"{', '.join(sorted(caps.data))}), but this dataset holds {data_kind}. "
                    + ("For 2-D points use 'diffusion', whose noise is domain-agnostic, or drop "
                       f"{name!r} from --plugins." if data_kind == "points" else f"Drop {name!r} from --plugins."))
            for f in sorted(caps.requires - features):
                slot, meaning = FEATURES.get(f, (None, "a feature no enabled plugin declares"))
                why = f" ({caps.reasons[f]})" if f in caps.reasons else ""
                if slot == "fakes":
                    src = self.fillers["sampler"] if self.fillers["sampler"] != CORE_NAME else self.fillers["G"]
                    where = (f"the training fakes come from {src}, which does not declare it" if src != CORE_NAME
                             else "the core's fakes do not have it")
                    culprit = src
                elif slot in SLOTS:
                    where = f"{self._describe_filler(slot, data_kind)}, which does not declare it"
                    culprit = self.fillers[slot]
                else:
                    where = "no enabled plugin declares it"
                    culprit = CORE_NAME
                drop = f"Drop {name} or {culprit}" if culprit != CORE_NAME else f"Drop {name}"
                raise PluginError(
                    f"Plugin {name} cannot run in this stack: it requires '{f}'{why}, meaning {meaning}; but "
                    f"{where}. {drop}, or use a plugin that declares '{f}' (see 'ganstack plugins show').")
            if "augment_d_input" in _impl_functions(self.plugins[name]) and d_input not in caps.augments:
                raise PluginError(
                    f"Plugin {name} cannot run in this stack: it augments what D sees (augment_d_input) and "
                    f"declares that it handles D inputs of kind {', '.join(sorted(caps.augments))}, but "
                    f"{setters[0]} makes D judge '{d_input}' inputs: {D_INPUTS[d_input]}. Transforming "
                    f"DInput.img alone would break what D compares. Drop {name} from --plugins (or, as its author, "
                    f"declare Capabilities(augments=...) with '{d_input}' once augment_d_input transforms every "
                    f"part of such an input alike).")
        self.features = features
        self.d_input = d_input
        self.data_kind = data_kind

    # -- calling -------------------------------------------------------------------------------
    def implementations(self, hook: str, include_core: bool = True) -> list:
        """Implementations of ``hook`` in pluggy's call order (``--plugins`` order, core last), without wrappers."""
        impls = [i for i in reversed(getattr(self.pm.hook, hook).get_hookimpls())
                 if not (getattr(i, "hookwrapper", False) or getattr(i, "wrapper", False))]
        return [i for i in impls if include_core or i.plugin_name != CORE_NAME]

    # -- per-plugin conveniences ----------------------------------------------------------------
    def configure(self, cfg, data_info=None) -> None:
        """Check the capabilities for this data kind, then call every plugin's ``configure`` (the core's last)."""
        kind = (data_info or {}).get("kind") if data_info is not None else None
        if kind is None:
            kind = "points" if str(getattr(cfg, "cfg", "")) == "toy" else "image"
        self.check_capabilities(kind)
        opts = PerPlugin(self.options)
        opts[CORE_NAME] = OptionValues({})
        self.hooks.configure(opts=opts, cfg=cfg, stack=list(self.names), features=self.features)

    def state_dict(self) -> dict:
        return self.hooks.state_dict()

    def load_state_dict(self, states: dict, ignore: Iterable[str] = ()) -> None:
        states = {k: v for k, v in dict(states or {}).items() if k not in set(ignore)}
        loaders = {i.plugin_name for i in self.implementations("load_state_dict")}
        missing_loader = sorted(set(states) - loaders)
        if missing_loader:
            raise PluginError(f"The checkpoint holds state for plugin(s) {missing_loader} that cannot load it "
                              f"(not enabled, or no load_state_dict hook).")
        self.hooks.load_state_dict(state=PerPlugin(states))

    def report_stats(self) -> dict:
        """``{'<plugin>/<key>': value}`` from every ``report_stats`` (one name in the status line and stats.jsonl)."""
        out = {}
        for name, values in self.hooks.report_stats().items():
            for key, value in values.items():
                out[f"{name}/{key}"] = value
        return out

    def options_dict(self) -> dict:
        """``{plugin: {option: value}}`` with every option, for checkpoints and run descriptions."""
        return {name: self.options[name].as_dict() for name in self.names}

    def provenance(self) -> dict:
        """``{plugin: {dist, version, replaces}}`` for checkpoints: who made each plugin, and whether sampling
        needs it (a plugin that replaces G or the sampler is needed; a loss-only plugin is not)."""
        out = {}
        for name in self.names:
            entry = self.registry.get(name)
            info = entry[0] if isinstance(entry, tuple) else None
            out[name] = {"dist": info.dist if info else "unknown", "version": info.version if info else "?",
                         "replaces": sorted(self.capabilities[name].replaces)}
        return out
