"""Several style images blended into one style target.

With style images s_1 .. s_n and blend weights w_i >= 0 (normalised to sum 1), each style layer's target Gram
matrix is the weighted sum of the styles' own

    A_l = sum_i w_i G_l(s_i),     G_l(s) = F_l(s) F_l(s)^T / (C_l H_l W_l)

where each style image is preprocessed on its own at the style size (its smaller edge = ``style_size``), so the
styles may differ in shape. A style with weight 0 is decoded (so a bad file is still an error) but never run
through the network: a blend ``1,0`` is exactly the single-style problem. The sums run in float64 and are
stored as float32, like the single style's Gram matrices.
"""
from __future__ import annotations

import math
import numbers
import os


from ..errors import NSTError

__all__ = ["as_list", "check_blend", "blend_weights"]


def as_list(styles) -> list:
    """One style (a path or a PIL image) or a sequence of them -> a list (None -> [])."""
    if styles is None:
        return []
    if isinstance(styles, (str, bytes, os.PathLike)) or not hasattr(styles, "__iter__") or hasattr(styles, "mode"):
        return [styles]
    return list(styles)


def check_blend(weights) -> tuple:
    """The blend weights as a tuple of floats, un-normalised; NSTError (one line) unless every one is a finite
    number >= 0 and at least one is > 0. The count is checked against the styles by ``blend_weights``."""
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
        raise NSTError(f"style blend must be a sequence of numbers, got {weights!r}")
    out = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
            raise NSTError(f"style blend weights must be finite numbers >= 0, got {w!r}")
        out.append(float(w))
    if not out:
        raise NSTError("style blend is empty: give one weight per style image")
    if not any(out):
        raise NSTError("style blend weights are all zero: give at least one a weight > 0")
    return tuple(out)


def blend_weights(weights, n_styles: int) -> tuple:
    """Normalised blend weights (sum 1) for ``n_styles`` style images; None means equal weights.

    NSTError for a count that differs from ``n_styles`` and for the cases of ``check_blend``."""
    if weights is None:
        return (1.0 / n_styles,) * n_styles if n_styles else ()
    weights = check_blend(weights)
    if len(weights) != n_styles:
        raise NSTError(f"style blend has {len(weights)} weights for {n_styles} style image"
                       f"{'' if n_styles == 1 else 's'}; give one weight per style image")
    total = math.fsum(weights)
    return tuple(w / total for w in weights)
