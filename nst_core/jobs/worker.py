"""What a Dask worker runs: one job from its Spec and its images' bytes, to a PNG with its recipe.

    reply = run_job(job_id, spec_json, inputs)      # in a task on a worker; inputs: [{"role", "path", "sha256",
                                                    # "data"}, ...]; reply: see ``run_job``
    client.run(mark_cancelled, [job_id])            # the engine, on every worker: stop that job cooperatively

The worker process keeps ONNX Runtime sessions across jobs (``network.cache``: one per model, layers, device and
pooling), so a job after the first pays no session start. One job at a time per process: a cached network holds
the tensors of its last forward pass for the backward one, so two threads must not share it (run workers with
``--nthreads 1``; with more threads the jobs of a process take turns).

Progress goes to the scheduler as events of topic ``TOPIC`` (``{"id", "event": "started" | "progress", ...}``), at
most every ``PROGRESS_EVERY`` seconds, with a JPEG preview of the best image so far at most every
``PREVIEW_EVERY``; the engine's process writes them to the store. Cancellation is a flag set
on every worker (``mark_cancelled``) that the optimizer's callback reads after each evaluation: it raises
KeyboardInterrupt there, the optimizer returns its best point, and that picture is the cancelled job's result.
A run whose task the scheduler has let go (its client died: a killed server on a remote cluster, whose successor
runs the job again) stops the same way at its next progress tick; its reply goes nowhere.
"""
from __future__ import annotations

import io
import math
import os
import secrets
import socket
import threading
import time

import distributed
import numpy as np
from PIL import Image

from .. import api
from ..errors import NSTError
from ..inputs.images import deprocess, one_line, open_image
from ..outputs import recipe
from ..outputs.files import png_bytes
from ..schedule import plan, scale_table
from ..spec.spec import from_json

__all__ = ["run_job", "mark_cancelled", "clear_cancelled", "running_jobs", "preview_jpeg", "png_preview",
           "thumbnail_jpeg", "TOPIC", "PROGRESS_EVERY", "PREVIEW_EVERY", "PREVIEW_SIDE"]

TOPIC = "nst-jobs"
#: Seconds between two progress events of a running job.
PROGRESS_EVERY = 0.5
#: Seconds between two previews (a JPEG of the best image so far, PREVIEW_SIDE px at most) in progress events.
PREVIEW_EVERY = 2.0
PREVIEW_SIDE = 256
_CANCELLED: set = set()
_RUNNING: dict = {}  # job id -> its _Watch, while it runs here
_ONE_AT_A_TIME = threading.Lock()


def mark_cancelled(job_ids) -> dict:
    """Flag jobs as cancelled in this worker process (called by the engine through ``Client.run``); returns
    ``{job id: evaluations done}`` of those running here now."""
    found = {}
    for job_id in job_ids:
        watch = _RUNNING.get(job_id)
        if watch is not None:  # noted before the flag is set, so the job never stops without it
            watch.asked_at = found[job_id] = watch.evaluations
    _CANCELLED.update(job_ids)
    return found


def running_jobs() -> dict:
    """``{job id: evaluations done}`` of the jobs running in this worker process now (``Client.run`` it)."""
    return {job_id: watch.evaluations for job_id, watch in list(_RUNNING.items())}


def clear_cancelled(job_ids) -> None:
    """Forget the cancel flags of jobs about to run again (a suspended job resumed by a new engine: the flag that
    stopped it stays set on the workers where it did not run)."""
    _CANCELLED.difference_update(job_ids)


def _task_key():
    """The key of the task this thread runs, or None outside a worker."""
    try:
        return distributed.get_worker().get_current_task()
    except (ValueError, AttributeError, KeyError):
        return None


def _released(key) -> bool:
    """Whether the scheduler no longer wants the task ``key`` this worker is running (Dask cannot stop a running
    task; it marks it "cancelled" and drops its result when it ends)."""
    if key is None:
        return False
    try:
        task = distributed.get_worker().state.tasks.get(key)
    except ValueError:
        return False
    return task is None or task.state in ("cancelled", "released", "forgotten")


def _where() -> str:
    try:
        return distributed.get_worker().address
    except ValueError:  # not in a worker (a test calling run_job directly)
        return f"{socket.gethostname()}:{os.getpid()}"


def _log(message: dict) -> None:
    try:
        distributed.get_worker().log_event(TOPIC, message)
    except ValueError:
        pass


