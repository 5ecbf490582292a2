"""Named metrics for ``ganstack train --metrics`` and ``ganstack metrics``.

Each metric draws fakes through the plugin stack's ``sampler`` hook (so multi-step samplers are
measured correctly), reports ``nfe`` (generator evaluations per sample, counted with a forward
pre-hook on G) and returns a flat dict of numbers. Results are appended as JSON lines to
``metric-<name>.jsonl`` in the run folder (beside the checkpoint).

Metrics (``Nk`` is thousands of generated samples, a plain ``N`` an exact count such as ``fid500_full`` for quick
CPU checks; the StyleGAN2-ADA names are the ``50k`` cases):

=====================  ===============================================================================
``fidNk_full``         FID, real statistics over the full dataset (Inception features)
``fidNk``              FID against the first N k real images (legacy StyleGAN2 protocol)
``kidNk_full``         KID, up to 1M reals, 100 subsets of at most 1000
``prNkK_full``         precision and recall with K-NN manifolds, up to 200k reals (VGG-16 features);
                       ``prN_K_full`` for exact counts
``isNk``               Inception Score, 10 splits
``toy``                2-D mixtures: modes covered, high-quality share, reverse KL over modes
``stackedmnist``       StackedMNIST modes covered of 1000 (noise-calibrated), hq share, KL, 26k samples (``stackedmnistNk``)
``digits_fid``         FID in the digit classifier's features, 10k samples (``digits_fidNk``)
=====================  ===============================================================================

Inception/VGG-16 come from :mod:`ganstack.metrics.detectors` (a local file, never downloaded implicitly) and the
digit classifier from :mod:`ganstack.metrics.digits` (``ganstack train-classifier``).
"""
from __future__ import annotations

import functools
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ganstack.stylegan_base.errors import GanstackError

_METRICS: dict[str, Callable] = {}
MAX_SAMPLES = 10_000_000  # samples one metric may ask for
_PATTERNS: list[tuple[re.Pattern, Callable, str]] = []


def register(name: str):
    """Register a metric under a fixed name: ``fn(G, stack, dataset, device, cfg=None, opts=None)``."""
    def deco(fn):
        _METRICS[name] = fn
        return fn
    return deco


def register_pattern(pattern: str, example: str):
    """Register a family of metrics: ``fn(match, G, stack, dataset, device, ...)`` for names matching ``pattern``."""
    def deco(fn):
        _PATTERNS.append((re.compile(pattern + r"$"), fn, example))
        return fn
    return deco


def available() -> list[str]:
    return sorted(_METRICS) + [example for _, _, example in _PATTERNS]


def lookup(name: str) -> Callable:
    if name in _METRICS:
        return _METRICS[name]
    for regex, fn, _ in _PATTERNS:
        m = regex.match(name)
        if m:
            return functools.partial(fn, m)
    raise GanstackError(f"Unknown metric {name!r}. Available: {', '.join(available())} "
                        f"(N = thousands of samples, K = neighbourhood size, e.g. fid10k_full, pr50k3_full).")


def required_detectors(name: str) -> set:
    """Feature networks metric ``name`` loads (checked before any metric runs)."""
    if re.match(r"(fid|kid|is)\d", name):
        return {"inception"}
    if re.match(r"pr\d", name):
        return {"vgg16"}
    return set()


def needs_classifier(name: str) -> bool:
    """Whether metric ``name`` uses the project's digit classifier."""
    return bool(re.match(r"(stackedmnist|digits_fid)", name))


def check_applicable(name: str, data_info: dict) -> None:
    """Raise now if metric ``name`` does not exist, cannot run on data described by ``data_info`` (a dataset's
    ``info()``), or asks for an unusable sample count, so that a run fails before training, not at its
    first checkpoint."""
    lookup(name)
    kind = data_info.get("kind")
    if name == "toy":
        if kind != "points" or not (data_info.get("toy") or {}).get("centers"):
            raise GanstackError(f"metric 'toy' needs a built-in 2-D mixture (toy:gaussians25, toy:grid49, toy:ring8); "
                                f"{data_info.get('name')!r} has no known mode centers.")
        return
    if kind != "image":
        raise GanstackError(f"metric {name!r} measures images, but {data_info.get('name')!r} holds {kind}; "
                            f"use toy for the built-in 2-D mixtures.")
    for regex, _, _ in _PATTERNS:
        m = regex.match(name)
        if m:
            if m.group(1) is not None:
                _count(m)  # the sample count is sane
            return


