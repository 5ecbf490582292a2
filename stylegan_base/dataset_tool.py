"""``ganstack dataset convert``: write image datasets in the zip format that ``datasets.py`` reads.

The archive is uncompressed (ZIP_STORED) and holds ``00000/img00000000.png``, ... (1000 images per
folder, as in StyleGAN2-ADA) and a ``dataset.json``::

    {"labels": [["00000/img00000000.png", 7], ...] or null,
     "num_classes": 10, "class_names": [...], "source": "...", "digits": [...]}

``digits`` is written by ``--stacked`` only. Sources:

* a folder of images (searched recursively, sorted by path) or an image ``.zip``; its
  ``dataset.json`` labels are kept;
* MNIST idx files: a folder with ``*-images-idx3-ubyte[.gz]`` and ``*-labels-idx1-ubyte[.gz]``,
  or the images file itself. Digits are zero-padded by 2 pixels on each side to 32x32 (exact
  pixels; 28 is not a power of two), then resized if ``--resolution`` is not 32. ``--split``
  picks ``train`` or ``t10k`` files; by default ``train`` when present, else the only split.
  ``--stacked N`` writes N StackedMNIST images: each of R, G, B is a random digit (``--seed``) and
  the label is the class ``100*d_R + 10*d_G + d_B`` of 1000;
* the CIFAR-10 python tarball ``cifar-10-python.tar.gz`` (or its extracted folder):
  ``data_batch_1..5``, or ``test_batch`` with ``--split test``.

Images are converted to 8-bit grayscale or RGB (alpha dropped, 16-bit scaled). Non-square images
need ``--transform center-crop`` (crop the centre square) or ``center-crop-wide`` (keep the full
width, crop or pad the height to a square with black bars). ``--resolution R`` resizes with
Lanczos (PIL). Without ``--resolution`` every image must already be square with a power-of-two
side. Grayscale images in an RGB dataset are expanded to RGB; ``--channels`` forces a count.
"""

import gzip
import io
import itertools
import json
import os
import pickle
import re
import struct
import tarfile
import zipfile

import click
import numpy as np

from .cli_support import (SEED, DiskFullError, check_output_file, disk_full_message, int_range, is_disk_full,
                          run_main)
from .errors import DatasetError, GanstackError
from .progress import progress as progress_counter

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.gif', '.tif', '.tiff')
TRANSFORMS = ('none', 'center-crop', 'center-crop-wide')
MAX_RESOLUTION = 8192


def _is_pow2(n):
    return n >= 1 and (n & (n - 1)) == 0


def _next_pow2(n):
    return 1 << max(2, int(np.ceil(np.log2(max(n, 1)))))


class Source:
    """A list of images to convert. ``items()`` yields ``(name, HWC or HW uint8 image, label)``."""

    description = ''
    num_classes = None
    class_names = None
    extra = None  # name -> per-image list, written to dataset.json next to "labels"

    def __len__(self):
        raise NotImplementedError

    def items(self):
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Folder / zip of images.


def _pil_to_array(img, name):
    mode = img.mode
    if mode in ('L', 'RGB'):
        arr = np.asarray(img)
    elif mode.startswith('I'):  # 16/32-bit grayscale
        arr = np.asarray(img).astype(np.float64)
        scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.rint(np.clip(arr / scale, 0, 1) * 255).astype(np.uint8)
    elif mode in ('1', 'LA', 'La'):
        arr = np.asarray(img.convert('L'))
    elif mode == 'F':
        raise DatasetError(f'Image {name!r} has floating-point pixels; save it as 8-bit PNG/JPEG.')
    else:  # P, RGBA, CMYK, YCbCr, ...
        if mode == 'P' and 'transparency' in img.info:
            img = img.convert('RGBA')
        arr = np.asarray(img.convert('RGB'))
    return np.ascontiguousarray(arr)


def _decode_image(data, name):
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _pil_to_array(img, name)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f'Cannot decode image {name!r} ({e}); remove it or replace it with a '
                           f'valid PNG or JPEG file.') from None


