"""Dataset readers: image zips and folders, built-in toy mixtures and shapes, point files.

Every source is opened through :func:`open_dataset` and returns a :class:`Dataset` whose items are
``(x, label)`` numpy pairs, the StyleGAN2-ADA convention: images are ``uint8 [C, H, W]``, points
are ``float32 [D]`` and labels are ``float32 [label_dim]`` (width 0 when unlabeled).

Views follow StyleGAN2-ADA's ``Dataset``: ``max_size`` keeps a fixed-seed random subset (sorted, so
it is the same on every run and every rank) and ``mirror`` appends x-flipped copies, so item ``i``
and item ``i + raw_len`` are the same image, one flipped. Which item is which depends only on the
index, so the sample stream is deterministic given the sampler's indices.
"""

import hashlib
import json
import os
import re
import zipfile

import numpy as np
import torch

from . import toy
from .errors import DatasetError

try:
    import pyspng
except ImportError:  # pragma: no cover - pyspng is an optional speed-up
    pyspng = None

__all__ = [
    'Dataset', 'ImageDataset', 'PointDataset', 'ImageFolderDataset', 'ShapesDataset',
    'ToyMixtureDataset', 'PointFileDataset', 'open_dataset', 'IMAGE_EXTENSIONS',
]

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
POINT_EXTENSIONS = ('.npy', '.csv')
NORMALIZE_CHOICES = ('none', 'standardize')
_FINGERPRINT_VERSION = b'ganstack-dataset-fingerprint-v1'
# Folders whose images total less than this are fingerprinted by content, larger ones by
# name, size and mtime (a copy then misses the metrics cache, which is only a recomputation).
FOLDER_CONTENT_HASH_LIMIT = 1 << 30
MAX_BUILTIN_ITEMS = 100_000_000  # n of toy:/shapes datasets (their index arrays are held in memory)

_ACCEPTED_SPECS = (
    'a .zip of PNG/JPEG images or a folder of them (see `ganstack dataset convert`), '
    'a .npy or .csv file of points [N, D], '
    'toy:NAME for a built-in 2-D mixture (' + ', '.join(sorted(toy.TOY_MIXTURES)) + '), '
    'or shapesR for procedural images at resolution R (a power of two from 8 to 256, e.g. shapes32)'
)


def _is_pow2(n):
    return n >= 1 and (n & (n - 1)) == 0


# ----------------------------------------------------------------------------------------------
# Base class.


