"""Keeping the content photo's colours: Gatys et al. 2017 ("Controlling Perceptual Factors in Neural Style
Transfer"), section 5, both methods. Images here are float arrays [H, W, 3], RGB in [0, 1], unless said otherwise.

Modes (the ``original_colors`` option)
    "off"        the painting's colours (the plain transfer).
    "luminance"  transfer on luminance only. The network sees the content and the style image as their BT.601
                 luminance copied to three channels (``grey``); the style's luminance is first shifted to the
                 content's mean and scaled to its spread (``match_luminance``). The start image is luminance too.
                 The optimised image's luminance is then joined with the content's chroma (``recombine``).
    "match"      colour matching: before the transfer, the style image's colours get the content's mean and
                 covariance (``match_colours``); the transfer then runs in colour as usual.

Formulas
    luminance (ITU-R BT.601)   Y = 0.299 R + 0.587 G + 0.114 B
    chroma (YCbCr, the full-range BT.601 of JPEG, centred at 0)
                               Cb = (B - Y) / 1.772,   Cr = (R - Y) / 1.402
    back to RGB                R = Y + 1.402 Cr,   B = Y + 1.772 Cb,   G = (Y - 0.299 R - 0.114 B) / 0.587
    luminance matching         Y_s' = (Y_s - mu_s) * sigma_c / sigma_s + mu_c, clipped to [0, 1]
                               (mu, sigma: mean and standard deviation of Y over the pixels; sigma_s floored at
                               1e-6, so a flat style becomes the content's mean)
    colour matching            x' = A (x - mu_s) + mu_c, clipped to [0, 1],   A = C_c^(1/2) C_s^(-1/2)
                               (mu: the mean RGB 3-vector, C: the 3x3 covariance of the pixels (divided by N),
                               plus RIDGE * I; the square roots are the symmetric (PCA) ones,
                               C^(+-1/2) = V diag(lambda^(+-1/2)) V^T from the eigendecomposition C = V diag(lambda) V^T)

The statistics come from the images as given (full resolution); the images the network sees are then resized as
usual (``imageio.preprocess`` takes these float arrays), so the same transformed images serve every size.
"""
from __future__ import annotations

import numpy as np

from ..errors import NSTError
from .images import MEAN, STD, deprocess, preprocess, to_array

__all__ = ["ORIGINAL_COLORS", "BT601", "RIDGE", "check_mode", "luminance", "rgb_to_ycbcr", "ycbcr_to_rgb", "grey",
           "match_luminance", "match_colours", "sym_sqrt", "recombine", "finisher", "network_images",
           "grey_normalised"]

#: Allowed values of the ``original_colors`` option.
ORIGINAL_COLORS = ("off", "luminance", "match")
#: BT.601 luminance weights of R, G, B.
BT601 = (0.299, 0.587, 0.114)
#: Ridge added to both covariances of ``match_colours`` (units: squared [0, 1] pixel values); keeps C_s^(-1/2)
#: finite for flat or grey style images.
RIDGE = 1e-5
_KB, _KR = 1.772, 1.402  # 2 (1 - 0.114), 2 (1 - 0.299)


def check_mode(value) -> str:
    """``value`` if it is one of ``ORIGINAL_COLORS``; NSTError (one line) otherwise."""
    if value not in ORIGINAL_COLORS:
        raise NSTError(f"unknown original-colors mode {value!r} (choose {', '.join(ORIGINAL_COLORS)})")
    return value


def luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luminance Y [...] of ``rgb`` [..., 3] (float64)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * BT601[0] + rgb[..., 1] * BT601[1] + rgb[..., 2] * BT601[2]


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] RGB -> [..., 3] (Y, Cb, Cr), float64; Cb, Cr centred at 0 (in [-0.5, 0.5] for RGB in [0, 1])."""
    rgb = np.asarray(rgb, dtype=np.float64)
    y = luminance(rgb)
    return np.stack([y, (rgb[..., 2] - y) / _KB, (rgb[..., 0] - y) / _KR], axis=-1)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_ycbcr`` (no clipping), float64 [..., 3]."""
    ycc = np.asarray(ycc, dtype=np.float64)
    y = ycc[..., 0]
    r = y + _KR * ycc[..., 2]
    b = y + _KB * ycc[..., 1]
    g = (y - BT601[0] * r - BT601[2] * b) / BT601[1]
    return np.stack([r, g, b], axis=-1)


def grey(rgb: np.ndarray) -> np.ndarray:
    """The luminance of ``rgb`` [H, W, 3] copied to three channels: float32 [H, W, 3]."""
    y = luminance(rgb)
    return np.repeat(y[..., None], 3, axis=-1).astype(np.float32)


def match_luminance(style: np.ndarray, content: np.ndarray) -> np.ndarray:
    """The style's luminance with the content's mean and spread, as a grey float32 [H_s, W_s, 3] image.

    ``Y_s' = clip((Y_s - mu_s) * sigma_c / sigma_s + mu_c, 0, 1)`` (module docstring)."""
    ys, yc = luminance(style), luminance(content)
    mapped = (ys - ys.mean()) * (yc.std() / max(float(ys.std()), 1e-6)) + yc.mean()
    np.clip(mapped, 0.0, 1.0, out=mapped)
    return np.repeat(mapped[..., None], 3, axis=-1).astype(np.float32)


