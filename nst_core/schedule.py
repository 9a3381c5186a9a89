"""Coarse-to-fine: paint small, upsample, refine at the next size, up to the requested one.

A schedule is a list of scales, each the smaller edge of the output in pixels, and a budget of objective
evaluations per scale::

    sides(opt)  -> [192, 335, 586, 1024]        (--size 1024, calibration size 192, steps <= RATIO)
    plan(opt)   -> [(192, 200), (335, 115), (586, 66), (1024, 38)]
    image, result = run(opt, content=..., style=...)     # opt: transfer.validate_options(...)

Each scale is one ``transfer.Problem`` (``transfer.prepare`` at that size, its targets recomputed: the content image
at the scale's size, the style image at its size for that scale, weights calibrated for it, see
``nst_core.losses.size_factor``), optimised by the chosen optimizer (``transfer.optimise``). The first scale starts
from the requested init; each later one from the previous scale's best image, upsampled bicubic in float
(``upsample``) to the new scale's exact shape.

The schedule (``sides``)
    The first scale is the calibration size (the preset's, 192 px; with ``calibration_size`` 0 the task's default
    size), where the preset's weights are exactly CS231n's. ``scales="auto"``: one scale (today's single run at
    ``size``) below ``MIN_STEP`` times the first; above, ``1 + ceil(log(size / first) / log(RATIO))`` scales spaced
    geometrically from the first to ``size`` (equal steps of at most RATIO). ``scales=N``: N scales spaced the same
    way (1: one scale at ``size``); when ``size`` is not above the first, the first becomes ``size / RATIO^(N-1)``.

Budgets (``budgets``)
    The first scale gets ``iterations`` (default 200); scale k gets ``iterations * (first / side_k) ** BUDGET_POWER``
    (at least min(iterations, MIN_BUDGET)): the later scales start from an already painted picture and need fewer
    evaluations, which also cost more.

How RATIO and BUDGET_POWER were chosen (--size 512, starry_night defaults, Tübingen, 2026-12-01; the pictures
were looked at side by side, full size and as crops; cost in pixel-evaluations, sum of budget x H x W, because the
machine's load varied 2x between runs)
    one scale at 512 (200 evaluations, 70M pixel-evaluations): the photograph with a fine blue hatching, no swirls.
    Every coarse-to-fine variant: big swirls in the sky, the yellow orbs and palette of the painting, the houses,
    tower and river still there. RATIO 2, power 1 (192, 314, 512 px; 200 / 122 / 75 evaluations; 52M) and RATIO
    sqrt 2, power 1 (192, 266, 369, 512; 200 / 144 / 104 / 75; 69M) looked alike, crisp strokes at full size:
    sqrt 2 costs 32 % more for no visible gain. Power 1.5 (2x: 200 / 96 / 46) is slightly softer, power 2
    (200 / 75 / 28; sqrt 2: 200 / 104 / 54 / 28) visibly blurred (the upsampling not yet refined). In the power-1
    run the later scales reached 1 % of their final loss at evaluations 119 of 122 and 73 of 75: still improving,
    so smaller budgets cut into the result.

Correction pairs per scale
    The pairs of our L-BFGS are the largest buffers at the last scale (24 bytes per pixel each: 2.6 GB at 2048 px
    with 19 pairs). Unless ``history`` is given, a later scale keeps ``budget // 4`` pairs (at least 5, at most
    ``history``): 20 / 16 / 9 after the first scale at --size 1024, 20 / 15 / 8 / 5 at 2048. Measured on the last
    scale of --size 1024 (38 evaluations from the same upsampled 586 px picture): best loss 52438 / 52743 / 53216 /
    56939 with 20 / 10 / 5 / 2 pairs (+0.6 %, +1.5 %, +8.6 %).

Learning rates (``learning_rates``)
    Adam: every scale runs CS231n's recipe (``transfer._optimise``: lr, a fresh Adam at lr/30 from 90 % of the
    scale's evaluations, clamping to [-1.5, 1.5] until 95 %); the first scale's lr is ``lr`` (default 3.0, so the
    first scale is the exercise exactly), a later scale's ``lr * ADAM_LATER`` (1/30: the recipe's second rate, 0.1
    by default). Adam's first step moves every pixel by about lr (normalised units; the pixel range is about 4.4
    wide): at lr 3 a later scale starts by throwing away the painted picture it was given. Gradient descent: the
    first scale's step ``lr`` (default ``transfer.GD_LR``) times ``(side / first) ** GD_POWER`` (2: the pixel count
    ratio), because the calibrated objective's gradient per pixel falls with the pixel count (measured at the
    photo: 1 / 2.47 at 2.67x the pixels, 1 / 5.64 at 7.1x). A given ``lr`` is the first scale's; the later ones
    follow by the same rules.

    Measured with bench/bench_schedule_lr.py (--size 512: 192 / 314 / 512 px, 200 / 122 / 75 evaluations;
    Tübingen, starry_night defaults, 2026-12-01). Best loss at 512 px, Adam with ADAM_LATER 1 (the recipe
    restarted at 3.0, the old behaviour) / 0.3333 / 0.1 / 1/30 / 0.01: 50853 / 31724 / 14723 / 10173 / 13033 (5.0
    / 3.1 / 1.45 / 1 / 1.28x the best); with the_scream.jpg as the style, 0.1 / 0.03333 / 0.01: 20941 / 16009 /
    18615 (1.31 / 1 / 1.16x). The pictures: at 1 the houses and the river dissolve into a haze of strokes, at
    0.3333 still hazy; 0.1 crisp with bold strokes, 1/30 and 0.01 crisp with finer strokes. Gradient descent,
    GD_POWER 0 (the old fixed step) / 1 / 2 / 3 / 4: 486940 / 297600 / 178990 / 129510 / diverged at 512 px; the
    loss rose at 0 / 0 / 1 / 21 / 38 of the 122 evaluations at 314 px: from 3 on the step oscillates, as 2x
    ``GD_LR`` does at 192 px, so 2 keeps the margin ``GD_LR`` has there. GD_POWER 0's picture is the upsampled one,
    soft; 2's has the strokes sharpened at the new size.

The picture seen as a whole
    Every later scale's objective also has the first scale's style term on the picture downsampled to the first
    scale's shape, ``whole_weight`` times (``nst_core.pyramid``; the first scale's style-only problem is prepared
    once, before the second scale; none for invert or with ``whole_weight`` 0). Its value is the records' part
    ``"whole"``.

Style size per scale
    Unless given, the style image's size follows each scale by the rule of ``transfer.calibration`` (the preset's
    proportion, never enlarged beyond the file); a given ``style_size`` is the size at the last scale, and the
    earlier scales get it times side_k / size.

Results
    ``run`` returns ``(image, ScheduleResult)``: an ``optim.Result`` for the whole schedule whose ``x`` / ``loss`` /
    ``parts`` are the last scale's best, ``history`` holds every evaluation of every scale as ``ScaleRecord`` (one
    evaluation count and one clock over the schedule, plus ``scale`` 1-based and ``side`` px), and ``scales`` the
    per-scale ``optim.Result``s (each with its own history, numbered from 1). Ctrl-C or a non-finite loss ends the
    schedule at the current scale with its best image (status "interrupted" / "nonfinite"). The callback gets the
    ``ScaleRecord``s.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Optional

import numpy as np
from PIL import Image

from . import colour, interrupts, memory, optim, pyramid
from .errors import NSTError
from .imageio import MEAN, STD, resized_shape
from .presets import INVERSION, PRESETS, TEXTURE

__all__ = ["RATIO", "MIN_STEP", "BUDGET_POWER", "MIN_BUDGET", "PAIRS_DIVISOR", "MIN_PAIRS", "ADAM_LATER", "GD_POWER",
           "sides", "budgets", "plan", "histories", "learning_rates", "upsample", "run",
           "ScaleRecord", "ScheduleResult", "check_memory"]

#: Largest step between two scales (edge ratio). See the module docstring for how it was chosen.
RATIO = 2.0
#: ``scales="auto"`` uses one scale when ``size < MIN_STEP * first``.
MIN_STEP = 1.5
#: Budget of scale k: ``iterations * (first / side_k) ** BUDGET_POWER``.
BUDGET_POWER = 1.0
#: Smallest budget of a later scale (unless ``iterations`` is smaller).
MIN_BUDGET = 20
#: L-BFGS correction pairs of a later scale, unless ``history`` is given: budget // PAIRS_DIVISOR, at least
#: MIN_PAIRS, at most ``history``. See the module docstring.
PAIRS_DIVISOR = 4
MIN_PAIRS = 5
#: Adam at a later scale: the recipe of the first (lr, lr/30 from 90 % of the evaluations, clamping until 95 %) with
#: lr = the first scale's rate (``transfer.ADAM_LR`` or the given ``lr``) times ADAM_LATER. See the module docstring.
ADAM_LATER = 1 / 30
#: Gradient descent at scale k: the first scale's step (``transfer.GD_LR`` or the given ``lr``) times
#: (side_k / first) ** GD_POWER. See the module docstring.
GD_POWER = 2.0

#: The options that ``transfer.prepare`` takes, per task (the schedule hands them on scale by scale).
_KEYS = ("preset", "size", "style_size", "content_layer", "content_weight", "style_layers", "style_weights",
         "style_scale", "tv_weight", "init", "optimizer", "iterations", "lr", "history", "seed", "device", "model",
         "calibration_size", "original_colors", "style_blend", "pooling")
_NOT_FOR = {"stylize": (), "invert": ("preset", "style_size", "style_layers", "style_weights", "style_scale",
                                      "original_colors", "style_blend"),
            "texture": ("preset", "content_layer", "content_weight", "original_colors", "style_blend")}


def _first(opt: dict) -> int:
    """The first scale's side: the calibration size, else the task's default image size."""
    if opt["calibration_size"]:
        return opt["calibration_size"]
    base = {"stylize": PRESETS[next(iter(PRESETS))], "invert": INVERSION, "texture": TEXTURE}[opt["task"]]
    return int(base["image_size"])


def sides(opt: dict, ratio: float | None = None) -> list[int]:
    """The scales (smaller edge of the output, px, increasing, the last = ``opt["size"]``) of validated options;
    ``ratio``: the largest step (default ``RATIO``)."""
    ratio = RATIO if ratio is None else float(ratio)
    size, first, n = opt["size"], _first(opt), opt["scales"]
    if n == "auto":
        if size < MIN_STEP * first:
            return [size]
        n = 1 + math.ceil(math.log(size / first) / math.log(ratio) - 1e-9)
    if n == 1:
        return [size]
    if size <= first:
        first = size / ratio ** (n - 1)
    out = []
    for k in range(n):
        side = max(1, round(first * (size / first) ** (k / (n - 1))))
        if not out or side > out[-1]:
            out.append(side)
    out[-1] = size
    return out


def budgets(scale_sides, iterations: int) -> list[int]:
    """Objective evaluations per scale: ``iterations`` for the first, falling as ``(first / side) ** BUDGET_POWER``
    for the later ones (at least ``min(iterations, MIN_BUDGET)``)."""
    first = scale_sides[0]
    floor = min(iterations, MIN_BUDGET)
    return [iterations] + [max(floor, round(iterations * (first / s) ** BUDGET_POWER)) for s in scale_sides[1:]]


def histories(opt: dict) -> list[int]:
    """L-BFGS correction pairs per scale of validated options (see the module docstring)."""
    steps, history = plan(opt), opt["history"]
    if opt.get("history_given"):
        return [history] * len(steps)
    return [history] + [min(history, max(MIN_PAIRS, b // PAIRS_DIVISOR)) for _, b in steps[1:]]


def _lr_at(opt: dict, side: int):
    """The learning rate of the scale of ``side`` px (see "Learning rates" in the module docstring); None for
    lbfgs / lbfgsb."""
    from . import transfer  # this module builds on it

    name = opt["optimizer"]
    if name not in ("adam", "gd"):
        return None
    lr = opt.get("lr")
    lr = (transfer.ADAM_LR if name == "adam" else transfer.GD_LR) if lr is None else lr
    first = sides(opt)[0]
    if side == first:
        return lr
    return lr * ADAM_LATER if name == "adam" else lr * (side / first) ** GD_POWER


def learning_rates(opt: dict) -> list:
    """The learning rate per scale of validated options: adam's first rate of the recipe (the second is a 30th of
    it), gd's step size; None for lbfgs / lbfgsb. The first scale's is ``lr`` (default ``transfer.ADAM_LR`` /
    ``GD_LR``)."""
    return [_lr_at(opt, side) for side in sides(opt)]


def plan(opt: dict) -> list[tuple[int, int]]:
    """[(side px, budget evaluations), ...] of validated options: what ``run`` will do."""
    s = sides(opt)
    return list(zip(s, budgets(s, opt["iterations"])))


def upsample(x: np.ndarray, shape) -> np.ndarray:
    """Normalised image x [1, 3, h, w] -> float64 [1, 3, H, W] of ``shape``, resized per channel with PIL's bicubic
    filter in float32 (no 8-bit rounding) and clipped to the valid pixel range (bicubic overshoots at edges)."""
    shape = tuple(int(v) for v in shape)
    height, width = shape[2:]
    out = np.empty(shape, np.float64)
    for c in range(3):
        channel = Image.fromarray(np.ascontiguousarray(x[0, c], dtype=np.float32), mode="F")
        out[0, c] = np.asarray(channel.resize((width, height), Image.Resampling.BICUBIC))
        np.clip(out[0, c], (0.0 - MEAN[c]) / STD[c], (1.0 - MEAN[c]) / STD[c], out=out[0, c])
    return out


class _Upsampled:
    """A later scale's start, ``upsample(x, shape)``, made only when the optimizer converts it to its own float64
    copy (``np.array(start, dtype=float64)``). The previous scale's best ``x`` is kept anyway (its Result), so the
    upsampled picture then exists once, as the optimizer's iterate, instead of also in the Problem for the whole
    scale: 24 bytes per pixel less at the last scale."""

    def __init__(self, x: np.ndarray, shape):
        self._x, self.shape, self.dtype = x, tuple(int(v) for v in shape), np.dtype(np.float64)

    def __array__(self, dtype=None, copy=None):
        out = upsample(self._x, self.shape)
        return out if dtype is None else out.astype(dtype, copy=False)


@dataclasses.dataclass(frozen=True)
class ScaleRecord(optim.Record):
    """An ``optim.Record`` of a schedule: ``evaluation`` and ``seconds`` count over the whole schedule; ``scale`` is
    the scale's 1-based number, ``side`` its smaller edge (px)."""

    scale: int = 1
    side: int = 0


