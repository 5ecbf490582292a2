"""The results side of ``ganstack ablate``: which stack wins a column, and the pictures of a claim.

* :func:`clear_winner` marks a stack only when its mean beats every other stack's mean by more than the
  two stacks' standard deviations over seeds added (their +-1 std bands do not overlap). With one seed
  there is no spread, so nothing is marked: a single run cannot show that a method helps.
* :func:`plot_side_by_side` draws one scatter panel per stack, side by side in the order of ``--stacks``
  (so ``--stacks "none;diffusion;diffusion,smart,clr"`` gives vanilla | method | stack), from the first
  seed's final checkpoint, each titled with its metrics and, below, the mean +- std over seeds.
* :func:`plot_training_signals` draws what the papers plot besides samples: D's mean logit on reals and
  on fakes over training (Diffusion-GAN Fig. 5, CLR-GAN's realness gap) and every scalar a plugin
  reports (Diffusion-GAN's T, ADA's p, CM-GAN's lambda), mean over seeds per stack.

This module reads run folders only; it never trains and holds no cell logic.
"""
from __future__ import annotations

import json
import math
import os
from typing import Optional

import numpy as np

# Figures shown in the table although they mark no winner: (column suffix, label in the header).
SECONDARY = {"modes_loose": " (loose: >= 1 hq sample; noise passes it)",
             "modes_protocol": " (the papers' count: >= 1 sample; noise passes it)"}


def secondary_columns(columns) -> list:
    return [c for c in columns if c.split("/", 1)[-1] in SECONDARY]


def column_note(column: str) -> str:
    return SECONDARY.get(column.split("/", 1)[-1], "")


def clear_winner(stats: dict, direction: int) -> Optional[str]:
    """The label whose mean beats every other by more than ``std_a + std_b``, or None.

    ``stats``: ``{label: (mean, std, n)}``; ``direction`` +1 (higher is better), -1, or 0 (no winner).
    """
    if not direction or len(stats) < 2:
        return None
    items = [(label, m, s) for label, (m, s, _) in stats.items() if math.isfinite(m)]
    if len(items) < 2 or any(not math.isfinite(s) for _, _, s in items):
        return None
    items.sort(key=lambda t: t[1] * direction, reverse=True)
    best, rest = items[0], items[1:]
    if all((best[1] - m) * direction > best[2] + s for _, m, s in rest):
        return best[0]
    return None


def _mean_std_text(agg_row: dict, keys) -> str:
    parts = []
    for label, col in keys:
        if col in agg_row:
            mean, std, _ = agg_row[col]
            parts.append(f"{label} {mean:.3g}" + (f"±{std:.2g}" if math.isfinite(std) else ""))
    return ", ".join(parts)


def scatter_cell(ax, ckpt: str, ref: dict, n: int):
    """Draw ``n`` samples of a cell's checkpoint over the data on ``ax``; ``ref`` caches the reference points
    (filled on the first call). Returns the samples, or None for image data."""
    import torch

    from ganstack.metrics.registry import draw_samples
    from ganstack.training.inference import load_model
    from ganstack.training.snapshots import scatter_on_axis

    model = load_model(ckpt, device="cpu")
    if model.data_info["kind"] != "points":
        return None
    if not ref:
        ref.update(zip(("reference", "centers", "std", "lim"), reference_points(model.data_info, n)))
    with torch.no_grad():
        x = draw_samples(model.G, model.stack, n, "cpu", seed=0).numpy()
    scatter_on_axis(ax, x, ref["reference"], ref["centers"], ref["lim"], size=1.0)
    return x


def reference_points(data_info: dict, n: int):
    """``(reference [n, D], centers or None, mode std or None, axis limit)`` for the scatter panels."""
    from ganstack.stylegan_base.datasets import open_dataset

    ds = open_dataset(data_info["spec"])
    idx = np.random.default_rng(0).choice(len(ds), min(len(ds), n), replace=False)
    reference = np.asarray(ds.get_batch(idx)[0])
    toy = data_info.get("toy") or {}
    centers = None if toy.get("centers") is None else np.asarray(toy["centers"])
    return reference, centers, toy.get("std"), float(np.abs(reference[:, :2]).max()) * 1.25