class Dataset(torch.utils.data.Dataset):
    """Common base: index bookkeeping (max_size, mirror), labels, info and fingerprint.

    Subclasses set their own attributes, build ``raw_labels`` (``float32 [raw_len, label_dim]`` or
    None) and then call ``Dataset.__init__``; they implement ``_load_raw_item(raw_idx)`` and
    ``_hash_source(h)``.
    """

    kind = None  # 'image' or 'points'

    def __init__(self, *, name, spec, raw_len, raw_labels=None, raw_classes=None, num_classes=None,
                 max_size=None, mirror=False, seed=0, use_labels=True):
        self.name = str(name)
        self.spec = str(spec)
        self.raw_len = int(raw_len)
        if self.raw_len <= 0:
            raise DatasetError(f'Dataset {spec!r} contains no items; point it at a non-empty dataset.')
        if max_size is not None:
            if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1:
                raise DatasetError(f'max_size must be a positive integer or None, not {max_size!r}.')
            max_size = int(max_size)
        self._max_size = max_size if (max_size is not None and max_size < self.raw_len) else None
        self._seed = int(seed)
        self._mirror = bool(mirror)
        self._use_labels = bool(use_labels)

        # Same subset rule as StyleGAN2-ADA: shuffle with a fixed seed, keep the first N, sort.
        self._raw_idx = np.arange(self.raw_len, dtype=np.int64)
        if self._max_size is not None:
            np.random.RandomState(self._seed).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:self._max_size])
        self._xflip = np.zeros(len(self._raw_idx), dtype=np.uint8)
        if self._mirror:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

        if raw_labels is None or not self._use_labels:
            raw_labels, raw_classes, num_classes = np.zeros([self.raw_len, 0], dtype=np.float32), None, None
        raw_labels = np.ascontiguousarray(raw_labels, dtype=np.float32)
        assert raw_labels.ndim == 2 and raw_labels.shape[0] == self.raw_len
        self._raw_labels = raw_labels
        self._raw_classes = raw_classes
        self.num_classes = num_classes
        self._fingerprint = None

    # --- subclass interface -------------------------------------------------------------------

    def _load_raw_item(self, raw_idx):  # pragma: no cover - abstract
        raise NotImplementedError

    def _hash_source(self, h):  # pragma: no cover - abstract
        raise NotImplementedError

    def _view_params(self):
        return dict(max_size=self._max_size, seed=self._seed if self._max_size is not None else None,
                    mirror=self._mirror, use_labels=self._use_labels)

    # --- public API ---------------------------------------------------------------------------

    def __len__(self):
        return len(self._raw_idx)

    def __getitem__(self, idx):
        x = self._load_raw_item(int(self._raw_idx[idx]))
        if self._xflip[idx]:
            x = x[..., ::-1]
        return np.ascontiguousarray(x), self.get_label(idx)

    def get_label(self, idx):
        """Label of item ``idx``: ``float32 [label_dim]`` (one-hot for class labels)."""
        return self._raw_labels[self._raw_idx[idx]].copy()

    def get_batch(self, indices):
        """``(x, labels)`` as torch tensors for a list/array/tensor of item indices."""
        indices = _as_index_array(indices)
        if len(indices) == 0:
            x = torch.from_numpy(np.zeros([0, *self._item_shape()], dtype=self._item_dtype()))
        else:
            x = torch.from_numpy(np.stack([self[int(i)][0] for i in indices]))
        return x, torch.from_numpy(self._raw_labels[self._raw_idx[indices]])

    @property
    def label_dim(self):
        return self._raw_labels.shape[1]

    @property
    def has_labels(self):
        return self.label_dim > 0

    @property
    def label_shape(self):
        return [self.label_dim]

    @property
    def class_labels(self):
        """Integer class of every item (``int64 [len]``) when labels are classes, else None."""
        return None if self._raw_classes is None else self._raw_classes[self._raw_idx].copy()

    @property
    def mirror(self):
        return self._mirror

    @property
    def max_size(self):
        return self._max_size

    @property
    def raw_indices(self):
        """Source index of every item (``int64 [len]``); item ``i`` is flipped iff ``i >= len // 2`` under mirror."""
        return self._raw_idx.copy()

    def info(self):
        """JSON-serialisable description, stored in checkpoints to rebuild a compatible model."""
        d = dict(kind=self.kind, name=self.name, spec=self.spec, len=len(self), raw_len=self.raw_len,
                 label_dim=self.label_dim, num_classes=self.num_classes)
        d.update(self._view_params())
        return d

    def fingerprint(self):
        """sha256 hex digest of the data, labels and view (max_size subset, mirror); cached."""
        if self._fingerprint is None:
            h = hashlib.sha256(_FINGERPRINT_VERSION)
            h.update(str(self.kind).encode())
            self._hash_source(h)
            h.update(json.dumps(self._view_params(), sort_keys=True).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def close(self):
        """Release open files (reopened on demand)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f'{type(self).__name__}({self.spec!r}, len={len(self)})'

    def _item_shape(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _item_dtype(self):  # pragma: no cover - abstract
        raise NotImplementedError


def _as_index_array(indices):
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    return np.asarray(indices, dtype=np.int64).reshape(-1)


def _labels_from_classes(classes, num_classes):
    onehot = np.zeros([len(classes), num_classes], dtype=np.float32)
    onehot[np.arange(len(classes)), classes] = 1
    return onehot


# ----------------------------------------------------------------------------------------------
# Images.


class ImageDataset(Dataset):
    """Base of image datasets: items are ``uint8 [C, H, W]`` with square power-of-two H = W."""

    kind = 'image'

    def __init__(self, *, resolution, num_channels, mirror=False, **kwargs):
        self.resolution = int(resolution)
        self.num_channels = int(num_channels)
        super().__init__(mirror=mirror, **kwargs)

    @property
    def image_shape(self):
        return [self.num_channels, self.resolution, self.resolution]

    def _item_shape(self):
        return self.image_shape

    def _item_dtype(self):
        return np.uint8

    def info(self):
        d = super().info()
        d.update(resolution=self.resolution, num_channels=self.num_channels)
        return d


def _png_header(data):
    """(width, height, channels, bit_depth, color_type) from the first 33 bytes of a PNG, or None."""
    if len(data) < 33 or data[:8] != b'\x89PNG\r\n\x1a\n' or data[12:16] != b'IHDR':
        return None
    width = int.from_bytes(data[16:20], 'big')
    height = int.from_bytes(data[20:24], 'big')
    bit_depth, color_type = data[24], data[25]
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color_type)
    return width, height, channels, bit_depth, color_type


class ImageFolderDataset(ImageDataset):
    """PNG/JPEG images in a zip archive or a folder (recursive), StyleGAN2-ADA layout.

    Labels come from an optional ``dataset.json`` at the root:
    ``{"labels": [["relative/path.png", label], ...], "num_classes": K}``. Integer labels become
    one-hot vectors of width ``num_classes`` (default: largest label + 1); list labels are used as
    float vectors. Other keys are ignored. The zip is opened lazily in each process, so the
    dataset can be pickled to DataLoader workers (fork or spawn).
    """

    def __init__(self, path, *, spec=None, use_labels=True, **kwargs):
        self.path = str(path)
        self._zipfile = None
        self._zip_pid = None
        if os.path.isdir(self.path):
            self._type = 'dir'
            all_fnames = []
            def unreadable(e):
                raise DatasetError(f'Cannot list the folder {e.filename!r} of dataset {self.path!r} '
                                   f'({e.strerror}); check its permissions.')
            for root, dirs, files in os.walk(self.path, onerror=unreadable):
                dirs[:] = [d for d in dirs if not d.startswith('.')]
                for f in files:
                    rel = os.path.relpath(os.path.join(root, f), self.path)
                    all_fnames.append(rel.replace(os.sep, '/'))
        elif self.path.lower().endswith('.zip'):
            self._type = 'zip'
            try:
                all_fnames = [i.filename for i in self._get_zipfile().infolist() if not i.is_dir()]
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise DatasetError(
                    f'Cannot read the zip archive {self.path!r} ({e}). It is not a valid zip file, or '
                    f'it is truncated; re-create it with `ganstack dataset convert --source ... '
                    f'--dest {os.path.basename(self.path)}`.') from None
        else:  # pragma: no cover - open_dataset routes only folders and .zip here
            raise DatasetError(f'{self.path!r} is neither a folder nor a .zip archive of images.')

        self._all_fnames = set(all_fnames)
        self._image_fnames = sorted(
            f for f in all_fnames
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
            and not f.startswith('__MACOSX/') and not os.path.basename(f).startswith('.'))
        if not self._image_fnames:
            raise DatasetError(
                f'No images found in {self.path!r}: expected PNG or JPEG files '
                f'({", ".join(IMAGE_EXTENSIONS)}), such as the archives written by '
                f'`ganstack dataset convert`.')

        resolution, channels = self._check_shapes()
        meta = self._load_meta()
        raw_labels, raw_classes, num_classes = self._parse_labels(meta) if use_labels else (None, None, None)
        name = os.path.splitext(os.path.basename(os.path.normpath(self.path)))[0]
        super().__init__(name=name, spec=spec or self.path, raw_len=len(self._image_fnames),
                         resolution=resolution, num_channels=channels, raw_labels=raw_labels,
                         raw_classes=raw_classes, num_classes=num_classes, use_labels=use_labels,
                         **kwargs)

    # --- file access (per process) ------------------------------------------------------------

    def _get_zipfile(self):
        # A zip handle shares its file offset across fork(); each process opens its own.
        if self._zipfile is None or self._zip_pid != os.getpid():
            self._zipfile = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zipfile

    def _open_file(self, fname):
        if self._type == 'dir':
            return open(os.path.join(self.path, fname), 'rb')
        return self._get_zipfile().open(fname, 'r')

    def _read_file(self, fname):
        try:
            with self._open_file(fname) as f:
                return f.read()
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            raise DatasetError(f'Cannot read {fname!r} in {self.path!r} ({e}); the dataset is '
                               f'damaged or changed while open. Re-create it.') from None

    def close(self):
        try:
            if self._zipfile is not None and self._zip_pid == os.getpid():
                self._zipfile.close()
        finally:
            self._zipfile = None
            self._zip_pid = None

    def __getstate__(self):
        return dict(self.__dict__, _zipfile=None, _zip_pid=None)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # --- checks -------------------------------------------------------------------------------

    def _fix_hint(self):
        return (f'Re-encode the data with `ganstack dataset convert --source {self.path} --dest '
                f'OUT.zip --resolution R` (R a power of two such as 32, 64 or 256; add '
                f'`--transform center-crop` for non-square images).')

    def _bad_image(self, fname, what):
        return DatasetError(f'Image {fname!r} in {self.path!r} {what}. All images of a dataset must '
                            f'be 8-bit grayscale or RGB and share one square, power-of-two resolution. '
                            + self._fix_hint())

    def _check_shapes(self):
        """Validate every PNG header (cheap) and decode the first image; returns (R, C)."""
        first = self._image_fnames[0]
        img = self._decode(first, self._read_file(first))
        c, h, w = img.shape
        if h != w or not _is_pow2(w) or w < 4:
            raise self._bad_image(first, f'is {w}x{h} (width x height), which is not a square power of two >= 4')
        expected = (w, h, c)
        for fname, head in self._png_heads():
            header = _png_header(head)
            if header is None:
                raise self._bad_image(fname, 'is not a valid PNG file')
            width, height, channels, bit_depth, color_type = header
            if color_type != 3 and bit_depth != 8:
                raise self._bad_image(fname, f'has {bit_depth}-bit samples')
            if channels not in (1, 3):
                raise self._bad_image(fname, f'has {channels} channels (alpha is not supported)')
            if (width, height, channels) != expected:
                raise self._bad_image(
                    fname, f'is {width}x{height} with {channels} channel(s), but {first!r} is '
                           f'{w}x{h} with {c} channel(s)')
        return w, c

    def _png_heads(self):
        """Yield (fname, first 33 bytes) of every PNG; JPEG sizes are checked when decoded."""
        pngs = [f for f in self._image_fnames if f.lower().endswith('.png')]
        if self._type == 'dir':
            for fname in pngs:
                try:
                    with self._open_file(fname) as f:
                        head = f.read(33)
                except OSError as e:
                    raise DatasetError(f'Cannot read {fname!r} in {self.path!r} ({e.strerror}); check the '
                                       f'file\'s permissions, or remove it.') from None
                yield fname, head
            return
        zf = self._get_zipfile()
        with open(self.path, 'rb') as raw:
            for fname in pngs:
                info = zf.getinfo(fname)
                if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                    with zf.open(fname) as f:
                        yield fname, f.read(33)
                    continue
                # Stored member: skip the local header (30 bytes + name + extra) and read directly,
                # ~50x faster than ZipFile.open for archives of many small images.
                raw.seek(info.header_offset)
                local = raw.read(30)
                if len(local) < 30 or local[:4] != b'PK\x03\x04':
                    raise self._bad_image(fname, 'has a damaged zip entry')
                skip = int.from_bytes(local[26:28], 'little') + int.from_bytes(local[28:30], 'little')
                raw.seek(skip, os.SEEK_CUR)
                yield fname, raw.read(min(33, info.file_size))

    def _decode(self, fname, data):
        ext = os.path.splitext(fname)[1].lower()
        try:
            if ext == '.png' and pyspng is not None:
                img = pyspng.load(data)
            else:
                import imageio.v3 as iio
                img = iio.imread(data, extension=ext)
        except Exception as e:
            raise self._bad_image(fname, f'could not be decoded ({type(e).__name__}: {e})') from None
        if img.ndim == 2:
            img = img[:, :, np.newaxis]
        if img.ndim != 3:
            raise self._bad_image(fname, f'decodes to an array of shape {list(img.shape)}')
        if img.dtype != np.uint8:
            raise self._bad_image(fname, f'has {img.dtype} samples instead of 8-bit')
        if img.shape[2] not in (1, 3):
            raise self._bad_image(fname, f'has {img.shape[2]} channels (alpha is not supported)')
        return img.transpose(2, 0, 1)

    def _load_meta(self):
        if 'dataset.json' not in self._all_fnames:
            return None
        data = self._read_file('dataset.json')
        try:
            meta = json.loads(data.decode('utf-8'))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DatasetError(f'dataset.json in {self.path!r} is not valid JSON ({e}). Fix or remove '
                               f'it; the expected form is {{"labels": [["path.png", 3], ...]}}.') from None
        if not isinstance(meta, dict):
            raise DatasetError(f'dataset.json in {self.path!r} must hold a JSON object such as '
                               f'{{"labels": [["path.png", 3], ...]}}, not a {type(meta).__name__}.')
        return meta

    def _parse_labels(self, meta):
        if meta is None or meta.get('labels') is None:
            return None, None, None
        usage = ('dataset.json "labels" must be a list of ["relative/path.png", label] pairs (or an '
                 'object mapping paths to labels), where label is a class index or a list of numbers')
        labels = meta['labels']
        try:
            mapping = dict(labels) if isinstance(labels, list) else labels
            assert isinstance(mapping, dict)
        except (TypeError, ValueError, AssertionError):
            raise DatasetError(f'In {self.path!r}: {usage}.') from None
        missing = [f for f in self._image_fnames if f not in mapping]
        if missing:
            raise DatasetError(f'In {self.path!r}: dataset.json has no label for {missing[0]!r} '
                               f'({len(missing)} of {len(self._image_fnames)} images lack labels). '
                               f'{usage}; give every image a label or remove "labels".')
        values = [mapping[f] for f in self._image_fnames]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            classes = np.asarray(values, dtype=np.float64)
            bad = (classes != np.round(classes)) | (classes < 0)
            if bad.any():
                i = int(np.nonzero(bad)[0][0])
                raise DatasetError(f'In {self.path!r}: scalar labels must be non-negative class indices, but '
                                   f'{self._image_fnames[i]!r} has label {values[i]!r}. Use 0, 1, 2, ... or '
                                   f'give vector labels as lists.')
            classes = classes.astype(np.int64)
            num_classes = meta.get('num_classes')
            if num_classes is None:
                num_classes = int(classes.max()) + 1
            if not isinstance(num_classes, int) or num_classes <= int(classes.max()):
                raise DatasetError(f'In {self.path!r}: dataset.json "num_classes" is {num_classes!r} but '
                                   f'labels go up to {int(classes.max())}; it must exceed every label.')
            return _labels_from_classes(classes, num_classes), classes, num_classes
        try:
            vectors = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            raise DatasetError(f'In {self.path!r}: {usage}; vector labels must all have the same '
                               f'length.') from None
        if vectors.ndim != 2 or not np.all(np.isfinite(vectors)):
            raise DatasetError(f'In {self.path!r}: {usage}; vector labels must be finite and all '
                               f'of the same length.')
        return vectors, None, None

    # --- items --------------------------------------------------------------------------------

    def _load_raw_item(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        img = self._decode(fname, self._read_file(fname))
        if list(img.shape) != self.image_shape:
            c, h, w = img.shape
            raise self._bad_image(fname, f'is {w}x{h} with {c} channel(s), but the dataset is '
                                         f'{self.resolution}x{self.resolution} with {self.num_channels}')
        return img

    @property
    def image_fnames(self):
        """Archive-relative file name of every raw image, in raw-index order."""
        return list(self._image_fnames)

    def _hash_source(self, h):
        h.update(b'images')
        if self._type == 'zip':
            infos = {i.filename: i for i in self._get_zipfile().infolist()}
            for fname in self._image_fnames + (['dataset.json'] if 'dataset.json' in infos else []):
                i = infos[fname]
                h.update(f'{fname}\0{i.CRC:08x}\0{i.file_size}\n'.encode())
            return
        fnames = self._image_fnames + (['dataset.json'] if 'dataset.json' in self._all_fnames else [])
        stats = [os.stat(os.path.join(self.path, f)) for f in fnames]
        by_content = sum(s.st_size for s in stats) <= FOLDER_CONTENT_HASH_LIMIT
        h.update(b'content' if by_content else b'stat')
        for fname, st in zip(fnames, stats):
            h.update(f'{fname}\0{st.st_size}\0'.encode())
            if by_content:
                h.update(hashlib.sha256(self._read_file(fname)).digest())
            else:
                h.update(f'{st.st_mtime_ns}\n'.encode())


class ShapesDataset(ImageDataset):
    """``shapesR``: procedural RGB images of circles, squares and triangles (see ``toy.py``).

    Images are made in seeded blocks on first use and kept in memory (``n * 3 * R * R`` bytes);
    workers regenerate the blocks they touch instead of receiving them by pickle. With
    ``labels=True`` the label is the class of the largest shape (0 circle, 1 square, 2 triangle).
    """

    def __init__(self, resolution, *, n=10000, data_seed=0, labels=False, spec=None, use_labels=True, **kwargs):
        self.n = int(n)
        self.gen_seed = int(data_seed)
        self.labels_enabled = bool(labels)
        self.resolution = int(resolution)  # needed by _get_block before ImageDataset.__init__
        self._blocks = {}
        self._block = toy.shapes_block_size(self.resolution)
        raw_labels = raw_classes = num_classes = None
        if self.labels_enabled and use_labels:
            num_blocks = -(-self.n // self._block)
            raw_classes = np.concatenate([self._get_block(b)[1] for b in range(num_blocks)])[:self.n]
            num_classes = len(toy.SHAPE_CLASSES)
            raw_labels = _labels_from_classes(raw_classes, num_classes)
        super().__init__(name=f'shapes{resolution}', spec=spec or f'shapes{resolution}', raw_len=self.n,
                         resolution=resolution, num_channels=3, raw_labels=raw_labels,
                         raw_classes=raw_classes, num_classes=num_classes, use_labels=use_labels, **kwargs)

    def _get_block(self, b):
        if b not in self._blocks:
            self._blocks[b] = toy.render_shapes_block(self.resolution, b, self.gen_seed)
        return self._blocks[b]

    def _load_raw_item(self, raw_idx):
        b, i = divmod(raw_idx, self._block)
        return self._get_block(b)[0][i]

    def get_batch(self, indices):
        indices = _as_index_array(indices)
        raw = self._raw_idx[indices]
        blocks, offsets = np.divmod(raw, self._block)
        x = np.empty([len(indices), *self.image_shape], dtype=np.uint8)
        for b in np.unique(blocks):
            sel = blocks == b
            x[sel] = self._get_block(int(b))[0][offsets[sel]]
        flip = self._xflip[indices].astype(bool)
        x[flip] = x[flip][..., ::-1]
        return torch.from_numpy(x), torch.from_numpy(self._raw_labels[raw])

    def __getstate__(self):
        return dict(self.__dict__, _blocks={})

    def info(self):
        d = super().info()
        d.update(shapes=dict(n=self.n, seed=self.gen_seed, labels=self.labels_enabled,
                             classes=list(toy.SHAPE_CLASSES)))
        return d

    def _hash_source(self, h):
        h.update(json.dumps(dict(generator='shapes', version=toy.SHAPES_VERSION, resolution=self.resolution,
                                 n=self.n, seed=self.gen_seed, labels=self.labels_enabled),
                            sort_keys=True).encode())


# ----------------------------------------------------------------------------------------------
# Points.


class PointDataset(Dataset):
    """Base of point datasets: items are ``float32 [D]`` held in memory.

    ``normalize='standardize'`` maps every dimension to zero mean and unit std over the points in
    use (after ``max_size``); ``norm_mean``/``norm_std`` (also in ``info()['normalize']``) and
    :meth:`denormalize` map samples back to data units. Without it the values are used as given.
    """

    kind = 'points'
    centers = None  # [M, D] mode centers for mixtures with known modes, in data units
    std = None      # per-mode std for such mixtures

    def __init__(self, points, *, spec, mirror=False, normalize=None, **kwargs):
        if mirror:
            raise DatasetError(f'mirror (x-flip augmentation) applies to image datasets only, and '
                               f'{spec!r} holds points; drop --mirror for point data.')
        if normalize in (None, 'none'):
            normalize = None
        elif normalize != 'standardize':
            raise DatasetError(f'Unknown normalize option {normalize!r}; use one of: '
                               f'{", ".join(NORMALIZE_CHOICES)}.')
        self._normalize = normalize
        super().__init__(spec=spec, raw_len=len(points), mirror=False, **kwargs)
        points = np.ascontiguousarray(points, dtype=np.float32)
        self.norm_mean = self.norm_std = None
        if normalize == 'standardize':
            used = points[np.unique(self._raw_idx)].astype(np.float64)
            mean, std = used.mean(axis=0), used.std(axis=0)
            if np.any(std == 0):
                dim = int(np.nonzero(std == 0)[0][0])
                raise DatasetError(f'Cannot standardize {spec!r}: dimension {dim} is constant, so its '
                                   f'std is 0. Drop that column or use normalize="none".')
            points = ((points - mean) / std).astype(np.float32)
            self.norm_mean, self.norm_std = mean, std
        self._points = points
        self._points_t = None

    @property
    def point_dim(self):
        return self._points.shape[1]

    def _item_shape(self):
        return [self.point_dim]

    def _item_dtype(self):
        return np.float32

    def _load_raw_item(self, raw_idx):
        return self._points[raw_idx]

    @property
    def points(self):
        """All items as ``float32 [len, D]`` (normalised if requested)."""
        return self._points[self._raw_idx]

    def get_batch(self, indices):
        if self._points_t is None:
            self._points_t = torch.from_numpy(self._points)
            self._labels_t = torch.from_numpy(self._raw_labels)
            self._raw_idx_t = torch.from_numpy(self._raw_idx)
        if not isinstance(indices, torch.Tensor):
            indices = torch.from_numpy(_as_index_array(indices))
        raw = self._raw_idx_t[indices.to(device='cpu', dtype=torch.int64)]
        return self._points_t[raw], self._labels_t[raw]

    def denormalize(self, x):
        """Map normalised points (numpy or torch, [..., D]) back to data units."""
        if self._normalize is None:
            return x
        if isinstance(x, torch.Tensor):
            return x * torch.as_tensor(self.norm_std, dtype=x.dtype, device=x.device) + \
                torch.as_tensor(self.norm_mean, dtype=x.dtype, device=x.device)
        return (np.asarray(x) * self.norm_std + self.norm_mean).astype(np.float32)

    def __getstate__(self):
        return dict(self.__dict__, _points_t=None, _labels_t=None, _raw_idx_t=None)

    def _view_params(self):
        return dict(super()._view_params(), normalize=self._normalize)

    def info(self):
        d = super().info()
        d['point_dim'] = self.point_dim
        # The data's scale (std over every coordinate of the items used), for options that depend on it.
        if getattr(self, '_data_std', None) is None:
            self._data_std = float(np.asarray(self.points, dtype=np.float64).std())
        d['data_std'] = self._data_std
        d['normalize'] = None if self._normalize is None else dict(
            method=self._normalize, mean=self.norm_mean.tolist(), std=self.norm_std.tolist())
        return d


class ToyMixtureDataset(PointDataset):
    """``toy:NAME``: a fixed set of ``n`` points from a built-in 2-D Gaussian mixture.

    ``centers`` (``float64 [M, 2]``), ``std`` and ``mode_weights`` (uniform) describe the
    mixture for metrics; ``modes`` gives the mode each item was drawn from. With ``labels=True``
    the label is the one-hot mode index, for conditional training.
    """

    def __init__(self, mixture, *, n=100000, data_seed=0, std=None, labels=False, spec=None,
                 normalize=None, use_labels=True, **kwargs):
        if normalize not in (None, 'none'):
            raise DatasetError(f'toy:{mixture} is already on a fixed scale that its metrics (centers, std) '
                               f'refer to; normalize={normalize!r} is not supported for built-in mixtures.')
        self.mixture = mixture
        self.n = int(n)
        self.gen_seed = int(data_seed)
        points, modes, self.centers, self.std = toy.toy_mixture_points(mixture, self.n, self.gen_seed, std)
        self._modes = modes
        self.labels_enabled = bool(labels)
        self.mode_weights = np.full(len(self.centers), 1.0 / len(self.centers))
        raw_labels = raw_classes = num_classes = None
        if self.labels_enabled:
            raw_classes, num_classes = modes, len(self.centers)
            raw_labels = _labels_from_classes(modes, num_classes)
        super().__init__(points, name=f'toy-{mixture}', spec=spec or f'toy:{mixture}', raw_labels=raw_labels,
                         raw_classes=raw_classes, num_classes=num_classes, use_labels=use_labels, **kwargs)

    @property
    def modes(self):
        """Mixture component of every item (``int64 [len]``)."""
        return self._modes[self._raw_idx]

    def info(self):
        d = super().info()
        d['toy'] = dict(mixture=self.mixture, centers=self.centers.tolist(), std=self.std,
                        mode_weights=self.mode_weights.tolist(), n=self.n, seed=self.gen_seed,
                        labels=self.labels_enabled)
        return d

    def _hash_source(self, h):
        h.update(json.dumps(dict(generator='toy', version=toy.TOY_VERSION, mixture=self.mixture, n=self.n,
                                 seed=self.gen_seed, std=self.std, labels=self.labels_enabled),
                            sort_keys=True).encode())


class PointFileDataset(PointDataset):
    """Points ``[N, D]`` from a ``.npy`` array or a numeric ``.csv`` (one optional header line)."""

    def __init__(self, path, *, spec=None, **kwargs):
        self.path = str(path)
        ext = os.path.splitext(self.path)[1].lower()
        points = _load_npy(self.path) if ext == '.npy' else _load_csv(self.path)
        if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] == 0:
            hint = ' (for 1-D data save it as a column, x[:, None])' if points.ndim == 1 else ''
            raise DatasetError(f'Point file {self.path!r} holds an array of shape {list(points.shape)}; '
                               f'expected a 2-D array [N, D] with N, D >= 1{hint}.')
        bad = ~np.isfinite(points)
        if bad.any():
            row, col = (int(v) for v in np.argwhere(bad)[0])
            raise DatasetError(f'Point file {self.path!r} has {int(bad.sum())} NaN or infinite value(s), '
                               f'the first at row {row}, column {col}; every value must be a finite number.')
        # Training uses float32: a finite float64 beyond its range would become inf there.
        big = np.abs(points) > np.finfo(np.float32).max
        if big.any():
            row, col = (int(v) for v in np.argwhere(big)[0])
            raise DatasetError(f'Point file {self.path!r} has {int(big.sum())} value(s) too large for float32 '
                               f'(|x| > 3.4e38), the first {points[row, col]:g} at row {row}, column {col}. Rescale '
                               f'the data (or use normalize="standardize" after rescaling).')
        super().__init__(points, name=os.path.splitext(os.path.basename(self.path))[0],
                         spec=spec or self.path, **kwargs)

    def _hash_source(self, h):
        h.update(b'pointfile')
        with open(self.path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                h.update(chunk)


def _load_npy(path):
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DatasetError(f'Cannot read {path!r} as a .npy array ({e}); save points with '
                           f'numpy.save(path, x) where x is a numeric [N, D] array.') from None
    if not isinstance(arr, np.ndarray) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DatasetError(f'{path!r} holds {getattr(arr, "dtype", type(arr))} data; points must be a '
                           f'numeric [N, D] array.')
    if arr.dtype.kind == 'c':
        raise DatasetError(f'{path!r} holds complex numbers ({arr.dtype}); points must be real. Save the real and '
                           f'imaginary parts as separate columns, e.g. numpy.stack([x.real, x.imag], 1).')
    return arr.astype(np.float64) if arr.dtype.kind != 'f' else arr


def _is_number(token):
    try:
        float(token)
        return True
    except ValueError:
        return False


def _load_csv(path):
    try:
        with open(path, 'r', encoding='utf-8-sig') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f'Cannot read {path!r} as a text CSV file ({e}).') from None
    content = [(i, line) for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith('#')]
    if not content:
        raise DatasetError(f'CSV file {path!r} has no data rows; expected N rows of D numbers.')
    first = content[0][1]
    delimiter = ',' if ',' in first else (';' if ';' in first else ('\t' if '\t' in first else None))

    def tokens(line):
        return [t.strip() for t in (line.split(delimiter) if delimiter else line.split())]

    if not all(_is_number(t) for t in tokens(first)):
        content = content[1:]  # a header line
    rows = []
    for lineno, line in content:
        toks = tokens(line)
        try:
            rows.append([float(t) for t in toks])
        except ValueError:
            bad = next(t for t in toks if not _is_number(t))
            raise DatasetError(f'CSV file {path!r}, line {lineno + 1}: {bad!r} is not a number. Point '
                               f'files must hold numbers only (one optional header line).') from None
        if len(rows[-1]) != len(rows[0]):
            raise DatasetError(f'CSV file {path!r}, line {lineno + 1}: {len(rows[-1])} values, but the '
                               f'first data row has {len(rows[0])}; every row must have the same count.')
    if not rows:
        raise DatasetError(f'CSV file {path!r} has a header but no data rows.')
    return np.asarray(rows, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# Spec parsing.

_SHAPES_RE = re.compile(r'^shapes(\d+)$')
_BOOL = {'1': True, 'true': True, 'yes': True, 'on': True, '0': False, 'false': False, 'no': False, 'off': False}


def _parse_options(spec, query, allowed, overrides):
    """Options of a built-in from its query string and keyword overrides.

    The generator seed is ``seed`` in the query but ``data_seed`` as a keyword (``seed=`` of
    open_dataset is the max_size subset seed); it is returned as ``data_seed``.
    """
    overrides = dict(overrides)
    if 'data_seed' in overrides:
        overrides['seed'] = overrides.pop('data_seed')
    opts = {}
    if query:
        for part in query.split('&'):
            if not part:
                continue
            key, sep, value = part.partition('=')
            if not sep:
                raise DatasetError(f'Option {part!r} in {spec!r} needs a value, as in {key}=...; '
                                   f'accepted options: {", ".join(allowed)}.')
            opts[key.strip()] = value.strip()
    opts.update(overrides)
    out = {}
    for key, value in opts.items():
        if key not in allowed:
            raise DatasetError(f'Unknown option {key!r} for dataset {spec!r}; accepted options: '
                               f'{", ".join(f"{k} ({allowed[k].__name__})" for k in allowed)}.')
        kind = allowed[key]
        try:
            if kind is bool:
                out[key] = value if isinstance(value, bool) else _BOOL[str(value).lower()]
            elif kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                out[key] = int(value)
            else:
                out[key] = kind(value)
        except (ValueError, KeyError, TypeError):
            raise DatasetError(f'Option {key}={value!r} for dataset {spec!r} must be a '
                               f'{kind.__name__}.') from None
    if 'seed' in out:
        out['data_seed'] = out.pop('seed')
    return out


def open_dataset(spec, mirror=False, max_size=None, normalize=None, seed=0, use_labels=True, **options):
    """Open a dataset by spec.

    Accepted specs (a path that exists wins over a built-in name):

    * ``path/to/data.zip`` or ``path/to/folder``: PNG/JPEG images (folders are searched
      recursively) with an optional ``dataset.json`` of labels, as written by
      ``ganstack dataset convert``. All images must share one square power-of-two resolution and
      1 or 3 channels.
    * ``path/to/points.npy`` or ``path/to/points.csv``: points ``[N, D]``, used as given (float32).
    * ``toy:gaussians25``, ``toy:grid49``, ``toy:ring8``: built-in 2-D mixtures of ``n`` points.
      Options ``n`` (default 100000), ``seed`` (default 0; the data, not the subset), ``std``
      (default: the mixture's), ``labels`` (one-hot mode index; default off).
    * ``shapes8`` ... ``shapes256`` (``shapesR`` for R a power of two): procedural RGB images.
      Options ``n`` (default 10000), ``seed`` (default 0), ``labels`` (class of the largest shape).

    Built-in options go after ``?`` joined by ``&`` (``toy:ring8?n=20000&labels=1``) or as keyword
    arguments (``open_dataset('toy:ring8', n=20000)``); keywords win. As a keyword the generator
    seed is ``data_seed`` (``seed`` is the subset seed below).

    Args:
        mirror: append x-flipped copies (images only), doubling ``len``.
        max_size: keep a fixed random subset of this many items (drawn with ``seed``).
        normalize: ``None``/``'none'`` or ``'standardize'`` (point files only).
        seed: seed of the ``max_size`` subset. It does not change built-in data (``?seed=``/``data_seed``
            does), so runs with different training seeds see the same data.
        use_labels: False hides labels (``label_dim`` 0), for unconditional training.

    Raises:
        DatasetError: for any spec, file or option that cannot be used.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError(f'No dataset given. Pass one of: {_ACCEPTED_SPECS}.')
    spec = spec.strip()
    view = dict(mirror=mirror, max_size=max_size, seed=seed, use_labels=use_labels)
    path = os.path.expanduser(spec)

    if not os.path.exists(path):
        base, _, query = spec.partition('?')
        if base.startswith('toy:'):
            name = base[len('toy:'):]
            if name not in toy.TOY_MIXTURES:
                listing = '; '.join(f'toy:{k} ({v[2]})' for k, v in sorted(toy.TOY_MIXTURES.items()))
                raise DatasetError(f'Unknown toy dataset {base!r}. Available: {listing}.')
            opts = _parse_options(spec, query, dict(n=int, seed=int, std=float, labels=bool), options)
            if not 1 <= opts.get('n', 1) <= MAX_BUILTIN_ITEMS or not (0 < opts.get('std', 1.0) < float('inf')):
                raise DatasetError(f'In {spec!r}: n must be from 1 to {MAX_BUILTIN_ITEMS:,} and std a finite '
                                   f'number > 0.')
            return ToyMixtureDataset(name, spec=spec, normalize=normalize, **opts, **view)
        m = _SHAPES_RE.match(base)
        if m:
            resolution = int(m.group(1))
            if not _is_pow2(resolution) or not 8 <= resolution <= 256:
                raise DatasetError(f'{base!r}: the shapes resolution must be a power of two from 8 to 256 '
                                   f'(shapes8, shapes16, shapes32, shapes64, shapes128, shapes256).')
            opts = _parse_options(spec, query, dict(n=int, seed=int, labels=bool), options)
            if not 1 <= opts.get('n', 1) <= MAX_BUILTIN_ITEMS:
                raise DatasetError(f'In {spec!r}: n must be from 1 to {MAX_BUILTIN_ITEMS:,}.')
            _no_normalize(spec, normalize)
            return ShapesDataset(resolution, spec=spec, **opts, **view)
        raise DatasetError(f'Dataset {spec!r} not found: no such file or folder. Pass {_ACCEPTED_SPECS}.')

    if options:
        raise DatasetError(f'Options {sorted(options)} apply to built-in datasets only, not to {spec!r}.')
    ext = os.path.splitext(path)[1].lower()
    if os.path.isdir(path) or ext == '.zip':
        _no_normalize(spec, normalize)
        return ImageFolderDataset(path, spec=spec, **view)
    if ext in POINT_EXTENSIONS:
        return PointFileDataset(path, spec=spec, normalize=normalize, **view)
    raise DatasetError(f'Cannot tell what kind of dataset {spec!r} is from its extension {ext or "(none)"!r}. '
                       f'Pass {_ACCEPTED_SPECS}.')


def _no_normalize(spec, normalize):
    if normalize not in (None, 'none'):
        raise DatasetError(f'normalize={normalize!r} applies to point files only, and {spec!r} is an image '
                           f'dataset; drop the normalize option for images.')