@dataclasses.dataclass
class ScheduleResult(optim.Result):
    """An ``optim.Result`` over a whole schedule (see the module docstring); ``scales``: the per-scale Results,
    ``sides``: their smaller edges (px)."""

    scales: list = dataclasses.field(default_factory=list, repr=False)
    sides: list = dataclasses.field(default_factory=list)

    @property
    def best_evaluation(self) -> Optional[int]:
        """The schedule-wide number of the evaluation that produced ``x`` (the last scale's best), or None."""
        if not self.scales:
            return None
        best = self.scales[-1].best_evaluation
        return None if best is None else sum(r.n_evals for r in self.scales[:-1]) + best


def _options_at(opt: dict, side: int, budget: int, history: int, callback) -> dict:
    """The ``transfer.prepare`` options of one scale."""
    out = {k: opt[k] for k in _KEYS if opt.get(k) is not None and k not in _NOT_FOR[opt["task"]]}
    out.update(size=side, iterations=budget, history=history, callback=callback)
    lr = _lr_at(opt, side)
    if lr is not None:
        out["lr"] = lr
    if "style_size" in out:
        if opt["style_size_given"]:
            out["style_size"] = max(1, round(opt["style_size"] * side / opt["size"]))
        else:
            del out["style_size"]  # the default rule at this size
    return out