def sym_sqrt(cov: np.ndarray, power: float = 0.5) -> np.ndarray:
    """The symmetric power ``C^power`` of a symmetric positive-definite matrix: ``V diag(lambda^power) V^T``."""
    lam, vec = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
    lam = np.maximum(lam, np.finfo(np.float64).tiny)
    return (vec * lam ** power) @ vec.T


def _stats(rgb: np.ndarray):
    pixels = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    mu = pixels.mean(axis=0)
    centred = pixels - mu
    return mu, centred.T @ centred / len(pixels) + RIDGE * np.eye(3)


def match_colours(style: np.ndarray, content: np.ndarray) -> np.ndarray:
    """The style image [H_s, W_s, 3] with the content's colour mean and covariance: float32 [H_s, W_s, 3].

    ``x' = clip(A (x - mu_s) + mu_c, 0, 1)`` with ``A = C_c^(1/2) C_s^(-1/2)`` (module docstring)."""
    mu_s, cov_s = _stats(style)
    mu_c, cov_c = _stats(content)
    a = sym_sqrt(cov_c, 0.5) @ sym_sqrt(cov_s, -0.5)
    out = (np.asarray(style, dtype=np.float64) - mu_s) @ a.T + mu_c
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32)


def _pixels(x: np.ndarray) -> np.ndarray:
    """Normalised [1, 3, h, w] (or [3, h, w]) -> RGB float64 [h, w, 3] (not clipped)."""
    arr = np.asarray(x)
    arr = arr[0] if arr.ndim == 4 else arr
    return arr.transpose(1, 2, 0).astype(np.float64) * np.asarray(STD) + np.asarray(MEAN)


def grey_normalised(x: np.ndarray) -> np.ndarray:
    """A normalised image [1, 3, h, w] replaced by its luminance in all three channels (same shape, float64)."""
    y = luminance(_pixels(x))
    return ((y[None, None] - np.asarray(MEAN).reshape(1, 3, 1, 1)) / np.asarray(STD).reshape(1, 3, 1, 1))


def recombine(x: np.ndarray, content: np.ndarray) -> np.ndarray:
    """The output of the luminance mode: the luminance of ``x`` with the chroma of ``content``, uint8 [h, w, 3].

    ``x``: the optimised image, normalised [1, 3, h, w]; it is clipped to [0, 1] (as ``deprocess`` does) before its
    luminance is taken. ``content``: the colour content image at the same size, normalised [1, 3, h, w]. The
    joined (Y, Cb, Cr) goes back to RGB, is clipped to [0, 1] and rounded. Non-finite ``x``: NSTError."""
    rgb = _pixels(x)
    if not np.all(np.isfinite(rgb)):
        bad = rgb.size - int(np.count_nonzero(np.isfinite(rgb)))
        raise NSTError(f"the image contains {bad} non-finite values (NaN or infinity): the optimisation diverged")
    if np.shape(content)[-2:] != rgb.shape[:2]:
        raise ValueError(f"recombine: content {np.shape(content)} and image {np.shape(x)} differ in size")
    ycc = rgb_to_ycbcr(_pixels(content))
    ycc[..., 0] = luminance(np.clip(rgb, 0.0, 1.0))
    out = np.clip(ycbcr_to_rgb(ycc), 0.0, 1.0)
    return np.rint(out * 255.0).astype(np.uint8)


def finisher(mode: str, content):
    """``finish(x) -> uint8 [h, w, 3]``, the picture of an optimised normalised x [1, 3, h, w] in ``mode``:
    ``deprocess``, or for "luminance" ``recombine`` with the chroma of ``content`` (a PIL image) preprocessed at x's
    size (smaller edge min(h, w), as the output was made; cached per shape, so pictures of every scale of a
    coarse-to-fine run work)."""
    if mode != "luminance":
        return deprocess
    chromas: dict = {}

    def finish(x):
        shape = tuple(np.shape(x)[-2:])
        if shape not in chromas:
            chromas[shape] = preprocess(content, min(shape))
        return recombine(x, chromas[shape])

    return finish


def network_images(mode: str, content, styles):
    """The images the network sees in ``mode``: ``(content_image, [style_image, ...])``.

    ``content``: a PIL image or None (texture); ``styles``: PIL images. "off" returns them unchanged (so the
    8-bit preprocessing stays CS231n's bit for bit); "luminance" returns ``grey(content)`` and each style's
    ``match_luminance``; "match" the content unchanged and each style's ``match_colours``; transformed images are
    float32 [H, W, 3] arrays in [0, 1], which ``imageio.preprocess`` resizes in floating point."""
    check_mode(mode)
    if mode == "off":
        return content, list(styles)
    if content is None:
        raise NSTError(f"original colors {mode!r} needs a content image")
    c = to_array(content)
    if mode == "luminance":
        return grey(c), [match_luminance(to_array(s), c) for s in styles]
    return content, [match_colours(to_array(s), c) for s in styles]
