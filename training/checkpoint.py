"""Training checkpoints: everything needed to resume exactly, written atomically.

A checkpoint (``network-snapshot-<kimg:06d>.pt``, integer kimg as StyleGAN2-ADA) holds G, D, G_ema, both optimizer states, the counters,
the training options, the dataset description, the plugin stack with its options and state, and the
random-number-generator states of every rank. It is loaded with ``torch.load(weights_only=True)``, so
opening a checkpoint never runs code from it.
"""
from __future__ import annotations

import glob
import os
import random
import re
import tempfile
from typing import Iterable, Optional

import numpy as np
import torch

from ganstack.stylegan_base import cli_support
from ganstack.stylegan_base.cli_support import (describe_load_error, disk_full_message, is_disk_full,
                                               is_torch_write_failure)
from ganstack.stylegan_base.errors import CheckpointError


class DiskFullError(cli_support.DiskFullError, CheckpointError):
    """A checkpoint could not be written because the disk is full; older checkpoints are intact."""

FORMAT = "ganstack.checkpoint"
VERSION = 1


# ------------------------------------------------------------------------------------------------
# RNG state (every generator the loop or a plugin may draw from)

def capture_rng(extra: Optional[dict] = None) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in (extra or {}).items():
        state[name] = gen.get_state()
    return state


def restore_rng(state: dict, extra: Optional[dict] = None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in (extra or {}).items():
        gen.set_state(state[name])


# ------------------------------------------------------------------------------------------------
# Files

def atomic_save(obj, path: str) -> None:
    """Write to a temporary file in the same folder, flush to disk, then rename over ``path``.

    On any failure the temporary file is removed and ``path`` (and every older checkpoint) is left as it
    was. A full disk (``ENOSPC``, or torch's "PytorchStreamWriter failed" / "enforce fail at
    inline_container.cc", which lose the errno) raises :class:`DiskFullError` with a message that says so.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if is_disk_full(exc) or is_torch_write_failure(exc):
            raise DiskFullError(disk_full_message(path, "the checkpoint")) from None
        raise


def kimg_tag(cur_nimg: int) -> str:
    """``000012`` for 12 kimg (and for 12.5 kimg): integer kimg, as in StyleGAN2-ADA's file names."""
    return f"{int(cur_nimg) // 1000:06d}"


SNAPSHOT_PREFIX = "network-snapshot-"
NONFINITE_SUFFIX = "-nonfinite"


def _snapshot_re(prefix: str) -> re.Pattern:
    # Integer kimg (000012); older ganstack versions also wrote a fraction (000002.032), still read.
    return re.compile(re.escape(prefix) + r"(\d+)(?:\.(\d{3}))?\.pt$")


def snapshot_name(cur_nimg: int, prefix: str = SNAPSHOT_PREFIX, finite: bool = True) -> str:
    """``network-snapshot-<kimg:06d>.pt``. One file per integer kimg: a later snapshot at the same integer kimg
    replaces the earlier one (as in StyleGAN2-ADA). Non-finite states (kept only with ``--allow-nonfinite``) get
    ``-nonfinite`` and never replace, or count as, a snapshot."""
    return f"{prefix}{kimg_tag(cur_nimg)}{'' if finite else NONFINITE_SUFFIX}.pt"


def snapshot_path(run_dir: str, cur_nimg: int, prefix: str = SNAPSHOT_PREFIX, finite: bool = True) -> str:
    return os.path.join(run_dir, snapshot_name(cur_nimg, prefix, finite))


def snapshot_nimg(path: str, prefix: str = SNAPSHOT_PREFIX) -> int:
    """The image count a snapshot's name stands for (kimg * 1000, plus the fraction of old names): its order."""
    m = _snapshot_re(prefix).search(path)
    return int(m.group(1)) * 1000 + int(m.group(2) or 0)


def list_snapshots(run_dir: str, prefix: str = SNAPSHOT_PREFIX) -> list[str]:
    """Snapshots ``<prefix><kimg>.pt`` in ``run_dir``, oldest first (by kimg, then modification time);
    ``train`` writes ``network-snapshot-*``, ``train-score`` ``score-snapshot-*``. Non-finite states are not
    snapshots."""
    pattern = _snapshot_re(prefix)
    paths = [p for p in glob.glob(os.path.join(run_dir, prefix + "*.pt")) if pattern.search(p)]
    return sorted(paths, key=lambda p: (snapshot_nimg(p, prefix), os.path.getmtime(p)))


def prune_snapshots(run_dir: str, keep: int, prefix: str = SNAPSHOT_PREFIX, protect: Iterable[str] = ()) -> None:
    """Delete all but the newest ``keep`` snapshots (``keep == 0`` keeps all), never one in ``protect``, and all but
    the newest non-finite state."""
    if keep > 0:
        keep_set = {os.path.abspath(p) for p in protect if p}
        for old in list_snapshots(run_dir, prefix)[:-keep]:
            if os.path.abspath(old) not in keep_set:
                os.remove(old)
    bad = sorted(glob.glob(os.path.join(run_dir, f"{prefix}*{NONFINITE_SUFFIX}.pt")), key=os.path.getmtime)
    for old in bad[:-1]:
        os.remove(old)


def write_snapshot(data: dict, run_dir: str, cur_nimg: int, keep: int, prefix: str = SNAPSHOT_PREFIX,
                   finite: bool = True, last_finite: Optional[str] = None, save=None) -> tuple[str, Optional[str]]:
    """Write a snapshot atomically and prune old ones, never the last finite one.

    Returns ``(path, last_finite)``: the file written and the newest finite snapshot after this one. ``save``
    writes the file (default :func:`atomic_save`; train-score adds its format tag).
    """
    path = snapshot_path(run_dir, cur_nimg, prefix, finite=finite)
    (save or atomic_save)(data, path)
    if finite:
        last_finite = path
    prune_snapshots(run_dir, keep, prefix, protect=[last_finite])
    return path, last_finite


def resolve_snapshot(path: str, prefix: str = SNAPSHOT_PREFIX, what: str = "--resume",
                     hint: str = "Give a network-snapshot-*.pt file or a run folder.") -> str:
    """A checkpoint file, or the newest snapshot in a run folder (``train`` and ``train-score`` alike).

    A folder without snapshots that holds run folders with some (an ``--outdir``) is named in the error.
    """
    path = os.path.expanduser(str(path))
    if os.path.isdir(path):
        snaps = list_snapshots(path, prefix)
        if not snaps:
            runs = sorted(d for d in glob.glob(os.path.join(path, "*")) if os.path.isdir(d) and list_snapshots(d, prefix))
            tip = f" It looks like an --outdir: did you mean the run folder {runs[-1]!r}?" if runs else ""
            raise CheckpointError(f"{what} {path!r} is a folder that holds no {prefix}*.pt file.{tip} {hint}")
        return snaps[-1]
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path!r} does not exist: no such file or folder. {hint}")
    return path


