"""``ganstack metrics`` and ``ganstack train-classifier`` (registered through ``ganstack.commands``).

These commands load training checkpoints, so they live in ``training/`` (above ``metrics/``, which never imports
``training/``).
"""
from __future__ import annotations

import os

import click

from ganstack.stylegan_base.cli_support import (DEVICE, SEED, InputError, check_output_dir, check_output_file,
                                               int_range, resolve_device)
from ganstack.stylegan_base.errors import DatasetError, GanstackError


def _parse_detectors(values) -> dict:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if sep and name in ("inception", "vgg16"):
            if not path.strip():
                raise click.BadParameter(f"{v!r} gives no path; write {name}=/path/to/file.", param_hint="--detector")
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
@click.option("--network", required=True,
              help="Checkpoint file, run folder (its newest snapshot) or official StyleGAN2-ADA .pkl.")
@click.option("--metrics", "metric_names", required=True,
              help="Comma-separated: fid50k_full, kid50k_full, pr50k3_full, is50k (any N, e.g. fid10k_full), toy, "
                   "stackedmnist (stackedmnist10k), digits_fid.")
@click.option("--data", default=None, help="Dataset to compare with [default: the one the checkpoint was trained on].")
@click.option("--detector", "detectors", multiple=True, metavar="[NAME=]PATH_OR_URL",
              help="Feature network file: inception-2015-12-05.pt (default NAME inception) or vgg16=vgg16.pt. "
                   "Also read from $GANSTACK_INCEPTION / $GANSTACK_VGG16; files that load are cached.")
@click.option("--classifier", default=None, help="Digit classifier for stackedmnist/digits_fid "
                                                "[default: $GANSTACK_DIGIT_CLASSIFIER or the one train-classifier wrote].")
@click.option("--which", type=click.Choice(["G_ema", "G"]), default="G_ema", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the generated samples.")
@click.option("--batch", type=int_range(1, 65536), default=64, show_default=True, help="Samples per batch.")
@click.option("--no-cache", is_flag=True, default=False, help="Recompute the real-data statistics.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
def metrics_command(network, metric_names, data, detectors, classifier, which, seed, batch, no_cache, device):
    """Compute metrics of a checkpoint; results are appended to metric-<name>.jsonl beside it.

    Fakes are drawn through the checkpoint's plugin stack (its sampler hook) and quantised to uint8;
    each result includes nfe, the generator evaluations per sample. Every metric is checked (name, data
    kind, feature networks) before the first one runs.
    """
    from ganstack.metrics import registry
    from ganstack.stylegan_base.datasets import open_dataset
    from ganstack.training.checkpoint import resolve_resume
    from ganstack.training.inference import load_model
    from ganstack.training.preflight import check_metrics

    names = list(dict.fromkeys(m.strip() for m in metric_names.split(",") if m.strip()))
    if not names:
        raise InputError(f"--metrics {metric_names!r} names no metric. Available: {', '.join(registry.available())}.")
    given = _parse_detectors(detectors)
    for name in names:
        try:
            registry.lookup(name)  # unknown names fail before anything is loaded
        except GanstackError as exc:
            raise type(exc)(f"--metrics: {exc}") from None
    dev = resolve_device(device)
    path = resolve_resume(network, "--network")
    run_dir = os.path.dirname(os.path.abspath(path))
    check_output_dir(run_dir, "--network (results go beside the checkpoint)")
    model = load_model(path, device=dev, which=which, flag="--network")
    spec = data or model.data_info.get("spec") or model.cfg.data
    try:
        dataset = open_dataset(spec, use_labels=model.cfg.cond)
    except DatasetError as exc:
        raise DatasetError(f"{exc} (The checkpoint was trained on {spec!r}; pass --data to point at it.)") from None
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    # Names, data fit, feature networks and classifier: all checked before the first metric runs.
    check_metrics(names, dataset.info(), flag="--metrics", detectors=given, classifier=classifier, device=dev, log=log)
    opts = registry.MetricOptions(detectors=given, classifier=classifier, cache=not no_cache,
                                  seed=seed, batch=batch, log=log)
    kimg = model.checkpoint.get("cur_nimg", 0) / 1000
    written = []
    for name in names:
        result = registry.compute(name, G=model.G, stack=model.stack, dataset=dataset, device=dev, cfg=model.cfg,
                                  opts=opts)
        out = registry.append_result(run_dir, name, result, snapshot=os.path.basename(path), kimg=kimg)
        written.append(out)
        click.echo(f"{name}: " + "  ".join(f"{k} {_fmt(v)}" for k, v in result.items()))
    click.echo("Appended to " + ", ".join(written))


@click.command("train-classifier")
@click.option("--data", required=True, help="MNIST idx files (folder) or a digit zip with labels (ganstack dataset convert).")
@click.option("--out", default=None, help="Where to write the classifier [default: the cache, used by the metrics].")
@click.option("--holdout", type=int_range(1), default=2000, show_default=True, help="Digits kept out of training for the accuracy.")
@click.option("--epochs", type=int_range(1, 10000), default=5, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
def train_classifier_command(data, out, holdout, epochs, seed):
    """Train the small MNIST classifier used by stackedmnist and digits_fid; reports held-out accuracy."""
    import torch

    from ganstack.metrics import digits

    out = check_output_file(out or digits.default_path(), "--out")
    torch.manual_seed(seed)
    images, labels, desc = digits.load_digits(data)
    click.echo(f"Training on {len(images) - holdout} of {len(images)} digits from {desc}; {holdout} held out.")
    net, info = digits.train_classifier(images, labels, holdout=holdout, epochs=epochs, seed=seed, log=click.echo)
    info["data"] = str(data)
    digits.save_classifier(net, info, out)
    click.echo(f"Held-out accuracy: {info['accuracy'] * 100:.2f}% on {holdout} digits. Wrote {out}")
    if info["accuracy"] < 0.98:
        click.echo("warning: below 98%; mode counts will be noisy. Train longer (--epochs) or on more digits.", err=True)


__all__ = ["metrics_command", "train_classifier_command"]
