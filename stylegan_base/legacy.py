"""Official StyleGAN2-ADA / StyleGAN3 network pickles, read without their code.

An official ``network-snapshot-*.pkl`` is a plain :mod:`pickle` of
``dict(G=..., D=..., G_ema=..., augment_pipe=..., training_set_kwargs=...)``. Every network in it is
an instance of a ``torch_utils.persistence`` class, which pickles as a call
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = dict(type='class', version=6, module_src=<source of the whole module>, class_name=...,
state=<the module's __dict__>)``. The official loader ``exec``-utes ``module_src``; this module never
does. A restricted :class:`pickle.Unpickler` maps that call (and the few other globals the format
needs: ``dnnlib.EasyDict``, torch's tensor/parameter/storage rebuild functions, numpy scalars and
dtypes, ``collections.OrderedDict``) onto inert stand-ins and refuses every other global with a
clear error. What comes out is a tree of :class:`PersistentObject` records holding the class name,
the constructor arguments (``_init_args``/``_init_kwargs``) and ``_parameters``/``_buffers``/
``_modules`` of each layer.

:func:`import_network` turns such a record into a ganstack :class:`~.networks.Generator` or
:class:`~.networks.Discriminator`. ganstack's networks hold the official parameter and buffer names
and shapes, so the mapping is by name; it is checked three ways and any disagreement is an error that
lists what did not map:

* every tensor name and shape of the pickle must exist in the ganstack network and vice versa;
* the constructor arguments are the pickled ``init_kwargs`` on top of the defaults of the pickled
  class's ``__init__``, read from ``module_src`` with :mod:`ast` (parsed, never run), so a fork's
  changed defaults (StyleGAN3's ``w_avg_beta=0.998``, for example) are honoured;
* attributes each official layer stored (``activation``, ``conv_clamp``, ``weight_gain``,
  ``w_avg_beta``, the minibatch-std ``group_size``, ...) must equal those of the ganstack layer.

FP16: the pickled weights are float32; ``num_fp16_res`` only chose the official compute precision on
CUDA. The imported networks compute in float32 everywhere (the official networks with
``force_fp32=True``); ``conv_clamp`` is kept, since it is part of the function. Mixed precision in
ganstack is a run option (``--amp``), not a network property.
"""
from __future__ import annotations

import ast
import collections
import hashlib
import io
import math
import pickle
import struct
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ganstack.stylegan_base.errors import CheckpointError

__all__ = ['OfficialPickleError', 'PersistentObject', 'OfficialSnapshot', 'ImportedNetwork', 'read_official_pickle',
           'import_network', 'load_official_networks', 'looks_like_pickle', 'effective_kwargs', 'flat_tensors']

PERSISTENCE_VERSION = 6  # torch_utils.persistence._version in StyleGAN2-ADA-PyTorch and StyleGAN3


class OfficialPickleError(CheckpointError, ValueError):
    """An official network pickle could not be read, or holds a network ganstack cannot represent."""


# ------------------------------------------------------------------------------------------------
# Stand-ins for the globals an official pickle names

