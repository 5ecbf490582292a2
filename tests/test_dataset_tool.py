"""`ganstack dataset convert`: folders, MNIST idx, StackedMNIST, CIFAR-10 tarballs."""

import gzip
import io
import json
import os
import pickle
import struct
import tarfile
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ganstack.stylegan_base import dataset_tool
from ganstack.stylegan_base.dataset_tool import convert_dataset, dataset
from ganstack.stylegan_base.datasets import open_dataset
from ganstack.stylegan_base.errors import DatasetError

REAL_MNIST = '/work/shared/data/mnist'


def run(*args):
    result = CliRunner().invoke(dataset, ['convert', *map(str, args)])
    return result


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def fails(match, *args):
    result = run(*args)
    assert isinstance(result.exception, DatasetError), (result.output, result.exception)
    assert match in str(result.exception), str(result.exception)
    return str(result.exception)


def save_png(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img[:, :, 0] if img.ndim == 3 and img.shape[2] == 1 else img).save(path)


def read_zip(path):
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read('dataset.json'))
        names = sorted(n for n in zf.namelist() if n.endswith('.png'))
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    return names, meta


# ----------------------------------------------------------------------------------------------
# Image folders.


def test_folder_roundtrip(tmp_path):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=[5, 8, 8, 3], dtype=np.uint8)
    src = tmp_path / 'src'
    names = [f'sub{i % 2}/pic{i}.png' for i in range(5)]
    for name, img in zip(names, images):
        save_png(str(src / name), img)
    labels = [3, 1, 4, 1, 5]
    (src / 'dataset.json').write_text(json.dumps({'labels': [[n, lab] for n, lab in zip(names, labels)]}))
    dest = tmp_path / 'out' / 'data.zip'
    result = ok('--source', src, '--dest', dest)
    assert 'Wrote 5 images (8x8, 3 channels, labels: yes)' in result.output and str(dest) in result.output
    zip_names, meta = read_zip(dest)
    assert zip_names == [f'00000/img{i:08d}.png' for i in range(5)]
    order = np.argsort(names)  # sources are read in sorted path order
    assert [lab for _, lab in meta['labels']] == [labels[i] for i in order]
    ds = open_dataset(str(dest))
    assert len(ds) == 5 and ds.resolution == 8 and ds.num_channels == 3 and ds.label_dim == 6
    for k, i in enumerate(order):
        np.testing.assert_array_equal(ds[k][0], images[i].transpose(2, 0, 1))
        assert ds[k][1].argmax() == labels[i]
    assert not [f for f in os.listdir(dest.parent) if 'tmp' in f]
    # Re-encoding the zip keeps pixels and labels.
    again = tmp_path / 'again.zip'
    ok('--source', dest, '--dest', again)
    ds2 = open_dataset(str(again))
    np.testing.assert_array_equal(ds2.get_batch(range(5))[0], ds.get_batch(range(5))[0])
    np.testing.assert_array_equal(ds2.class_labels, ds.class_labels)
    fails('already exists', '--source', src, '--dest', dest)
    ok('--source', src, '--dest', dest, '--overwrite', '--max-images', '2')
    assert len(open_dataset(str(dest))) == 2


