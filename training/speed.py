"""Speed options of a training run, applied to the networks once, with two small scopes for the loop.

Every option is off by default and switchable on its own (``TrainConfig`` fields, ``ganstack train``
flags):

* ``compile`` (``--compile MODE``): ``torch.compile`` of G's and D's forward (inductor on CPU and GPU).
  The forward *and* its backward are compiled; phases that need a gradient of a gradient (R1, path
  length: ``create_graph=True``) run the same modules eagerly, because AOTAutograd has no double
  backward. Modes: ``default``; ``reduce-overhead`` (CUDA graphs: fewest launches, outputs are copied
  out of the graph's pool); ``max-autotune`` / ``max-autotune-no-cudagraphs``. Shapes are static
  (``dynamic=False``): a step calls each network with at most three batch shapes, and static shapes
  gave fewer kernels than ``dynamic=None`` (``benchmarks/bench_op_counts.py --dynamic``).
* ``mp_res`` / ``mp_dtype`` (``--mp-res N --mp-dtype bf16|fp16``): the ``N`` highest resolutions of G and D
  run in reduced precision, as StyleGAN2-ADA runs its 4 highest in float16: activations and weights are
  cast in those blocks, the mapping network, the demodulation coefficients, the 4x4 epilogue and the
  losses stay float32. ``fp16`` is CUDA only (StyleGAN2-ADA); ``bf16`` also runs on a CPU. The config
  layer sets ``conv_clamp = 256`` when ``mp_res > 0``, as the official configs do.
* ``channels_last`` (``--channels-last``): NHWC activations and conv weights in the image blocks.
* ``tf32`` (``--tf32``): TF32 matmuls and convolutions on Ampere and newer GPUs (StyleGAN2-ADA: off). Off
  leaves torch's own defaults (TF32 convolutions on, matmuls off), so a run without speed options is unchanged.
* ``sync_debug`` (``--sync-debug``): inside :meth:`SpeedRuntime.step`, any operation that waits for the
  GPU raises (``torch.cuda.set_sync_debug_mode('error')``); on a CPU run the same scope records the
  operations that *would* wait on a GPU (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``,
  ``.cpu()``, ``.numpy()``, ``nonzero``, boolean-mask indexing, ``unique``...) with their ``file:line``
  and raises on the first one (:class:`HostSyncError`). :func:`record_host_syncs` lists them without
  raising.

How the loop uses it: the ``Trainer`` (training/loop.py) asks :func:`accelerator_for` for its accelerator.
With every option off that is None and the loop runs its plain ``Accelerator`` (bitwise the training of a
run without this module). Otherwise a :class:`SpeedAccelerator` applies the options once to the networks
(:func:`apply_speed_options`, after the ``start_training`` hooks, before the optimizers) and enters two
scopes::

    with rt.step():                                      # around one training step (sync-debug scope)
        for phase, ... in phases:
            with rt.phase(phase, double_backward=...):   # around the phase's accumulate_gradients
                ...

``double_backward`` is true for the lazy phases (``Greg``, ``Dreg``) and for a main phase that evaluates a
regularizer (R1 every step): those run the compiled networks eagerly.

CPU threads: :func:`configure_threads` (called by ``ganstack train`` on a CPU) sets 1 intra-op thread for
point data and keeps the CPU count (or ``ablate --jobs``' share of it) for images; ``training/cli.py``
sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads, so idle OpenMP threads sleep instead of spinning.
``benchmarks/bench_threads.py`` holds the measurement behind both choices.
"""
from __future__ import annotations

import contextlib
import os
import threading
import traceback
import types
import weakref
from typing import Callable, Optional

import torch

from ganstack.stylegan_base.errors import GanstackError

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


SPEED_FIELDS = ("compile", "mp_res", "mp_dtype", "channels_last", "tf32", "sync_debug")