def _labels_from_meta(meta, fnames, where):
    labels = (meta or {}).get('labels')
    if labels is None:
        return None
    try:
        mapping = dict(labels) if isinstance(labels, list) else dict(labels.items())
    except (TypeError, ValueError, AttributeError):
        raise DatasetError(f'dataset.json in {where!r}: "labels" must be a list of ["path", label] pairs.') from None
    missing = [f for f in fnames if f not in mapping]
    if missing:
        raise DatasetError(f'dataset.json in {where!r} has no label for {missing[0]!r} ({len(missing)} images '
                           f'lack labels); label every image or remove "labels".')
    return [mapping[f] for f in fnames]


class ImageFolderSource(Source):
    def __init__(self, path):
        self.path = path
        self._zip = None
        self.is_zip = not os.path.isdir(path)
        if self.is_zip:
            try:
                with zipfile.ZipFile(path) as zf:
                    names = [i.filename for i in zf.infolist() if not i.is_dir()]
            except (zipfile.BadZipFile, OSError) as e:
                raise DatasetError(f'Cannot read {path!r} as a zip archive ({e}).') from None
        else:
            names = []
            def unreadable(e):
                raise DatasetError(f'Cannot list the folder {e.filename!r} ({e.strerror}); check its permissions.')
            for root, dirs, files in os.walk(path, onerror=unreadable):
                dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
                for f in files:
                    names.append(os.path.relpath(os.path.join(root, f), path).replace(os.sep, '/'))
        self.fnames = sorted(n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
                             and not n.startswith('__MACOSX/') and not os.path.basename(n).startswith('.'))
        if not self.fnames:
            raise DatasetError(f'No images found in {path!r}: expected files ending in '
                               f'{", ".join(IMAGE_EXTENSIONS)} (folders are searched recursively).')
        meta = None
        if 'dataset.json' in names:
            try:
                meta = json.loads(self._read('dataset.json').decode('utf-8'))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DatasetError(f'dataset.json in {path!r} is not valid JSON ({e}).') from None
        self.labels = _labels_from_meta(meta, self.fnames, path)
        if self.labels is not None and isinstance(meta, dict):
            self.num_classes = meta.get('num_classes')
            self.class_names = meta.get('class_names')
        self.description = f'{"zip" if self.is_zip else "folder"} {path}'

    def _read(self, fname):
        try:
            if self.is_zip:
                if self._zip is None:
                    self._zip = zipfile.ZipFile(self.path)
                return self._zip.read(fname)
            with open(os.path.join(self.path, fname), 'rb') as f:
                return f.read()
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            raise DatasetError(f'Cannot read {fname!r} in {self.path!r} ({getattr(e, "strerror", None) or e}); '
                               f'check its permissions, or remove or re-create it.') from None

    def __len__(self):
        return len(self.fnames)

    def items(self):
        try:
            for i, fname in enumerate(self.fnames):
                label = None if self.labels is None else self.labels[i]
                yield fname, _decode_image(self._read(fname), fname), label
        finally:
            if self._zip is not None:
                self._zip.close()
                self._zip = None


# ----------------------------------------------------------------------------------------------
# MNIST (idx files).

_IDX_RE = re.compile(r'^(?P<split>.+?)-(?P<what>images|labels)[-.]idx(?P<ndim>\d)-ubyte(?P<gz>\.gz)?$')


def _read_idx(path, expected_ndim):
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f'Cannot read MNIST file {path!r} ({e}); it may be truncated. Download it again.') from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != expected_ndim:
        raise DatasetError(f'{path!r} is not an idx{expected_ndim}-ubyte file (bad magic number '
                           f'{data[:4].hex()}); expected MNIST images (idx3) or labels (idx1).')
    ndim = data[3]
    shape = struct.unpack('>' + 'I' * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f'{path!r} declares shape {list(shape)} but holds {body.size} bytes; the '
                           f'file is truncated or corrupt.')
    return body.reshape(shape)