def test_folder_transforms_and_resolution(tmp_path):
    src = tmp_path / 'wide'
    img = np.zeros([8, 16, 3], np.uint8)
    img[:, 4:12] = 255  # white centre square
    save_png(str(src / 'a.png'), img)
    msg = fails('not square', '--source', src, '--dest', tmp_path / 'x.zip')
    assert '--transform center-crop' in msg and '--resolution' in msg
    assert not os.path.exists(tmp_path / 'x.zip')
    assert not [f for f in os.listdir(tmp_path) if 'tmp' in f]

    ok('--source', src, '--dest', tmp_path / 'crop.zip', '--transform', 'center-crop')
    crop = open_dataset(str(tmp_path / 'crop.zip'))
    assert crop.resolution == 8 and crop[0][0].min() == 255

    ok('--source', src, '--dest', tmp_path / 'wide.zip', '--transform', 'center-crop-wide')
    wide = open_dataset(str(tmp_path / 'wide.zip'))[0][0]
    assert wide.shape == (3, 16, 16)
    assert wide[:, :4].max() == 0 and wide[:, 12:].max() == 0  # black bars
    np.testing.assert_array_equal(wide[:, 4:12].transpose(1, 2, 0), img)

    ok('--source', src, '--dest', tmp_path / 'r4.zip', '--transform', 'center-crop', '--resolution', 4)
    assert open_dataset(str(tmp_path / 'r4.zip')).resolution == 4

    npot = tmp_path / 'npot'
    save_png(str(npot / 'a.png'), np.full([12, 12], 7, np.uint8))
    msg = fails('not a power of two', '--source', npot, '--dest', tmp_path / 'y.zip')
    assert '--resolution 16' in msg
    ok('--source', npot, '--dest', tmp_path / 'y.zip', '--resolution', 16)
    y = open_dataset(str(tmp_path / 'y.zip'))
    assert y.resolution == 16 and y.num_channels == 1 and y.label_dim == 0

    mixed = tmp_path / 'mixed'
    save_png(str(mixed / 'a.png'), np.zeros([8, 8], np.uint8))
    save_png(str(mixed / 'b.png'), np.zeros([8, 8, 3], np.uint8))
    fails('--channels 3', '--source', mixed, '--dest', tmp_path / 'z.zip')
    ok('--source', mixed, '--dest', tmp_path / 'z.zip', '--channels', 3)
    assert open_dataset(str(tmp_path / 'z.zip')).num_channels == 3
    Image.fromarray(np.full([8, 8, 4], 200, np.uint8), 'RGBA').save(mixed / 'c.png')
    ok('--source', mixed, '--dest', tmp_path / 'g.zip', '--channels', 1)  # alpha dropped, luma kept
    assert open_dataset(str(tmp_path / 'g.zip'))[2][0].max() == 200

    sizes = tmp_path / 'sizes'
    save_png(str(sizes / 'a.png'), np.zeros([8, 8, 3], np.uint8))
    save_png(str(sizes / 'b.png'), np.zeros([16, 16, 3], np.uint8))
    fails('--resolution 8', '--source', sizes, '--dest', tmp_path / 's.zip')


def test_cli_errors(tmp_path):
    fails('not found', '--source', tmp_path / 'nothing', '--dest', tmp_path / 'a.zip')
    (tmp_path / 'empty').mkdir()
    fails('No images found', '--source', tmp_path / 'empty', '--dest', tmp_path / 'a.zip')
    fails('.zip file path', '--source', tmp_path / 'empty', '--dest', tmp_path / 'a.tar')
    fails('power of two', '--source', tmp_path / 'empty', '--dest', tmp_path / 'a.zip', '--resolution', 48)
    fails('--stacked', '--source', tmp_path / 'empty', '--dest', tmp_path / 'a.zip', '--stacked', 10)
    # The module entry point prints the message and exits 2, without a traceback.
    with pytest.raises(SystemExit) as e:
        dataset_tool.main(['convert', '--source', str(tmp_path / 'nothing'), '--dest', str(tmp_path / 'a.zip')])
    assert e.value.code == 2


def test_progress_line(tmp_path, monkeypatch):
    src = tmp_path / 'p'
    for i in range(5):
        save_png(str(src / f'{i}.png'), np.full([4, 4], i, np.uint8))
    monkeypatch.delenv('GANSTACK_PROGRESS', raising=False)
    result = ok('--source', src, '--dest', tmp_path / 'p.zip')  # not a terminal: quiet for short work
    assert 'dataset convert' not in result.stderr and 'Wrote 5 images' in result.stdout
    monkeypatch.setenv('GANSTACK_PROGRESS_INTERVAL', '0')  # a log line per interval once work runs that long
    result = ok('--source', src, '--dest', tmp_path / 'q.zip')
    assert 'dataset convert: 1/5 img (20%)' in result.stderr and 'dataset convert: 4/5 img (80%)' in result.stderr
    assert '\r' not in result.stderr


# ----------------------------------------------------------------------------------------------
# MNIST.


def write_idx(path, array, compress):
    array = np.asarray(array, dtype=np.uint8)
    data = struct.pack('>BBBB', 0, 0, 8, array.ndim) + struct.pack('>' + 'I' * array.ndim, *array.shape) \
        + array.tobytes()
    with (gzip.open if compress else open)(path, 'wb') as f:
        f.write(data)