class SpeedOptions:
    """The speed switches of a run: the ``TrainConfig`` fields named in :data:`SPEED_FIELDS` (with
    TrainConfig's defaults for any an older config object lacks)."""

    def __init__(self, **values):
        for name in SPEED_FIELDS:
            setattr(self, name, values[name])

    @classmethod
    def from_config(cls, cfg) -> "SpeedOptions":
        from ganstack.training.config import TrainConfig
        default = TrainConfig()
        return cls(**{n: getattr(cfg, n, getattr(default, n)) for n in SPEED_FIELDS})

    def check(self) -> Optional[str]:
        """None, or a one-paragraph message saying what is wrong and what would be right."""
        if self.compile not in COMPILE_MODES:
            return f"--compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}."
        if self.mp_dtype not in MP_DTYPES:
            return f"--mp-dtype must be bf16 or fp16, got {self.mp_dtype!r}."
        if not isinstance(self.mp_res, int) or self.mp_res < 0:
            return f"--mp-res is a number of resolutions (0 = all float32, StyleGAN2-ADA uses 4), got {self.mp_res!r}."
        return None

    def describe(self) -> str:
        parts = [f"compile {self.compile}"]
        parts.append(f"mp {self.mp_dtype} on {self.mp_res} highest res" if self.mp_res else "mp off")
        parts += [f"channels_last {'on' if self.channels_last else 'off'}", f"tf32 {'on' if self.tf32 else 'off'}"]
        if self.sync_debug:
            parts.append("sync-debug on")
        return ", ".join(parts)


def check_config(cfg, data_info: Optional[dict] = None) -> Optional[str]:
    """Validation of the speed options of a ``TrainConfig`` (None when valid). For ``config.validate``."""
    opts = SpeedOptions.from_config(cfg)
    msg = opts.check()
    if msg:
        return msg
    if opts.mp_res and getattr(cfg, "amp", "off") != "off":
        return (f"--amp {cfg.amp} (autocast everywhere) and --mp-res {opts.mp_res} (reduced precision on the "
                f"highest resolutions, as StyleGAN2-ADA) are two ways to do mixed precision; choose one.")
    if opts.mp_res and opts.mp_dtype == "fp16" and str(getattr(cfg, "device", "auto")) == "cpu":
        return "--mp-dtype fp16 runs on CUDA only (as StyleGAN2-ADA); use --mp-dtype bf16 on a CPU."
    if data_info is not None and data_info.get("kind") != "image" and (opts.mp_res or opts.channels_last):
        return "--mp-res and --channels-last apply to image backbones; the dataset holds points. Drop them."
    return None


# ------------------------------------------------------------------------------------------------
# Compiled forwards that the loop can switch off per phase

_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()
_state = threading.local()


def _eager_now() -> bool:
    return getattr(_state, "eager", 0) > 0


def _clone_tensors(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_clone_tensors(o) for o in out)
    if isinstance(out, list):
        return [_clone_tensors(o) for o in out]
    return out


def _dispatch_forward(self, *args, **kwargs):
    """The ``forward`` of a compiled network: the compiled graph, or the eager forward when the current
    phase needs a double backward, when compiling is paused, or on a copy of the network (a deepcopy
    rebinds this method to the copy, which has no compiled graph: G_ema stays eager)."""
    entry = _COMPILED.get(self)
    if entry is None or _eager_now():
        return type(self).forward(self, *args, **kwargs)
    compiled, clone_outputs = entry
    out = compiled(*args, **kwargs)
    return _clone_tensors(out) if clone_outputs else out


# The torch.compile backend. "inductor" for real runs; benchmarks/gpu_speed.py --smoke sets "aot_eager"
# (the same tracing, graph capture and autograd path without code generation) so its CPU test is quick.
COMPILE_BACKEND = os.environ.get("GANSTACK_COMPILE_BACKEND", "inductor")


def compile_module(module: torch.nn.Module, mode: str = "default", dynamic: Optional[bool] = False) -> None:
    """Compile ``module``'s forward in place (its state_dict, parameters and class are unchanged)."""
    if mode not in COMPILE_MODES or mode == "off":
        raise ValueError(f"compile mode must be one of {COMPILE_MODES[1:]}, got {mode!r}")
    eager = types.MethodType(type(module).forward, module)
    if COMPILE_BACKEND != "inductor":
        compiled = torch.compile(eager, backend=COMPILE_BACKEND, dynamic=dynamic)
    else:
        compiled = torch.compile(eager, mode=None if mode == "default" else mode, dynamic=dynamic)
    _COMPILED[module] = (compiled, mode in _CUDAGRAPH_MODES)
    module.forward = types.MethodType(_dispatch_forward, module)