def _find_mnist(path, split):
    """(images_path, labels_path, split_name) from a folder or an images file."""
    if os.path.isdir(path):
        found = {}
        for f in sorted(os.listdir(path)):
            m = _IDX_RE.match(f)
            if m:
                found.setdefault(m.group('split'), {})[m.group('what')] = os.path.join(path, f)
        candidates = {s: v for s, v in found.items() if 'images' in v}
    else:
        m = _IDX_RE.match(os.path.basename(path))
        if m is None or m.group('what') != 'images':
            raise DatasetError(f'{path!r} is not an MNIST images file (*-images-idx3-ubyte[.gz]).')
        folder = os.path.dirname(path) or '.'
        files = dict(images=path)
        for f in sorted(os.listdir(folder)):
            other = _IDX_RE.match(f)
            if other and other.group('split') == m.group('split') and other.group('what') == 'labels':
                files['labels'] = os.path.join(folder, f)
        candidates = {m.group('split'): files}
    names = {'train': 'train', 'test': 't10k'}
    if split is not None:
        want = names[split]
        if want not in candidates:
            raise DatasetError(f'No MNIST {split} split ({want}-images-idx3-ubyte[.gz]) in {path!r}; found: '
                               f'{", ".join(sorted(candidates)) or "none"}. Pick an available --split.')
        chosen = want
    elif 'train' in candidates:
        chosen = 'train'
    elif len(candidates) == 1:
        chosen = next(iter(candidates))
    else:
        raise DatasetError(f'{path!r} holds several MNIST splits ({", ".join(sorted(candidates))}); '
                           f'choose one with --split train or --split test.')
    files = candidates[chosen]
    if 'labels' not in files:
        raise DatasetError(f'MNIST labels file {chosen}-labels-idx1-ubyte[.gz] is missing next to '
                           f'{files["images"]!r}; both files are needed.')
    return files['images'], files['labels'], chosen


def _is_mnist_dir(path):
    return os.path.isdir(path) and any(
        (m := _IDX_RE.match(f)) and m.group('what') == 'images' for f in os.listdir(path))


class MnistSource(Source):
    def __init__(self, path, split=None, stacked=None, seed=0):
        images_path, labels_path, split_name = _find_mnist(path, split)
        images = _read_idx(images_path, 3)
        labels = _read_idx(labels_path, 1).astype(np.int64)
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(f'{images_path!r} has {images.shape[0]} images but {labels_path!r} has '
                               f'{labels.shape[0]} labels; they must come from the same split.')
        if labels.size and labels.max() > 9:
            raise DatasetError(f'{labels_path!r} holds labels up to {int(labels.max())}; MNIST labels are 0-9.')
        # 28 -> 32 by zero padding keeps the digit pixels exact (the StackedMNIST convention).
        pad = (32 - images.shape[1]) // 2 if images.shape[1] == 28 and images.shape[2] == 28 else 0
        self.images = np.pad(images, [(0, 0), (pad, pad), (pad, pad)]) if pad else images
        self.digit_labels = labels
        self.stacked = stacked
        if stacked is None:
            self.num_classes, self.class_names = 10, [str(d) for d in range(10)]
            self.description = f'MNIST {split_name}'
        else:
            # Draw all indices up front: the result depends only on (source, N, seed).
            self.indices = np.random.RandomState(seed).randint(0, len(images), size=[stacked, 3])
            self.digits = labels[self.indices]  # [N, 3]: the R, G, B digits
            self.num_classes, self.class_names = 1000, None
            self.description = f'StackedMNIST ({stacked} images, seed {seed}) from MNIST {split_name}'
            self.extra = {'digits': self.digits.tolist()}

    def __len__(self):
        return len(self.images) if self.stacked is None else self.stacked

    def items(self):
        if self.stacked is None:
            for i in range(len(self.images)):
                yield f'mnist-{i}', self.images[i], int(self.digit_labels[i])
            return
        for i, (r, g, b) in enumerate(self.indices):
            d = self.digits[i]
            img = np.stack([self.images[r], self.images[g], self.images[b]], axis=2)
            yield f'stacked-{i}', img, int(100 * d[0] + 10 * d[1] + d[2])


