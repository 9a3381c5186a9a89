"""``nst batch MANIFEST -o OUTDIR``: every row of a manifest as a job on the engine, outputs written atomically.

    status = run_batch("jobs.jsonl", "out", workers=2)                  # an embedded cluster of 2 processes
    status = run_batch("jobs.jsonl", "out", scheduler="tcp://host:8786", store="postgresql://...")

Resumable: the store (default OUTDIR/nst-jobs.sqlite) remembers each row's job by its key (``manifest.Row.key``).
A rerun writes nothing again for a row whose job succeeded and whose output still holds its result; it rewrites
the output from the store when the file is gone or changed, and runs the rest (failed, cancelled, and the queued
or running jobs of a driver that died). One driver per OUTDIR at a time (a lock file).

``OUTDIR/summary.json``: ``{"manifest", "jobs": [{"line", "output", "status", "seconds", "loss", "worker",
"attempts", "error", "id"}, ...]}`` in line order, bad rows included (status "failed", their error).
Exit status: 0 every job succeeded; 1 some failed (bad rows included); 2 a bad invocation (``NSTError``);
128 + the signal's number when stopped by SIGINT / SIGTERM / SIGHUP: the running jobs were cancelled and their
best pictures so far written (a rerun runs them again).
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import sys
import time

import numpy as np
import tqdm
from PIL import Image

from ..errors import NSTError
from ..inputs.images import one_line
from ..outputs.files import save_image, write_bytes
from ..process import interrupts
from .engine import Engine, Input
from .manifest import output_path, read_manifest
from ..spec.spec import to_json
from .store import open_store

__all__ = ["run_batch", "STORE_NAME", "SUMMARY_NAME", "CANCEL_WAIT"]

STORE_NAME = "nst-jobs.sqlite"
SUMMARY_NAME = "summary.json"
#: Seconds a stopped batch waits for its running jobs to hand back their best pictures.
CANCEL_WAIT = 30.0


def _lock(outdir: str):
    """An exclusive lock on OUTDIR/.nst-batch.lock (released when the process ends, however it ends)."""
    handle = open(os.path.join(outdir, ".nst-batch.lock"), "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise NSTError(f"{outdir}: another nst batch is running on this directory") from None
    return handle


def _outdir(outdir: str) -> None:
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise NSTError(f"{outdir}: not a directory")
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as exc:
        raise NSTError(f"{outdir}: cannot create the output directory ({one_line(exc.strerror or exc)})") from None


def _file_sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _write_output(store, job_id: str, outdir: str, row, png: bytes) -> None:
    """The row's output from the job's PNG: as is for .png (with its recipe), converted for other formats; the
    file's SHA-256 goes to the store (a rerun compares it)."""
    target = output_path(outdir, row.output)
    if target.lower().endswith(".png"):
        write_bytes(target, png)
    else:
        with Image.open(io.BytesIO(png)) as im:
            save_image(target, np.asarray(im.convert("RGB")), forbid=[p for _, p, _ in row.inputs])
    store.update(job_id, output_sha256=_file_sha256(target))


def _output_matches(outdir: str, row, rec) -> bool:
    return rec.output_sha256 is not None and _file_sha256(output_path(outdir, row.output)) == rec.output_sha256


def _inputs(row) -> list:
    """The row's images' bytes, read now; NSTError when a file changed since the manifest was read."""
    out = []
    for role, path, digest in row.inputs:
        try:
            with open(path, "rb") as f:
                item = Input(role, path, f.read())
        except OSError as exc:
            raise NSTError(f"{path}: cannot read file ({one_line(exc.strerror or exc)})") from None
        if item.sha256 != digest:
            raise NSTError(f"{path}: changed while the batch was starting; run it again")
        out.append(item)
    return out