def uncompile_module(module: torch.nn.Module) -> None:
    _COMPILED.pop(module, None)
    if isinstance(module.__dict__.get("forward"), types.MethodType):
        del module.forward


def is_compiled(module: torch.nn.Module) -> bool:
    return module in _COMPILED


@contextlib.contextmanager
def eager():
    """Run compiled networks eagerly inside this scope (gradients of gradients, debugging)."""
    _state.eager = getattr(_state, "eager", 0) + 1
    try:
        yield
    finally:
        _state.eager -= 1


# ------------------------------------------------------------------------------------------------
# Reduced precision and memory format of the image blocks

def _image_blocks(net: torch.nn.Module):
    """``[(resolution, block)]`` of a StyleGAN2 G (synthesis blocks) or D (discriminator blocks)."""
    from ganstack.stylegan_base.networks import DiscriminatorBlock, SynthesisBlock
    return [(m.resolution, m) for m in net.modules() if isinstance(m, (SynthesisBlock, DiscriminatorBlock))]


def _set_channels_last(block: torch.nn.Module) -> None:
    block.channels_last = True
    for p in list(block.parameters()) + list(block.buffers()):
        if p.ndim == 4 and p.shape[-1] > 1:
            p.data = p.data.contiguous(memory_format=torch.channels_last)


def set_block_precision(net: torch.nn.Module, mp_res: int, dtype: torch.dtype, channels_last: bool = False) -> list:
    """Run the ``mp_res`` highest resolutions of ``net`` in ``dtype`` (StyleGAN2-ADA's ``num_fp16_res``:
    resolutions >= ``max(2 ** (log2(R) + 1 - mp_res), 8)``); returns the resolutions changed."""
    blocks = _image_blocks(net)
    if not blocks:
        return []
    top = max(r for r, _ in blocks)
    threshold = max(2 ** (top.bit_length() - 1 + 1 - mp_res), 8) if mp_res > 0 else None
    changed = []
    for res, block in blocks:
        low = threshold is not None and res >= threshold
        block.use_fp16 = low
        block.lowp_dtype = dtype if low else None
        if low:
            changed.append(res)
        if channels_last:
            _set_channels_last(block)
    return sorted(set(changed))


# ------------------------------------------------------------------------------------------------
# Host syncs

class HostSyncError(GanstackError, RuntimeError):
    """An operation inside a ``--sync-debug`` step waits for the device (the CLI prints it as one line)."""


# aten ops that need a value on the host: on a GPU each of them waits for the queue to drain.
_SYNC_ATEN = {
    "aten::_local_scalar_dense": ".item() / float(t) / int(t) / bool(t) / a Python branch on a tensor",
    "aten::nonzero": "nonzero (or torch.where(cond) with one argument)",
    "aten::masked_select": "masked_select (boolean-mask indexing)",
    "aten::_unique2": "unique",
    "aten::unique_dim": "unique",
    "aten::unique_consecutive": "unique_consecutive",
    "aten::repeat_interleave": "repeat_interleave without output_size",
    "aten::bincount": "bincount",
    "aten::equal": "torch.equal",
}
_PY_SYNC_METHODS = {"tolist": ".tolist()", "cpu": ".cpu()", "numpy": ".numpy()", "__array__": "np.asarray(tensor)"}


def _caller(skip_torch: bool = True) -> str:
    """``file:line (function)`` of the innermost frame outside torch and this module."""
    here = os.path.abspath(__file__)
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    for fr in reversed(traceback.extract_stack()[:-1]):
        fn = os.path.abspath(fr.filename)
        if fn == here or (skip_torch and fn.startswith(torch_dir)) or "/contextlib.py" in fn:
            continue
        return f"{fr.filename}:{fr.lineno} ({fr.name})"
    return "?"


def _in_optimizer() -> bool:
    optim_dir = os.path.join(os.path.dirname(os.path.abspath(torch.__file__)), "optim") + os.sep
    return any(os.path.abspath(fr.filename).startswith(optim_dir) for fr in traceback.extract_stack())