def fake_mnist(folder, n=30, split='train', compress=True):
    """Unique random 28x28 digits and labels 0..9 in idx format."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(1)
    images = rng.randint(0, 256, size=[n, 28, 28]).astype(np.uint8)
    labels = np.arange(n) % 10
    gz = '.gz' if compress else ''
    write_idx(os.path.join(folder, f'{split}-images-idx3-ubyte{gz}'), images, compress)
    write_idx(os.path.join(folder, f'{split}-labels-idx1-ubyte{gz}'), labels, compress)
    return images, labels


@pytest.mark.parametrize('compress', [True, False])
def test_mnist(tmp_path, compress):
    images, labels = fake_mnist(str(tmp_path / 'mnist'), compress=compress)
    result = ok('--source', tmp_path / 'mnist', '--dest', tmp_path / 'm.zip')
    assert 'Wrote 30 images (32x32, 1 channel, labels: 10 classes)' in result.output
    ds = open_dataset(str(tmp_path / 'm.zip'))
    assert ds.resolution == 32 and ds.num_channels == 1 and ds.label_dim == 10
    for i in (0, 7, 29):
        x = ds[i][0][0]
        np.testing.assert_array_equal(x[2:30, 2:30], images[i])  # 2-pixel zero padding, exact pixels
        assert x[:2].max() == 0 and x[:, 30:].max() == 0
    np.testing.assert_array_equal(ds.class_labels, labels)
    _, meta = read_zip(tmp_path / 'm.zip')
    assert meta['num_classes'] == 10 and meta['class_names'] == [str(d) for d in range(10)]

    ok('--source', tmp_path / 'mnist', '--dest', tmp_path / 'm16.zip', '--resolution', 16, '--max-images', 12)
    small = open_dataset(str(tmp_path / 'm16.zip'))
    assert len(small) == 12 and small.resolution == 16 and small.label_dim == 10
    fails('No MNIST test split', '--source', tmp_path / 'mnist', '--dest', tmp_path / 't.zip', '--split', 'test')


def test_mnist_file_and_split_choice(tmp_path):
    fake_mnist(str(tmp_path / 'mn'), n=10, split='train')
    fake_mnist(str(tmp_path / 'mn'), n=20, split='t10k')
    ok('--source', tmp_path / 'mn', '--dest', tmp_path / 'a.zip')
    assert len(open_dataset(str(tmp_path / 'a.zip'))) == 10  # train by default
    ok('--source', tmp_path / 'mn', '--dest', tmp_path / 'b.zip', '--split', 'test')
    assert len(open_dataset(str(tmp_path / 'b.zip'))) == 20
    ok('--source', tmp_path / 'mn' / 't10k-images-idx3-ubyte.gz', '--dest', tmp_path / 'c.zip')
    assert len(open_dataset(str(tmp_path / 'c.zip'))) == 20
    (tmp_path / 'mn' / 'train-labels-idx1-ubyte.gz').write_bytes(gzip.compress(b'\x00\x00\x08\x03junk'))
    fails('not an idx1-ubyte file', '--source', tmp_path / 'mn', '--dest', tmp_path / 'd.zip')


def test_stacked_mnist(tmp_path):
    images, labels = fake_mnist(str(tmp_path / 'mnist'), n=40)
    result = ok('--source', tmp_path / 'mnist', '--dest', tmp_path / 's.zip', '--stacked', 25, '--seed', 3)
    assert 'Wrote 25 images (32x32, 3 channels, labels: 1000 classes)' in result.output
    ds = open_dataset(str(tmp_path / 's.zip'))
    assert len(ds) == 25 and ds.num_channels == 3 and ds.label_dim == 1000
    _, meta = read_zip(tmp_path / 's.zip')
    digits = dict((name, d) for name, d in meta['digits'])
    lookup = {img.tobytes(): i for i, img in enumerate(images)}  # digits are unique
    for k in range(len(ds)):
        x = ds[k][0]
        src = [lookup[x[c, 2:30, 2:30].tobytes()] for c in range(3)]  # each channel is one source digit
        r, g, b = (int(labels[i]) for i in src)
        assert ds.class_labels[k] == 100 * r + 10 * g + b
        assert digits[ds.image_fnames[k]] == [r, g, b]
    # Same seed, same data; another seed, other data.
    ok('--source', tmp_path / 'mnist', '--dest', tmp_path / 's2.zip', '--stacked', 25, '--seed', 3)
    assert open_dataset(str(tmp_path / 's2.zip')).fingerprint() == ds.fingerprint()
    ok('--source', tmp_path / 'mnist', '--dest', tmp_path / 's3.zip', '--stacked', 25, '--seed', 4)
    assert open_dataset(str(tmp_path / 's3.zip')).fingerprint() != ds.fingerprint()


@pytest.mark.skipif(not os.path.isdir(REAL_MNIST), reason='real MNIST not present')
def test_real_mnist_smoke(tmp_path):
    result = ok('--source', REAL_MNIST, '--dest', tmp_path / 'r.zip', '--max-images', 200)
    assert 'Wrote 200 images (32x32, 1 channel, labels: 10 classes) from MNIST t10k' in result.output
    ds = open_dataset(str(tmp_path / 'r.zip'))
    assert len(ds) == 200 and ds.label_dim == 10
    assert set(ds.class_labels.tolist()) == set(range(10))
    x = ds.get_batch(range(200))[0].numpy()
    assert x[:, :, :2].max() == 0 and x.max() == 255


# ----------------------------------------------------------------------------------------------
# CIFAR-10.


def fake_cifar(path, per_batch=2):
    rng = np.random.RandomState(2)
    batches = {}
    with tarfile.open(path, 'w:gz') as tar:
        names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
        for k, name in enumerate(names):
            data = rng.randint(0, 256, size=[per_batch, 3072]).astype(np.uint8)
            labels = [(k * per_batch + j) % 10 for j in range(per_batch)]
            batches[name] = (data, labels)
            _add(tar, name, {b'batch_label': name.encode(), b'data': data, b'labels': labels})
        _add(tar, 'batches.meta', {b'label_names': [f'class{c}'.encode() for c in range(10)]})
    return batches


def _add(tar, name, obj):
    blob = pickle.dumps(obj, protocol=2)
    info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def test_cifar(tmp_path):
    batches = fake_cifar(str(tmp_path / 'cifar-10-python.tar.gz'))
    result = ok('--source', tmp_path / 'cifar-10-python.tar.gz', '--dest', tmp_path / 'c.zip')
    assert 'Wrote 10 images (32x32, 3 channels, labels: 10 classes) from CIFAR-10 train' in result.output
    ds = open_dataset(str(tmp_path / 'c.zip'))
    expected = np.concatenate([batches[f'data_batch_{i}'][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(ds.get_batch(range(10))[0].numpy(), expected)
    np.testing.assert_array_equal(ds.class_labels, sum((batches[f'data_batch_{i}'][1] for i in range(1, 6)), []))
    _, meta = read_zip(tmp_path / 'c.zip')
    assert meta['class_names'] == [f'class{c}' for c in range(10)]

    ok('--source', tmp_path / 'cifar-10-python.tar.gz', '--dest', tmp_path / 't.zip', '--split', 'test')
    t = open_dataset(str(tmp_path / 't.zip'))
    np.testing.assert_array_equal(t[1][0], batches['test_batch'][0][1].reshape(3, 32, 32))


def test_cifar_rejects_foreign_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))

    with tarfile.open(tmp_path / 'evil.tar.gz', 'w:gz') as tar:
        for name in [f'data_batch_{i}' for i in range(1, 6)]:
            _add(tar, name, {b'data': Evil(), b'labels': [0]})
    fails('refusing to load', '--source', tmp_path / 'evil.tar.gz', '--dest', tmp_path / 'e.zip')
    (tmp_path / 'broken.tar.gz').write_bytes(b'not a tarball')
    fails('tar archive', '--source', tmp_path / 'broken.tar.gz', '--dest', tmp_path / 'e.zip')


def test_convert_dataset_api(tmp_path):
    fake_mnist(str(tmp_path / 'mn'), n=5)
    summary = convert_dataset(str(tmp_path / 'mn'), str(tmp_path / 'x.zip'), progress=False)
    assert summary['num_images'] == 5 and summary['resolution'] == 32 and summary['channels'] == 1
    assert summary['labels'] and summary['num_classes'] == 10
    assert dataset_tool.format_summary(summary).startswith('Wrote 5 images (32x32, 1 channel, labels: 10 classes)')