def check_memory(opt: dict, image: Image.Image) -> None:
    """NSTError (one line) when the largest scale (``opt["size"]``) would not fit in the memory available now
    (``memory.estimate_peak_mb``); nothing when it fits or the available memory is unknown."""
    height, width = resized_shape(image.width, image.height, opt["size"])
    need = memory.estimate_peak_mb(height * width, opt["optimizer"], histories(opt)[-1], plan(opt)[-1][1])
    have = memory.available_mb()
    if have is not None and need > have:
        raise NSTError(f"--size {opt['size']} ({width}x{height}) needs about {need / 1024:.1f} GB of memory, "
                       f"{have / 1024:.1f} GB are available; use a smaller --size")


def _whole_term(opt: dict, side: int, content, style):
    """The first scale's style-only objective and its shape, for ``pyramid.with_whole_term``; None when the task
    has no style term or ``whole_weight`` is 0."""
    from . import transfer

    if opt["task"] == "invert" or not opt.get("whole_weight"):
        return None
    options = _options_at(opt, side, 1, opt["history"], None)
    options.update(tv_weight=0.0, **({"content_weight": 0.0} if opt["task"] == "stylize" else {}))
    coarse = transfer.prepare(opt["task"], content, style, **options)
    return coarse.objective, coarse.x0.shape


