"""Dataset readers: image zips/folders, toy mixtures, point files, procedural shapes."""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from ganstack.stylegan_base.datasets import (ImageFolderDataset, PointFileDataset, ShapesDataset, ToyMixtureDataset,
                                    open_dataset)
from ganstack.stylegan_base.errors import DatasetError
from ganstack.stylegan_base.toy import TOY_MIXTURES

# ----------------------------------------------------------------------------------------------
# Helpers.


def random_images(n, res=8, channels=3, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=[n, res, res, channels], dtype=np.uint8)


def save_png(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(path)


def write_folder(root, images, labels=None, meta_extra=None):
    """Images as root/a/img{i}.png (nested, to test recursion); returns the relative names."""
    names = []
    for i, img in enumerate(images):
        rel = f'{"a" if i % 2 else "b"}/img{i:03d}.png'
        save_png(os.path.join(root, rel), img)
        names.append(rel)
    if labels is not None:
        meta = dict(labels=[[n, lab] for n, lab in zip(names, labels)], **(meta_extra or {}))
        with open(os.path.join(root, 'dataset.json'), 'w') as f:
            json.dump(meta, f)
    return names


def zip_folder(root, dest):
    with zipfile.ZipFile(dest, 'w', compression=zipfile.ZIP_STORED) as zf:
        for dirpath, _, files in os.walk(root):
            for f in sorted(files):
                full = os.path.join(dirpath, f)
                zf.write(full, os.path.relpath(full, root).replace(os.sep, '/'))
    return str(dest)


@pytest.fixture
def labeled_folder(tmp_path):
    images = random_images(6)
    labels = [0, 2, 1, 2, 0, 1]
    root = tmp_path / 'imgs'
    names = write_folder(str(root), images, labels)
    order = np.argsort(names)  # the reader sorts by relative path
    return str(root), images[order], np.asarray(labels)[order]


# ----------------------------------------------------------------------------------------------
# Image folders and zips.


def test_folder_and_zip_read_pixels_and_labels(labeled_folder, tmp_path):
    root, images, labels = labeled_folder
    zip_path = zip_folder(root, tmp_path / 'imgs.zip')
    for spec in (root, zip_path):
        ds = open_dataset(spec)
        assert isinstance(ds, ImageFolderDataset)
        assert ds.kind == 'image' and len(ds) == 6 and ds.resolution == 8 and ds.num_channels == 3
        assert ds.label_dim == 3 and ds.has_labels and ds.num_classes == 3
        for i in range(6):
            x, label = ds[i]
            assert x.dtype == np.uint8 and x.shape == (3, 8, 8)
            np.testing.assert_array_equal(x, images[i].transpose(2, 0, 1))
            assert label.dtype == np.float32 and label.shape == (3,)
            assert label.argmax() == labels[i] and label.sum() == 1
        np.testing.assert_array_equal(ds.class_labels, labels)
        x, c = ds.get_batch([1, 4])
        assert x.dtype == torch.uint8 and tuple(x.shape) == (2, 3, 8, 8) and tuple(c.shape) == (2, 3)
        np.testing.assert_array_equal(x[1].numpy(), ds[4][0])
        info = ds.info()
        json.dumps(info)
        assert info['kind'] == 'image' and info['resolution'] == 8 and info['label_dim'] == 3
        ds.close()
    assert open_dataset(root).name == 'imgs' and open_dataset(zip_path).name == 'imgs'


def test_grayscale_unlabeled_and_use_labels(tmp_path, labeled_folder):
    root = tmp_path / 'gray'
    write_folder(str(root), random_images(3, res=16, channels=1))
    ds = open_dataset(str(root))
    assert ds.num_channels == 1 and ds.resolution == 16 and ds.label_dim == 0 and not ds.has_labels
    assert ds[0][1].shape == (0,) and ds.class_labels is None
    assert open_dataset(labeled_folder[0], use_labels=False).label_dim == 0


def test_vector_labels_and_num_classes(tmp_path):
    root = tmp_path / 'vec'
    write_folder(str(root), random_images(2), labels=[[0.5, -1.0], [2.0, 3.0]])
    ds = open_dataset(str(root))
    assert ds.label_dim == 2 and ds.class_labels is None
    labels = sorted(ds.get_label(i).tolist() for i in range(2))
    assert labels == [[0.5, -1.0], [2.0, 3.0]]
    root2 = tmp_path / 'cls'
    write_folder(str(root2), random_images(2), labels=[1, 0], meta_extra=dict(num_classes=10))
    assert open_dataset(str(root2)).label_dim == 10


def test_jpeg_images(tmp_path):
    root = tmp_path / 'jpg'
    root.mkdir()
    img = np.full([16, 16, 3], 120, dtype=np.uint8)
    Image.fromarray(img).save(root / 'x.jpg', quality=95)
    ds = open_dataset(str(root))
    assert ds.resolution == 16 and ds.num_channels == 3
    assert np.abs(ds[0][0].astype(int) - 120).max() <= 3


def test_mirror_doubles_and_flips(labeled_folder):
    root, images, labels = labeled_folder
    ds = open_dataset(root, mirror=True)
    assert len(ds) == 12 and ds.mirror
    for i in range(6):
        np.testing.assert_array_equal(ds[i][0], images[i].transpose(2, 0, 1))
        np.testing.assert_array_equal(ds[i + 6][0], images[i].transpose(2, 0, 1)[:, :, ::-1])
        np.testing.assert_array_equal(ds[i + 6][1], ds[i][1])
    x, _ = ds.get_batch([0, 6])
    np.testing.assert_array_equal(x[1].numpy(), x[0].numpy()[:, :, ::-1])
    assert ds.info()['mirror'] is True and ds.info()['len'] == 12


def test_max_size_is_deterministic(tmp_path):
    root = tmp_path / 'many'
    write_folder(str(root), random_images(20, res=4))
    a = open_dataset(str(root), max_size=7)
    b = open_dataset(str(root), max_size=7)
    assert len(a) == 7
    np.testing.assert_array_equal(a.raw_indices, b.raw_indices)
    assert np.all(np.diff(a.raw_indices) > 0)  # sorted subset
    np.testing.assert_array_equal(a[3][0], b[3][0])
    assert not np.array_equal(a.raw_indices, np.arange(7))  # a shuffle, not the first 7
    assert not np.array_equal(open_dataset(str(root), max_size=7, seed=1).raw_indices, a.raw_indices)
    assert len(open_dataset(str(root), max_size=100)) == 20
    m = open_dataset(str(root), max_size=7, mirror=True)
    assert len(m) == 14 and np.array_equal(m.raw_indices[:7], a.raw_indices)
    with pytest.raises(DatasetError, match='max_size'):
        open_dataset(str(root), max_size=0)


def test_zip_dataset_pickles_and_works_in_workers(labeled_folder, tmp_path):
    root, images, _ = labeled_folder
    ds = open_dataset(zip_folder(root, tmp_path / 'w.zip'))
    ds[0]  # opens the zip in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._zipfile is None
    np.testing.assert_array_equal(clone[5][0], ds[5][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    batches = torch.cat([x for x, _ in loader])
    np.testing.assert_array_equal(batches.numpy(), images.transpose(0, 3, 1, 2))


def test_fingerprint_changes_with_pixel_and_label(tmp_path):
    def build(name, pixel=0, label0=0):
        images = random_images(4)
        images[2, 3, 3, 1] = pixel
        root = tmp_path / name
        write_folder(str(root), images, labels=[label0, 1, 1, 0])
        return str(root), zip_folder(root, tmp_path / f'{name}.zip')

    base = build('base')
    same = build('same')
    pixel = build('pixel', pixel=1)
    label = build('label', label0=1)
    for k in (0, 1):  # folder, zip
        fp = open_dataset(base[k]).fingerprint()
        assert len(fp) == 64 and int(fp, 16) >= 0
        assert open_dataset(same[k]).fingerprint() == fp
        assert open_dataset(pixel[k]).fingerprint() != fp
        assert open_dataset(label[k]).fingerprint() != fp
        assert open_dataset(base[k], mirror=True).fingerprint() != fp
        assert open_dataset(base[k], max_size=2).fingerprint() != fp


def _assert_error(match, *args, **kwargs):
    with pytest.raises(DatasetError, match=match) as e:
        open_dataset(*args, **kwargs)
    return str(e.value)


def test_image_errors(tmp_path):
    msg = _assert_error('not found', str(tmp_path / 'nope.zip'))
    assert 'toy:' in msg and 'shapes' in msg  # lists what is accepted
    (tmp_path / 'empty').mkdir()
    _assert_error('No images found', str(tmp_path / 'empty'))
    (tmp_path / 'bad.zip').write_bytes(b'this is not a zip archive')
    _assert_error('not a valid zip', str(tmp_path / 'bad.zip'))
    with zipfile.ZipFile(tmp_path / 'noimg.zip', 'w') as zf:
        zf.writestr('readme.txt', 'hi')
    _assert_error('No images found', str(tmp_path / 'noimg.zip'))

    nonsquare = tmp_path / 'nonsquare'
    save_png(str(nonsquare / 'x.png'), np.zeros([8, 16, 3], np.uint8))
    msg = _assert_error("'x.png'", str(nonsquare))
    assert '16x8' in msg and 'ganstack dataset convert' in msg and '--resolution' in msg

    npot = tmp_path / 'npot'
    save_png(str(npot / 'x.png'), np.zeros([12, 12, 3], np.uint8))
    _assert_error('power', str(npot))

    mixed = tmp_path / 'mixed'
    save_png(str(mixed / 'a.png'), np.zeros([8, 8, 3], np.uint8))
    save_png(str(mixed / 'b.png'), np.zeros([16, 16, 3], np.uint8))
    msg = _assert_error("'b.png'", str(mixed))
    assert '--resolution' in msg

    rgba = tmp_path / 'rgba'
    save_png(str(rgba / 'a.png'), np.zeros([8, 8, 3], np.uint8))
    Image.fromarray(np.zeros([8, 8, 4], np.uint8), 'RGBA').save(rgba / 'b.png')
    _assert_error('alpha', str(rgba))

    unlabeled = tmp_path / 'missing_label'
    names = write_folder(str(unlabeled), random_images(2), labels=[0, 1])
    with open(unlabeled / 'dataset.json', 'w') as f:
        json.dump({'labels': [[names[0], 0]]}, f)
    _assert_error('no label for', str(unlabeled))
    _assert_error('point files only', str(unlabeled), normalize='standardize')
    (tmp_path / 'x.txt').write_text('x')
    _assert_error('extension', str(tmp_path / 'x.txt'))


# ----------------------------------------------------------------------------------------------
# Toy mixtures.


@pytest.mark.parametrize('name, num_modes, std', [('gaussians25', 25, 0.05), ('grid49', 49, 0.01), ('ring8', 8, 0.02)])
def test_toy_mixtures(name, num_modes, std):
    ds = open_dataset(f'toy:{name}?n=20000')
    assert isinstance(ds, ToyMixtureDataset) and ds.kind == 'points'
    assert len(ds) == 20000 and ds.point_dim == 2 and ds.label_dim == 0
    assert ds.centers.shape == (num_modes, 2) and ds.std == std
    x, label = ds[0]
    assert x.dtype == np.float32 and x.shape == (2,) and label.shape == (0,)
    points = ds.points
    assert points.dtype == np.float32 and points.shape == (20000, 2)
    # Determinism: same spec, same numbers.
    np.testing.assert_array_equal(points, open_dataset(f'toy:{name}', n=20000).points)
    # Equal weights, every mode populated, each point near its own mode with the stated std.
    counts = np.bincount(ds.modes, minlength=num_modes)
    assert counts.min() >= 20000 // num_modes and counts.max() <= 20000 // num_modes + 1
    nearest = np.argmin(((points[:, None] - ds.centers[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest, ds.modes)
    dev = points - ds.centers[ds.modes]
    np.testing.assert_allclose(dev.std(axis=0), std, rtol=0.05)
    info = ds.info()
    json.dumps(info)
    assert info['point_dim'] == 2 and len(info['toy']['centers']) == num_modes and info['toy']['std'] == std


def test_toy_centers_and_options():
    g = open_dataset('toy:gaussians25', n=100)
    assert sorted(set(g.centers[:, 0])) == [-4, -2, 0, 2, 4]
    assert sorted(set(open_dataset('toy:grid49', n=49).centers[:, 1])) == list(range(-3, 4))
    np.testing.assert_allclose(np.linalg.norm(open_dataset('toy:ring8', n=8).centers, axis=1), 2.0)
    assert len(open_dataset('toy:ring8')) == 100000  # default n
    assert not np.array_equal(open_dataset('toy:ring8?n=50&seed=1').points, open_dataset('toy:ring8?n=50').points)
    lab = open_dataset('toy:ring8?n=80&labels=1')
    assert lab.label_dim == 8 and np.array_equal(lab.class_labels, lab.modes)
    assert open_dataset('toy:ring8?n=80&std=0.5').std == 0.5
    x, c = lab.get_batch(torch.tensor([3, 1]))
    np.testing.assert_array_equal(x.numpy(), np.stack([lab[3][0], lab[1][0]]))
    np.testing.assert_array_equal(c.numpy(), np.stack([lab[3][1], lab[1][1]]))
    sub = open_dataset('toy:ring8?n=100', max_size=10)
    assert len(sub) == 10 and sub.fingerprint() != open_dataset('toy:ring8?n=100').fingerprint()
    assert open_dataset('toy:ring8?n=100').fingerprint() == open_dataset('toy:ring8', n=100).fingerprint()
    assert open_dataset('toy:ring8?n=100').fingerprint() != open_dataset('toy:ring8?n=100&seed=2').fingerprint()


def test_toy_errors():
    msg = _assert_error('Unknown toy dataset', 'toy:gaussians26')
    for name in TOY_MIXTURES:
        assert name in msg
    _assert_error("Unknown option 'size'", 'toy:ring8?size=3')
    _assert_error('must be a int', 'toy:ring8?n=many')
    _assert_error('mirror', 'toy:ring8', mirror=True)
    _assert_error('normalize', 'toy:ring8', normalize='standardize')


# ----------------------------------------------------------------------------------------------
# Point files.


def test_point_files_used_as_given(tmp_path):
    data = np.array([[1.5, -2.0, 100.0], [0.25, 3.0, -7.0], [8.0, 0.0, 1e-3]], dtype=np.float32)
    np.save(tmp_path / 'p.npy', data)
    np.savetxt(tmp_path / 'p.csv', data, delimiter=',', header='x,y,z', comments='')
    np.savetxt(tmp_path / 'q.csv', data)  # whitespace separated, no header
    for f in ('p.npy', 'p.csv', 'q.csv'):
        ds = open_dataset(str(tmp_path / f))
        assert isinstance(ds, PointFileDataset) and ds.point_dim == 3 and len(ds) == 3
        np.testing.assert_array_equal(ds.points, data)
        np.testing.assert_array_equal(ds[1][0], data[1])
        assert ds[1][0].dtype == np.float32
        x, c = ds.get_batch([2, 0])
        np.testing.assert_array_equal(x.numpy(), data[[2, 0]])
        assert tuple(c.shape) == (2, 0)
        assert ds.info()['normalize'] is None
        assert ds.denormalize(data) is data


def test_point_standardize(tmp_path):
    rng = np.random.RandomState(0)
    data = (rng.randn(500, 2) * [3.0, 0.5] + [10.0, -1.0]).astype(np.float32)
    np.save(tmp_path / 'p.npy', data)
    ds = open_dataset(str(tmp_path / 'p.npy'), normalize='standardize')
    np.testing.assert_allclose(ds.points.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.points.std(0), 1, atol=1e-5)
    np.testing.assert_allclose(ds.denormalize(ds.points), data, atol=1e-4)
    np.testing.assert_allclose(ds.denormalize(torch.from_numpy(ds.points)).numpy(), data, atol=1e-4)
    info = json.loads(json.dumps(ds.info()))
    assert info['normalize']['method'] == 'standardize'
    np.testing.assert_allclose(info['normalize']['mean'], data.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(info['normalize']['std'], data.astype(np.float64).std(0), rtol=1e-6)
    assert ds.fingerprint() != open_dataset(str(tmp_path / 'p.npy')).fingerprint()


def test_point_file_errors(tmp_path):
    _assert_error('not found', str(tmp_path / 'missing.npy'))
    np.save(tmp_path / 'one.npy', np.arange(5.0))
    _assert_error(r'shape \[5\].*x\[:, None\]', str(tmp_path / 'one.npy'))
    np.save(tmp_path / 'three.npy', np.zeros([2, 2, 2]))
    _assert_error(r'shape \[2, 2, 2\]', str(tmp_path / 'three.npy'))
    np.save(tmp_path / 'nan.npy', np.array([[0.0, 1.0], [np.nan, 2.0]]))
    _assert_error('row 1, column 0', str(tmp_path / 'nan.npy'))
    np.save(tmp_path / 'obj.npy', np.array([[1, 'a']], dtype=object), allow_pickle=True)
    _assert_error('numeric', str(tmp_path / 'obj.npy'))
    (tmp_path / 'words.csv').write_text('x,y\n1,2\n3,oops\n')
    _assert_error("line 3: 'oops' is not a number", str(tmp_path / 'words.csv'))
    (tmp_path / 'ragged.csv').write_text('1,2\n3\n')
    _assert_error('same count', str(tmp_path / 'ragged.csv'))
    (tmp_path / 'nan.csv').write_text('1,2\nnan,3\n')
    _assert_error('NaN', str(tmp_path / 'nan.csv'))
    (tmp_path / 'empty.csv').write_text('')
    _assert_error('no data rows', str(tmp_path / 'empty.csv'))
    np.save(tmp_path / 'const.npy', np.array([[1.0, 5.0], [2.0, 5.0]]))
    _assert_error('dimension 1 is constant', str(tmp_path / 'const.npy'), normalize='standardize')
    _assert_error('Unknown normalize', str(tmp_path / 'const.npy'), normalize='minmax')
    _assert_error('mirror', str(tmp_path / 'const.npy'), mirror=True)


def test_point_fingerprint_changes_with_content(tmp_path):
    np.save(tmp_path / 'a.npy', np.zeros([3, 2]))
    np.save(tmp_path / 'b.npy', np.array([[0.0, 0], [0, 0], [0, 1e-3]]))
    assert open_dataset(str(tmp_path / 'a.npy')).fingerprint() != open_dataset(str(tmp_path / 'b.npy')).fingerprint()


# ----------------------------------------------------------------------------------------------
# Procedural shapes.


def test_shapes_dataset():
    ds = open_dataset('shapes16?n=300&labels=1')
    assert isinstance(ds, ShapesDataset) and ds.kind == 'image'
    assert len(ds) == 300 and ds.resolution == 16 and ds.num_channels == 3 and ds.label_dim == 3
    x, label = ds[0]
    assert x.dtype == np.uint8 and x.shape == (3, 16, 16) and label.shape == (3,)
    again = open_dataset('shapes16', n=300)
    xs = ds.get_batch(np.arange(300))[0].numpy()
    np.testing.assert_array_equal(xs, again.get_batch(np.arange(300))[0].numpy())
    assert again.label_dim == 0  # labels are opt-in
    assert len({img.tobytes() for img in xs}) == 300  # not all identical
    assert xs.std() > 30  # real contrast
    assert set(ds.class_labels.tolist()) == {0, 1, 2}
    # A smaller n is a prefix; another seed gives other images.
    np.testing.assert_array_equal(open_dataset('shapes16?n=10')[9][0], xs[9])
    assert not np.array_equal(open_dataset('shapes16?n=10&seed=1')[0][0], xs[0])
    m = open_dataset('shapes16?n=300', mirror=True)
    xb, _ = m.get_batch([2, 302])
    np.testing.assert_array_equal(xb[1].numpy(), xs[2][:, :, ::-1])
    np.testing.assert_array_equal(m[302][0], xs[2][:, :, ::-1])
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._blocks == {}
    np.testing.assert_array_equal(clone[5][0], xs[5])
    json.dumps(ds.info())
    assert ds.fingerprint() != open_dataset('shapes16?n=300').fingerprint()


def test_shapes32_default():
    ds = open_dataset('shapes32')
    assert len(ds) == 10000 and ds.resolution == 32 and ds.name == 'shapes32'
    x, _ = ds.get_batch(np.arange(0, 10000, 97))
    assert tuple(x.shape) == (104, 3, 32, 32)


def test_shapes_errors():
    _assert_error('power of two from 8 to 256', 'shapes48')
    _assert_error('power of two from 8 to 256', 'shapes512')
    _assert_error("Unknown option 'std'", 'shapes16?std=1')
    _assert_error('point files only', 'shapes16', normalize='standardize')
    _assert_error('not found', 'shapez32')


def test_reader_without_pyspng(labeled_folder, tmp_path, monkeypatch):
    import ganstack.stylegan_base.datasets as datasets_module
    root, images, _ = labeled_folder
    zip_path = zip_folder(root, tmp_path / 'nospng.zip')
    monkeypatch.setattr(datasets_module, 'pyspng', None)  # imageio decodes instead
    ds = open_dataset(zip_path)
    np.testing.assert_array_equal(ds.get_batch(range(6))[0].numpy(), images.transpose(0, 3, 1, 2))


def test_bad_scalar_label(tmp_path):
    root = tmp_path / 'badlabel'
    names = write_folder(str(root), random_images(2), labels=[0, 1.5])
    msg = _assert_error('non-negative class indices', str(root))
    assert names[1] in msg
