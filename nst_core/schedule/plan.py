"""The coarse-to-fine plan: the scales of a job, their budgets, L-BFGS pairs and learning rates.

A schedule is a list of scales, each the smaller edge of the output in pixels, and a budget of objective
evaluations per scale::

    sides(job)  -> [192, 335, 586, 1024]        (--size 1024, calibration size 192, steps <= RATIO)
    plan(job)   -> [(192, 200), (335, 115), (586, 66), (1024, 38)]
    scale_jobs(job) -> [Spec, ...]              one single-scale job per scale (size, budget, pairs, lr, style size)
    image, result = schedule.run(job, content, styles)    # job: a resolved spec.Spec

Each scale is one ``schedule.Problem`` (``schedule.prepare`` of its single-scale job, its targets recomputed: the content image
at the scale's size, the style image at its size for that scale, weights calibrated for it, see
``nst_core.losses.size_factor``), optimised by the chosen optimizer (``schedule.optimise``). The first scale starts
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
    Adam: every scale runs CS231n's recipe (``schedule.problem``: lr, a fresh Adam at lr/30 from 90 % of the
    scale's evaluations, clamping to [-1.5, 1.5] until 95 %); the first scale's lr is ``lr`` (default 3.0, so the
    first scale is the exercise exactly), a later scale's ``lr * ADAM_LATER`` (1/30: the recipe's second rate, 0.1
    by default). Adam's first step moves every pixel by about lr (normalised units; the pixel range is about 4.4
    wide): at lr 3 a later scale starts by throwing away the painted picture it was given. Gradient descent: the
    first scale's step ``lr`` (default ``spec.GD_LR``) times ``(side / first) ** GD_POWER`` (2: the pixel count
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
    Unless given, the style image's size follows each scale by the rule of ``schedule.calibration`` (the preset's
    proportion, never enlarged beyond the file); a given ``style_size`` is the size at the last scale, and the
    earlier scales get it times side_k / size.

Results
    ``schedule.runner`` runs the plan; its docstring tells what ``run`` returns.
"""
from __future__ import annotations

import dataclasses
import math

from ..spec.presets import INVERSION, PRESETS, TEXTURE
from ..spec.spec import LBFGS_HISTORY, Spec
from .calibration import calibration

__all__ = ["RATIO", "MIN_STEP", "BUDGET_POWER", "MIN_BUDGET", "PAIRS_DIVISOR", "MIN_PAIRS", "ADAM_LATER", "GD_POWER",
           "sides", "budgets", "plan", "histories", "learning_rates", "scale_jobs", "scale_table"]

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
#: lr = the first scale's rate (``spec.ADAM_LR`` or the given ``lr``) times ADAM_LATER. See the module docstring.
ADAM_LATER = 1 / 30
#: Gradient descent at scale k: the first scale's step (``spec.GD_LR`` or the given ``lr``) times
#: (side_k / first) ** GD_POWER. See the module docstring.
GD_POWER = 2.0



def _first(job: Spec) -> int:
    """The first scale's side: the calibration size, else the task's default image size."""
    if job.calibration_size:
        return job.calibration_size
    base = {"stylize": PRESETS[next(iter(PRESETS))], "invert": INVERSION, "texture": TEXTURE}[job.task]
    return int(base["image_size"])


def sides(job: Spec, ratio: float | None = None) -> list[int]:
    """The scales (smaller edge of the output, px, increasing, the last = ``job.size``) of a resolved job;
    ``ratio``: the largest step (default ``RATIO``)."""
    ratio = RATIO if ratio is None else float(ratio)
    size, first, n = job.size, _first(job), job.scales
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


def plan(job: Spec) -> list[tuple[int, int]]:
    """[(side px, budget evaluations), ...] of a resolved job: what ``schedule.run`` will do."""
    s = sides(job)
    return list(zip(s, budgets(s, job.iterations)))


def histories(job: Spec) -> list[int]:
    """L-BFGS correction pairs per scale of a resolved job (see the module docstring)."""
    steps = plan(job)
    if job.history is not None:
        return [job.history] * len(steps)
    return [LBFGS_HISTORY] + [min(LBFGS_HISTORY, max(MIN_PAIRS, b // PAIRS_DIVISOR)) for _, b in steps[1:]]


def _lr_at(job: Spec, side: int, first: int):
    """The learning rate of the scale of ``side`` px (see "Learning rates" in the module docstring); None for
    lbfgs / lbfgsb."""
    if job.optimizer not in ("adam", "gd") or side == first:
        return job.lr
    return job.lr * ADAM_LATER if job.optimizer == "adam" else job.lr * (side / first) ** GD_POWER


def learning_rates(job: Spec) -> list:
    """The learning rate per scale of a resolved job: adam's first rate of the recipe (the second is a 30th of it),
    gd's step size; None for lbfgs / lbfgsb. The first scale's is the job's ``lr``."""
    s = sides(job)
    return [_lr_at(job, side, s[0]) for side in s]


def scale_jobs(job: Spec) -> list[Spec]:
    """One single-scale job per scale of a resolved job: its side as ``size``, its budget as ``iterations``, its
    pairs as ``history``, its learning rate, and a given style size scaled to it (``round(style_size * side /
    size)``; None stays None: the calibration rule at that size)."""
    out = []
    for (side, budget), pairs, lr in zip(plan(job), histories(job), learning_rates(job)):
        style_size = None if job.style_size is None else max(1, round(job.style_size * side / job.size))
        out.append(dataclasses.replace(job, size=side, iterations=budget, history=pairs, lr=lr,
                                       style_size=style_size, scales=1))
    return out


@dataclasses.dataclass(frozen=True)
class _Sized:
    size: tuple


def scale_table(job: Spec, content_size=None, style_sizes=()) -> list[dict]:
    """Every number of every scale of a resolved job, for images of these (width, height): side (px), evaluations,
    pairs, lr, and, when the sizes are known, the style size (px) and the calibrated content and TV weights. The
    recipe of a picture records it, so that a reader sees what the size rules decided."""
    image = content_size if job.task != "texture" else (style_sizes[0] if style_sizes else None)
    known = [s for s in style_sizes if s is not None]
    smallest = _Sized(min(known, key=min)) if known else None
    rows = []
    for scale in scale_jobs(job):
        row = {"side": scale.size, "evaluations": scale.iterations, "pairs": scale.history, "lr": scale.lr}
        if image is not None:
            cal = calibration(scale, _Sized(tuple(image)), smallest)
            row.update(style_size=cal.style_size if job.task != "invert" else None,
                       content_weight=cal.content_weight, tv_weight=cal.tv_weight)
        rows.append(row)
    return rows