def run(opt: dict, content: Image.Image | None = None, style: Image.Image | None = None):
    """Run the schedule of validated options ``opt`` (``transfer.validate_options``) on PIL images; returns
    ``(image uint8 [h, w, 3], ScheduleResult)``."""
    from . import transfer  # this module builds on it

    task, user_callback = opt["task"], opt["callback"]
    steps, pairs = plan(opt), histories(opt)
    results, history, records, interrupted = [], [], [], None
    x, t0, done, whole = None, time.perf_counter(), 0, None
    for k, (side, budget) in enumerate(steps):
        start, offset = time.perf_counter() - t0, done

        def callback(record, xv, k=k, side=side, start=start, offset=offset):
            rec = ScaleRecord(offset + record.evaluation, start + record.seconds, record.loss, record.parts,
                              scale=k + 1, side=side)
            records.append(rec)
            if user_callback is not None:
                user_callback(rec, xv)

        records.clear()
        try:
            problem = transfer.prepare(task, content, style, **_options_at(opt, side, budget, pairs[k], callback))
            if x is not None:
                if opt.get("original_colors") == "luminance":  # the optimised image stays grey at every scale
                    x0 = colour.grey_normalised(upsample(x, problem.x0.shape))
                    x0.flags.writeable = False
                else:
                    x0 = _Upsampled(x, problem.x0.shape)
                if k == 1:
                    whole = _whole_term(opt, steps[0][0], content, style)
                objective = problem.objective
                if whole is not None:
                    down = pyramid.Downsample(x0.shape, whole[1])
                    objective = pyramid.with_whole_term(objective, whole[0], down, opt["whole_weight"])
                problem = dataclasses.replace(problem, x0=x0, objective=objective)
        except KeyboardInterrupt:  # between two scales: the previous scale's best image is the result
            if not results:
                raise
            interrupted = f"{interrupts.stopped_by()} while preparing scale {k + 1} ({side} px)"
            break
        finish = problem.finish  # the picture of this scale's x (luminance mode: with the content's chroma)
        result = transfer.optimise(problem)
        history.extend(records)
        results.append(result)
        done += result.n_evals
        x = result.x
        if result.status in ("interrupted", "nonfinite"):
            break
    last = results[-1]
    n = len(steps)
    message = f"scale {len(results)}/{n} ({steps[len(results) - 1][0]} px): {interrupted or last.message}"
    status = "interrupted" if interrupted else last.status
    final = ScheduleResult(x=last.x, loss=last.loss, parts=dict(last.parts), n_evals=done, status=status,
                           message=message, history=history, optimizer=last.optimizer, info=dict(last.info),
                           scales=results, sides=[s for s, _ in steps[:len(results)]])
    return finish(final.x), final
