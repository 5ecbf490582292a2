"""``ganstack metrics`` and ``ganstack train-classifier`` (registered through ``ganstack.commands``).

These commands load training checkpoints, so they live in ``training/`` (above ``metrics/``, which never imports
``training/``).
"""
from __future__ import annotations

import os

import click

from ganstack.stylegan_base.errors import DatasetError


def _device(device: str) -> str:
    import torch
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _parse_detectors(values) -> dict:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if sep and name in ("inception", "vgg16"):
            out[name] = path
        elif sep and not os.path.exists(v) and "://" not in v:
            raise click.BadParameter(f"{v!r}: unknown feature network {name!r}; NAME is inception or vgg16 "
                                     f"(e.g. --detector vgg16=vgg16.pt), or give a bare path for inception.",
                                     param_hint="--detector")
        else:
            out["inception"] = v
    return out


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else str(v)


@click.command("metrics")
@click.option("--network", required=True, help="Checkpoint file or run folder (its newest snapshot).")
@click.option("--metrics", "metric_names", required=True,
              help="Comma-separated: fid50k_full, kid50k_full, pr50k3_full, is50k (any N, e.g. fid10k_full), toy, "
                   "stackedmnist (stackedmnist10k), digits_fid.")
@click.option("--data", default=None, help="Dataset to compare with [default: the one the checkpoint was trained on].")
@click.option("--detector", "detectors", multiple=True, metavar="[NAME=]PATH_OR_URL",
              help="Feature network file: inception-2015-12-05.pt (default NAME inception) or vgg16=vgg16.pt. "
                   "Also read from $GANSTACK_INCEPTION / $GANSTACK_VGG16; verified files are cached.")
@click.option("--classifier", default=None, help="Digit classifier for stackedmnist/digits_fid "
                                                "[default: $GANSTACK_DIGIT_CLASSIFIER or the one train-classifier wrote].")
@click.option("--which", type=click.Choice(["G_ema", "G"]), default="G_ema", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated samples.")
@click.option("--batch", type=int, default=64, show_default=True, help="Samples per batch.")
@click.option("--no-cache", is_flag=True, default=False, help="Recompute the real-data statistics.")
@click.option("--device", default="auto", show_default=True)
def metrics_command(network, metric_names, data, detectors, classifier, which, seed, batch, no_cache, device):
    """Compute metrics of a checkpoint; results are appended to metric-<name>.jsonl beside it.

    Fakes are drawn through the checkpoint's plugin stack (its sampler hook) and quantised to uint8;
    each result includes nfe, the generator evaluations per sample.
    """
    from ganstack.metrics import registry
    from ganstack.stylegan_base.datasets import open_dataset
    from ganstack.training.checkpoint import resolve_resume
    from ganstack.training.inference import load_model

    from ganstack.metrics.detectors import locate

    names = [m.strip() for m in metric_names.split(",") if m.strip()]
    given = _parse_detectors(detectors)
    for name in names:
        registry.lookup(name)  # unknown names and missing feature networks fail before anything runs
        for det in registry.required_detectors(name):
            locate(det, given.get(det))
    dev = _device(device)
    path = resolve_resume(network)
    model = load_model(path, device=dev, which=which)
    spec = data or model.data_info.get("spec") or model.cfg.data
    try:
        dataset = open_dataset(spec, use_labels=model.cfg.cond)
    except DatasetError as exc:
        raise DatasetError(f"{exc} (The checkpoint was trained on {spec!r}; pass --data to point at it.)") from None
    opts = registry.MetricOptions(detectors=given, classifier=classifier, cache=not no_cache,
                                  seed=seed, batch=batch, log=lambda m: click.echo(m, err=True))
    run_dir = os.path.dirname(os.path.abspath(path))
    kimg = model.checkpoint.get("cur_nimg", 0) / 1000
    for name in names:
        result = registry.compute(name, G=model.G, stack=model.stack, dataset=dataset, device=dev, cfg=model.cfg,
                                  opts=opts)
        registry.append_result(run_dir, name, result, snapshot=os.path.basename(path), kimg=kimg)
        click.echo(f"{name}: " + "  ".join(f"{k} {_fmt(v)}" for k, v in result.items()))
    click.echo(f"Appended to {run_dir}/metric-<name>.jsonl")


@click.command("train-classifier")
@click.option("--data", required=True, help="MNIST idx files (folder) or a digit zip with labels (ganstack dataset convert).")
@click.option("--out", default=None, help="Where to write the classifier [default: the cache, used by the metrics].")
@click.option("--holdout", type=int, default=2000, show_default=True, help="Digits kept out of training for the accuracy.")
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def train_classifier_command(data, out, holdout, epochs, seed):
    """Train the small MNIST classifier used by stackedmnist and digits_fid; reports held-out accuracy."""
    import torch

    from ganstack.metrics import digits

    torch.manual_seed(seed)
    images, labels, desc = digits.load_digits(data)
    click.echo(f"Training on {len(images) - holdout} of {len(images)} digits from {desc}; {holdout} held out.")
    net, info = digits.train_classifier(images, labels, holdout=holdout, epochs=epochs, seed=seed, log=click.echo)
    info["data"] = str(data)
    out = out or digits.default_path()
    digits.save_classifier(net, info, out)
    click.echo(f"Held-out accuracy: {info['accuracy'] * 100:.2f}% on {holdout} digits. Wrote {out}")
    if info["accuracy"] < 0.98:
        click.echo("warning: below 98%; mode counts will be noisy. Train longer (--epochs) or on more digits.", err=True)


__all__ = ["metrics_command", "train_classifier_command"]
