"""How much memory a whole job holds, and the check that refuses one that cannot fit before any work.

    fp = footprint(job, content_size=(w, h), style_sizes=[(w, h), ...])   # sizes of the files, upright
    fp.peak_mb, fp.option, fp.what      # e.g. 7612.0, "--style-size", "--style-size 5000 (a 6312x5000 style image)"
    check_memory(job, content, styles)  # NSTError naming the option to lower, when the run cannot fit

The peak of a run is the largest of, at every scale of its schedule (``plan.scale_jobs``):
- the optimisation at the scale's output size: ``memory.estimate_peak_mb`` (the pixels, the optimizer, the pairs it
  keeps, the evaluations);
- the style pass that computes the scale's target Gram matrices: every style of the blend is resized to the scale's
  style size first (12 bytes per pixel each, float32 RGB), then each goes through the network on its own
  (``memory.STYLE_PIXEL_BYTES`` per pixel of the largest, measured), with the previous scale's picture held;
plus the decoded input images (``memory.INPUT_PIXEL_BYTES`` per pixel of the files). The option named is the one of
the term that makes the peak: ``--size`` for the optimisation (``--history`` too when the pairs weigh more than the
rest), ``--style-size`` for a style pass.
"""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

from ..errors import NSTError
from ..inputs.images import resized_shape
from ..process import memory
from ..spec.blend import blend_weights
from ..spec.spec import LBFGS_HISTORY, Spec
from .calibration import calibration
from .plan import scale_jobs

__all__ = ["Footprint", "footprint", "check_memory"]


@dataclasses.dataclass(frozen=True)
class Footprint:
    """The estimated peak resident memory of a whole run (MB, the process's own ``memory.BASE_MB`` and the decoded
    inputs included), the decoded inputs' share (MB), the option whose value makes the peak, and its value as a
    reader sees it (e.g. ``--size 2048 (2730x2048)``)."""

    peak_mb: float
    inputs_mb: float
    option: str
    what: str


def _size(image) -> tuple[int, int] | None:
    """(width, height) of a PIL image or of a (width, height) pair; None stays None."""
    if image is None:
        return None
    size = getattr(image, "size", image)
    return int(size[0]), int(size[1])


def _style_pass_mb(scale: Spec, image, style_sizes, weights) -> tuple[float, int, tuple]:
    """(MB, style size px, (w, h) of the largest style) of the scale's style pass; (0, 0, ()) when it has none."""
    if not style_sizes or not any(scale.effective_style_weights):
        return 0.0, 0, (0, 0)
    smallest = SimpleNamespace(size=min(style_sizes, key=min))
    side = calibration(scale, SimpleNamespace(size=image), smallest).style_size
    shapes = [resized_shape(w, h, side) for (w, h), weight in zip(style_sizes, weights) if weight]
    if not shapes:
        return 0.0, 0, (0, 0)
    pixels = [h * w for h, w in shapes]
    largest = max(pixels)
    mb = (memory.STYLE_PIXEL_BYTES * largest + memory.STYLE_INPUT_BYTES * (sum(pixels) - largest)) / 2**20
    h, w = shapes[pixels.index(largest)]
    return mb, side, (w, h)


def footprint(job: Spec, content_size=None, style_sizes=(), kept_pixel_bytes: float = 0.0) -> Footprint:
    """The estimated peak of a resolved ``job`` (any task, any schedule) for inputs of these (width, height)
    (EXIF orientation applied; ``content_size`` None for texture). ``kept_pixel_bytes``: bytes per output pixel
    that the caller keeps beside the last scale's optimisation (``nst compare``'s finished runs). See the module
    docstring."""
    style_sizes = [_size(s) for s in style_sizes]
    content_size = _size(content_size)
    image = content_size if job.task != "texture" else (style_sizes[0] if style_sizes else None)
    if image is None:
        raise ValueError(f"footprint of a {job.task} job needs the size of its "
                         f"{'style' if job.task == 'texture' else 'content'} image")
    weights = blend_weights(job.style_blend, len(style_sizes)) if style_sizes and job.task != "invert" else ()
    files = [s for s in [content_size, *style_sizes] if s is not None]
    inputs = memory.INPUT_PIXEL_BYTES * sum(w * h for w, h in files) / 2**20
    height, width = resized_shape(*image, job.size)
    worst, previous = (-1.0, "--size", ""), 0
    scales = scale_jobs(job)
    for scale in scales:
        h, w = resized_shape(*image, scale.size)
        pairs = scale.history or LBFGS_HISTORY
        grow = memory.estimate_peak_mb(h * w, scale.optimizer, pairs, scale.iterations) - memory.BASE_MB
        if scale is scales[-1]:
            grow += kept_pixel_bytes * h * w / 2**20
        option = "--size"
        if scale.optimizer in ("lbfgs", "lbfgsb") and memory.optimizer_bytes(scale.optimizer, pairs) > \
                memory.PIXEL_BYTES:
            option = "--size or --history"
        if grow > worst[0]:
            worst = (grow, option, f"--size {job.size} ({width}x{height})")  # the last scale's, the largest
        style_mb, side, (sw, sh) = _style_pass_mb(scale, image, style_sizes, weights)
        style_mb += 24 * previous / 2**20
        if side and style_mb > worst[0]:
            blend = f", {sum(1 for x in weights if x)} style images" if sum(1 for x in weights if x) > 1 else ""
            worst = (style_mb, "--style-size", f"--style-size {side} (a {sw}x{sh} style image{blend})")
        previous = h * w
    return Footprint(peak_mb=memory.BASE_MB + worst[0] + inputs, inputs_mb=inputs, option=worst[1], what=worst[2])


def check_memory(job: Spec, content=None, styles=(), decoded: bool = True, kept_pixel_bytes: float = 0.0) -> Footprint:
    """NSTError (one line naming the option to lower) when ``job`` would not fit in what this process may still
    take (``memory.headroom``: free memory, the cgroup's limit, ``ulimit -v``, the tightest); returns the footprint
    otherwise (also when no limit is known). ``content`` / ``styles``: PIL images or (width, height) pairs;
    ``decoded``: the images are decoded already (held by this process: their memory is in use, not to come);
    ``kept_pixel_bytes``: as for ``footprint``."""
    fp = footprint(job, content, styles, kept_pixel_bytes)
    grow = (fp.peak_mb - memory.BASE_MB - (fp.inputs_mb if decoded else 0.0)) * memory.arena_factor() \
        + memory.SESSION_MB
    room = memory.headroom()
    if room is not None and grow > room[0]:
        have = max(0.0, room[0])
        raise NSTError(f"{fp.what} needs about {grow / 1024:.1f} GB of memory, {have / 1024:.1f} GB are available "
                       f"({room[1]}); use a smaller {fp.option}")
    return fp
