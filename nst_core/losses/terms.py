"""The style-transfer losses of the CS231n StyleTransfer exercise, each with its analytic gradient (NumPy only).

    content   L_c = w_c * sum((F - P)^2)                         F, P: feature maps [1, C, H, W]
    Gram      G   = F F^T / (C * H * W)                           F reshaped to [C, H*W]; G is [C, C]
    style     L_s = sum_l w_l * sum((G_l - A_l)^2)                A_l: target Gram matrices [C_l, C_l]
    TV        L_t = w_t * (sum (x[..., i+1, :] - x[..., i, :])^2 + sum (x[..., :, j+1] - x[..., :, j])^2)

Precision and speed: the large arrays (feature maps from ONNX Runtime, usually float32, up to 64 x 1024 x 1024)
are processed in their own dtype, so matrix products stay in float32 BLAS; the returned scalar losses are Python
floats whose sums of squares are accumulated in float64 (the squares of float32 numbers are exact in float64).
Gradients are returned in the dtype of the array they are taken with respect to. Inputs are never modified.

Weights that mean the same at every size (``size_factor``). The content and TV terms are SUMS over elements (of
the layer's feature map, of the pixels' neighbour differences), so they grow with the pixel count; the style term
is a sum over the C_l x C_l entries of Gram matrices already normalised by C*H*W, so it does not. CS231n's weights
are calibrated at one size (its presets: 192 px). At another size the content and TV weights are multiplied by

    k(s) = P(s_cal) / P(s)          P(side) = pixels of the output image with its smaller edge = side

(``size_factor``), which turns both sums into means times the calibration size's element count: the balance
between the three terms stays as at the calibration size, and at that size k = 1 exactly (the exercise's raw
sums). Measured on the development machine (starry_night, Tübingen, style image at the output's size, 200 L-BFGS
evaluations from the content image, content weight already times k, TV weight raw): at 192 / 384 px the final
content term was 1.74e4 / 1.64e4 (held by k), the style term 6.2e3 / 2.7e3 and the raw TV term 572 / 2139, 3.7x
for 4x the pixels; the result's unweighted TV 2.86e4 / 1.07e5 (3.7x), the photo's 1.52e4 / 6.59e4 (4.3x). TV
grows with the pixel count like the content term, so it gets the same factor.
"""
from __future__ import annotations

import numpy as np

__all__ = ["content_loss", "gram", "style_loss", "tv_loss", "size_factor"]


def _floating(a) -> np.ndarray:
    """``a`` as an ndarray of a floating dtype (no copy if it already is one; integers become float64)."""
    arr = np.asarray(a)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _sum_squares(a: np.ndarray) -> float:
    """sum(a**2) as a Python float, squared and accumulated in float64 (no float64 copy of ``a`` is made)."""
    flat = a.reshape(-1)
    if flat.dtype == np.float64:
        return float(np.dot(flat, flat))
    return float(np.einsum("i,i->", flat, flat, dtype=np.float64))


def content_loss(features, target, weight: float) -> tuple[float, np.ndarray]:
    """Content loss ``weight * sum((F - P)^2)`` and its gradient ``2 * weight * (F - P)`` w.r.t. F.

    ``features`` F and ``target`` P: arrays of the same shape (typically [1, C, H, W]) of activations
    (unitless). ``weight``: scalar. Returns ``(loss, grad)``: loss a Python float (float64 accumulation),
    grad an ndarray of F's shape and dtype (the difference is computed in F's dtype).
    """
    feats = _floating(features)
    targ = np.asarray(target)
    if targ.shape != feats.shape:
        raise ValueError(f"content_loss: features {feats.shape} and target {targ.shape} differ in shape")
    weight = float(weight)
    grad = np.subtract(feats, targ, dtype=feats.dtype)
    loss = weight * _sum_squares(grad)
    grad *= 2.0 * weight
    return loss, grad