# ----------------------------------------------------------------------------------------------
# CIFAR-10 (python pickles).


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batch dicts and nothing else (a tarball is untrusted input)."""

    _ALLOWED = {
        ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode'),
        ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
        ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
        ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'refusing to load {module}.{name}')


def _unpickle(data, name):
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding='bytes').load()
    except Exception as e:
        raise DatasetError(f'Cannot read CIFAR-10 batch {name!r} ({e}); expected the python version '
                           f'of CIFAR-10 (cifar-10-python.tar.gz).') from None
    if not isinstance(obj, dict):
        raise DatasetError(f'CIFAR-10 batch {name!r} is not a dict of data and labels.')
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


class CifarSource(Source):
    def __init__(self, path, split=None):
        split = split or 'train'
        wanted = [f'data_batch_{i}' for i in range(1, 6)] if split == 'train' else ['test_batch']
        files = self._read_members(path, wanted + ['batches.meta'])
        missing = [w for w in wanted if w not in files]
        if missing:
            raise DatasetError(f'{path!r} lacks CIFAR-10 {split} batch(es) {", ".join(missing)}; expected '
                               f'the python version (cifar-10-python.tar.gz).')
        images, labels = [], []
        for w in wanted:
            batch = _unpickle(files[w], w)
            try:
                data = np.asarray(batch['data'], dtype=np.uint8).reshape(-1, 3, 32, 32)
                lab = np.asarray(batch['labels'], dtype=np.int64).reshape(-1)
                assert len(data) == len(lab)
            except (KeyError, ValueError, AssertionError):
                raise DatasetError(f'CIFAR-10 batch {w!r} in {path!r} must hold "data" [N, 3072] uint8 and '
                                   f'"labels" [N]; it does not.') from None
            images.append(data.transpose(0, 2, 3, 1))
            labels.append(lab)
        self.images = np.concatenate(images)
        self.labels = np.concatenate(labels)
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() > 9):
            raise DatasetError(f'CIFAR-10 labels in {path!r} must be 0-9.')
        self.num_classes = 10
        if 'batches.meta' in files:
            names = _unpickle(files['batches.meta'], 'batches.meta').get('label_names')
            if isinstance(names, list) and len(names) == 10:
                self.class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.description = f'CIFAR-10 {split}'

    @staticmethod
    def _read_members(path, wanted):
        out = {}
        if os.path.isdir(path):
            for w in wanted:
                p = os.path.join(path, w)
                if os.path.isfile(p):
                    with open(p, 'rb') as f:
                        out[w] = f.read()
            return out
        try:
            with tarfile.open(path, 'r:*') as tar:
                for m in tar.getmembers():
                    base = os.path.basename(m.name)
                    if m.isfile() and base in wanted and base not in out:
                        out[base] = tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetError(f'Cannot read {path!r} as a tar archive ({e}); expected '
                               f'cifar-10-python.tar.gz.') from None
        return out

    def __len__(self):
        return len(self.images)

    def items(self):
        for i in range(len(self.images)):
            yield f'cifar-{i}', self.images[i], int(self.labels[i])


def _is_cifar_dir(path):
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f)) for f in ('data_batch_1', 'test_batch'))


# ----------------------------------------------------------------------------------------------
# Conversion.


def open_source(source, *, split=None, stacked=None, seed=0):
    """Pick the reader for ``source`` (see the module docstring)."""
    if not os.path.exists(source):
        raise DatasetError(f'Source {source!r} not found. Pass a folder of images, an image .zip, an MNIST '
                           f'folder (*-images-idx3-ubyte[.gz] + *-labels-idx1-ubyte[.gz]) or '
                           f'cifar-10-python.tar.gz.')
    lower = source.lower()
    is_mnist = _is_mnist_dir(source) or (os.path.isfile(source) and _IDX_RE.match(os.path.basename(source)))
    if stacked is not None and not is_mnist:
        raise DatasetError(f'--stacked builds StackedMNIST and needs MNIST idx files as --source, not {source!r}.')
    if stacked is not None and stacked < 1:
        raise DatasetError(f'--stacked must be a positive number of images, not {stacked}.')
    if is_mnist:
        return MnistSource(source, split=split, stacked=stacked, seed=seed)
    if _is_cifar_dir(source) or lower.endswith(('.tar.gz', '.tgz', '.tar')):
        return CifarSource(source, split=split)
    if split is not None:
        raise DatasetError(f'--split applies to MNIST and CIFAR-10 sources only; {source!r} is neither.')
    if os.path.isdir(source) or lower.endswith('.zip'):
        return ImageFolderSource(source)
    raise DatasetError(f'Cannot tell what kind of source {source!r} is. Pass a folder of images, an image '
                       f'.zip, an MNIST folder or cifar-10-python.tar.gz.')


def _to_square(img, transform, name):
    h, w = img.shape[:2]
    if h == w:
        return img
    if transform == 'center-crop':
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return img[top:top + s, left:left + s]
    if transform == 'center-crop-wide':
        if h > w:  # crop the height to the width
            top = (h - w) // 2
            return img[top:top + w]
        canvas = np.zeros((w, w) + img.shape[2:], dtype=img.dtype)  # letterbox
        top = (w - h) // 2
        canvas[top:top + h] = img
        return canvas
    raise DatasetError(f'Image {name!r} is {w}x{h} (width x height), not square. Add --transform center-crop '
                       f'(keep the centre square) or --transform center-crop-wide (keep the full width, '
                       f'black bars), with --resolution R for a power-of-two size.')


def _resize(img, resolution):
    from PIL import Image
    mode = 'L' if img.shape[2] == 1 else 'RGB'
    pil = Image.fromarray(img[:, :, 0] if mode == 'L' else img, mode)
    out = np.asarray(pil.resize((resolution, resolution), Image.LANCZOS))
    return out.reshape(resolution, resolution, img.shape[2])


def _set_channels(img, channels):
    if img.shape[2] == channels:
        return img
    if channels == 3:
        return np.repeat(img, 3, axis=2)
    # ITU-R 601 luma, as PIL's convert('L').
    luma = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.rint(luma).clip(0, 255).astype(np.uint8)[:, :, None]


def _encode_png(img):
    from PIL import Image
    buf = io.BytesIO()
    pil = Image.fromarray(img[:, :, 0], 'L') if img.shape[2] == 1 else Image.fromarray(img, 'RGB')
    pil.save(buf, format='png', compress_level=0, optimize=False)
    return buf.getvalue()


def _archive_name(idx):
    s = f'{idx:08d}'
    return f'{s[:5]}/img{s}.png'


def convert_dataset(source, dest, *, resolution=None, transform='none', max_images=None, stacked=None,
                    seed=0, split=None, channels=None, overwrite=False, progress=True):
    """Convert ``source`` to the zip format at ``dest``; returns a summary dict.

    See the module docstring for sources and options. Raises DatasetError on bad input, leaving no
    partial output behind.
    """
    if transform not in TRANSFORMS:
        raise DatasetError(f'Unknown --transform {transform!r}; use one of: {", ".join(TRANSFORMS)}.')
    if resolution is not None and (not _is_pow2(resolution) or not 4 <= resolution <= MAX_RESOLUTION):
        raise DatasetError(f'--resolution must be a power of two from 4 to {MAX_RESOLUTION} (such as 32, 64, 256), '
                           f'not {resolution}.')
    if max_images is not None and max_images < 1:
        raise DatasetError(f'--max-images must be a positive number, not {max_images}.')
    if channels is not None and int(channels) not in (1, 3):
        raise DatasetError(f'--channels must be 1 (grayscale) or 3 (RGB), not {channels}.')
    if not str(dest).lower().endswith('.zip'):
        raise DatasetError(f'--dest must be a .zip file path (such as out/data.zip), not {dest!r}.')
    if stacked is not None and not 0 <= seed <= 2 ** 32 - 1:
        raise DatasetError(f'--seed must be in 0..{2 ** 32 - 1}, not {seed}.')
    check_output_file(dest, '--dest', suffix='.zip')  # a folder of that name, a file in the way, permissions
    if os.path.exists(dest) and os.path.abspath(dest) == os.path.abspath(source):
        raise DatasetError(f'--dest {dest!r} is the same file as --source; write to a new path.')
    if os.path.exists(dest) and not overwrite:
        raise DatasetError(f'{dest!r} already exists; pass --overwrite to replace it or choose another --dest.')

    src = open_source(source, split=split, stacked=stacked, seed=seed)
    total = len(src) if max_images is None else min(len(src), max_images)
    out_res = resolution
    out_channels = None if channels is None else int(channels)
    labels = []
    fnames = []
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = f'{dest}.tmp-{os.getpid()}'
    try:
        with zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_STORED) as zf, \
                progress_counter(total=total, desc='dataset convert', unit='img') as bar:
            for idx, (name, img, label) in enumerate(itertools.islice(src.items(), total)):
                if img.ndim == 2:
                    img = img[:, :, None]
                img = _to_square(img, transform, name)
                side = img.shape[0]
                if out_res is None:
                    if not _is_pow2(side) or side < 4:
                        raise DatasetError(
                            f'Image {name!r} is {side}x{side}, which is not a power of two. Add --resolution '
                            f'{_next_pow2(side)} (or another power of two) to resize it.')
                    out_res = side
                if side != out_res:
                    if resolution is None:
                        raise DatasetError(
                            f'Image {name!r} is {side}x{side} but earlier images are {out_res}x{out_res}. '
                            f'Add --resolution {out_res} to resize every image to one size.')
                    img = _resize(img, out_res)
                if out_channels is None:
                    out_channels = img.shape[2]
                elif img.shape[2] == 3 and out_channels == 1 and channels is None:
                    # Grayscale in an RGB set is expanded (lossless); the reverse would lose colour.
                    raise DatasetError(
                        f'Image {name!r} is RGB but earlier images are grayscale. Add --channels 3 '
                        f'(expand grayscale to RGB) or --channels 1 (convert all to grayscale).')
                img = _set_channels(img, out_channels)
                fname = _archive_name(idx)
                zf.writestr(fname, _encode_png(np.ascontiguousarray(img)))
                fnames.append(fname)
                labels.append(label)
                if progress:
                    bar.update(1)
            has_labels = bool(labels) and all(lab is not None for lab in labels)
            meta = {'labels': [[f, lab] for f, lab in zip(fnames, labels)] if has_labels else None,
                    'source': src.description}
            if has_labels and src.num_classes is not None:
                meta['num_classes'] = src.num_classes
            if has_labels and src.class_names is not None:
                meta['class_names'] = src.class_names
            for key, values in (src.extra or {}).items():
                meta[key] = [[f, v] for f, v in zip(fnames, values)]
            zf.writestr('dataset.json', json.dumps(meta))
        os.replace(tmp, dest)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise DiskFullError(disk_full_message(dest, 'the dataset')) from None
        raise

    summary = dict(num_images=len(fnames), resolution=out_res, channels=out_channels, labels=has_labels,
                   num_classes=src.num_classes if has_labels else None, dest=dest, source=src.description)
    return summary


def format_summary(s):
    labels = (f'labels: {s["num_classes"]} classes' if s['num_classes'] else 'labels: yes') if s['labels'] \
        else 'labels: no'
    return (f'Wrote {s["num_images"]} images ({s["resolution"]}x{s["resolution"]}, {s["channels"]} channel'
            f'{"s" if s["channels"] != 1 else ""}, {labels}) from {s["source"]} to {s["dest"]}')


# ----------------------------------------------------------------------------------------------
# CLI.


@click.group(name='dataset')
def dataset():
    """Prepare datasets in the zip format that `ganstack train --data` reads."""


@dataset.command('convert')
@click.option('--source', required=True, metavar='PATH',
              help='Folder or .zip of images, MNIST idx folder, or cifar-10-python.tar.gz.')
@click.option('--dest', required=True, metavar='ZIP', help='Output .zip archive.')
@click.option('--resolution', type=int, metavar='R', help='Resize to RxR (R a power of two; Lanczos). '
              'MNIST defaults to 32 by padding.')
@click.option('--transform', type=click.Choice(TRANSFORMS), default='none', show_default=True,
              help='How to make non-square images square.')
@click.option('--max-images', type=int_range(1), metavar='N', help='Convert at most N images (the first N).')
@click.option('--stacked', type=int_range(1, 10_000_000), metavar='N', help='StackedMNIST: N RGB images of 3 random digits each.')
@click.option('--seed', type=SEED, default=0, show_default=True, help='Seed for --stacked.')
@click.option('--split', type=click.Choice(['train', 'test']),
              help='MNIST/CIFAR-10 split [default: train (MNIST: the only split present)].')
@click.option('--channels', type=click.Choice(['1', '3']), help='Force grayscale (1) or RGB (3) output.')
@click.option('--overwrite', is_flag=True, help='Replace --dest if it exists.')
def convert(source, dest, resolution, transform, max_images, stacked, seed, split, channels, overwrite):
    """Convert images, MNIST or CIFAR-10 into a dataset .zip (PNG files + dataset.json)."""
    summary = convert_dataset(source, dest, resolution=resolution, transform=transform, max_images=max_images,
                              stacked=stacked, seed=seed, split=split,
                              channels=None if channels is None else int(channels), overwrite=overwrite)
    click.echo(format_summary(summary))


def main(argv=None):
    """``python -m stylegan_base.dataset_tool convert ...`` with the CLI's error handling (one paragraph)."""
    run_main(lambda: dataset.main(args=argv, standalone_mode=False))


if __name__ == '__main__':
    main()
