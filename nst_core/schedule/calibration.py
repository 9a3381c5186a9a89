"""Weights and style size calibrated to the output's size: the same look at every size.

The content and TV terms are sums over pixels, the style term is not: at another size than the calibration size the
content and TV weights are multiplied by k = pixels at calibration_size / pixels at size (``losses.size_factor``),
and the style image's size keeps the preset's proportion to the output (``calibration``).
"""
from __future__ import annotations

import dataclasses
import math

from PIL import Image

from ..inputs.images import resized_shape
from ..losses import size_factor
from ..spec.presets import PRESETS
from ..spec.spec import Spec

__all__ = ["Calibration", "calibration", "base_style_size", "STYLE_SIZE_LIMIT"]

#: The default style size follows the output size up to this many pixels (smaller edge), unless the preset's own
#: style size is larger. Measured at --size 1024 (starry_night, Tübingen, default schedule; bench_printsize's up-close
#: measure, the style term at the picture's own size as a share of the photo's, against the painting at 512 / 768 /
#: 1014 px): with the painting at the file's 1014 px at the last scale 22.7 / 15.5 / 0.11 %, capped at 512 px
#: 0.10 / 2.0 / 16 %. Both pictures look painted side by side; at 1014 px the network also copies the file's finest
#: detail (canvas grain, JPEG blocks), seen as coloured speckles, which are gone at 512 px. 512 is also the largest
#: style size of the CS231n presets.
STYLE_SIZE_LIMIT = 512


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The size-dependent values of one scale: ``size_factor`` k, the content and TV weights times k, the style
    image's smaller edge (px), the output's pixel count and the calibration size's (0: no calibration)."""

    size_factor: float
    content_weight: float
    tv_weight: float
    style_size: int
    pixels: int
    calibration_pixels: int


def base_style_size(job: Spec) -> int:
    """The style size the rule starts from: the given one, else the preset's (stylize) or the output's (texture)."""
    if job.style_size is not None:
        return job.style_size
    return PRESETS[job.preset]["style_size"] if job.task == "stylize" else job.size


def calibration(job: Spec, image: Image.Image, style_image: Image.Image | None = None) -> Calibration:
    """The calibration of a resolved single-scale job for an output made from ``image`` (the content image, or the
    style image for texture) at ``job.size``.

    k = ``losses.size_factor`` (pixels of the output at calibration_size / at size; 1 when calibration_size is 0
    or equals size). The style size, unless given (stylize only), keeps the preset's proportion to the output:
    ``round(style_size * size / calibration_size)``; when that enlarges it, never beyond ``STYLE_SIZE_LIMIT`` or
    the style file's smaller edge, whichever is smaller, nor below the preset's own value."""
    width, height = image.size  # any object with a PIL-like ``size`` (w, h): a header is enough
    h, w = resized_shape(width, height, job.size)
    cal = job.calibration_size
    cal_pixels = math.prod(resized_shape(width, height, cal)) if cal else 0
    k = size_factor(h * w, cal_pixels)
    style_size = base_style_size(job)
    if cal and job.task == "stylize" and job.style_size is None and job.size != cal:
        scaled = max(1, round(style_size * job.size / cal))
        if scaled > style_size:
            limit = STYLE_SIZE_LIMIT if style_image is None else min(STYLE_SIZE_LIMIT, min(style_image.size))
            scaled = min(scaled, max(style_size, limit))
        style_size = scaled
    return Calibration(size_factor=k, content_weight=job.content_terms[1] * k, tv_weight=job.tv_weight * k,
                       style_size=style_size, pixels=h * w, calibration_pixels=cal_pixels)