class _Report:
    """The progress bar (a terminal) or one line per finished job (otherwise); only problems with ``quiet``."""

    def __init__(self, total: int, done: int, quiet: bool):
        self.quiet, self.bar = quiet, None
        if not quiet and sys.stderr.isatty():
            self.bar = tqdm.tqdm(total=total, initial=done, unit="job", file=sys.stderr, dynamic_ncols=True)

    def line(self, text: str, problem: bool = False) -> None:
        """One line on stderr; with ``quiet`` only the problems (bad rows, failed jobs)."""
        if self.quiet and not problem:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def step(self, counts: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(running=counts.get("running", 0), failed=counts.get("failed", 0), refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _plan(store, batch: str, rows: list, outdir: str, report: _Report) -> tuple[list, int]:
    """([(row, existing job id or None), ...] to run, number already done): a rerun's bookkeeping."""
    todo, done = [], 0
    for row in rows:
        rec = store.find(batch, row.key)
        if rec is None:
            todo.append((row, None))
        elif rec.status == "succeeded" and _output_matches(outdir, row, rec):
            done += 1
        elif rec.status == "succeeded" and rec.result_sha256 is not None:
            _write_output(store, rec.id, outdir, row, store.result(rec.id))
            report.line(f"nst batch: line {row.line}: rewrote {row.output} from the store (the job succeeded "
                        f"before)")
            done += 1
        else:
            store.requeue(rec.id, reset=rec.final)  # a dead driver's queued / running job keeps its attempts
            todo.append((row, rec.id))
    return todo, done


def _on_finished(engine, job_id: str, rows_by_id: dict, outdir: str, report: _Report) -> None:
    rec = engine.status(job_id)
    row = rows_by_id[job_id]
    png = engine.result(job_id) if rec.status in ("succeeded", "cancelled") else None
    where = f"line {row.line}"
    if png is not None:
        try:
            _write_output(engine.store, job_id, outdir, row, png)
        except NSTError as exc:
            engine.store.update(job_id, status="failed", error=one_line(exc))
            report.line(f"nst batch: {where}: failed: {one_line(exc)}", problem=True)
            return
    if rec.status == "succeeded":
        report.line(f"nst batch: {where}: wrote {row.output} ({rec.seconds or 0:.1f} s, {rec.attempts} "
                    f"attempt{'s' if rec.attempts != 1 else ''}, {rec.worker})")
    elif rec.status == "cancelled":
        report.line(f"nst batch: {where}: cancelled" + (f"; wrote its best picture so far to {row.output}"
                                                       if png is not None else ""))
    else:
        report.line(f"nst batch: {where}: failed: {rec.error}", problem=True)


def _submit(engine, row, job_id, batch: str) -> str:
    try:
        inputs = _inputs(row)
    except NSTError as exc:
        if job_id is None:
            job_id = engine.store.add(to_json(row.job), [], key=row.key, batch=batch, line=row.line,
                                      output=row.output)
        engine.fail(job_id, one_line(exc))
        return job_id
    return engine.submit(row.job, inputs, key=row.key, batch=batch, line=row.line, output=row.output,
                         job_id=job_id)


def _drive(engine, todo: list, batch: str, outdir: str, report: _Report, window: int) -> None:
    """Submit the jobs ``window`` at a time and write each output as its job ends, until all are final."""
    rows_by_id, pending, waiting = {}, list(reversed(todo)), 0
    while pending or waiting:
        while pending and waiting < window:
            row, job_id = pending.pop()
            rows_by_id[_submit(engine, row, job_id, batch)] = row
            waiting += 1
        job_id = engine.next_finished(timeout=0.5)
        if job_id is None or job_id not in rows_by_id:
            continue
        waiting -= 1
        _on_finished(engine, job_id, rows_by_id, outdir, report)
        report.step(engine.store.counts(batch=batch))


def _stop(engine, batch: str, outdir: str, report: _Report, rows_by_key: dict) -> None:
    """After a stop signal: cancel this engine's jobs and write the pictures the running ones hand back."""
    active = [engine.status(job_id) for job_id in engine.active()]
    engine.cancel_many([rec.id for rec in active])
    deadline = time.monotonic() + CANCEL_WAIT
    rows_by_id = {rec.id: rows_by_key[rec.key] for rec in active if rec.key in rows_by_key}
    waiting = set(rows_by_id)
    while waiting and time.monotonic() < deadline:
        job_id = engine.next_finished(timeout=0.5)
        if job_id in waiting:
            waiting.discard(job_id)
            _on_finished(engine, job_id, rows_by_id, outdir, report)


def _summary(store, batch: str, manifest: str, rows: list, bad: list) -> dict:
    jobs = []
    for row in rows:
        rec = store.find(batch, row.key)
        jobs.append({"line": row.line, "output": row.output, "status": rec.status if rec else "queued",
                     "seconds": rec.seconds if rec else None, "loss": rec.loss if rec else None,
                     "worker": rec.worker if rec else None, "attempts": rec.attempts if rec else 0,
                     "error": rec.error if rec else None, "id": rec.id if rec else None})
    for b in bad:
        jobs.append({"line": b.line, "output": b.output, "status": "failed", "seconds": None, "loss": None,
                     "worker": None, "attempts": 0, "error": b.error, "id": None})
    return {"manifest": os.path.abspath(manifest), "jobs": sorted(jobs, key=lambda j: j["line"])}


def run_batch(manifest: str, outdir: str, scheduler: str | None = None, workers: int | None = None,
              store: str | None = None, quiet: bool = False) -> int:
    """Run a manifest's jobs (see the module docstring); returns the exit status. NSTError for a bad invocation.
    Call it inside ``interrupts.stop_signals()`` for the signals to stop it cleanly."""
    _outdir(outdir)
    lock = _lock(outdir)
    try:
        rows, bad = read_manifest(manifest, outdir)
        if not rows and not bad:
            raise NSTError(f"{manifest}: no jobs (one JSON object per line)")
        report = _Report(len(rows), 0, quiet)
        for b in bad:
            report.line(f"nst batch: line {b.line}: {b.error}", problem=True)
        jobs_store = open_store(store or os.path.join(outdir, STORE_NAME))
        batch = os.path.realpath(outdir)
        try:
            status = _run(jobs_store, batch, manifest, outdir, rows, bad, report, scheduler, workers)
        finally:
            report.close()
            jobs_store.close()
        return status
    finally:
        lock.close()


def _run(store, batch, manifest, outdir, rows, bad, report, scheduler, workers) -> int:
    todo, done = _plan(store, batch, rows, outdir, report)
    if done:
        report.line(f"nst batch: {done} of {len(rows)} jobs done before; running {len(todo)}")
    if report.bar is not None:
        report.bar.n = done
    stopped = False
    if todo:
        engine = Engine(store, scheduler=scheduler, workers=workers, keep_inputs=False)
        try:
            slots = sum(w["nthreads"] or 1 for w in engine.workers()) or 1
            try:
                _drive(engine, todo, batch, outdir, report, window=2 * slots)
            except KeyboardInterrupt:
                stopped = True
                report.line(f"nst batch: {interrupts.stopped_by()}; cancelling the running jobs")
                try:
                    _stop(engine, batch, outdir, report, {row.key: row for row in rows})
                except KeyboardInterrupt:
                    pass
        finally:
            engine.close()
    summary = _summary(store, batch, manifest, rows, bad)
    write_bytes(os.path.join(outdir, SUMMARY_NAME), json.dumps(summary, indent=1).encode())
    if stopped:
        return interrupts.exit_status()
    failed = sum(j["status"] != "succeeded" for j in summary["jobs"])
    report.line(f"nst batch: {len(summary['jobs']) - failed} of {len(summary['jobs'])} jobs succeeded"
                + (f", {failed} failed (see {os.path.join(outdir, SUMMARY_NAME)})" if failed else ""),
                problem=bool(failed))
    return 1 if failed else 0
