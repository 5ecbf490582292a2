"""Digit metrics that need no download: a small MNIST classifier trained by the project.

* :class:`DigitClassifier` - a LeNet-style CNN on 32x32 digits in [-1, 1] (MNIST zero-padded from 28
  to 32, the ``ganstack dataset convert`` layout). Its 128-D penultimate layer is the feature space of
  ``digits_fid``.
* :func:`train_classifier` - ``ganstack train-classifier``: trains on part of a digit set (MNIST idx
  files or a digit zip with labels) and reports accuracy on the held-out rest.
* :func:`mode_histogram` - StackedMNIST mode counting: every channel is classified on its own and an
  image with digits ``(d_R, d_G, d_B)`` falls in mode ``100 d_R + 10 d_G + d_B`` of 1000 (VEEGAN,
  PacGAN; Table 3 of the Denoising Diffusion GAN paper). A 1-channel image has 10 modes.
* :func:`stacked_mode_metrics` - the calibrated figures. The papers' count (a mode with at least one
  sample) is passed by noise: with this classifier, on 10k samples, uniform noise scores 139 of 1000
  and the mean image plus noise 285 (``benchmarks/stackedmnist_calibration.py``), since the argmax of a
  digit classifier always names some digit. So, as for the toy mixtures, a sample is *high quality* only when every
  channel's digit has probability >= ``CONFIDENCE`` (0.5: 93% of real 16x16 StackedMNIST images, at most
  9.5% of the noise images), and a mode is covered only when its high-quality samples make up at least a
  quarter of its ideal share. The papers' count is kept as ``modes_protocol``, a labelled secondary figure.

The classifier file is found by ``--classifier PATH``, the environment variable
``GANSTACK_DIGIT_CLASSIFIER``, or ``$GANSTACK_CACHE/digit-classifier.pt`` (where
``ganstack train-classifier`` writes it by default).
"""
from __future__ import annotations

import math
import os
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ganstack.stylegan_base.errors import GanstackError

FORMAT = "ganstack.digit-classifier"
VERSION = 1
ENV = "GANSTACK_DIGIT_CLASSIFIER"


class ClassifierError(GanstackError):
    """The digit classifier is missing, unreadable, or cannot be used on these images."""


class DigitClassifier(torch.nn.Module):
    """conv5-20, pool, conv5-50, pool, fc-128 (features), fc-10. Input ``[N, 1, 32, 32]`` in [-1, 1]."""

    def __init__(self, width1: int = 20, width2: int = 50, features: int = 128, num_classes: int = 10):
        super().__init__()
        self.arch = dict(width1=width1, width2=width2, features=features, num_classes=num_classes)
        self.conv1 = torch.nn.Conv2d(1, width1, 5, padding=2)
        self.conv2 = torch.nn.Conv2d(width1, width2, 5, padding=2)
        self.fc1 = torch.nn.Linear(width2 * 8 * 8, features)
        self.fc2 = torch.nn.Linear(features, num_classes)
        self.feature_dim = features

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        feat = F.relu(self.fc1(x.flatten(1)))
        if return_features:
            return feat
        return self.fc2(F.dropout(feat, 0.3, self.training))


def to_input(img_uint8: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, 1, H, W]`` to the classifier's ``float [N, 1, 32, 32]`` in [-1, 1]."""
    x = img_uint8.float() / 127.5 - 1
    if x.shape[-1] != 32 or x.shape[-2] != 32:
        x = F.interpolate(x, size=(32, 32), mode="area" if x.shape[-1] > 32 else "bilinear", align_corners=None)
    return x


# ------------------------------------------------------------------------------------------------
# Data