class _SyncRecorder:
    """Finds host syncs in CPU code: the ops that would make a GPU run wait."""

    def __init__(self, raise_on_sync: bool):
        self.raise_on_sync = raise_on_sync
        self.events: list[tuple[str, str]] = []

    def hit(self, what: str) -> None:
        if _in_optimizer():
            return  # torch.optim reads its step counters, CPU tensors in a GPU run too: no device sync
        where = _caller()
        self.events.append((what, where))
        if self.raise_on_sync:
            raise HostSyncError(f"host sync inside a --sync-debug step: {what} at {where}")


def _make_dispatch_mode(recorder: _SyncRecorder):
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func._schema.name
            what = _SYNC_ATEN.get(name)
            if what is None and name in ("aten::index", "aten::index_put", "aten::index_put_"):
                idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
                if any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in idx or ()):
                    what = "boolean-mask indexing"
            if what is not None:
                recorder.hit(what)
            return func(*args, **kwargs)

    return _Mode()


@contextlib.contextmanager
def _cpu_sync_guard(raise_on_sync: bool):
    rec = _SyncRecorder(raise_on_sync)
    saved = {}
    for meth, what in _PY_SYNC_METHODS.items():
        orig = getattr(torch.Tensor, meth)
        saved[meth] = orig

        def wrapper(self, *a, _orig=orig, _what=what, **k):
            rec.hit(_what)
            return _orig(self, *a, **k)

        setattr(torch.Tensor, meth, wrapper)
    try:
        with _make_dispatch_mode(rec):
            yield rec
    finally:
        for meth, orig in saved.items():
            setattr(torch.Tensor, meth, orig)


@contextlib.contextmanager
def record_host_syncs():
    """Collect (without raising) the operations that would wait for a GPU: ``[(what, 'file:line (fn)')]``.

    Works on a CPU run (it models what a GPU run would do); use it around a training step."""
    with _cpu_sync_guard(raise_on_sync=False) as rec:
        yield rec.events


@contextlib.contextmanager
def sync_debug(device, enabled: bool = True):
    """Raise on host syncs inside this scope: ``torch.cuda.set_sync_debug_mode('error')`` on CUDA, the
    CPU recorder (:class:`HostSyncError`) elsewhere."""
    if not enabled:
        yield
        return
    device = torch.device(device)
    if device.type == "cuda":
        prev = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        except RuntimeError as exc:
            if "synchroniz" not in str(exc):
                raise
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename).startswith(root)]
            where = f"{frames[-1].filename}:{frames[-1].lineno} ({frames[-1].name})" if frames else "?"
            raise HostSyncError(f"host sync inside a --sync-debug step at {where}: {str(exc).splitlines()[0]}") from exc
        finally:
            torch.cuda.set_sync_debug_mode(prev)
    else:
        with _cpu_sync_guard(raise_on_sync=True):
            yield


# ------------------------------------------------------------------------------------------------
# The runtime object the loop holds

class SpeedRuntime:
    """What :func:`apply_speed_options` returns: the two scopes the loop enters, and a description."""

    def __init__(self, opts: SpeedOptions, device, compiled: list, mp_resolutions: dict):
        self.opts = opts
        self.device = torch.device(device)
        self.compiled = compiled  # the modules whose forward is compiled
        self.mp_resolutions = mp_resolutions  # {'G': [...], 'D': [...]}

    @contextlib.contextmanager
    def phase(self, name: str, double_backward: Optional[bool] = None):
        """Scope of one phase's forward and backward. Phases that take a gradient of a gradient run the
        compiled networks eagerly (AOTAutograd has no double backward)."""
        if double_backward is None:
            double_backward = name.endswith("reg")
        if self.compiled and self.opts.compile in _CUDAGRAPH_MODES and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        with (eager() if (double_backward and self.compiled) else contextlib.nullcontext()):
            yield

    def step(self):
        """Scope of one training step: with ``sync_debug`` every host sync inside raises."""
        return sync_debug(self.device, self.opts.sync_debug)

    def describe(self) -> str:
        return self.opts.describe()

    def remove(self) -> None:
        for m in self.compiled:
            uncompile_module(m)
        self.compiled = []


