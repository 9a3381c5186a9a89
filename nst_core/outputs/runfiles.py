"""The files of one run besides its picture: paths checked before any work, the CSV log, the intermediate pictures
and the best picture so far (kept by the optimizers' callback, written with the recipe)."""
from __future__ import annotations

import math
import os

from ..errors import NSTError
from ..inputs.images import deprocess
from .files import same_file, save_image, write_bytes

__all__ = ["check_not_input", "check_log_path", "write_log", "intermediate_path", "Progress"]


def check_not_input(path, inputs, what: str) -> None:
    """NSTError when ``path`` is one of the input images."""
    for inp in inputs:
        if same_file(os.fspath(path), inp):
            raise NSTError(f"{path}: {what} would overwrite the input image {inp}")


def check_log_path(path: str, inputs) -> None:
    """NSTError unless a CSV log can be written at ``path`` (a writable directory, not an input)."""
    if os.path.isdir(path) or path.endswith(os.sep):
        raise NSTError(f"{path}: is a directory; give a log file name such as run.csv")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise NSTError(f"{path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise NSTError(f"{path}: directory {directory} is not writable")
    check_not_input(path, inputs, "the log")


def write_log(path: str, result, side: int) -> None:
    """The history as CSV: evaluation,seconds,loss,content,style,tv[,whole],scale (the scale's side, px)."""
    columns = ("evaluation", "seconds", "loss", "content", "style", "tv")
    if any("whole" in rec.parts for rec in result.history):  # the later scales' whole-picture term
        columns += ("whole",)
    lines = [",".join(columns + ("scale",))]
    for rec in result.history:
        row = [str(rec.evaluation), repr(float(rec.seconds)), repr(float(rec.loss))]
        row += [repr(float(rec.parts.get(k, math.nan))) for k in columns[3:]]
        row.append(str(getattr(rec, "side", side)))
        lines.append(",".join(row))
    write_bytes(path, ("\n".join(lines) + "\n").encode())


def intermediate_path(out: str, evaluation: int, width: int) -> str:
    """``out`` numbered by evaluation: stylized.png -> stylized_0050.png (``width`` digits)."""
    stem, ext = os.path.splitext(out)
    return f"{stem}_{evaluation:0{width}d}{ext}"


class Progress:
    """The callback of a run: keeps the best x of the current scale and saves it every ``save_every`` evaluations
    beside ``out`` (with the recipe ``text``); ``bar`` (a tqdm-like object or None) shows the progress.

    ``picture(x)`` makes the intermediate pictures (``colour.finisher`` in luminance mode, else ``deprocess``);
    ``warn(line)`` reports an intermediate that could not be written (saving them then stops, the run goes on).
    ``rising``: per scale, the last evaluation of its run's rising phase (``schedule.rising_phase``) or None; while
    a scale's best point is no later than that, an intermediate shows the latest point instead (Adam's best is
    its start until after its decay: the photo)."""

    def __init__(self, out: str, steps, save_every: int = 0, inputs=(), text=None, picture=deprocess, bar=None,
                 warn=print, rising=()):
        self.out, self.steps, self.save_every, self.inputs, self.text = out, steps, save_every, inputs, text
        self.picture, self.bar, self.warn = picture, bar, warn
        self.rising = list(rising) + [None] * (len(steps) - len(rising))
        self.width = max(4, len(str(sum(b for _, b in steps))))
        self.best, self.x, self.scale = math.inf, None, 1
        self.offset, self.best_at = 0, 0  # evaluations before this scale; the best's evaluation within it

    def __call__(self, record, x) -> None:
        scale = getattr(record, "scale", 1)
        if scale != self.scale:  # a new scale: a new objective, its own best
            self.best, self.x, self.scale, self.offset = math.inf, None, scale, record.evaluation - 1
        if math.isfinite(record.loss) and record.loss < self.best:
            self.best, self.best_at = record.loss, record.evaluation - self.offset
            if self.save_every:
                self.x = x.copy()
        if self.save_every and record.evaluation % self.save_every == 0 and self.x is not None:
            rising = self.rising[scale - 1]
            self._save(record.evaluation, x if rising is not None and self.best_at <= rising else self.x)
        if self.bar is not None:
            where = f"scale {scale}/{len(self.steps)} ({self.steps[scale - 1][0]} px), " if len(self.steps) > 1 else ""
            self.bar.set_postfix_str(f"{where}loss {record.loss:.4g}, best {self.best:.4g}", refresh=False)
            self.bar.update(1)

    def _save(self, evaluation: int, x) -> None:
        try:
            save_image(intermediate_path(self.out, evaluation, self.width), self.picture(x), forbid=self.inputs,
                       text=self.text)
        except NSTError as exc:  # an intermediate must not end the run: warn once, stop saving them
            self.save_every = 0
            self.warn(f"nst: warning: {' '.join(str(exc).split())}; no more intermediate images")