def load_digits(path: str) -> tuple[np.ndarray, np.ndarray, str]:
    """``(images uint8 [N, 1, 32, 32], labels int64 [N], description)`` from MNIST idx files or a digit zip."""
    from ganstack.stylegan_base.dataset_tool import _is_mnist_dir, open_source
    from ganstack.stylegan_base.datasets import open_dataset

    if os.path.isdir(path) and _is_mnist_dir(path) or os.path.basename(path).endswith(("-ubyte", "-ubyte.gz")):
        src = open_source(path)
        images, labels = [], []
        for _, img, label in src.items():
            images.append(img)
            labels.append(label)
        x = np.stack(images)[:, None]
        return x, np.asarray(labels, np.int64), src.description
    ds = open_dataset(path, use_labels=True)
    info = ds.info()
    if info["kind"] != "image" or ds.class_labels is None:
        raise ClassifierError(f"{path!r} is not a labelled digit image set. Give MNIST idx files (a folder with "
                              f"*-images-idx3-ubyte[.gz] and *-labels-idx1-ubyte[.gz]) or a zip written by "
                              f"'ganstack dataset convert --source MNIST_FOLDER'.")
    labels = ds.class_labels
    if ds.num_classes != 10 or labels.max() > 9:
        raise ClassifierError(f"{path!r} has {ds.num_classes} classes; the digit classifier needs the 10 MNIST "
                              f"digits (for StackedMNIST, train on plain MNIST: the metric classifies each channel).")
    x, _ = ds.get_batch(np.arange(len(ds)))
    x = x.numpy()
    if x.shape[1] == 3:
        x = np.rint(x.mean(1, keepdims=True)).astype(np.uint8)  # grayscale digits stored as RGB
    return x, labels.astype(np.int64), f"{path} ({len(ds)} images)"


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translations by up to ``max_shift`` pixels (pads with the background value -1)."""
    n = x.shape[0]
    pad = F.pad(x, [max_shift] * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    h, w = x.shape[-2:]
    rows = (dy[:, None] + torch.arange(h)[None, :])  # [n, h]
    cols = (dx[:, None] + torch.arange(w)[None, :])  # [n, w]
    idx_n = torch.arange(n)[:, None, None]
    return pad[idx_n, 0, rows[:, :, None], cols[:, None, :]][:, None]


def train_classifier(images: np.ndarray, labels: np.ndarray, holdout: int = 2000, epochs: int = 5,
                     batch: int = 64, lr: float = 2e-3, seed: int = 0, log=print) -> tuple[DigitClassifier, dict]:
    """Train on all but ``holdout`` images (a fixed random split) and measure accuracy on the rest."""
    n = len(images)
    if not 0 < holdout < n:
        raise ClassifierError(f"--holdout {holdout} must be between 1 and {n - 1} (the set has {n} digits).")
    perm = np.random.RandomState(seed).permutation(n)
    test_idx, train_idx = perm[:holdout], perm[holdout:]
    x_all = to_input(torch.from_numpy(np.ascontiguousarray(images)))
    y_all = torch.from_numpy(labels)
    x_tr, y_tr = x_all[train_idx], y_all[train_idx]
    x_te, y_te = x_all[test_idx], y_all[test_idx]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = DigitClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x_tr) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            xb = _shift(x_tr[idx], gen)
            loss = F.cross_entropy(net(xb), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        acc = accuracy(net, x_te, y_te)
        log(f"epoch {epoch + 1:2d}/{epochs}  train loss {total / len(x_tr):.4f}  held-out accuracy {acc * 100:.2f}%  "
            f"({time.time() - t0:.0f} s)")
    net.eval()
    info = dict(accuracy=accuracy(net, x_te, y_te), train_size=len(train_idx), holdout=holdout, epochs=epochs,
                seed=seed, seconds=time.time() - t0)
    return net, info


@torch.no_grad()
def accuracy(net, x, y, batch: int = 1000) -> float:
    was = net.training
    net.eval()
    correct = sum(int((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    net.train(was)
    return correct / len(x)


# ------------------------------------------------------------------------------------------------
# Files

def default_path() -> str:
    from ganstack.metrics.detectors import cache_root
    return os.path.join(cache_root(), "digit-classifier.pt")


def save_classifier(net: DigitClassifier, info: dict, path: str) -> None:
    from ganstack.stylegan_base.cli_support import atomic_path
    with atomic_path(path) as tmp:  # removed on failure; an older classifier survives
        torch.save(dict(format=FORMAT, version=VERSION, arch=net.arch, state_dict=net.state_dict(), info=info), tmp)


_loaded: dict = {}


def load_classifier(path: Optional[str] = None, device="cpu") -> tuple[DigitClassifier, str]:
    """Load the classifier (``path``, else ``$GANSTACK_DIGIT_CLASSIFIER``, else the cache); ``(net, sha256)``."""
    from ganstack.metrics.detectors import file_sha256

    path = path or os.environ.get(ENV) or default_path()
    if not os.path.isfile(path):
        raise ClassifierError(
            f"Digit metrics (stackedmnist, digits_fid) need the project's MNIST classifier, and {path!r} does not "
            f"exist. Train it once (a few minutes on a CPU) with 'ganstack train-classifier --data "
            f"../shared/data/mnist' (MNIST idx files or a digit zip), which writes {default_path()}; or pass "
            f"--classifier PATH / set {ENV}=PATH.")
    digest = file_sha256(path)
    key = (digest, str(device))
    if key not in _loaded:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - no torch advice to load untrusted files unsafely
            from ganstack.stylegan_base.cli_support import describe_load_error
            raise ClassifierError(f"{path!r} could not be read as a digit classifier: it "
                                  f"{describe_load_error(exc, path)}. Write one with 'ganstack train-classifier'.") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            raise ClassifierError(f"{path!r} is not a ganstack digit classifier; write one with 'ganstack train-classifier'.")
        try:
            net = DigitClassifier(**ckpt["arch"])
            net.load_state_dict(ckpt["state_dict"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise ClassifierError(f"{path!r} is a damaged digit classifier ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); write it again with "
                                  f"'ganstack train-classifier'.") from None
        net.eval().requires_grad_(False).to(device)
        _loaded[key] = (net, digest)
    return _loaded[key]


# ------------------------------------------------------------------------------------------------
# Metrics on uint8 images

@torch.no_grad()
def classify_channels(net: DigitClassifier, img_uint8: torch.Tensor) -> torch.Tensor:
    """Digit of every channel: ``uint8 [N, C, H, W]`` -> ``int64 [N, C]``."""
    return classify_channels_confidence(net, img_uint8)[0]


@torch.no_grad()
def channel_features(net: DigitClassifier, img_uint8: torch.Tensor) -> torch.Tensor:
    """Penultimate features of every channel, concatenated: ``[N, C * 128]``."""
    n, c = img_uint8.shape[:2]
    x = to_input(img_uint8.reshape(n * c, 1, *img_uint8.shape[2:]))
    return net(x, return_features=True).reshape(n, -1)


def mode_of(digits: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` digits to the mode index ``sum_k d_k 10^(C-1-k)`` (``100 d_R + 10 d_G + d_B``)."""
    c = digits.shape[1]
    weights = torch.tensor([10 ** (c - 1 - k) for k in range(c)], device=digits.device)
    return (digits * weights).sum(1)