def thumbnail_jpeg(image: Image.Image, longest: int = PREVIEW_SIDE) -> bytes:
    """A PIL image as the JPEG bytes of a preview, at most ``longest`` px on its longer side."""
    image = image.convert("RGB")
    image.thumbnail((longest, longest), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def preview_jpeg(x: np.ndarray, longest: int = PREVIEW_SIDE) -> bytes:
    """A normalised image x [1, 3, h, w] as a preview's JPEG bytes (``thumbnail_jpeg``)."""
    return thumbnail_jpeg(Image.fromarray(deprocess(x)), longest)


def png_preview(png: bytes) -> bytes:
    """A PNG's bytes (a result, a picture so far) as a preview's JPEG bytes (``thumbnail_jpeg``)."""
    with Image.open(io.BytesIO(png)) as im:
        return thumbnail_jpeg(im)


class _Watch:
    """The optimizer's callback of one job: progress events (with a preview of the best image so far every
    ``PREVIEW_EVERY`` s), and the cancel flag after every evaluation."""

    def __init__(self, job_id: str, budget: int, scales: int, key=None):
        self.job_id, self.budget, self.scales, self.key = job_id, budget, scales, key
        self.orphaned = False  # the scheduler let go of this run's task
        self.best, self.evaluations, self.scale, self.last, self.last_preview = math.inf, 0, 1, 0.0, 0.0
        self.best_x = None  # a copy of the best point, made only when a preview is due
        self.asked_at = None  # the evaluations done when the cancel reached this worker

    def __call__(self, record, x) -> None:
        self.evaluations, self.scale = record.evaluation, getattr(record, "scale", 1)
        now = time.monotonic()
        if math.isfinite(record.loss) and record.loss < self.best:
            self.best = record.loss
            if now - self.last_preview >= PREVIEW_EVERY:
                self.best_x = np.array(x, dtype=np.float32)
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            if _released(self.key):
                self.orphaned = True
                raise KeyboardInterrupt
            message = {"id": self.job_id, "event": "progress", "evaluations": self.evaluations,
                       "budget": self.budget, "scale": self.scale, "scales": self.scales,
                       "loss": self.best if math.isfinite(self.best) else None}
            if self.best_x is not None:
                message["preview"], self.best_x, self.last_preview = preview_jpeg(self.best_x), None, now
            _log(message)
        if self.job_id in _CANCELLED:
            raise KeyboardInterrupt  # the optimizer keeps its best point and returns (status "interrupted")


def _decode(inputs: list):
    content = next((open_image(i["path"], i["data"]) for i in inputs if i["role"] == "content"), None)
    styles = [open_image(i["path"], i["data"]) for i in inputs if i["role"] == "style"]
    return content, styles


def _picture(job, image, content, styles, inputs) -> bytes:
    provenance = [{"role": i["role"], "path": i["path"], "sha256": i["sha256"]} for i in inputs]
    sizes = (content.size if content is not None else None), [s.size for s in styles]
    text = recipe.recipe(job, recipe.weights_sha256(job), scales=scale_table(job, *sizes), inputs=provenance)
    return png_bytes(image, text)


def _outcome(result, cancelled: bool, asked_at, orphaned: bool = False) -> tuple[str, str | None]:
    """(status, error) of a finished optimisation."""
    if result.status == "interrupted" and orphaned:
        return "failed", "stopped on the worker: the scheduler let go of its task (its client went away)"
    if result.status == "interrupted" and cancelled:
        return "cancelled", f"cancelled at evaluation {result.n_evals}" + (
            f" (asked at evaluation {asked_at})" if asked_at is not None else "")
    if result.status == "nonfinite":
        return "failed", f"the loss diverged (NaN or infinite) after {result.n_evals} evaluations; try smaller weights"
    if result.status == "interrupted":  # a KeyboardInterrupt nobody asked for (the worker is stopping)
        return "failed", "interrupted on the worker"
    return "succeeded", None


def run_job(job_id: str, spec_json: str, inputs: list) -> dict:
    """Run one job on this worker. Returns ``{"id", "status": succeeded | failed | cancelled, "png": bytes or None,
    "loss", "evaluations", "seconds", "worker", "run", "error"}``; bad input is a failed job with its one-line
    message (never an exception, so it is not retried); a worker that dies mid-job is the scheduler's to retry."""
    run = secrets.token_hex(8)
    reply = {"id": job_id, "status": "failed", "png": None, "loss": None, "evaluations": 0, "seconds": 0.0,
             "worker": _where(), "run": run, "error": None}
    _log({"id": job_id, "event": "started", "worker": reply["worker"], "run": run, "time": time.time()})
    with _ONE_AT_A_TIME:
        if job_id in _CANCELLED:
            return dict(reply, status="cancelled", error="cancelled before it started")
        start = time.perf_counter()
        try:
            job = from_json(spec_json, where="job")
            content, styles = _decode(inputs)
            watch = _Watch(job_id, sum(b for _, b in plan(job)), len(plan(job)), _task_key())
            _RUNNING[job_id] = watch
            try:
                image, result = api.run(job, content, styles, callback=watch)
            finally:
                _RUNNING.pop(job_id, None)
            status, error = _outcome(result, job_id in _CANCELLED, watch.asked_at, watch.orphaned)
            png = _picture(job, image, content, styles, inputs) if result.best_evaluation is not None else None
            reply.update(status=status, error=error, png=png, evaluations=result.n_evals,
                         loss=result.loss if math.isfinite(result.loss) else None)
        except NSTError as exc:
            reply["error"] = one_line(exc)
        except MemoryError:
            reply["error"] = "out of memory on the worker; use a smaller size"
        except Exception as exc:  # a defect: reported once with its type, not retried
            reply["error"] = f"{type(exc).__name__}: {one_line(exc)}"
        reply["seconds"] = time.perf_counter() - start
        _CANCELLED.discard(job_id)  # a rerun elsewhere is flagged again by the engine when it starts
        return reply
