"""The picture seen as a whole: the first scale's style term, kept on the output downsampled to the first scale.

At every later scale of a coarse-to-fine schedule (``nst_core.schedule``) the objective becomes

    L(x) = L_k(x) + whole_weight * S_1(D x)

- ``L_k``: the scale's own content, style and TV terms;
- ``S_1``: the first scale's style term (its layers, weights and Gram targets: the painting at the first scale's
  style size), i.e. exactly the style part of the objective the first scale minimised;
- ``D``: downsampling to the first scale's shape with the Lanczos filter PIL's ``Image.resize`` uses (antialiased:
  the kernel widened by the reduction factor). It is linear and separable, so per channel ``D X = D_h X D_w^T``
  with two sparse matrices (``lanczos_matrix``), and the term's gradient is ``D^T G = D_h^T G D_w`` per channel,
  G = dS_1/dy at y = D x.

Why: SqueezeNet's receptive fields are a fixed number of pixels, so at 1024 px the scale's own style term only sees
strokes and details; refining there lets the composition that the first scale painted (the swirls, the palette
seen from afar) drift back toward the photograph. Measured by issue 14's "seen as a whole" measure
(bench/bench_printsize.py): the 1024 px picture, downsampled to 192 px, had 117x the style term of the 192 px
picture without this term (183x with the style image at 1014 px, before ``transfer.STYLE_SIZE_LIMIT``). The same idea with one term per level of a Gaussian pyramid is Snelgrove's (2017,
"High-Resolution Multi-Scale Neural Texture Synthesis"); one level, the first scale's, suffices here and costs one
small style-only evaluation per evaluation (at 1024 px lost in the noise: 87.5 / 94.4 s with / without,
``bench/bench_printsize.py --without-whole``). With it, the same measure gave 0.71x.

Shapes: x float64 [1, 3, H, W] (normalised pixels; D's weights sum to 1 per output pixel, so D commutes with the
per-channel normalisation), D x float64 [1, 3, h, w].
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse

__all__ = ["LANCZOS_A", "lanczos_matrix", "Downsample", "with_whole_term"]

#: Lobes of the Lanczos kernel (PIL's LANCZOS is Lanczos-3).
LANCZOS_A = 3.0


def _lanczos(t: np.ndarray) -> np.ndarray:
    """sinc(t) * sinc(t / a) for |t| < a, else 0 (sinc(t) = sin(pi t) / (pi t))."""
    return np.where(np.abs(t) < LANCZOS_A, np.sinc(t) * np.sinc(t / LANCZOS_A), 0.0)


def lanczos_matrix(n_in: int, n_out: int) -> scipy.sparse.csr_matrix:
    """The [n_out, n_in] matrix of resampling a line of ``n_in`` samples to ``n_out`` with PIL's Lanczos filter.

    Output sample i is centred at input coordinate c = (i + 0.5) * n_in / n_out; when reducing, the kernel is
    stretched by the factor s = n_in / n_out (support a * s), and the taps j in [trunc(c - support + 0.5),
    trunc(c + support + 0.5)) clipped to the line get the weights lanczos((j - c + 0.5) / max(s, 1)), normalised to
    sum 1 (PIL's resampling rule, from its documentation and source: the formulas, not its code)."""
    n_in, n_out = int(n_in), int(n_out)
    if n_in < 1 or n_out < 1:
        raise ValueError(f"lanczos_matrix needs positive sizes, got {n_in} -> {n_out}")
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = LANCZOS_A * stretch
    centre = (np.arange(n_out) + 0.5) * scale
    lo = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)
    hi = np.minimum(np.trunc(centre + support + 0.5), n_in).astype(np.int64)
    width = int((hi - lo).max())
    cols = lo[:, None] + np.arange(width)[None, :]
    inside = cols < hi[:, None]
    weights = np.where(inside, _lanczos((cols - centre[:, None] + 0.5) / stretch), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    rows = np.broadcast_to(np.arange(n_out)[:, None], cols.shape)
    keep = inside & (weights != 0.0)
    return scipy.sparse.csr_matrix((weights[keep], (rows[keep], cols[keep])), shape=(n_out, n_in))


class Downsample:
    """D: float [1, 3, H, W] -> float64 [1, 3, h, w] (PIL's Lanczos, per channel), and its adjoint D^T.

    Holds the two sparse matrices (about 6 * H/h + 6 * W/w nonzeros per output row and column)."""

    def __init__(self, big_shape, small_shape):
        (self.H, self.W), (self.h, self.w) = tuple(big_shape[-2:]), tuple(small_shape[-2:])
        self.rows = lanczos_matrix(self.H, self.h)    # [h, H]
        self.cols_t = lanczos_matrix(self.W, self.w).T.tocsr()  # [W, w]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """D x: x [1, 3, H, W] -> float64 [1, 3, h, w]."""
        out = np.empty((1, x.shape[1], self.h, self.w))
        for c in range(x.shape[1]):
            out[0, c] = (self.cols_t.T @ (self.rows @ x[0, c]).T).T
        return out

    def add_adjoint(self, grad: np.ndarray, g: np.ndarray, weight: float = 1.0) -> None:
        """grad += weight * D^T g in place, channel by channel (no full-size temporary beyond one channel):
        grad float64 [1, 3, H, W], g [1, 3, h, w]."""
        for c in range(grad.shape[1]):
            grad[0, c] += weight * (self.rows.T @ (self.cols_t @ np.asarray(g[0, c], np.float64).T).T)


def with_whole_term(objective: Callable, coarse: Callable, down: Downsample, weight: float) -> Callable:
    """``objective(x) -> (loss, grad, parts)`` plus ``weight * coarse(D x)``: loss and gradient of the sum, and
    parts with ``"whole"`` = the added term (weighted) besides the scale's own ``content`` / ``style`` / ``tv``.

    ``coarse``: ``(y [1, 3, h, w]) -> (loss, grad, parts)`` at the small shape (the first scale's style-only
    objective); ``down``: the ``Downsample`` from x's shape to y's."""
    weight = float(weight)

    def combined(x: np.ndarray):
        loss, grad, parts = objective(x)
        small_loss, small_grad, _ = coarse(down(x))
        down.add_adjoint(grad, small_grad, weight)
        return loss + weight * small_loss, grad, dict(parts, whole=weight * small_loss)

    combined.fresh_grad = getattr(objective, "fresh_grad", False)  # grad is objective's own (added into in place)
    return combined