CONFIDENCE = 0.5  # a channel's digit is trusted when the classifier gives it at least this probability
MIN_SHARE = 0.25  # a mode is covered when it holds this fraction of its ideal share in high-quality samples


@torch.no_grad()
def classify_channels_confidence(net: DigitClassifier, img_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit and its probability for every channel: ``uint8 [N, C, H, W]`` -> ``(int64 [N, C], float [N, C])``."""
    n, c = img_uint8.shape[:2]
    x = to_input(img_uint8.reshape(n * c, 1, *img_uint8.shape[2:]))
    prob, digit = torch.softmax(net(x).float(), 1).max(1)
    return digit.reshape(n, c), prob.reshape(n, c)


def mode_predictions(net: DigitClassifier, batches) -> tuple[np.ndarray, np.ndarray]:
    """``(mode, min_prob)`` per sample for an iterable of uint8 image batches: the sample's mode and the lowest
    probability the classifier gives any of its channels' digits."""
    modes, probs = [], []
    for img in batches:
        digit, prob = classify_channels_confidence(net, img)
        modes.append(mode_of(digit).cpu().numpy())
        probs.append(prob.min(1).values.cpu().numpy())
    return np.concatenate(modes), np.concatenate(probs)


def mode_histograms(net: DigitClassifier, batches, num_channels: int, confidence: float = CONFIDENCE,
                    predictions: Optional[tuple] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, hq_counts)`` over the ``10 ** num_channels`` modes for an iterable of uint8 image batches.

    ``counts`` holds every sample's mode (the papers' protocol); ``hq_counts`` only the samples whose every
    channel's digit has probability >= ``confidence``. ``predictions`` (from :func:`mode_predictions`)
    skips the classification.
    """
    modes, min_prob = predictions if predictions is not None else mode_predictions(net, batches)
    size = 10 ** num_channels
    return (np.bincount(modes, minlength=size).astype(np.int64),
            np.bincount(modes[min_prob >= confidence], minlength=size).astype(np.int64))


def mode_histogram(net: DigitClassifier, batches, num_channels: int) -> np.ndarray:
    """Counts over the ``10 ** num_channels`` modes for an iterable of uint8 image batches (the papers' protocol)."""
    return mode_histograms(net, batches, num_channels)[0]


def stacked_mode_metrics(counts: np.ndarray, hq_counts: np.ndarray, min_share: float = MIN_SHARE) -> dict:
    """The calibrated StackedMNIST figures from :func:`mode_histograms`'s two histograms.

    ``modes_covered``: modes whose high-quality samples reach ``min_share`` of the ideal ``n / M``;
    ``hq_share``: the share of high-quality samples; ``kl_uniform``: KL(q || uniform) of all samples' modes
    (the papers'); ``modes_protocol``: modes with at least one sample (the papers' count; noise passes it).
    """
    from ganstack.metrics.formulas import categorical_kl

    if not 0 < min_share <= 1:
        raise ValueError(f"min_share is a fraction of the ideal share 1/M in (0, 1], got {min_share}")
    n, m = int(counts.sum()), len(counts)
    if n == 0:
        raise ValueError("no samples were classified")
    threshold = min_share * n / m
    return {"modes_covered": int((hq_counts >= threshold).sum()), "num_modes": m,
            "hq_share": float(hq_counts.sum() / n), "kl_uniform": categorical_kl(counts),
            "modes_protocol": int((counts > 0).sum()), "mode_threshold": int(math.ceil(threshold)),
            "num_samples": n}
