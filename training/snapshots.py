"""Pictures of a run: image grids for image data, scatter plots for 2-D point data."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch


def grid_shape(resolution: int, n_max: int = 192) -> tuple[int, int]:
    """Grid width and height for snapshot images (smaller than StyleGAN2's 7680x4320 screen so that a
    CPU run draws it in seconds)."""
    gw = int(np.clip(1024 // resolution, 4, 16))
    gh = int(np.clip(768 // resolution, 4, 12))
    while gw * gh > n_max and gh > 1:
        gh -= 1
    return gw, gh


def save_image_grid(img: torch.Tensor, path: str, grid_size: tuple[int, int], drange=(-1, 1)) -> None:
    """Tile ``img [N, C, H, W]`` (N = gw * gh) into one PNG, mapping ``drange`` to 0..255."""
    import imageio.v2 as imageio

    lo, hi = drange
    x = img.detach().float().cpu().numpy()
    x = np.rint((x - lo) * (255 / (hi - lo))).clip(0, 255).astype(np.uint8)
    gw, gh = grid_size
    n, c, h, w = x.shape
    if n < gw * gh:
        x = np.concatenate([x, np.zeros((gw * gh - n, c, h, w), np.uint8)])
    x = x[: gw * gh].reshape(gh, gw, c, h, w).transpose(0, 3, 1, 4, 2).reshape(gh * h, gw * w, c)
    if c == 1:
        x = x[:, :, 0]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    imageio.imwrite(path, x)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


_warned = False


def scatter_on_axis(ax, pts, reference=None, centers=None, lim: float = 1.0, size: float = 2.0) -> None:
    """One 2-D panel: real data in grey, ``pts`` in blue, mixture centres as red crosses, square limits."""
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=size, c="0.75", alpha=0.5, linewidths=0)
    ax.scatter(pts[:, 0], pts[:, 1], s=size, c="tab:blue", alpha=0.6, linewidths=0)
    if centers is not None:
        ax.scatter(centers[:, 0], centers[:, 1], s=9 * size, c="tab:red", marker="x", linewidths=0.4 * size)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")


def save_scatter_panels(panels: Sequence[tuple[str, np.ndarray]], path: str, reference: Optional[np.ndarray] = None,
                        centers: Optional[np.ndarray] = None, suptitle: str = "", lim: Optional[float] = None) -> bool:
    """One PNG with a scatter plot per ``(title, points [N, >=2])`` panel, side by side.

    ``reference`` (the real data) is drawn in grey under every panel and ``centers`` (mixture modes)
    as crosses. Needs matplotlib (``pip install ganstack[plot]``); without it, prints one notice and
    returns False.
    """
    global _warned
    plt = _pyplot()
    if plt is None:
        if not _warned:
            print("note: scatter plots need matplotlib; install it with: pip install 'ganstack[plot]'")
            _warned = True
        return False
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4.2), squeeze=False)
    if lim is None:
        pts = [p for _, p in panels] + ([reference] if reference is not None else [])
        lim = float(np.nanmax([np.abs(p[:, :2]).max() for p in pts if len(p)])) * 1.1
        if reference is not None:
            lim = min(lim, float(np.abs(reference[:, :2]).max()) * 1.5)
    for ax, (title, pts) in zip(axes[0], panels):
        scatter_on_axis(ax, pts, reference, centers, lim)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
