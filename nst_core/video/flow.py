"""Optical flow between consecutive frames, warping along it, and where it can be trusted (Ruder et al. 2016).

Conventions: a flow is float32 [h, w, 2] of (dx, dy) in pixels, on the grid of the frame it starts from. The
backward flow ``w_b`` lives on frame t's grid and points into frame t-1: frame t at p shows what frame t-1 shows at
p + w_b(p). The forward flow ``w_f`` lives on frame t-1's grid and points into frame t.

Consistency mask ``c`` on frame t's grid (1 reliable, 0 not), before a small blur:
    disoccluded          |w~_f + w_b|^2 > 0.01 (|w~_f|^2 + |w_b|^2) + 0.5, with w~_f = w_f sampled at p + w_b(p)
    motion boundary      |grad u|^2 + |grad v|^2 > 0.01 |w_b|^2 + 0.002, (u, v) = w_b
    out of the frame     p + w_b(p) outside frame t-1
A cut (a new shot) is a pair whose reliable fraction (the mean of the unblurred mask) is below ``CUT_FRACTION``.

OpenCV (``cv2``, the ``video`` extra) is imported here only.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["dis_flow", "flows", "warp", "consistency", "blur_mask", "reliable_fraction", "is_cut", "grey",
           "CUT_FRACTION", "MASK_BLUR_SIGMA"]

#: A pair whose unblurred mask marks less than this share of pixels reliable starts a new shot. On
#: bikes.mp4 at 256 px (602x256, DIS medium): its 5 cuts score 0.001-0.19, every other pair 0.48-1.
CUT_FRACTION = 0.3
#: Standard deviation (px) of the Gaussian blur applied to the mask ("a small blur").
MASK_BLUR_SIGMA = 1.0
#: DIS preset (OpenCV: 0 ultrafast, 1 fast, 2 medium).
DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM


def grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] RGB -> uint8 [h, w] grey (OpenCV's BT.601 weights)."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


_DIS: dict = {}


def dis_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """DIS optical flow from grey uint8 [h, w] ``source`` to ``target``: float32 [h, w, 2] on source's grid, with
    target(p + flow(p)) ~ source(p)."""
    if DIS_PRESET not in _DIS:
        _DIS[DIS_PRESET] = cv2.DISOpticalFlow_create(DIS_PRESET)
    return _DIS[DIS_PRESET].calc(source, target, None)


def flows(previous: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(w_f, w_b) between grey frames t-1 (``previous``) and t (``current``), DIS both ways."""
    return dis_flow(previous, current), dis_flow(current, previous)


def _sample_points(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs + flow[..., 0], ys + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` (of frame t-1: [h, w] or [h, w, C], any float or uint8) sampled at p + flow(p) for each p of frame
    t's grid, bilinear, the border replicated: float32 of image's shape (uint8 input stays uint8)."""
    map_x, map_y = _sample_points(flow)
    arr = np.asarray(image)
    work = arr if arr.dtype == np.uint8 else arr.astype(np.float32)
    if work.ndim == 3 and work.shape[2] > 4:  # remap takes at most 4 channels
        return np.stack([warp(work[..., c], flow) for c in range(work.shape[2])], axis=2)
    return cv2.remap(np.ascontiguousarray(work), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warp_normalised(x: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """A normalised image x [1, 3, h, w] of frame t-1 warped to frame t's grid: float64 [1, 3, h, w]."""
    hwc = np.ascontiguousarray(np.asarray(x)[0].transpose(1, 2, 0), dtype=np.float32)
    return warp(hwc, flow).transpose(2, 0, 1)[None].astype(np.float64)


def consistency(w_f: np.ndarray, w_b: np.ndarray) -> np.ndarray:
    """The unblurred consistency mask of the module docstring: float32 [h, w] of 0 and 1, on frame t's grid."""
    h, w = w_b.shape[:2]
    map_x, map_y = _sample_points(w_b)
    w_f_back = cv2.remap(np.ascontiguousarray(w_f, dtype=np.float32), map_x, map_y, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    total = w_f_back + w_b
    disoccluded = (total ** 2).sum(2) > 0.01 * ((w_f_back ** 2).sum(2) + (w_b ** 2).sum(2)) + 0.5
    du_dy, du_dx = np.gradient(w_b[..., 0].astype(np.float64))
    dv_dy, dv_dx = np.gradient(w_b[..., 1].astype(np.float64))
    boundary = du_dx ** 2 + du_dy ** 2 + dv_dx ** 2 + dv_dy ** 2 > 0.01 * (w_b ** 2).sum(2) + 0.002
    outside = (map_x < 0) | (map_x > w - 1) | (map_y < 0) | (map_y > h - 1)
    return (~(disoccluded | boundary | outside)).astype(np.float32)


def blur_mask(mask: np.ndarray, sigma: float = MASK_BLUR_SIGMA) -> np.ndarray:
    """The mask with a small Gaussian blur (float32 [h, w] in [0, 1])."""
    if sigma <= 0:
        return mask.astype(np.float32)
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)


def reliable_fraction(mask: np.ndarray) -> float:
    """The share of pixels an unblurred mask marks reliable."""
    return float(np.mean(mask))


def is_cut(mask: np.ndarray, threshold: float = CUT_FRACTION) -> bool:
    """Whether the pair whose unblurred mask this is crosses a cut (reliable fraction below ``threshold``)."""
    return reliable_fraction(mask) < threshold