def apply_speed_options(nets, cfg, device, dynamic: Optional[bool] = False) -> SpeedRuntime:
    """Apply ``cfg``'s speed options to ``nets`` (an object with ``G``, ``D`` and optionally ``G_ema``) in
    place and return the :class:`SpeedRuntime` whose scopes the loop enters. Call it once, after the
    networks are built and moved to ``device`` (before or after the optimizers: no parameter is replaced).
    """
    opts = SpeedOptions.from_config(cfg)
    msg = opts.check()
    if msg:
        raise ValueError(msg)
    device = torch.device(device)
    if device.type == "cuda" and opts.tf32:  # off: torch's defaults stay (as in a run without speed options)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    G, D, G_ema = nets.G, nets.D, getattr(nets, "G_ema", None)
    mp = {}
    if opts.mp_res or opts.channels_last:
        dtype = MP_DTYPES[opts.mp_dtype]
        for key, net in (("G", G), ("D", D), ("G_ema", G_ema)):
            if net is not None:
                mp[key] = set_block_precision(net, opts.mp_res, dtype, opts.channels_last)
    compiled = []
    if opts.compile != "off":
        for net in (G, D):
            compile_module(net, opts.compile, dynamic=dynamic)
            compiled.append(net)
    return SpeedRuntime(opts, device, compiled, mp)


class SpeedAccelerator:
    """The loop's accelerator (:class:`ganstack.training.loop.Accelerator`'s three methods) for a run with speed
    options: applies them to the networks, and enters :meth:`SpeedRuntime.step` around each training step and
    :meth:`SpeedRuntime.phase` around each phase. ``dynamic`` is torch.compile's (benchmarks try others)."""

    def __init__(self, cfg, device, dynamic: Optional[bool] = False):
        self.cfg = cfg
        self.device = torch.device(device)
        self.dynamic = dynamic
        self.runtime: Optional[SpeedRuntime] = None

    def wrap_networks(self, nets):
        self.runtime = apply_speed_options(nets, self.cfg, self.device, dynamic=self.dynamic)
        return nets

    def wrap_step(self, fn: Callable[[], None]) -> Callable[[], None]:
        def step():
            with self.runtime.step():
                return fn()
        return step

    def phase(self, name: str, double_backward: bool):
        return self.runtime.phase(name, double_backward=double_backward)

    def describe(self) -> str:
        return self.runtime.describe() if self.runtime is not None else SpeedOptions.from_config(self.cfg).describe()


def describe_speed(trainer) -> str:
    """The ``Speed:`` line of a run's log: the speed options in effect and the CPU threads."""
    acc = getattr(trainer, "accelerator", None)
    what = acc.describe() if isinstance(acc, SpeedAccelerator) else SpeedOptions.from_config(trainer.cfg).describe()
    return f"{what}, {torch.get_num_threads()} CPU thread(s)"


def accelerator_for(cfg, device) -> Optional[SpeedAccelerator]:
    """The accelerator for ``cfg``'s speed options, or None when all are off (the loop then runs exactly as
    without this module: same operations, bitwise the same training)."""
    opts = SpeedOptions.from_config(cfg)
    if opts.compile == "off" and not (opts.mp_res or opts.channels_last or opts.tf32 or opts.sync_debug):
        return None
    return SpeedAccelerator(cfg, device)


# ------------------------------------------------------------------------------------------------
# CPU threads

def default_threads(jobs: int = 1, cpus: Optional[int] = None, kind: str = "image") -> int:
    """Intra-op threads for one of ``jobs`` parallel CPU runs: the CPUs split among the jobs (at least 1),
    and 1 for point data (toy MLPs: their ops are too small to split; more threads only spin)."""
    cpus = cpus or _available_cpus()
    if kind == "points":
        return 1
    return max(1, cpus // max(1, jobs))


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def configure_threads(threads: Optional[int] = None, jobs: int = 1, kind: str = "image") -> int:
    """Set torch's intra-op threads for a CPU run; returns the count in effect.

    ``threads`` (``--threads``) wins. Otherwise a user's ``OMP_NUM_THREADS`` is kept, and the count is
    lowered (never raised: ``ablate --jobs`` workers have already split the CPUs) to
    :func:`default_threads` for this kind of data and number of parallel jobs."""
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, min(torch.get_num_threads(), default_threads(jobs, kind=kind))))
    return torch.get_num_threads()