PANEL_KEYS = (("modes", "modes_covered"), ("hq", "hq_share"), ("KL", "kl_modes"), ("KL", "kl_uniform"))


def panel_keys(agg: dict) -> list:
    """``(label, column)`` of the panel captions: the first metric column ending in each of PANEL_KEYS' names
    (``toy/modes_covered``, ``stackedmnist10k/modes_covered``, ...)."""
    columns = sorted({c for row in agg.values() for c in row})
    keys = []
    for label, name in PANEL_KEYS:
        col = next((c for c in columns if c.split("/", 1)[-1] == name), None)
        if col:
            keys.append((label, col))
    return keys


def image_cell(ax, ckpt: str, n: int = 64) -> bool:
    """Draw an ``sqrt(n) x sqrt(n)`` grid of a cell's samples (seed 0) on ``ax``, for image data."""
    import torch

    from ganstack.metrics.features import quantize
    from ganstack.metrics.registry import draw_samples
    from ganstack.training.inference import load_model

    model = load_model(ckpt, device="cpu")
    if model.data_info["kind"] != "image":
        return False
    side = int(math.isqrt(n))
    with torch.no_grad():
        img = quantize(draw_samples(model.G, model.stack, side * side, "cpu", seed=0)).numpy()
    _, c, h, w = img.shape
    grid = img.reshape(side, side, c, h, w).transpose(0, 3, 1, 4, 2).reshape(side * h, side * w, c)
    ax.imshow(grid[..., 0] if c == 1 else grid[..., :3], cmap="gray" if c == 1 else None, interpolation="nearest")
    return True


def plot_side_by_side(cells, stacks, seeds, agg: dict, path: str, title: str, n: int = 2000) -> bool:
    """One row of panels, one per stack (first seed with a checkpoint), metrics in the titles: scatter plots
    for point data, a grid of samples for images."""
    from ganstack.metrics.toy import mixture_metrics
    from ganstack.training.ablate import newest_checkpoint
    from ganstack.training.snapshots import _pyplot

    plt = _pyplot()
    if plt is None or not stacks:
        return False
    by_key = {(c.stack.label, c.seed): c for c in cells}
    fig, axes = plt.subplots(1, len(stacks), figsize=(3.3 * len(stacks), 3.9), squeeze=False)
    ref: dict = {}
    for ax, s in zip(axes[0], stacks):
        ax.set_xticks([])
        ax.set_yticks([])
        ckpt, seed = None, None
        for sd in seeds:
            cell = by_key.get((s.label, sd))
            ckpt = newest_checkpoint(cell.dir) if cell else None
            if ckpt:
                seed = sd
                break
        if ckpt is None:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_title(s.label, fontsize=8)
            continue
        x = scatter_cell(ax, ckpt, ref, n)
        head = f"{s.label}\nseed {seed}"
        if x is None:
            if not image_cell(ax, ckpt):
                plt.close(fig)
                return False
        elif ref["centers"] is not None:
            m = mixture_metrics(x, ref["centers"], float(ref["std"]))
            head += f": {m['modes_covered']}/{m['num_modes']} modes, hq {m['hq_share']:.2f}"
        summary = _mean_std_text(agg.get(s.label, {}), panel_keys(agg))
        ax.set_title(head, fontsize=7.5)
        if summary:
            ax.set_xlabel(f"{len(seeds)} seeds: {summary}", fontsize=6.5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def read_stats(cell_dir: str) -> list:
    """Every ``stats.jsonl`` line of the cell's run folders, in order (a resume appends a folder)."""
    from ganstack.training.ablate import run_dirs

    out = []
    for rd in run_dirs(cell_dir):
        path = os.path.join(rd, "stats.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                out += [_current_names(json.loads(line)) for line in f if line.strip()]
    return out


def _current_names(rec: dict) -> dict:
    """Runs of ganstack before plugin API v1 logged plugin scalars as ``Plugin/<plugin>/<name>``; today they are
    ``<plugin>/<name>``. Old cells are read under today's names, so one table column holds both."""
    return {(k[len("Plugin/"):] if k.startswith("Plugin/") else k): v for k, v in rec.items()}


def _scalar(v):
    if isinstance(v, dict):
        v = v.get("mean")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def signal_series(records: list) -> dict:
    """``{signal: (kimg [K], value [K])}``: D's real/fake mean logits, their gap, and the plugins' scalars."""
    series: dict = {}
    for rec in records:
        k = _scalar(rec.get("Progress/kimg"))
        if k is None:
            continue
        real, fake = _scalar(rec.get("Loss/scores/real")), _scalar(rec.get("Loss/scores/fake"))
        vals = {}
        if real is not None and fake is not None:
            vals.update({"D(real) - D(fake), mean logit": real - fake})
        sign = _scalar(rec.get("Loss/signs/real"))
        if sign is not None:
            vals["E[sign D(real)] (ADA's r_t)"] = sign
        for key, v in rec.items():
            if key.startswith(("Loss/", "Progress/", "Timing/", "Resources/")) or key == "timestamp":
                continue
            x = _scalar(v)
            if x is not None and math.isfinite(x):
                vals[key] = x
        for key, x in vals.items():
            series.setdefault(key, ([], []))
            series[key][0].append(k)
            series[key][1].append(x)
    return series


def plot_training_signals(cells, stacks, path: str, title: str) -> bool:
    """D's real-fake logit gap and every plugin scalar against kimg, mean over seeds per stack."""
    from ganstack.training.snapshots import _pyplot

    plt = _pyplot()
    if plt is None:
        return False
    per_stack = {}
    names: list = []
    for s in stacks:
        runs = [signal_series(read_stats(c.dir)) for c in cells if c.stack.label == s.label]
        per_stack[s.label] = runs
        for r in runs:
            names += [k for k in r if k not in names]
    if not names:
        return False
    names.sort(key=lambda k: (not k.startswith("D("), k))
    ncol = min(3, len(names))
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.0 * nrow), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, names):
        for i, s in enumerate(stacks):
            curves = [r[name] for r in per_stack[s.label] if name in r]
            if not curves:
                continue
            m = min(len(c[0]) for c in curves)
            band(ax, curves[0][0][:m], np.asarray([c[1][:m] for c in curves]), colors[i % len(colors)], s.label)
        ax.set_title(name, fontsize=8)
    finish_grid(plt, fig, axes, len(names), title, path, small=True)
    return True