class EasyDict(dict):
    """Stand-in for ``dnnlib.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


class PersistentObject:
    """What an official ``torch_utils.persistence`` object unpickles to here: its class name, the
    (unexecuted) module source, and its state (the ``torch.nn.Module.__dict__``)."""

    def __init__(self, meta: dict):
        if not isinstance(meta, dict) or not {'type', 'version', 'module_src', 'class_name', 'state'} <= set(meta):
            raise OfficialPickleError('A torch_utils.persistence record in this pickle lacks the fields '
                                      'type/version/module_src/class_name/state; the file is not an official '
                                      'StyleGAN2-ADA/StyleGAN3 pickle or is damaged.')
        if meta['type'] != 'class' or meta['version'] != PERSISTENCE_VERSION:
            raise OfficialPickleError(f"This pickle was written by torch_utils.persistence version {meta['version']!r} "
                                      f"(type {meta['type']!r}); ganstack reads version {PERSISTENCE_VERSION}, the one "
                                      f"of StyleGAN2-ADA-PyTorch and StyleGAN3.")
        self.class_name: str = str(meta['class_name'])
        self.module_src: str = meta['module_src'] if isinstance(meta['module_src'], str) else ''
        self.state: dict = dict(meta['state'] or {})

    # Structure of the torch.nn.Module state.
    @property
    def children(self) -> dict:
        return {k: v for k, v in (self.state.get('_modules') or {}).items() if v is not None}

    @property
    def parameters(self) -> dict:
        return {k: v for k, v in (self.state.get('_parameters') or {}).items() if v is not None}

    @property
    def buffers(self) -> dict:
        skip = set(self.state.get('_non_persistent_buffers_set') or ())
        return {k: v for k, v in (self.state.get('_buffers') or {}).items() if v is not None and k not in skip}

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get('_init_args') or ())

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get('_init_kwargs') or {})

    def get(self, name: str, default=None):
        return self.state.get(name, default)

    def __repr__(self):
        return f'PersistentObject({self.class_name})'


def _reconstruct_persistent_obj(meta):
    return PersistentObject(meta)


# Torch tensors. Plain pickle stores each storage as torch.storage._load_from_bytes(<a legacy
# torch.save of that storage>); tensors and parameters are rebuilt around it by torch._utils.

_STORAGE_DTYPES = {
    'FloatStorage': torch.float32, 'DoubleStorage': torch.float64, 'HalfStorage': torch.float16,
    'BFloat16Storage': torch.bfloat16, 'LongStorage': torch.int64, 'IntStorage': torch.int32,
    'ShortStorage': torch.int16, 'CharStorage': torch.int8, 'ByteStorage': torch.uint8, 'BoolStorage': torch.bool,
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001


class _Storage:
    """A storage read from the pickle: a flat tensor of its dtype."""

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


class _StorageRef:
    def __init__(self, dtype, key, numel, view):
        self.dtype, self.key, self.numel, self.view = dtype, key, numel, view


class _StorageUnpickler(pickle.Unpickler):
    """The inner legacy ``torch.save`` stream of one storage: only storage type names are allowed."""

    def find_class(self, module, name):
        if module in ('torch', 'torch.cuda') and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise OfficialPickleError(f'A tensor storage in this pickle names {module}.{name}, which is not a torch '
                                  f'storage type; the file is damaged or not an official network pickle.')

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == 'storage'):
            raise OfficialPickleError(f'Unexpected persistent id {pid!r} inside a tensor storage of this pickle.')
        view = pid[5] if len(pid) > 5 else None
        return _StorageRef(pid[1], str(pid[2]), int(pid[4]), view)


def _load_from_bytes(data: bytes) -> _Storage:
    """``torch.storage._load_from_bytes`` without torch.load's full unpickler.

    The bytes are a legacy (non-zip) ``torch.save`` of one storage: five pickles (magic number,
    protocol 1001, system info, the storage as a persistent id ``('storage', <type>, key, location,
    numel[, view])``, the list of keys), then per key its element count (int64) and raw data.
    """
    f = io.BytesIO(data)
    try:
        if _StorageUnpickler(f).load() != _LEGACY_MAGIC or _StorageUnpickler(f).load() != _LEGACY_PROTOCOL:
            raise OfficialPickleError("A tensor storage in this pickle is not in torch's legacy save format.")
        sys_info = _StorageUnpickler(f).load()
        if isinstance(sys_info, dict) and not sys_info.get('little_endian', True):
            raise OfficialPickleError('This pickle was written on a big-endian machine; ganstack reads '
                                      'little-endian pickles only.')
        ref = _StorageUnpickler(f).load()
        keys = _StorageUnpickler(f).load()
        if not isinstance(ref, _StorageRef) or list(map(str, keys)) != [ref.key]:
            raise OfficialPickleError('A tensor storage in this pickle refers to data it does not hold.')
        (numel,) = struct.unpack('<q', f.read(8))
        nbytes = numel * torch.empty([], dtype=ref.dtype).element_size()
        raw = f.read(nbytes)
    except (pickle.UnpicklingError, EOFError, struct.error, AttributeError, TypeError) as exc:
        raise OfficialPickleError(f'A tensor storage in this pickle could not be read ({exc}); the file is '
                                  f'damaged or incomplete.') from None
    if numel < 0 or len(raw) != nbytes:
        raise OfficialPickleError('A tensor storage in this pickle is truncated; the file is incomplete.')
    flat = torch.frombuffer(bytearray(raw), dtype=ref.dtype) if nbytes else torch.empty(0, dtype=ref.dtype)
    if ref.view is not None:  # old torch: (view_key, offset, view_size)
        _, offset, size = ref.view
        flat = flat[int(offset): int(offset) + int(size)]
    return _Storage(flat)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise OfficialPickleError('A tensor in this pickle is not backed by a storage; the file is damaged.')
    try:
        t = torch.as_strided(storage.flat, tuple(size), tuple(stride), int(storage_offset))
        return t.clone(memory_format=torch.contiguous_format)
    except RuntimeError as exc:
        raise OfficialPickleError(f'A tensor in this pickle does not fit its storage ({exc}).') from None


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


class _TypeToken:
    def __init__(self, name):
        self.name = name


_NUMPY_MULTIARRAY = ('numpy.core.multiarray', 'numpy._core.multiarray')
_ALLOWED = {
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _reconstruct_persistent_obj,
    ('dnnlib', 'EasyDict'): EasyDict,
    ('dnnlib.util', 'EasyDict'): EasyDict,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('torch._utils', '_rebuild_from_type_v2'): _rebuild_from_type_v2,
    ('torch._tensor', 'Tensor'): _TypeToken('Tensor'),
    ('torch', 'Tensor'): _TypeToken('Tensor'),
    ('torch.nn.parameter', 'Parameter'): _TypeToken('Parameter'),
    ('torch.storage', '_load_from_bytes'): _load_from_bytes,
    ('torch', 'device'): torch.device,
    ('numpy', 'dtype'): np.dtype,
    ('numpy', 'ndarray'): np.ndarray,
}


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise OfficialPickleError('This pickle holds a numpy object scalar, which an official network pickle does not.')
    return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type()


def _numpy_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise OfficialPickleError('This pickle holds a numpy array subclass, which an official network pickle does not.')
    return np.ndarray.__new__(np.ndarray, shape, dtype)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, source: str):
        super().__init__(f)
        self.source = source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in _NUMPY_MULTIARRAY and name == 'scalar':
            return _numpy_scalar
        if module in _NUMPY_MULTIARRAY and name == '_reconstruct':
            return _numpy_reconstruct
        if module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == 'dnnlib.tflib.network' and name == 'Network':
            raise OfficialPickleError(
                f'{self.source} is a TensorFlow StyleGAN/StyleGAN2(-ADA) pickle (dnnlib.tflib.network.Network). '
                f'ganstack reads the PyTorch pickles of StyleGAN2-ADA-PyTorch and StyleGAN3. Convert it once with '
                f'StyleGAN2-ADA-PyTorch\'s legacy.py (python legacy.py --source={self.source} --dest=OUT.pkl) and '
                f'import OUT.pkl.')
        raise OfficialPickleError(
            f'{self.source} refers to {module}.{name}, which an official StyleGAN2-ADA/StyleGAN3 network pickle does '
            f'not contain. ganstack reads only the networks, tensors and plain values of official pickles and '
            f'never loads other objects (that would run code from the file). If this is a ganstack checkpoint, '
            f'give the .pt file; if it is another project\'s pickle, export its weights as a state dict.')

    def persistent_load(self, pid):
        raise OfficialPickleError(f'{self.source} uses persistent ids, which official network pickles do not; it is '
                                  f'probably a torch.save file, not a StyleGAN2-ADA/StyleGAN3 pickle.')


# ------------------------------------------------------------------------------------------------
# Reading

@dataclass
class OfficialSnapshot:
    """The contents of an official pickle: its networks (as records) and what else it holds."""

    source: str
    nets: dict                       # 'G' / 'D' / 'G_ema' -> PersistentObject
    training_set_kwargs: Optional[dict] = None
    augment_p: Optional[float] = None
    augment_kwargs: Optional[dict] = None
    other_keys: list = field(default_factory=list)


def looks_like_pickle(path: str) -> bool:
    """True for a plain pickle (an official ``.pkl``); False for a zip (``torch.save``) or anything else."""
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _to_plain(x):
    if isinstance(x, dict):
        return {str(k): _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


def read_official_pickle(source) -> OfficialSnapshot:
    """Read an official network pickle (a path or a binary file object) without executing its code."""
    name = source if isinstance(source, str) else getattr(source, 'name', '<pickle>')
    try:
        if isinstance(source, str):
            with open(source, 'rb') as f:
                data = _RestrictedUnpickler(f, name).load()
        else:
            data = _RestrictedUnpickler(source, name).load()
    except OfficialPickleError:
        raise
    except FileNotFoundError:
        raise OfficialPickleError(f'{name}: no such file.') from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, struct.error, IndexError, MemoryError) as exc:
        raise OfficialPickleError(f'{name} could not be read as an official network pickle ({type(exc).__name__}: '
                                  f'{exc}); it may be truncated or not a pickle at all.') from None
    if isinstance(data, int) and data == _LEGACY_MAGIC:
        raise OfficialPickleError(f'{name} is a file written by torch.save (legacy format), not an official '
                                  f'StyleGAN2-ADA/StyleGAN3 network pickle.')
    if isinstance(data, PersistentObject):  # a bare network, e.g. pickle.dump(G_ema)
        data = {'G_ema': data}
    if not isinstance(data, dict) or not any(isinstance(data.get(k), PersistentObject) for k in ('G', 'D', 'G_ema')):
        kind = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise OfficialPickleError(f'{name} holds {kind}, not the G/D/G_ema networks of an official network pickle.')
    nets = {k: data[k] for k in ('G', 'D', 'G_ema') if isinstance(data.get(k), PersistentObject)}
    snap = OfficialSnapshot(source=name, nets=nets)
    tsk = data.get('training_set_kwargs')
    snap.training_set_kwargs = _to_plain(tsk) if isinstance(tsk, dict) else None
    aug = data.get('augment_pipe')
    if isinstance(aug, PersistentObject):
        p = aug.buffers.get('p')
        snap.augment_p = float(p) if isinstance(p, torch.Tensor) and p.numel() == 1 else None
        snap.augment_kwargs = _to_plain(aug.init_kwargs)
    snap.other_keys = sorted(str(k) for k in data if k not in ('G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'))
    return snap


# ------------------------------------------------------------------------------------------------
# Constructor arguments from the pickled source (parsed with ast, never executed)

_SIGNATURE_CACHE: dict = {}


def _init_signature(module_src: str, class_name: str) -> tuple[list, dict]:
    """Parameter names (after ``self``) and literal defaults of ``class_name.__init__`` in ``module_src``."""
    key = (hashlib.sha256(module_src.encode('utf-8', 'replace')).hexdigest(), class_name)
    if key in _SIGNATURE_CACHE:
        return _SIGNATURE_CACHE[key]
    names, defaults = [], {}
    try:
        tree = ast.parse(module_src)
    except (SyntaxError, ValueError):
        tree = None
    for node in (tree.body if tree is not None else []):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == '__init__':
                    args = fn.args.posonlyargs + fn.args.args
                    names = [a.arg for a in args][1:]
                    for a, d in zip(args[len(args) - len(fn.args.defaults):], fn.args.defaults):
                        defaults[a.arg] = _literal(d)
                    for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults):
                        names.append(a.arg)
                        if d is not None:
                            defaults[a.arg] = _literal(d)
    _SIGNATURE_CACHE[key] = (names, defaults)
    return names, defaults


_UNKNOWN = object()


def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return _UNKNOWN  # e.g. a default computed by an expression; must then be given explicitly


def effective_kwargs(obj: PersistentObject) -> dict:
    """Constructor arguments of a persistent object: source defaults, then init_args, then init_kwargs."""
    names, defaults = _init_signature(obj.module_src, obj.class_name)
    kw = {k: v for k, v in defaults.items() if v is not _UNKNOWN}
    for n, v in zip(names, obj.init_args):
        kw[n] = v
    kw.update(obj.init_kwargs)
    return {k: _plain_value(v) for k, v in kw.items()}


def _plain_value(v):
    if isinstance(v, dict):
        return {str(k): _plain_value(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [_plain_value(x) for x in v]
    if isinstance(v, list):
        return [_plain_value(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


# ------------------------------------------------------------------------------------------------
# Mapping onto ganstack's networks

# Constructor arguments that choose how (not what) an official network computes, or how it trains.
_COMPUTE_ONLY = {'fp16_channels_last', 'channels_last', 'fused_modconv_default', 'num_fp16_res', 'use_fp16'}
_TRAINING_ONLY = {'freeze_layers', 'freeze_embed'}

_MAPPING_KEYS = ('num_layers', 'embed_features', 'layer_features', 'activation', 'lr_multiplier', 'w_avg_beta')
_SYNTHESIS_KEYS = ('channel_base', 'channel_max', 'conv_clamp', 'architecture', 'resample_filter', 'use_noise',
                   'activation', 'kernel_size')
_D_KEYS = ('architecture', 'channel_base', 'channel_max', 'conv_clamp', 'cmap_dim')
_D_BLOCK_KEYS = ('activation', 'resample_filter')
_D_EPILOGUE_KEYS = ('mbstd_group_size', 'mbstd_num_channels', 'activation')
_D_MAPPING_KEYS = ('num_layers', 'embed_features', 'layer_features', 'activation', 'lr_multiplier')

# Attributes both the official layers and ganstack's store; they must agree after the import.
_CHECKED_ATTRS = ('activation', 'up', 'down', 'conv_clamp', 'padding', 'weight_gain', 'bias_gain', 'act_gain',
                  'use_noise', 'resolution', 'in_channels', 'w_dim', 'z_dim', 'c_dim', 'num_ws', 'num_layers',
                  'w_avg_beta', 'img_resolution', 'img_channels', 'architecture', 'is_last', 'num_conv', 'num_torgb',
                  'first_layer_idx', 'group_size', 'num_channels', 'cmap_dim', 'block_resolutions', 'in_features',
                  'out_features')

_G_CLASSES = {'Generator', 'MappingNetwork', 'SynthesisNetwork', 'SynthesisBlock', 'SynthesisLayer', 'ToRGBLayer',
              'FullyConnectedLayer', 'Conv2dLayer'}
_D_CLASSES = {'Discriminator', 'DiscriminatorBlock', 'DiscriminatorEpilogue', 'MinibatchStdLayer', 'MappingNetwork',
              'FullyConnectedLayer', 'Conv2dLayer'}


@dataclass
class ImportedNetwork:
    """A ganstack network built from an official one, with its constructor arguments and notes."""

    role: str                       # 'G', 'G_ema' or 'D'
    module: torch.nn.Module
    kwargs: dict                    # ganstack constructor arguments
    official_kwargs: dict           # the official network's effective constructor arguments
    notes: list = field(default_factory=list)


def flat_tensors(obj: PersistentObject, prefix: str = '') -> dict:
    """``name -> tensor`` over parameters and persistent buffers, as ``state_dict()`` would list them."""
    out = {}
    for k, v in obj.parameters.items():
        out[prefix + k] = v
    for k, v in obj.buffers.items():
        out[prefix + k] = v
    for k, child in obj.children.items():
        if not isinstance(child, PersistentObject):
            raise OfficialPickleError(f'{prefix + k} is a {type(child).__name__}, not an official network layer.')
        out.update(flat_tensors(child, prefix + k + '.'))
    return out


def _walk(obj: PersistentObject, prefix: str = ''):
    yield prefix, obj
    for k, child in obj.children.items():
        if isinstance(child, PersistentObject):
            yield from _walk(child, prefix + k + '.')


def _pick(kw: dict, keys, where: str, unknown: list, notes: list) -> dict:
    out = {}
    for k, v in kw.items():
        if k in keys:
            out[k] = v
        elif k in _COMPUTE_ONLY:
            if k == 'num_fp16_res' and v:
                notes.append(f'{where}num_fp16_res={v}: the official network computed its {v} highest resolutions in '
                             f'float16 on CUDA; ganstack computes in float32 (use --amp for mixed precision).')
        elif k in _TRAINING_ONLY:
            if v:
                notes.append(f'{where}{k}={v} is a training option and is not carried over (use --freezed).')
        else:
            unknown.append(f'{where}{k}={v!r}')
    return out


def _refuse_unknown(unknown: list, role: str, source: str) -> None:
    if unknown:
        raise OfficialPickleError(
            f'{source}: the {role} network has constructor arguments ganstack does not know: {", ".join(unknown)}. '
            f'They may change what the network computes, so it is not imported. ganstack represents StyleGAN2-ADA '
            f'and StyleGAN3 --cfg=stylegan2 networks with the official arguments only.')


def _check_classes(obj: PersistentObject, allowed: set, role: str, source: str) -> None:
    bad = sorted({f'{p or "<top>"}: {o.class_name}' for p, o in _walk(obj) if o.class_name not in allowed})
    stylegan3 = any(o.class_name == 'SynthesisInput' for _, o in _walk(obj)) or 'filtered_lrelu' in obj.module_src
    if stylegan3:
        raise OfficialPickleError(
            f'{source}: the {role} network is a StyleGAN3 alias-free generator (--cfg=stylegan3-t or stylegan3-r: '
            f'SynthesisInput, filtered_lrelu layers). ganstack implements the StyleGAN2 architecture only, so it can '
            f'import StyleGAN2-ADA pickles and StyleGAN3 pickles trained with --cfg=stylegan2, not this one.')
    if bad:
        raise OfficialPickleError(
            f'{source}: the {role} network contains classes ganstack cannot represent ({"; ".join(bad[:8])}'
            f'{"; ..." if len(bad) > 8 else ""}). Only the StyleGAN2 classes of StyleGAN2-ADA-PyTorch\'s '
            f'training/networks.py and StyleGAN3\'s training/networks_stylegan2.py are supported.')


def _generator_kwargs(G: PersistentObject, source: str, role: str) -> tuple[dict, dict, list]:
    if G.class_name != 'Generator':
        raise OfficialPickleError(f'{source}: {role} is a {G.class_name}, not a Generator.')
    _check_classes(G, _G_CLASSES, role, source)
    kids = G.children
    if 'mapping' not in kids or 'synthesis' not in kids:
        raise OfficialPickleError(f'{source}: {role} has no mapping/synthesis sub-networks; not a StyleGAN2 generator.')
    g, m, s = effective_kwargs(G), effective_kwargs(kids['mapping']), effective_kwargs(kids['synthesis'])
    notes, unknown = [], []
    kwargs = {k: int(g[k]) for k in ('z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels') if k in g}
    missing = {'z_dim', 'c_dim', 'w_dim', 'img_resolution', 'img_channels'} - set(kwargs)
    if missing:
        raise OfficialPickleError(f'{source}: {role} does not record {sorted(missing)}; cannot rebuild it.')
    skip = {'z_dim', 'c_dim', 'w_dim', 'num_ws', 'img_resolution', 'img_channels'}
    kwargs['mapping_kwargs'] = _pick({k: v for k, v in m.items() if k not in skip}, _MAPPING_KEYS, 'mapping.',
                                     unknown, notes)
    kwargs['synthesis_kwargs'] = _pick({k: v for k, v in s.items() if k not in skip}, _SYNTHESIS_KEYS,
                                       'synthesis.', unknown, notes)
    top_extra = {k: v for k, v in g.items() if k not in skip | {'mapping_kwargs', 'synthesis_kwargs'}}
    # StyleGAN3's Generator passes its synthesis arguments flat (**synthesis_kwargs); they were read above
    # from the SynthesisNetwork itself, so only the ones it does not know are left here.
    _pick({k: v for k, v in top_extra.items() if k not in s}, (), '', unknown, notes)
    _refuse_unknown(unknown, role, source)
    return kwargs, dict(g, mapping_kwargs=m, synthesis_kwargs=s), notes


def _discriminator_kwargs(D: PersistentObject, source: str, role: str) -> tuple[dict, dict, list]:
    if D.class_name != 'Discriminator':
        raise OfficialPickleError(f'{source}: {role} is a {D.class_name}, not a Discriminator.')
    _check_classes(D, _D_CLASSES, role, source)
    d = effective_kwargs(D)
    notes, unknown = [], []
    kwargs = {k: int(d[k]) for k in ('c_dim', 'img_resolution', 'img_channels') if k in d}
    if len(kwargs) != 3:
        raise OfficialPickleError(f'{source}: {role} does not record c_dim/img_resolution/img_channels.')
    top = {k: v for k, v in d.items() if k not in ('c_dim', 'img_resolution', 'img_channels', 'block_kwargs',
                                                   'mapping_kwargs', 'epilogue_kwargs')}
    kwargs.update(_pick(top, _D_KEYS, '', unknown, notes))
    kwargs['block_kwargs'] = _pick(dict(d.get('block_kwargs') or {}), _D_BLOCK_KEYS, 'block_kwargs.', unknown, notes)
    kwargs['mapping_kwargs'] = _pick(dict(d.get('mapping_kwargs') or {}), _D_MAPPING_KEYS, 'mapping_kwargs.',
                                     unknown, notes)
    kwargs['epilogue_kwargs'] = _pick(dict(d.get('epilogue_kwargs') or {}), _D_EPILOGUE_KEYS, 'epilogue_kwargs.',
                                      unknown, notes)
    _refuse_unknown(unknown, role, source)
    return kwargs, d, notes


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        return bool(a) == bool(b)
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _shape_report(src: dict, dst: dict) -> list[str]:
    lines = []
    only_src = sorted(set(src) - set(dst))
    only_dst = sorted(set(dst) - set(src))
    bad_shape = sorted(k for k in set(src) & set(dst) if tuple(src[k].shape) != tuple(dst[k].shape))
    if only_src:
        lines.append(f'in the pickle but not in ganstack\'s network: {", ".join(only_src[:12])}'
                     f'{" ..." if len(only_src) > 12 else ""}')
    if only_dst:
        lines.append(f'in ganstack\'s network but not in the pickle: {", ".join(only_dst[:12])}'
                     f'{" ..." if len(only_dst) > 12 else ""}')
    if bad_shape:
        lines.append('different shapes: ' + ', '.join(f'{k} {list(src[k].shape)} vs {list(dst[k].shape)}'
                                                      for k in bad_shape[:12]))
    return lines


def import_network(obj: PersistentObject, role: str = 'G_ema', source: str = '<pickle>') -> ImportedNetwork:
    """Build the ganstack network for an official ``Generator``/``Discriminator`` record and load its weights.

    Raises :class:`OfficialPickleError` with the list of names/shapes/attributes that do not map.
    """
    from ganstack.stylegan_base.networks import Discriminator, Generator

    is_g = role.startswith('G')
    kwargs, official, notes = (_generator_kwargs if is_g else _discriminator_kwargs)(obj, source, role)
    tensors = flat_tensors(obj)
    try:
        with torch.random.fork_rng(devices=[]):
            net = (Generator if is_g else Discriminator)(**kwargs)
    except (TypeError, ValueError) as exc:
        raise OfficialPickleError(f'{source}: ganstack cannot build the {role} network these arguments describe '
                                  f'({exc}).') from None
    own = net.state_dict()
    problems = _shape_report(tensors, own)
    if problems:
        raise OfficialPickleError(f'{source}: the {role} network does not map onto ganstack\'s '
                                  f'{type(net).__name__}: ' + '; '.join(problems) + '.')
    bad_dtype = sorted(k for k, v in tensors.items() if not v.is_floating_point())
    if bad_dtype:
        raise OfficialPickleError(f'{source}: {role} tensors {bad_dtype[:6]} are not floating point.')
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=True)
    mismatches = []
    mods = dict(net.named_modules())
    for path, o in _walk(obj):
        mine = mods.get(path.rstrip('.'))
        if mine is None:
            mismatches.append(f'{path.rstrip(".") or "<top>"} ({o.class_name}) has no ganstack counterpart')
            continue
        for attr in _CHECKED_ATTRS:
            if attr in o.state and hasattr(mine, attr) and not _same(o.state[attr], getattr(mine, attr)):
                mismatches.append(f'{path}{attr}: pickle {o.state[attr]!r}, ganstack {getattr(mine, attr)!r}')
    if mismatches:
        raise OfficialPickleError(f'{source}: the {role} network was rebuilt, but its layers differ from the '
                                  f'pickle\'s: ' + '; '.join(mismatches[:12]) + '.')
    net.eval().requires_grad_(False)
    return ImportedNetwork(role=role, module=net, kwargs=kwargs, official_kwargs=official, notes=notes)


def load_official_networks(source, which=('G', 'D', 'G_ema')) -> tuple[dict, OfficialSnapshot]:
    """Read an official pickle and import the networks in ``which`` that it holds.

    Returns ``({role: ImportedNetwork}, snapshot)``.
    """
    snap = read_official_pickle(source)
    nets = {role: import_network(snap.nets[role], role, snap.source) for role in which if role in snap.nets}
    if not nets:
        raise OfficialPickleError(f'{snap.source} holds none of {", ".join(which)} (it has {", ".join(snap.nets)}).')
    return nets, snap
