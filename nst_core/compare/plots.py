"""The comparison's plots (matplotlib, optional: ``pip install 'nst-onnx[plots]'``): loss.png and images.png."""
from __future__ import annotations

import io
import math
from typing import Optional, Sequence

import numpy as np

__all__ = ["matplotlib_or_none", "loss_png", "images_png"]


def matplotlib_or_none():
    """``(Figure, FigureCanvasAgg)`` or None when matplotlib is not installed (never touches pyplot's state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def _png(fig, canvas_type) -> bytes:
    canvas_type(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def loss_png(done: list, budget: int, best: Optional[float], mpl) -> bytes:
    Figure, Canvas = mpl
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    lowest, first = math.inf, 0.0
    for i, run in enumerate(done):
        cols = run["result"].history_columns()
        loss = cols["loss"]
        if loss.size == 0:
            continue
        finite = np.where(np.isfinite(loss), loss, np.nan)
        so_far = np.fmin.accumulate(finite)
        if np.isfinite(so_far).any():
            lowest = min(lowest, float(np.nanmin(so_far)))
            first = max(first, float(so_far[np.isfinite(so_far)][0]))
        colour = f"C{i}"
        for ax, x in ((axes[0], cols["evaluation"]), (axes[1], cols["seconds"])):
            ax.plot(x, finite, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(x, so_far, color=colour, linewidth=1.8, label=f"{run['label']} ({run['result'].loss:.5g})")
    for ax, xlabel in ((axes[0], "objective evaluations"), (axes[1], "seconds")):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("total loss")
        ax.grid(True, which="both", alpha=0.3)
        if best is not None:
            ax.axhline(1.01 * best, color="grey", linestyle=":", linewidth=1)
        if 0 < lowest < first:  # the first best-so-far values up to the best: line-search / Adam spikes are cut
            ax.set_ylim(0.8 * lowest, 5.0 * first)
    axes[0].set_xlim(0, budget)
    axes[0].legend(title="best loss so far (final)", fontsize="small")
    fig.suptitle(f"Loss per evaluation (faint) and best so far (solid); dotted: 1% above the best final loss; "
                 f"budget {budget} evaluations", fontsize="medium")
    return _png(fig, Canvas)


def images_png(done: list, checkpoints: Sequence[int], mpl) -> bytes:
    Figure, Canvas = mpl
    columns = [(k, f"best by evaluation {k}") for k in checkpoints] + [(None, "final (best)")]
    h, w = done[0]["final"].shape[:2]
    cell = 2.8
    fig = Figure(figsize=(cell * len(columns), cell * h / w * len(done) + 0.5 * len(done) + 0.3),
                 layout="constrained")
    axes = np.asarray(fig.subplots(len(done), len(columns), squeeze=False))
    for r, run in enumerate(done):
        for c, (k, title) in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if k is None:
                image, loss, at = run["final"], run["result"].loss, run["result"].best_evaluation
                text = f"{title}: {loss:.5g}\n(evaluation {at} of {run['result'].n_evals})"
            elif k in run["checkpoints"]:
                image, loss = run["checkpoints"][k]
                text = f"{title}: {loss:.5g}"
            else:
                image, text = None, f"{title}: not reached"
            if image is not None:
                ax.imshow(image)
            ax.set_title(text, fontsize="small")
            if c == 0:
                ax.set_ylabel(run["label"], fontsize="large")
    return _png(fig, Canvas)
