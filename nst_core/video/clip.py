"""A clip painted frame by frame without flicker (Ruder, Dosovitskiy & Brox 2016, on our objective).

Once per clip: the network, the style targets and the colour match (``schedule.share``, from the first frame), so
``original_colors="match"`` does not flicker. Per frame only the content target changes (``schedule.prepare`` with
the shared part). For each frame t after the first of a shot:

    w_f, w_b = DIS flow both ways between the grey frames t-1 and t at the working size        (``flow``)
    c        = the consistency mask of w_f and w_b; a cut when its reliable fraction < CUT_FRACTION
    p        = the previous result warped to frame t along w_b
    x0       = blur(c) p + (1 - blur(c)) content_t                                  (the warped start)
    loss     = the still's objective + w k sum blur(c) (x - p)^2                    (``temporal``)
    budget   = ``frame_budget`` (the first frame and each cut: the job's ``iterations``, started as a still)

A shot (the frames from one cut to the next) is painted like a clip of its own. Shots run one after another.
Finished frames go to a ``FrameStore`` as they are made; frames already there are skipped (a rerun continues), and
the last one is read back as the previous result. A stop signal ends the run between or inside a frame: the frame
being optimised is dropped, the finished ones stay.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from ..errors import NSTError
from ..inputs import colour
from ..inputs.images import preprocess, resized_shape
from ..schedule import optimise
from ..schedule.problem import Problem, prepare, share
from ..spec.spec import Spec
from . import flow
from .io import Source, read_frames, read_png
from .store import FrameStore
from .temporal import with_temporal

__all__ = ["VideoOptions", "FrameRecord", "ClipResult", "paint_clip", "find_cuts", "working_shape", "TEMPORAL_WEIGHT",
           "frame_budget"]

#: Default temporal weight w (the issue's prototype: 5 kept the warping error at 0.71e-3 on a pan; 125 ghosted
#: the moving subject).
TEMPORAL_WEIGHT = 5.0


@dataclasses.dataclass(frozen=True)
class VideoOptions:
    """What a video adds to a still's Spec: ``temporal_weight`` w >= 0; ``frames`` "A:B" or None; ``fps`` (None:
    the input's); ``frame_iterations``: the budget of frames that continue a shot (None: ``frame_budget``);
    ``cut_fraction``: the reliable fraction below which a pair is a cut."""

    temporal_weight: float = TEMPORAL_WEIGHT
    frames: Optional[str] = None
    fps: Optional[float] = None
    frame_iterations: Optional[int] = None
    cut_fraction: float = flow.CUT_FRACTION

    def check(self) -> "VideoOptions":
        if not np.isfinite(self.temporal_weight) or self.temporal_weight < 0:
            raise NSTError(f"--temporal-weight must be a finite number >= 0, got {self.temporal_weight}")
        if self.fps is not None and not (np.isfinite(self.fps) and self.fps > 0):
            raise NSTError(f"--fps must be a number > 0, got {self.fps}")
        if self.frame_iterations is not None and self.frame_iterations < 1:
            raise NSTError(f"--frame-iterations must be >= 1, got {self.frame_iterations}")
        return self


#: A continued frame's budget as a share of the first frame's, unless ``frame_iterations`` is given: 70 of 200.
#: Measured (bench_video.py, 256x144, DESIGN-NOTES "Video"): with 70 the style loss was 0.93x / 0.96x the independent
#: frames' (pan / Big Buck Bunny), with 100 0.80x / 0.89x, with 50 1.22x / 1.09x; the warping error the same.
CONTINUED_SHARE = 0.35


def frame_budget(job: Spec, options: VideoOptions) -> int:
    """The budget of a frame that continues a shot: ``frame_iterations``, else ``CONTINUED_SHARE`` of the job's
    (at least 1)."""
    return options.frame_iterations or max(1, round(CONTINUED_SHARE * job.iterations))


@dataclasses.dataclass
class FrameRecord:
    """One frame of a run: its number, whether it started a shot, the reliable fraction of its pair (None for the
    first), the evaluations spent, the loss parts at the result, and seconds spent on decode / flow / optimisation
    / saving it."""

    index: int
    cut: bool
    reliable: Optional[float]
    n_evals: int = 0
    parts: dict = dataclasses.field(default_factory=dict)
    seconds: dict = dataclasses.field(default_factory=dict)
    resumed: bool = False


@dataclasses.dataclass
class ClipResult:
    """``status``: "done", "interrupted" or "nonfinite"; ``frames``: one FrameRecord per frame handled (resumed
    ones included); ``cuts``: the frame numbers that started a shot after the first; ``message``: one line."""

    status: str
    frames: list
    cuts: list
    message: str = ""


def working_shape(job: Spec, source: Source) -> tuple[int, int]:
    """(height, width) of the painted frames: the frame resized so that its smaller edge is ``job.size``."""
    return resized_shape(source.size[0], source.size[1], job.size)


def _previous_x(path: str, job: Spec) -> np.ndarray:
    """A finished frame read back as the optimised x (normalised float64 [1, 3, h, w]; grey in luminance mode)."""
    x = preprocess(read_png(path), None).astype(np.float64)
    return colour.grey_normalised(x) if job.original_colors == "luminance" else x


def _continued(problem: Problem, previous_x: np.ndarray, w_b: np.ndarray, mask: np.ndarray, weight: float,
               budget: int) -> Problem:
    """The frame's problem started from the previous result warped where the mask trusts it, with the temporal
    term of weight ``weight`` (w k) and the continuing frames' budget."""
    warped = flow.warp_normalised(previous_x, w_b)
    blurred = flow.blur_mask(mask)[None, None].astype(np.float64)
    lo, hi = problem.bounds
    x0 = np.clip(blurred * warped + (1.0 - blurred) * problem.x0, lo, hi)
    x0.flags.writeable = False
    objective = problem.objective if weight == 0 else with_temporal(problem.objective, warped, blurred[0, 0], weight)
    return dataclasses.replace(problem, x0=x0, objective=objective,
                               job=dataclasses.replace(problem.job, iterations=budget))