def _as_matrix(features: np.ndarray) -> tuple[np.ndarray, int]:
    """[1, C, H, W] (or [C, H, W]) -> (view [C, H*W] when contiguous, normaliser C*H*W)."""
    if features.ndim == 4:
        if features.shape[0] != 1:
            raise ValueError(f"gram: expected a batch of one, got features of shape {features.shape}")
        chw = features.shape[1:]
    elif features.ndim == 3:
        chw = features.shape
    else:
        raise ValueError(f"gram: expected features [1, C, H, W] or [C, H, W], got shape {features.shape}")
    channels = chw[0]
    count = int(np.prod(chw))
    return features.reshape(channels, count // channels if channels else 0), count


def gram(features) -> np.ndarray:
    """Normalised Gram matrix ``G = F F^T / (C * H * W)`` of feature maps.

    ``features``: [1, C, H, W] (or [C, H, W]), reshaped (as a view when contiguous) to F [C, H*W].
    Returns G: [C, C] in the features' dtype, symmetric (computed by one BLAS product of F with its transpose).
    """
    feats = _floating(features)
    mat, count = _as_matrix(feats)
    g = mat @ mat.T
    g /= g.dtype.type(count)
    return g


def style_loss(features: dict, targets: dict, weights: dict) -> tuple[float, dict]:
    """Style loss ``sum_l w_l * sum((G_l - A_l)^2)`` over the layers in ``weights``, and its gradients.

    ``features``: {layer: F_l [1, C_l, H_l, W_l]}; ``targets``: {layer: A_l [C_l, C_l]} target Gram matrices
    (from ``gram`` of the style image's features); ``weights``: {layer: w_l}. Only layers in ``weights`` are
    used; each must be in ``features`` and ``targets``.
    Returns ``(loss, grads)``: loss a Python float (float64 accumulation); grads {layer: dL/dF_l} of F_l's shape
    and dtype, ``dL/dF_l = 2 w_l (D + D^T) F_l / (C_l H_l W_l)`` with D = G_l - A_l (= 4 w_l D F / N for a
    symmetric target). A layer with weight 0 gets a zero gradient without computing its Gram matrix.
    """
    total = 0.0
    grads = {}
    for layer, w in weights.items():
        if layer not in features or layer not in targets:
            where = "features" if layer not in features else "targets"
            raise KeyError(f"style_loss: layer {layer!r} has a weight but no {where}")
        feats = _floating(features[layer])
        w = float(w)
        if w == 0.0:
            grads[layer] = np.zeros_like(feats)
            continue
        mat, count = _as_matrix(feats)
        target = np.asarray(targets[layer])
        if target.shape != (mat.shape[0], mat.shape[0]):
            raise ValueError(
                f"style_loss: layer {layer!r} has {mat.shape[0]} channels but its target Gram is {target.shape}"
            )
        diff = mat @ mat.T
        diff /= diff.dtype.type(count)
        diff -= target.astype(diff.dtype, copy=False)
        total += w * _sum_squares(diff)
        # dL/dG = 2 w D;  G = F F^T / N  =>  dL/dF = (dL/dG + dL/dG^T) F / N.  D is small ([C, C]).
        coeff = diff + diff.T
        coeff *= 2.0 * w / count
        grads[layer] = (coeff @ mat).reshape(feats.shape)
    return total, grads


def tv_loss(image, weight: float) -> tuple[float, np.ndarray]:
    """Total-variation loss ``weight * (sum of squared vertical + horizontal neighbour differences)``.

    ``image``: [1, 3, H, W] (any array whose last two axes are H, W; all channels are summed), typically the
    normalised pixels being optimised (float64). ``weight``: scalar. Returns ``(loss, grad)``: loss a Python
    float (float64 accumulation), grad of the image's shape and dtype.
    """
    img = _floating(image)
    if img.ndim < 2:
        raise ValueError(f"tv_loss: expected an image [..., H, W], got shape {img.shape}")
    weight = float(weight)
    dv = img[..., 1:, :] - img[..., :-1, :]
    dh = img[..., :, 1:] - img[..., :, :-1]
    loss = weight * (_sum_squares(dv) + _sum_squares(dh))
    # d/dx of sum d^2 with d_i = x_{i+1} - x_i: +2 d_i at x_{i+1}, -2 d_i at x_i.
    grad = np.zeros_like(img)
    grad[..., 1:, :] += dv
    grad[..., :-1, :] -= dv
    grad[..., :, 1:] += dh
    grad[..., :, :-1] -= dh
    grad *= 2.0 * weight
    return loss, grad


def size_factor(pixels: int, calibration_pixels: int) -> float:
    """The factor ``k = calibration_pixels / pixels`` that multiplies the content and TV weights at an output of
    ``pixels`` pixels (H * W) when the weights were calibrated at ``calibration_pixels`` (see the module docstring);
    ``calibration_pixels`` 0 means no calibration (k = 1). Both are counts of output pixels (ints >= 0)."""
    pixels, calibration_pixels = int(pixels), int(calibration_pixels)
    if calibration_pixels == 0:
        return 1.0
    if pixels < 1 or calibration_pixels < 0:
        raise ValueError(f"size_factor: pixel counts must be >= 1 (got {pixels}, {calibration_pixels})")
    return calibration_pixels / pixels