@dataclass
class MetricOptions:
    """Where the metrics find their networks, and how they sample.

    ``detectors`` maps a feature network name (``inception``, ``vgg16``) to a path or URL; missing
    entries fall back to ``GANSTACK_INCEPTION`` / ``GANSTACK_VGG16`` and the cache. ``classifier`` is
    the digit classifier file (default ``GANSTACK_DIGIT_CLASSIFIER`` or the cache).
    """

    detectors: dict = field(default_factory=dict)
    classifier: Optional[str] = None
    cache: bool = True
    cache_dir: Optional[str] = None
    seed: int = 0
    batch: int = 64
    G_kwargs: dict = field(default_factory=dict)
    log: Callable = print


@torch.no_grad()
def draw_samples(G, stack, n: int, device, c_sampler=None, seed: int = 0, batch: int = 256, **G_kwargs) -> torch.Tensor:
    """``n`` fakes through the sampler hook with a private generator (global RNG is forked)."""
    from ganstack.metrics.features import iter_fakes

    return torch.cat(list(iter_fakes(G, stack, n, device, seed=seed, batch=batch, c_sampler=c_sampler, **G_kwargs)))


def _count(match, group: int = 1, default: Optional[int] = None) -> int:
    """``50k`` -> 50000, ``200`` -> 200 (exact counts, for quick CPU checks)."""
    if match.group(group) is None:
        return default
    num = int(match.group(group)) * (1000 if match.group(group + 1) == "k" else 1)
    if num > MAX_SAMPLES:
        raise GanstackError(f"Metric {match.group(0)!r} asks for {num:,} samples; at most {MAX_SAMPLES:,} are "
                            f"supported (the standard protocol uses 50k).")
    if num < 10:
        raise GanstackError(f"Metric {match.group(0)!r} asks for {num} samples; the estimators need more "
                          f"(e.g. {match.group(0).replace(match.group(group), '10', 1)} or the standard 50k).")
    return num


def _need_images(name: str, dataset):
    if dataset.info()["kind"] != "image":
        raise GanstackError(f"Metric {name!r} measures images, but {dataset.spec!r} holds points; "
                            f"use --metrics toy for 2-D mixtures.")


def _labels(G, dataset):
    from ganstack.metrics.features import label_sampler
    return label_sampler(G, dataset)


# ------------------------------------------------------------------------------------------------
# 2-D mixtures

@register("toy")
def toy_metric(G, stack, dataset, device, cfg=None, opts=None, num_samples: int = 2500, **_):
    """Modes covered (a mode holds >= 1/4 of its ideal share as high-quality samples), high-quality share,
    reverse KL over modes, mean distance, and the loose count ``modes_loose`` for 2-D mixtures (``metrics/toy.py``)."""
    from ganstack.metrics.features import ForwardCounter, iter_fakes
    from ganstack.metrics.toy import mixture_metrics

    info = dataset.info()
    toy = info.get("toy") or {}
    if info["kind"] != "points" or toy.get("centers") is None:
        raise GanstackError(f"Metric 'toy' needs a built-in 2-D mixture (toy:gaussians25, toy:grid49, toy:ring8); "
                            f"{info.get('name')!r} has no known mode centers.")
    seed = opts.seed if opts is not None else 0
    counter = ForwardCounter(G)
    x = torch.cat(list(iter_fakes(G, stack, num_samples, device, seed=seed, batch=256, counter=counter,
                                  c_sampler=_labels(G, dataset)))).cpu().numpy()
    result = mixture_metrics(x, np.asarray(toy["centers"]), float(toy["std"]))
    result["nfe"] = counter.nfe(num_samples)
    return result


# ------------------------------------------------------------------------------------------------
# Inception / VGG-16 metrics (StyleGAN2-ADA protocol)

def _detector(name: str, opts: MetricOptions, device):
    from ganstack.metrics.detectors import load_detector
    return load_detector(name, opts.detectors.get(name), device=device, log=opts.log)


def _features(det, **kwargs):
    tag = ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
    return (lambda img: det(img, **kwargs)), f"{det.sha256}:{tag}"


def _real(dataset, det, kwargs, opts, device, **stats_kwargs):
    from ganstack.metrics.features import real_stats
    extractor, ident = _features(det, **kwargs)
    return real_stats(dataset, lambda x: extractor(x.to(device)), det.name, ident, device=device, batch=opts.batch,
                      cache=opts.cache, cache_dir=opts.cache_dir, log=opts.log, **stats_kwargs)


def _gen(G, stack, dataset, det, kwargs, opts, device, num_gen, **stats_kwargs):
    from ganstack.metrics.features import generated_stats
    extractor, _ = _features(det, **kwargs)
    return generated_stats(G, stack, extractor, num_gen, device, seed=opts.seed, batch=opts.batch,
                           c_sampler=_labels(G, dataset), G_kwargs=opts.G_kwargs, **stats_kwargs)


