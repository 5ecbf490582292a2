"""Score-model checkpoints: one self-describing file, written atomically, loaded without running code.

A file written by ``ganstack train-score`` (``score-snapshot-<kimg>.pt``) is a dict with

* ``format = "ganstack.score_model"`` and ``version`` (checked on load);
* ``arch`` (network name and constructor arguments) and ``sigma_data``: enough to rebuild it;
* ``model``: the EMA weights, the ones a user of the model gets;
* ``data``: the training set's description (kind, resolution, channels, point_dim, label_dim, name);
* ``training``: the raw weights, the optimizer, counters, options and RNG states, for ``--resume``.

It is read with ``torch.load(weights_only=True)``. Errors a user can cause (missing file, a GAN
checkpoint or another file given instead, a model of another resolution) are
:class:`~ganstack.stylegan_base.errors.CheckpointError` with a message that says what to do.
"""
from __future__ import annotations

from typing import Optional

import torch

from ganstack.stylegan_base.errors import CheckpointError
from ganstack.training import checkpoint as ckpt_io

FORMAT = "ganstack.score_model"
VERSION = 1
SNAPSHOT_PREFIX = "score-snapshot-"
TRAIN_HINT = "train one with `ganstack train-score --data DATA --outdir DIR`"


def snapshot_path(run_dir: str, cur_nimg: int) -> str:
    return ckpt_io.snapshot_path(run_dir, cur_nimg, SNAPSHOT_PREFIX)


def list_snapshots(run_dir: str) -> list[str]:
    """Score snapshots in ``run_dir``, oldest first."""
    return ckpt_io.list_snapshots(run_dir, SNAPSHOT_PREFIX)


def prune_snapshots(run_dir: str, keep: int) -> None:
    ckpt_io.prune_snapshots(run_dir, keep, SNAPSHOT_PREFIX)


def resolve_path(path: str, what: str = "score model") -> str:
    """A score checkpoint file, or the newest snapshot in a ``train-score`` run folder."""
    return ckpt_io.resolve_snapshot(path, SNAPSHOT_PREFIX, what=f"The {what}",
                                    hint=f"Give a score checkpoint ({SNAPSHOT_PREFIX}*.pt or the run folder of a "
                                         f"`ganstack train-score` run), or {TRAIN_HINT}.")


def read_checkpoint(path: str, what: str = "score model") -> dict:
    """Load and check a score checkpoint dict (on the CPU)."""
    path = resolve_path(path, what)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        from ganstack.stylegan_base.cli_support import describe_load_error  # rel: no torch weights_only advice
        raise CheckpointError(f"{path!r} could not be read as a score checkpoint: it "
                              f"{describe_load_error(exc, path)}; {TRAIN_HINT}.") from None
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt != FORMAT:
        if fmt == ckpt_io.FORMAT:
            raise CheckpointError(f"{path!r} is a GAN training checkpoint (from `ganstack train`), not a score "
                                  f"model. Give a file written by `ganstack train-score`, or {TRAIN_HINT}.")
        found = fmt if fmt is not None else type(ckpt).__name__
        raise CheckpointError(f"{path!r} is not a ganstack score model (found {found!r}). Give a file written by "
                              f"`ganstack train-score`, or {TRAIN_HINT}.")
    if int(ckpt.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path!r} was written by a newer ganstack (score-model version {ckpt['version']} > "
                              f"{VERSION}); upgrade ganstack to read it.")
    ckpt["path"] = path
    return ckpt


def build_model(ckpt: dict, which: str = "model"):
    """Rebuild the :class:`~ganstack.plugins.score_models.edm.EDMPrecond` of a checkpoint dict and load ``which``."""
    from ganstack.plugins.score_models.edm import EDMPrecond
    model = EDMPrecond(ckpt["arch"], sigma_data=ckpt["sigma_data"])
    state = ckpt[which] if which == "model" else ckpt["training"][which]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt.get('path', 'the score checkpoint')!r} is damaged: its weights do not fit "
                              f"its own architecture ({str(exc).splitlines()[0]}).") from None
    return model


def load_score_model(path: str, device="cpu"):
    """The frozen EMA denoiser of a score checkpoint: eval mode, no gradients to its parameters."""
    ckpt = read_checkpoint(path)
    model = build_model(ckpt, "model").to(device)
    model.eval().requires_grad_(False)
    model.checkpoint_path = ckpt["path"]
    model.data_info = dict(ckpt.get("data") or {})
    return model


def check_compatible(model, data_info: dict, use_labels: bool, resize: str = "off", who: str = "--smart-score") -> None:
    """Raise :class:`CheckpointError` unless ``model`` can score samples of the dataset ``data_info``.

    Images: the channels must match; a different resolution is accepted only with an explicit
    ``resize`` mode ('area' or 'bilinear'), never silently. Points: the dimension must match.
    Labels: a conditional score model needs a conditional GAN (``use_labels``) with the same
    ``label_dim``; an unconditional score model serves any GAN.
    """
    path = getattr(model, "checkpoint_path", "the score model")
    kind = data_info.get("kind")
    if model.kind != kind:
        raise CheckpointError(f"{who} {path!r} scores {model.kind} data but the GAN is trained on {kind} data "
                              f"({data_info.get('name')!r}); train a score model on the same dataset.")
    if kind == "image":
        res, ch = data_info["resolution"], data_info["num_channels"]
        if model.img_channels != ch:
            raise CheckpointError(f"{who} {path!r} was trained on {model.img_channels}-channel images, but the "
                                  f"dataset has {ch} channel(s); train a score model on this dataset.")
        if model.img_resolution != res and resize == "off":
            hint = (f", or resize explicitly with --smart-resize area (or bilinear): the regularity is then computed "
                    f"on G(z) resized to {model.img_resolution}x{model.img_resolution}") if who.startswith("--smart") else ""
            raise CheckpointError(f"{who} {path!r} works at {model.img_resolution}x{model.img_resolution}, but the GAN "
                                  f"makes {res}x{res} images. Train a score model at {res}x{res} "
                                  f"(ganstack train-score on the same dataset){hint}.")
    else:
        if model.point_dim != data_info.get("point_dim"):
            raise CheckpointError(f"{who} {path!r} scores {model.point_dim}-D points, but the dataset has "
                                  f"{data_info.get('point_dim')}-D points; train a score model on this dataset.")
    if model.label_dim:
        if not use_labels:
            raise CheckpointError(f"{who} {path!r} is class-conditional ({model.label_dim} labels) but the GAN is "
                                  f"unconditional; add --cond (with a labelled dataset) or use an unconditional "
                                  f"score model.")
        if model.label_dim != data_info.get("label_dim"):
            raise CheckpointError(f"{who} {path!r} takes {model.label_dim} labels but the dataset has "
                                  f"{data_info.get('label_dim')}; train the score model on the same labels.")


def save_checkpoint(data: dict, path: str) -> None:
    """Write a score checkpoint atomically (the trainer's ``atomic_save``)."""
    data = dict(data)
    data["format"] = FORMAT
    data["version"] = VERSION
    ckpt_io.atomic_save(data, path)


def export_model(model, path: str, data_info: Optional[dict] = None) -> None:
    """Save a bare :class:`EDMPrecond` (no training state) as a loadable score checkpoint."""
    save_checkpoint({"arch": model.arch, "sigma_data": model.sigma_data,
                     "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                     "data": dict(data_info or {})}, path)
