"""Coarse-to-fine, run: paint at the first scale, upsample, refine at the next size, up to the requested one.

    image, result = run(job, content, styles, callback)    # job: a resolved Spec; images: PIL

The scales, budgets, pairs and learning rates are ``schedule.plan``'s (its docstring tells how they were chosen).
Each scale is one ``schedule.Problem`` of its single-scale job (``plan.scale_jobs``), optimised by the job's
optimizer. The first scale starts from the requested init; each later one from the previous scale's best image,
upsampled bicubic in float (``upsample``) to the new scale's exact shape, with the first scale's style term on the
picture downsampled to the first scale (``objective.pyramid``) unless ``whole_weight`` is 0 or the task is invert.

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
import time
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .. import optim
from ..errors import NSTError
from ..inputs import colour
from ..inputs.images import MEAN, STD
from ..objective import pyramid
from ..process import interrupts
from ..spec.spec import Spec
from ..network import cache
from ..network import model as _model
from ..objective import active_layers
from .calibration import calibration
from .plan import scale_jobs, sides
from .problem import Problem, optimise, prepare

__all__ = ["run", "upsample", "ScaleRecord", "ScheduleResult"]


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

    def _schedule_wide(self, at: Optional[int]) -> Optional[int]:
        """A 1-based evaluation number of the last scale, counted over the whole schedule."""
        return None if at is None else sum(r.n_evals for r in self.scales[:-1]) + at

    @property
    def best_evaluation(self) -> Optional[int]:
        """The schedule-wide number of the best evaluation of the last scale, or None."""
        return self._schedule_wide(self.scales[-1].best_evaluation) if self.scales else None

    @property
    def evaluation(self) -> Optional[int]:
        """The schedule-wide number of the evaluation that produced ``x`` (``optim.Result.evaluation``), or None."""
        return self._schedule_wide(self.scales[-1].evaluation) if self.scales else None


def _whole_term(first: Spec, content, styles):
    """The first scale's style-only objective and its shape, for ``pyramid.with_whole_term``; None when the task
    has no style term or ``whole_weight`` is 0."""
    if first.task == "invert" or not first.whole_weight:
        return None
    coarse = dataclasses.replace(first, iterations=1, tv_weight=0.0,
                                 **({"content_weight": 0.0} if first.task == "stylize" else {}))
    problem = prepare(coarse, content, styles)
    return problem.objective, problem.x0.shape


def _later_scale(problem: Problem, x: np.ndarray, whole, job: Spec) -> Problem:
    """A later scale's problem: started from the previous best ``x`` upsampled, with the whole-picture term."""
    if job.original_colors == "luminance":  # the optimised image stays grey at every scale
        x0 = colour.grey_normalised(upsample(x, problem.x0.shape))
        x0.flags.writeable = False
    else:
        x0 = _Upsampled(x, problem.x0.shape)
    objective = problem.objective
    if whole is not None:
        down = pyramid.Downsample(x0.shape, whole[1])
        objective = pyramid.with_whole_term(objective, whole[0], down, job.whole_weight)
    return dataclasses.replace(problem, x0=x0, objective=objective)


def _scale_callback(records: list, user_callback, k: int, side: int, start: float, offset: int):
    def callback(record, xv):
        rec = ScaleRecord(offset + record.evaluation, start + record.seconds, record.loss, record.parts,
                          scale=k + 1, side=side)
        records.append(rec)
        if user_callback is not None:
            user_callback(rec, xv)
    return callback


def check_first_scale(job: Spec, content: Optional[Image.Image], styles: Sequence[Image.Image]) -> None:
    """NSTError, naming the options, when the first scale of a coarse-to-fine ``job`` (and so its style image
    there) is smaller than the network's layers need: the later scales are larger. Before any work."""
    first = scale_jobs(job)[0]
    layers = active_layers(*job.content_terms, job.style_layers or (), job.effective_style_weights)
    if not layers:
        return
    minimum = cache.min_size(_model.find_model(job.model), layers)
    need = f"below the {minimum} px that layer {max(layers)} needs"
    if first.size < minimum:
        if job.scales == "auto":
            raise NSTError(f"--calibration-size {job.calibration_size}: coarse-to-fine starts at that size, {need}; "
                           f"use --calibration-size >= {minimum} (or --scales 1)")
        fits = [n for n in range(1, job.scales) if sides(dataclasses.replace(job, scales=n))[0] >= minimum]
        raise NSTError(f"--scales {job.scales} with --size {job.size}: the first scale would be {first.size} px, "
                       f"{need}; use --scales {max(fits, default=1)} or fewer, or a larger --size")
    if any(job.effective_style_weights):
        smallest = min(styles, key=lambda im: min(im.size))
        style_size = calibration(first, content if content is not None else smallest, smallest).style_size
        if style_size < minimum:
            raise NSTError(f"the style size at the first scale ({first.size} px) would be {style_size} px, {need}; "
                           f"use a larger --style-size or fewer --scales")


def run(job: Spec, content: Optional[Image.Image] = None, styles: Sequence[Image.Image] = (), callback=None):
    """Run the schedule of a resolved ``job`` on its decoded images; returns ``(image uint8 [h, w, 3],
    ScheduleResult)``. ``callback(record, x)`` gets every evaluation's ``ScaleRecord``."""
    jobs = scale_jobs(job)
    check_first_scale(job, content, styles)
    results, history, records, interrupted = [], [], [], None
    x, t0, done, whole, finish = None, time.perf_counter(), 0, None, None
    for k, scale_job in enumerate(jobs):
        records.clear()
        on_eval = _scale_callback(records, callback, k, scale_job.size, time.perf_counter() - t0, done)
        try:
            problem = prepare(scale_job, content, styles)
            if x is not None:
                if k == 1:
                    whole = _whole_term(jobs[0], content, styles)
                problem = _later_scale(problem, x, whole, job)
        except KeyboardInterrupt:  # between two scales: the previous scale's best image is the result
            if not results:
                raise
            interrupted = f"{interrupts.stopped_by()} while preparing scale {k + 1} ({scale_job.size} px)"
            break
        finish = problem.finish  # the picture of this scale's x (luminance mode: with the content's chroma)
        result = optimise(problem, on_eval)
        history.extend(records)
        results.append(result)
        done += result.n_evals
        x = result.x
        if result.status in ("interrupted", "nonfinite"):
            break
    last = results[-1]
    message = f"scale {len(results)}/{len(jobs)} ({jobs[len(results) - 1].size} px): {interrupted or last.message}"
    final = ScheduleResult(x=last.x, loss=last.loss, parts=dict(last.parts), n_evals=done,
                           status="interrupted" if interrupted else last.status, message=message, history=history,
                           optimizer=last.optimizer, info=dict(last.info), kept=last.kept, scales=results,
                           sides=[j.size for j in jobs[:len(results)]])
    return finish(final.x), final