def _detector_setup(match, dataset, detector: str, opts, device):
    """Common start of the feature-network metrics: name, options, sample count and the verified detector."""
    name = match.group(0)
    _need_images(name, dataset)
    opts = opts or MetricOptions()
    return name, opts, _count(match), _detector(detector, opts, device)


@register_pattern(r"fid(\d+)(k?)(_full)?", "fidNk_full")
def fid_metric(match, G, stack, dataset, device, cfg=None, opts=None, **_):
    from ganstack.metrics.formulas import frechet_distance
    name, opts, num, det = _detector_setup(match, dataset, "inception", opts, device)
    kw = dict(return_features=True)
    real = _real(dataset, det, kw, opts, device, capture_mean_cov=True, max_items=None if match.group(3) else num)
    gen, nfe = _gen(G, stack, dataset, det, kw, opts, device, num, capture_mean_cov=True)
    fid = frechet_distance(*gen.get_mean_cov(), *real.get_mean_cov())
    return {name: fid, "num_real": real.num_items, "nfe": nfe, "detector_sha256": det.sha256}


@register_pattern(r"kid(\d+)(k?)(_full)?", "kidNk_full")
def kid_metric(match, G, stack, dataset, device, cfg=None, opts=None, **_):
    from ganstack.metrics.formulas import kernel_distance
    name, opts, num, det = _detector_setup(match, dataset, "inception", opts, device)
    kw = dict(return_features=True)
    real = _real(dataset, det, kw, opts, device, capture_all=True, max_items=1000000 if match.group(3) else num)
    gen, nfe = _gen(G, stack, dataset, det, kw, opts, device, num, capture_all=True)
    kid = kernel_distance(real.get_all(), gen.get_all(), num_subsets=100, max_subset_size=1000,
                          rng=np.random.default_rng(opts.seed))
    return {name: kid, "num_real": real.num_items, "nfe": nfe, "detector_sha256": det.sha256}


@register_pattern(r"pr(\d+)(k|_)(\d)(_full)?", "prNkK_full")
def pr_metric(match, G, stack, dataset, device, cfg=None, opts=None, **_):
    from ganstack.metrics.formulas import precision_recall
    name, opts, num, det = _detector_setup(match, dataset, "vgg16", opts, device)
    k = int(match.group(3))
    kw = dict(return_features=True)
    real = _real(dataset, det, kw, opts, device, capture_all=True, max_items=200000 if match.group(4) else num)
    gen, nfe = _gen(G, stack, dataset, det, kw, opts, device, num, capture_all=True)
    precision, recall = precision_recall(real.get_all(), gen.get_all(), k=k, device=device)
    return {f"{name}_precision": precision, f"{name}_recall": recall, "num_real": real.num_items, "nfe": nfe,
            "detector_sha256": det.sha256}


@register_pattern(r"is(\d+)(k?)", "isNk")
def is_metric(match, G, stack, dataset, device, cfg=None, opts=None, **_):
    from ganstack.metrics.formulas import inception_score
    name, opts, num, det = _detector_setup(match, dataset, "inception", opts, device)
    # no_output_bias: the original Inception Score code drops the softmax layer's bias.
    gen, nfe = _gen(G, stack, dataset, det, dict(no_output_bias=True), opts, device, num, capture_all=True)
    mean, std = inception_score(gen.get_all(), num_splits=10)
    return {f"{name}_mean": mean, f"{name}_std": std, "nfe": nfe, "detector_sha256": det.sha256}


# ------------------------------------------------------------------------------------------------
# Digits (the project's own classifier; no download)

def _digit_setup(match, dataset, device, opts, default: int):
    """Common start of the digit metrics: options, sample count and the (verified) digit classifier."""
    from ganstack.metrics.digits import load_classifier

    _need_images(match.group(0), dataset)
    opts = opts or MetricOptions()
    net, digest = load_classifier(opts.classifier, device)
    return opts, _count(match, default=default), net, digest


@register_pattern(r"stackedmnist(?:(\d+)(k?))?", "stackedmnist")
def stackedmnist_metric(match, G, stack, dataset, device, cfg=None, opts=None, **_):
    """Modes out of ``10^C`` (1000 for RGB StackedMNIST), calibrated against noise, and KL(q || uniform), 26k samples.

    ``modes_covered`` and ``hq_share`` count only samples the classifier is sure of on every channel
    (``metrics/digits.py``: noise passes the papers' count, kept as ``modes_protocol``).
    """
    from ganstack.metrics.digits import mode_histograms, stacked_mode_metrics
    from ganstack.metrics.features import ForwardCounter, iter_fakes, quantize

    opts, num, net, digest = _digit_setup(match, dataset, device, opts, default=26000)
    channels = dataset.info()["num_channels"]
    counter = ForwardCounter(G)
    batches = (quantize(img) for img in iter_fakes(G, stack, num, device, seed=opts.seed, batch=opts.batch,
                                                  c_sampler=_labels(G, dataset), counter=counter, **opts.G_kwargs))
    res = stacked_mode_metrics(*mode_histograms(net, batches, channels))
    return {**res, "nfe": counter.nfe(num), "classifier_sha256": digest}