class _Pairs:
    """The grey frames at the working size, and the flows and mask of the newest pair (computed only when asked)."""

    def __init__(self, width: int, height: int):
        self.size, self.previous, self.current = (width, height), None, None

    def push(self, rgb: np.ndarray) -> None:
        resized = Image.fromarray(rgb).resize(self.size, Image.Resampling.BILINEAR)
        self.previous, self.current = self.current, flow.grey(np.asarray(resized))

    def mask(self):
        w_f, w_b = flow.flows(self.previous, self.current)
        return w_b, flow.consistency(w_f, w_b)


def paint_clip(job: Spec, source: Source, styles: Sequence[Image.Image], store: FrameStore, text: dict,
               options: VideoOptions = VideoOptions(), on_frame: Optional[Callable] = None,
               callback: Optional[Callable] = None) -> ClipResult:
    """Paint the frames of ``source``'s range into ``store`` (see the module docstring). ``job``: a resolved
    single-scale stylize Spec (its content unused); ``text``: the recipe each PNG frame carries;
    ``on_frame(record)`` after each frame (those kept from an earlier run too); ``callback(record, x)`` after each
    evaluation (``optim``)."""
    height, width = working_shape(job, source)
    pairs, shared, previous_x, last_done = _Pairs(width, height), None, None, None
    records, cuts, later = [], [], frame_budget(job, options)
    t = time.perf_counter()
    try:
        for index, rgb in read_frames(source):
            decode, t = time.perf_counter() - t, time.perf_counter()
            pairs.push(rgb)
            if shared is None:  # once per clip, from its first frame (a resumed run too): network, style targets,
                shared = share(job, Image.fromarray(rgb), styles)  # and the colour match
            if store.done(index):  # finished by an earlier run: read back only when the next frame needs it
                last_done = store.path(index)
                records.append(FrameRecord(index, False, None, resumed=True))
                if on_frame is not None:
                    on_frame(records[-1])
                t = time.perf_counter()
                continue
            if last_done is not None:
                previous_x, last_done = _previous_x(last_done, job), None
            record, status, picture, x = _paint_frame(job, index, rgb, styles, shared, pairs, previous_x, options,
                                                      later, callback)
            record.seconds["decode"] = decode
            if status in ("interrupted", "nonfinite"):
                return ClipResult(status, records, cuts, f"frame {index}: {status}")
            t = time.perf_counter()
            previous_x = x
            store.save(index, picture, text)
            record.seconds["save"] = time.perf_counter() - t
            if record.cut and record.reliable is not None:
                cuts.append(index)
            records.append(record)
            if on_frame is not None:
                on_frame(record)
            t = time.perf_counter()
    except KeyboardInterrupt:
        return ClipResult("interrupted", records, cuts, "interrupted between frames")
    return ClipResult("done", records, cuts, f"{len(records)} frames")


def _paint_frame(job, index, rgb, styles, shared, pairs, previous_x, options, later, callback) -> tuple:
    """One frame optimised: a still at the first frame of a shot, a continued frame otherwise. Returns
    ``(FrameRecord, status, picture uint8 [h, w, 3] or None, x or None)``; status is the optimizer's, "interrupted"
    also when nothing was evaluated."""
    t = time.perf_counter()
    reliable, cut, w_b, mask = None, True, None, None
    if previous_x is not None and pairs.previous is not None:
        w_b, mask = pairs.mask()
        reliable = flow.reliable_fraction(mask)
        cut = reliable < options.cut_fraction
    seconds = {"flow": time.perf_counter() - t}
    t = time.perf_counter()
    # --init applies to a shot's first frame; a continued frame starts from the content where the warp is not trusted
    start_job = job if cut else dataclasses.replace(job, init="content")
    problem = prepare(start_job, Image.fromarray(rgb), styles, shared=shared)
    if not cut:
        weight = options.temporal_weight * problem.calibration.size_factor
        problem = _continued(problem, previous_x, w_b, mask, weight, later)
    result = optimise(problem, callback)
    seconds["optimise"] = time.perf_counter() - t
    record = FrameRecord(index, cut, reliable, result.n_evals, dict(result.parts), seconds)
    if result.status in ("interrupted", "nonfinite") or result.best_evaluation is None:
        return record, result.status if result.status == "nonfinite" else "interrupted", None, None
    return record, result.status, problem.finish(result.x), result.x


def find_cuts(source: Source, width: int, height: int, threshold: float = flow.CUT_FRACTION) -> tuple[list, list]:
    """The cuts of ``source``'s range at a working size, as ``paint_clip`` finds them: (frame numbers that start a
    new shot after the first, the reliable fraction of every pair in order)."""
    pairs, cuts, fractions = _Pairs(width, height), [], []
    for index, rgb in read_frames(source):
        pairs.push(rgb)
        if pairs.previous is not None:
            fractions.append(flow.reliable_fraction(pairs.mask()[1]))
            if fractions[-1] < threshold:
                cuts.append(index)
    return cuts, fractions
