"""Figures for TensorBoard, drawn off-screen: matplotlib's Agg canvas directly, never pyplot.

No pyplot means no global figure registry to leak and no display backend to pick on a server.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def tensorboard_writers(trainer: L.Trainer) -> list:
    """The SummaryWriters of the run's TensorBoard loggers; empty with logger=csv or logger=none."""
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def to_rgb(fig: Figure) -> np.ndarray:
    """An (H, W, 3) uint8 array of the figure, for `add_image(..., dataformats="HWC")`: drawn once on an off-screen
    canvas and read from its pixel buffer (a PNG round trip with a tight bounding box draws twice and encodes: 40 %
    slower, and every validation epoch draws one). The figures size themselves to their labels (constrained or
    tight layout), so long class names are not cut off."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def image_grid(images: torch.Tensor, titles: Sequence[str], ncols: int = 4, title: str = "") -> np.ndarray:
    """Display-ready images (N, C, H, W) in [0, 1], each under its own caption, in one picture."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(max(2.3 * ncols, 5.0), 2.5 * nrows + 0.6), dpi=100)
    for i in range(n):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        img = images[i].permute(1, 2, 0).numpy()
        if img.shape[-1] == 1:
            ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img[..., :3])
        ax.set_title(titles[i], fontsize=7)
        ax.axis("off")
    if n == 0:
        fig.text(0.5, 0.5, "nothing to show", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return to_rgb(fig)