@register_pattern(r"digits_fid(?:(\d+)(k?))?", "digits_fid")
def digits_fid_metric(match, G, stack, dataset, device, cfg=None, opts=None, **_):
    """FID in the digit classifier's penultimate features (per channel, concatenated); 10k fakes by default."""
    from ganstack.metrics.digits import channel_features
    from ganstack.metrics.features import generated_stats, real_stats
    from ganstack.metrics.formulas import frechet_distance

    opts, num, net, digest = _digit_setup(match, dataset, device, opts, default=10000)

    def extractor(img):
        return channel_features(net, img.to(device))

    real = real_stats(dataset, extractor, "digitclf", f"{digest}:penultimate", capture_mean_cov=True, device=device,
                      batch=opts.batch, cache=opts.cache, cache_dir=opts.cache_dir, log=opts.log)
    gen, nfe = generated_stats(G, stack, extractor, num, device, seed=opts.seed, batch=opts.batch,
                               c_sampler=_labels(G, dataset), capture_mean_cov=True, G_kwargs=opts.G_kwargs)
    fid = frechet_distance(*gen.get_mean_cov(), *real.get_mean_cov())
    return {"digits_fid": fid, "num_real": real.num_items, "num_samples": num, "nfe": nfe, "classifier_sha256": digest}


# ------------------------------------------------------------------------------------------------
# Direction of each reported number (for tables that mark the best)

_HIGHER = re.compile(r"(^|_)(modes|modes_covered|hq_share|precision|recall|mean|accuracy)$")
_LOWER = re.compile(r"(^|_)(kl_modes|kl_uniform|mean_dist)$|^(fid|kid|digits_fid)\d*k?(_full)?$")


def direction(key: str) -> int:
    """+1 if a larger value of result ``key`` is better, -1 if smaller is better, 0 if neither (counts, nfe)."""
    if key in ("nfe", "sec", "num_modes", "num_samples", "num_real", "modes_loose", "modes_protocol", "mode_threshold") or key.endswith("_std") or key.endswith("sha256"):
        return 0
    if _LOWER.search(key):
        return -1
    if _HIGHER.search(key):
        return 1
    return 0


# ------------------------------------------------------------------------------------------------

def compute(name: str, **kwargs) -> dict:
    """Run metric ``name`` with ``G, stack, dataset, device`` (and optionally ``cfg``, ``opts``)."""
    fn = lookup(name)
    t0 = time.time()
    result = fn(**kwargs)
    result["sec"] = time.time() - t0
    return result


def append_result(run_dir: str, name: str, result: dict, snapshot: str, kimg: float) -> str:
    """Append one JSON line to ``<run_dir>/metric-<name>.jsonl`` (and to TensorBoard if the run uses it)."""
    path = os.path.join(run_dir, f"metric-{name}.jsonl")
    cut = False  # a previous line cut off (full disk, kill) must not swallow this one
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
    line = json.dumps({"metric": name, "results": result, "snapshot": snapshot, "kimg": kimg, "timestamp": time.time()})
    with open(path, "at") as f:
        f.write(("\n" if cut else "") + line + "\n")
    _tensorboard(run_dir, name, result, kimg)
    return path


def _tensorboard(run_dir: str, name: str, result: dict, kimg: float) -> None:
    try:
        with open(os.path.join(run_dir, "training_options.json")) as f:
            wanted = json.load(f).get("config", {}).get("tensorboard", False)
    except (OSError, ValueError):
        return
    if not wanted:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return  # the training loop already told the user how to install it
    with SummaryWriter(run_dir, filename_suffix=".metrics") as w:
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                w.add_scalar(f"Metrics/{name}/{key}", value, global_step=int(kimg))


def read_results(run_dir: str) -> list[dict]:
    """Every JSON line of every ``metric-*.jsonl`` in ``run_dir``."""
    out = []
    if not os.path.isdir(run_dir):
        return out
    for fname in sorted(os.listdir(run_dir)):
        if fname.startswith("metric-") and fname.endswith(".jsonl"):
            with open(os.path.join(run_dir, fname)) as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass  # blank, or a line cut off by a full disk or a kill: not a result
    return [r for r in out if isinstance(r, dict) and "metric" in r]
