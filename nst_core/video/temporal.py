"""The temporal loss of Ruder et al. 2016 on our objective: keep frame t close to frame t-1's result warped to it,
where the flow can be trusted.

    L_temporal = w k sum_{c, i, j} m_ij (x_cij - p_cij)^2        dL/dx = 2 w k m (x - p)

x: the frame being optimised, normalised pixels float64 [1, 3, h, w]; p: the previous frame's result warped to this
frame (same shape); m: the consistency mask [h, w] in [0, 1] (``flow.consistency``, blurred), the same for the three
channels; w: the temporal weight; k: the calibration's size factor (``schedule.calibration``: the term is a sum over
pixels like the content and TV terms, so it is scaled like them and keeps its meaning at every size).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["temporal_loss", "with_temporal"]


def temporal_loss(x: np.ndarray, previous: np.ndarray, mask: np.ndarray, weight: float) -> tuple[float, np.ndarray]:
    """``(L, dL/dx)`` of the module docstring; ``weight`` is w k. The gradient is float64 of x's shape."""
    diff = np.asarray(x, dtype=np.float64) - previous
    weighted = mask[None, None].astype(np.float64) * diff
    return float(weight * np.sum(weighted * diff)), (2.0 * weight) * weighted


def with_temporal(objective: Callable, previous: np.ndarray, mask: np.ndarray, weight: float) -> Callable:
    """``objective(x) -> (loss, grad, parts)`` plus the temporal term, reported as ``parts["temporal"]``."""
    previous = np.asarray(previous, dtype=np.float64)

    def combined(x: np.ndarray):
        loss, grad, parts = objective(x)
        l_t, g_t = temporal_loss(x, previous, mask, weight)
        grad += g_t
        return loss + l_t, grad, {**parts, "temporal": l_t}

    return combined