def band(ax, x, vals: np.ndarray, color, label: str) -> None:
    """Mean over rows of ``vals [seeds, K]`` against ``x``, with a +-1 std band when there are several rows."""
    mean = vals.mean(0)
    ax.plot(x, mean, label=label, color=color, lw=1.4)
    if len(vals) > 1:
        sd = vals.std(0, ddof=1)
        ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.15, lw=0)


def finish_grid(plt, fig, axes, used: int, title: str, path: str, small: bool = False) -> None:
    """kimg axes, blank unused panels, one legend below, title, save and close."""
    fs = 7 if small else 8
    for ax in list(axes.flat)[:used]:
        ax.set_xlabel("kimg", fontsize=fs)
        ax.tick_params(labelsize=fs - 1)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=fs, frameon=False)
    fig.suptitle(title, fontsize=fs + 2)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 0.95))
    fig.savefig(path, dpi=90 if small else 110)
    plt.close(fig)


def signals_table(cells, stacks) -> str:
    """Markdown: the final value of each training signal (mean +- std over seeds) per stack."""
    finals: dict = {}
    names: list = []
    for s in stacks:
        for c in cells:
            if c.stack.label != s.label:
                continue
            for name, (_, vals) in signal_series(read_stats(c.dir)).items():
                finals.setdefault(s.label, {}).setdefault(name, []).append(vals[-1])
                if name not in names:
                    names.append(name)
    if not names:
        return ""
    names.sort(key=lambda k: (not k.startswith(("D(", "E[")), k))
    lines = ["", "Training signals at the last tick (mean ± std over seeds; each is averaged over the tick, "
             "and a resumed cell's ticks start at its resume point):", "",
             "| stack | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s in stacks:
        row = []
        for name in names:
            v = finals.get(s.label, {}).get(name)
            if not v:
                row.append("–")
            else:
                sd = f" ± {np.std(v, ddof=1):.3g}" if len(v) > 1 else ""
                row.append(f"{np.mean(v):.3g}{sd}")
        lines.append(f"| {s.label} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
