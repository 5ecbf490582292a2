"""Built-in data that needs no files: 2-D Gaussian mixtures and procedural shape images.

Everything here is plain numpy and deterministic. The random streams come from the legacy
``np.random.RandomState``, whose output numpy promises not to change between releases, so a spec
such as ``toy:gaussians25`` or ``shapes32`` means the same numbers everywhere. If you change what a
generator draws, bump its ``*_VERSION`` constant: it is part of the dataset fingerprint, which keys
the metrics cache.
"""

import math

import numpy as np

TOY_VERSION = 1
SHAPES_VERSION = 1


# ----------------------------------------------------------------------------------------------
# 2-D Gaussian mixtures.


def _grid(values):
    values = np.asarray(values, dtype=np.float64)
    xx, yy = np.meshgrid(values, values, indexing='ij')
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def _ring(num_modes, radius):
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


# name -> (centers [M, 2], std, one-line description). Equal mode weights throughout.
TOY_MIXTURES = {
    'gaussians25': (_grid([-4, -2, 0, 2, 4]), 0.05,
                    '5x5 grid on {-4,-2,0,2,4}^2, std 0.05 (VEEGAN, PacGAN)'),
    'grid49': (_grid(np.arange(-3, 4)), 0.01,
               '7x7 grid on {-3,...,3}^2, std 0.01 (SMaRt, "extremely low variance")'),
    'ring8': (_ring(8, 2.0), 0.02,
              '8 modes on a circle of radius 2, std 0.02'),
}


def toy_mixture_points(name, n, seed=0, std=None):
    """Draw the fixed point set of a built-in mixture.

    Mode ``k`` gets exactly ``n // M`` or ``n // M + 1`` points (equal weights, no sampling noise in
    the counts); the points are then shuffled. Returns ``(points float32 [n, 2], modes int64 [n],
    centers float64 [M, 2], std float)``.
    """
    centers, default_std, _ = TOY_MIXTURES[name]
    std = float(default_std if std is None else std)
    rng = np.random.RandomState(seed)
    modes = rng.permutation(np.arange(n) % len(centers)).astype(np.int64)
    points = centers[modes] + std * rng.standard_normal([n, 2])
    return points.astype(np.float32), modes, centers.copy(), std


# ----------------------------------------------------------------------------------------------
# Procedural shape images.

SHAPE_CLASSES = ('circle', 'square', 'triangle')
# Nominal area of each shape divided by size^2, used to pick the label (the largest shape).
_SHAPE_AREA = (math.pi, (2 * 0.85) ** 2, math.sqrt(3) / 4 * (2 * 1.2) ** 2)


def shapes_block_size(resolution):
    """Images generated together (and seeded together); keeps temporaries near 1 M pixels."""
    return int(max(16, min(1024, 2 ** 20 // (resolution * resolution))))


def _sdf(kind, px, py, size):
    """Signed distance in pixels (negative inside) of shape ``kind`` in its local frame."""
    if kind == 0:  # circle of radius `size`
        return np.sqrt(px * px + py * py) - size
    if kind == 1:  # square of half-side 0.85 * size
        h = 0.85 * size
        dx = np.abs(px) - h
        dy = np.abs(py) - h
        outside = np.sqrt(np.maximum(dx, 0) ** 2 + np.maximum(dy, 0) ** 2)
        return outside + np.minimum(np.maximum(dx, dy), 0)
    # Equilateral triangle of half-side r = 1.2 * size, centred on its centroid (I. Quilez).
    r = 1.2 * size
    k = math.sqrt(3)
    x = np.abs(px) - r
    y = py + r / k
    fold = x + k * y > 0
    x, y = np.where(fold, (x - k * y) / 2, x), np.where(fold, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * r, 0)
    return -np.sqrt(x * x + y * y) * np.sign(y)


def render_shapes_block(resolution, block, seed=0):
    """Render block ``block`` of the ``shapes<resolution>`` image set.

    Each image is a plain or linear-gradient background with one to three filled shapes (circle,
    square, triangle) of random colour, size, rotation and position, anti-aliased by a one-pixel
    ramp on the signed distance. Blocks are seeded independently, so any image can be made without
    making the ones before it. Returns ``(images uint8 [B, 3, R, R], labels int64 [B])`` where the
    label is the class index (see ``SHAPE_CLASSES``) of the shape with the largest nominal area.
    """
    R = int(resolution)
    B = shapes_block_size(R)
    rng = np.random.RandomState([SHAPES_VERSION, int(seed), R, int(block)])
    f32 = np.float32
    coords = (np.arange(R, dtype=f32) + 0.5)
    ys = coords[None, :, None]
    xs = coords[None, None, :]

    # Background: colour c0, or a ramp c0 -> c1 along a random direction.
    c0 = rng.uniform(0, 1, [B, 3]).astype(f32)
    c1 = rng.uniform(0, 1, [B, 3]).astype(f32)
    gradient = rng.uniform(0, 1, B) < 0.5
    angle = rng.uniform(0, 2 * np.pi, B).astype(f32)
    t = ((xs - R / 2) * np.cos(angle)[:, None, None] + (ys - R / 2) * np.sin(angle)[:, None, None]) / R + 0.5
    t = np.clip(t, 0, 1) * gradient[:, None, None]
    img = c0[:, :, None, None] + (c1 - c0)[:, :, None, None] * t[:, None]
    bg_mean = np.where(gradient[:, None], (c0 + c1) / 2, c0)

    num_shapes = rng.randint(1, 4, B)
    labels = np.zeros(B, dtype=np.int64)
    best_area = np.zeros(B)
    for slot in range(3):
        # Draw every parameter for every image so the stream does not depend on earlier draws.
        kind = rng.randint(0, 3, B)
        size = (rng.uniform(0.12, 0.28, B) * R).astype(f32)
        cx = rng.uniform(0.2, 0.8, B).astype(f32) * R
        cy = rng.uniform(0.2, 0.8, B).astype(f32) * R
        rot = rng.uniform(0, 2 * np.pi, B).astype(f32)
        color = rng.uniform(0, 1, [B, 3]).astype(f32)
        # Keep each shape visible against the background.
        too_close = np.linalg.norm(color - bg_mean, axis=1) < 0.45
        color[too_close] = (color[too_close] + 0.5) % 1.0
        active = slot < num_shapes
        for k in range(3):
            sel = np.nonzero(active & (kind == k))[0]
            if len(sel) == 0:
                continue
            cos = np.cos(rot[sel])[:, None, None]
            sin = np.sin(rot[sel])[:, None, None]
            dx = xs - cx[sel, None, None]
            dy = ys - cy[sel, None, None]
            px = cos * dx + sin * dy
            py = -sin * dx + cos * dy
            cover = np.clip(0.5 - _sdf(k, px, py, size[sel, None, None]), 0, 1)[:, None]
            img[sel] += (color[sel, :, None, None] - img[sel]) * cover
        area = np.asarray(_SHAPE_AREA)[kind] * size.astype(np.float64) ** 2
        better = active & (area > best_area)
        labels[better] = kind[better]
        best_area[better] = area[better]
    images = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return images, labels