def resolve_resume(path: str, flag: str = "--resume") -> str:
    """``--resume`` (or ``--network``) takes a checkpoint file or a run folder (its newest snapshot)."""
    return resolve_snapshot(path, what=flag)


def load_weights(pairs, what: str, advice: str = "") -> None:
    """``module.load_state_dict(state)`` for each ``(module, state)``; a mismatch of names or shapes is a
    CheckpointError saying that ``what`` cannot be loaded, with torch's first line and ``advice``."""
    try:
        for module, state in pairs:
            module.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{what} cannot be loaded into the networks these options build "
                              f"({str(exc).splitlines()[0]}).{' ' + advice if advice else ''}") from None


# What each use of a checkpoint reads (their absence would otherwise end in a KeyError).
_SAMPLE_KEYS = {"config": dict, "dataset": dict, "plugins": list, "plugin_options": dict, "plugin_state": dict}
_RESUME_KEYS = dict(_SAMPLE_KEYS, G=dict, D=dict, G_ema=dict, G_opt=dict, D_opt=dict, cur_nimg=int, cur_tick=int,
                    batch_idx=int, tick_start_nimg=int, rng=list)
_KINDS = {"ganstack.score_model": "a score model (from 'ganstack train-score'; it goes to --smart-score or the "
                                  "cmgan teacher option)",
          "ganstack.digit-classifier": "a digit classifier (from 'ganstack train-classifier'; it goes to "
                                       "'ganstack metrics --classifier')"}


def load(path: str, map_location="cpu", flag: str = "--resume", purpose: str = "resume",
         networks=("G_ema",)) -> dict:
    """Load and sanity-check a training checkpoint; clear errors for the wrong kind of file.

    ``flag`` names the option the path came from in messages. ``purpose`` is ``"resume"`` (every key the
    loop restores must be there), ``"sample"`` (the options, plugins and ``networks``) or ``"weights"``
    (``--init``: at least one of G, D, G_ema).
    """
    path = resolve_resume(path, flag)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure of torch.load is the file's fault here
        raise CheckpointError(f"{flag} {path!r} could not be read as a ganstack checkpoint: it "
                              f"{describe_load_error(exc, path)}. Give a network-snapshot-*.pt file written by "
                              f"'ganstack train', or its run folder.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        kind = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        what = _KINDS.get(kind, f"found {kind!r}")
        raise CheckpointError(f"{flag} {path!r} is not a ganstack training checkpoint ({what}). Give a "
                              f"network-snapshot-*.pt file written by 'ganstack train', or its run folder.")
    version = ckpt.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{flag} {path!r} was written by a newer ganstack (checkpoint version "
                              f"{version!r} > {VERSION}); upgrade ganstack to read it.")
    if purpose == "weights":
        if not any(isinstance(ckpt.get(k), dict) for k in ("G", "D", "G_ema")):
            raise CheckpointError(f"{flag} {path!r} holds no network weights (G, D or G_ema).")
        ckpt["path"] = path
        return ckpt
    wanted = dict(_RESUME_KEYS) if purpose == "resume" else dict(_SAMPLE_KEYS, **{n: dict for n in networks})
    missing = [k for k in wanted if k not in ckpt]
    if missing and purpose == "resume" and "imported_from" in ckpt:
        raise CheckpointError(f"{flag} {path!r} was imported from an official pickle ('ganstack import-pkl') and "
                              f"holds networks only, no optimizer state or counters, so it cannot be resumed. Start a "
                              f"new run from its weights with --init {path}.")
    wrong = [k for k, t in wanted.items() if k in ckpt and not isinstance(ckpt[k], t)]
    if missing or wrong:
        parts = ([f"it lacks {', '.join(missing)}"] if missing else []) + \
                ([f"{', '.join(wrong)} {'has' if len(wrong) == 1 else 'have'} the wrong type"] if wrong else [])
        raise CheckpointError(f"{flag} {path!r} is an incomplete or damaged ganstack checkpoint: {'; '.join(parts)}. "
                              f"Use another snapshot of the run (or the run folder, for its newest one).")
    if "kind" not in ckpt["dataset"]:
        raise CheckpointError(f"{flag} {path!r} is a damaged ganstack checkpoint: its dataset record has no 'kind'.")
    ckpt["path"] = path
    return ckpt
