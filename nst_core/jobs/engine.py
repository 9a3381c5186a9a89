"""The job engine: jobs (a Spec and its images' bytes) run on Dask workers, recorded in a ``store.Store``.

    engine = Engine(open_store("jobs.sqlite"), workers=2)           # an embedded LocalCluster of 2 processes
    engine = Engine(store, scheduler="tcp://10.0.0.5:8786")         # a cluster: workers need nst and the model
    job_id = engine.submit(spec, [Input("content", path, data), Input("style", path, data)])
    engine.status(job_id).status / .progress / .error;  engine.cancel(job_id);  engine.result(job_id) -> PNG bytes
    engine.preview(job_id) -> JPEG bytes of the best image so far;  engine.delete(job_id)
    engine.jobs(status="running");  engine.workers();  engine.next_finished(timeout=1.0) -> a job id or None
    engine.suspend()   # a server stopping: its jobs go back to queued at their next checkpoint, for a restart
    engine.close()

The API an HTTP layer sits on: submit, status, cancel, result, preview, delete, jobs, workers, and ``resume``
(a restarted process submits the store's unfinished jobs again, from their kept input bytes). One engine process writes the
store: its pump thread turns the workers' events (started, progress) and the tasks' ends into rows.

Faults
    - Bad input fails once with its one-line message (the worker returns it; nothing is retried).
    - A worker that dies mid-job: the scheduler runs the task again on another worker (``MAX_ATTEMPTS`` runs in
      all on the embedded cluster, ``distributed.scheduler.allowed-failures`` + 1 on a remote one), then the job
      fails saying so. ``attempts`` counts the runs that started.
    - Admission: each job's peak memory is estimated (``process.memory.estimate_peak_mb``) at submission; one that
      fits no worker's memory limit fails at once. Workers that declare a ``MEMORY`` resource (MB; the embedded
      cluster's do) run only as many jobs at once as their memory holds.
    - Cancel: a queued job's task is dropped; a running job's flag is set on every worker and its optimizer stops
      after the evaluation under way, its best picture becoming the (partial) result.
    - Suspend (a service stopping on SIGTERM): the same stop at the job's next checkpoint (the end of the evaluation
      under way), but the job goes back to queued with its best picture so far as its preview and its attempts
      counted, for ``resume`` in the next process; a job that ends on its own first keeps its final state.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import queue
import threading
import time

import dask
import distributed
from PIL import Image

from ..errors import NSTError
from ..inputs.images import one_line, resized_shape
from ..process import memory, threads
from ..schedule import histories, plan
from ..spec.spec import Spec, from_json, resolve, to_json
from . import embedded
from . import worker as _worker
from .store import JobRecord, Store

__all__ = ["Engine", "Input", "MAX_ATTEMPTS", "memory_estimate_mb", "default_workers"]

#: Runs of a job whose workers die, on the embedded cluster, before it fails.
MAX_ATTEMPTS = 3
_INFO_EVERY = 5.0  # seconds between two looks at the workers' memory limits


@dataclasses.dataclass(frozen=True)
class Input:
    """An input image of a job: ``role`` "content" or "style", the ``path`` it came from (for messages and the
    recipe), its bytes and their SHA-256 (computed when not given)."""

    role: str
    path: str
    data: bytes = dataclasses.field(repr=False)
    sha256: str = ""

    def __post_init__(self):
        if not self.sha256:
            object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())

    def describe(self) -> dict:
        return {"role": self.role, "path": self.path, "sha256": self.sha256}


def memory_estimate_mb(job: Spec, inputs) -> float | None:
    """The job's estimated peak memory (MB) at its largest scale, from the image's header (the content's, or the
    style's for texture); None when the header cannot be read (the worker will say why)."""
    role = "style" if job.task == "texture" else "content"
    data = next((i.data for i in inputs if i.role == role), None)
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Exception:
        return None
    height, width = resized_shape(width, height, job.size)
    return memory.estimate_peak_mb(height * width, job.optimizer, histories(job)[-1], plan(job)[-1][1])


def default_workers() -> int:
    """Worker processes of the embedded cluster: one per core, each running ONNX Runtime on one thread. Measured on 2
    cores, quiet (bench/bench_batch.py, 24 jobs at 192 px): 2 workers x 1 thread 12.1 jobs/min, 1 worker x 2
    threads 8.7 (a shell loop of nst stylize: 7.9). Each worker's memory limit is its share of the machine's, so a
    print-size job may fit only with fewer workers (``--workers 1``)."""
    return max(1, os.cpu_count() or 1)


def _client(scheduler: str | None, workers: int | None, worker_nice: int = 0) -> tuple:
    """(Client, LocalCluster or None): the scheduler at ``scheduler``, or an embedded cluster of ``workers``
    processes of one thread each, each declaring its memory limit as the resource MEMORY (MB) and running ONNX
    Runtime on its share of the cores (``NST_ORT_THREADS``, unless it is set already). Dask's nanny starts workers
    with ``MALLOC_TRIM_THRESHOLD_=65536``; setting it at all turns off glibc's dynamic mmap threshold, so every
    feature map of every evaluation was a fresh mmap and its page faults: a 192 px job took 11 s in a worker against
    6.7 s in a plain process. The embedded workers start without it; remote ones need the same (README). The
    scheduler's HTTP server (Dask starts one even without a dashboard) takes a free port on 127.0.0.1: with the
    default 8787 taken (another cluster), Dask warned on stderr."""
    if scheduler:
        try:
            return distributed.Client(scheduler, timeout="10s", set_as_default=False), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise NSTError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({one_line(exc)})") from None
    n = max(1, int(workers or default_workers()))
    total = memory.available_mb() or 4096.0
    limit_mb = int(total / n)
    cores = os.cpu_count() or 1
    env = {threads.ORT_THREADS_VAR: str(max(1, cores // n))} if threads.ort_threads() == 0 else {}
    if worker_nice:
        env[embedded.NICE_VAR] = str(int(worker_nice))
    spawn_env = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ") or {}).items()
                 if k != "MALLOC_TRIM_THRESHOLD_"}  # see _client's docstring
    with dask.config.set({"distributed.scheduler.allowed-failures": MAX_ATTEMPTS - 1,
                          "distributed.worker.daemon": False, "distributed.nanny.pre-spawn-environ": spawn_env}):
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=":0", memory_limit=f"{limit_mb}MiB",
                                           resources={"MEMORY": limit_mb}, silence_logs=logging.ERROR,
                                           host="127.0.0.1", preload=[embedded.__name__],
                                           env=env)
    return distributed.Client(cluster, set_as_default=False), cluster


class Engine:
    """Jobs on Dask, recorded in ``store`` (see the module docstring). ``keep_inputs``: keep the input bytes in
    the store (``resume`` needs them; ``nst batch`` rereads its files instead). ``worker_nice``: the embedded
    workers' niceness (a service gives its web process the CPU first: ``embedded``)."""

    def __init__(self, store: Store, scheduler: str | None = None, workers: int | None = None,
                 keep_inputs: bool = True, worker_nice: int = 0):
        self.store, self.keep_inputs = store, keep_inputs
        self.client, self.cluster = _client(scheduler, workers, worker_nice)
        self._futures: dict = {}  # job id -> its task's future
        self._runs: dict = {}  # job id -> run tokens seen started (attempts of this engine)
        self._suspended: set = set()  # job ids being handed back to the store as queued (``suspend``)
        self._events: queue.Queue = queue.Queue()
        self._finished: queue.Queue = queue.Queue()
        self._info, self._info_at = {}, 0.0
        self._submitted = 0
        self._stop = threading.Event()
        self.client.subscribe_topic(_worker.TOPIC, lambda event: self._events.put(("event", event[1])))
        self._pump = threading.Thread(target=self._pump_events, name="nst-jobs-pump", daemon=True)
        self._pump.start()

    # ------------------------------------------------------------------------------------------- the API

    def submit(self, job: Spec, inputs, *, key=None, batch=None, line=None, output=None, owner=None,
               job_id=None) -> str:
        """Queue a job (resolved here) with its images (``Input``s); returns its id. ``job_id``: an existing row to
        run again (a rerun or ``resume``); else a new row with ``key`` / ``batch`` / ``line`` / ``output`` /
        ``owner`` for the caller's bookkeeping. A job that fits no worker is failed at once."""
        job = resolve(job)
        inputs = list(inputs)
        steps = plan(job)
        need = memory_estimate_mb(job, inputs)
        rerun = job_id is not None
        if job_id is None:
            job_id = self.store.add(to_json(job), [i.describe() for i in inputs], key=key, batch=batch, line=line,
                                    output=output, owner=owner, budget=sum(b for _, b in steps), scales=len(steps),
                                    memory_mb=need)
        if self.keep_inputs:
            for i in inputs:
                self.store.put_blob(i.sha256, i.data)
        refused = self.refusal(job, inputs, need)
        if refused:
            self.fail(job_id, refused)
            return job_id
        if rerun:  # a cancel or suspend flag of an earlier run may linger on workers that outlived its engine
            self.client.run(_worker.clear_cancelled, [job_id], on_error="ignore")
        self._submitted += 1
        payload = [dict(i.describe(), data=i.data) for i in inputs]
        resources = {"MEMORY": need} if need is not None and self._all_declare_memory() else None
        future = self.client.submit(_worker.run_job, job_id, to_json(job), payload, pure=False,
                                    key=f"nst-job-{job_id}-{self._submitted}", resources=resources)
        self._futures[job_id] = future
        future.add_done_callback(lambda f, job_id=job_id: self._events.put(("done", job_id, f)))
        return job_id

    def refusal(self, job: Spec, inputs, need: float | None = None) -> str | None:
        """Why the job (resolved) cannot run on any worker of the cluster now (its memory estimate exceeds the
        largest worker's limit), or None; ``submit`` fails such a job at once, a service can refuse it first."""
        need = memory_estimate_mb(job, inputs) if need is None else need
        room = self._largest_worker_mb()
        if need is not None and room is not None and need > room:
            return (f"needs about {need / 1024:.1f} GB of memory and the largest worker has {room / 1024:.1f} GB; "
                    f"use a smaller size")
        return None

    def resume(self, owner=None) -> list:
        """Submit again every unfinished job of the store (of ``owner`` if given) that this engine is not running,
        from its kept input bytes; those whose bytes are gone fail saying so. Returns their ids."""
        ids = []
        for rec in self.store.jobs(status=("queued", "running"), owner=owner):
            if rec.id in self._futures:
                continue
            blobs = [self.store.blob(i["sha256"]) for i in rec.inputs]
            if any(b is None for b in blobs):
                self.fail(rec.id, "its input images were not kept; submit it again")
                continue
            self.store.requeue(rec.id, reset=False)
            inputs = [Input(i["role"], i["path"], b, i["sha256"]) for i, b in zip(rec.inputs, blobs)]
            ids.append(self.submit(from_json(rec.spec, where=f"job {rec.id}"), inputs, job_id=rec.id))
        return ids

    def status(self, job_id: str) -> JobRecord | None:
        return self.store.get(job_id)

    def result(self, job_id: str) -> bytes | None:
        """The result PNG (with its recipe): a succeeded job's picture, a cancelled one's best so far, or None."""
        return self.store.result(job_id)

    def preview(self, job_id: str) -> bytes | None:
        """A JPEG of the best image so far (at most 256 px on its longer side, every 2 s while running), or None."""
        return self.store.preview(job_id)

    def delete(self, job_id: str) -> bool:
        """Cancel the job if it is not final, then forget it; False when it is unknown."""
        self.cancel(job_id)
        return self.store.delete(job_id)

    def jobs(self, **filters) -> list:
        """``Store.jobs``: newest first, by status / owner / batch, with limit and offset."""
        return self.store.jobs(**filters)

    def cancel(self, job_id: str) -> bool:
        """Ask a job to stop; False when it is unknown or already final. A job that has not started is cancelled
        at once; a running one stops after its current evaluation, keeping its best picture."""
        return bool(self.cancel_many([job_id]))

    def cancel_many(self, job_ids) -> list:
        """``cancel`` for several jobs with one message to the workers (no queued one of them can start in
        between); returns the ids that were not final."""
        records = [r for r in (self.store.get(j) for j in job_ids) if r is not None and not r.final]
        if not records:
            return []
        ids = [r.id for r in records]
        for job_id in ids:
            self.store.update(job_id, cancel=True)
        self.client.run(_worker.mark_cancelled, ids, on_error="ignore")
        for rec in records:
            future = self._futures.get(rec.id)
            if future is not None and not self._runs.get(rec.id) and rec.status == "queued":
                self._futures.pop(rec.id, None)  # before its done callback can run
                future.cancel()
                self._finish(rec.id, "cancelled", error="cancelled before it started")
        return ids

    def suspend(self, job_ids=None) -> list:
        """Hand jobs of this engine (all if None) back to the store as queued, for ``resume`` in another process (a
        service stopping): one that has not started has its task dropped now; a running one stops at its next
        checkpoint (after the evaluation under way; ``active()`` loses it then), its best picture so far becoming
        the job's preview, its attempt counted. One that ends on its own first is recorded as usual. Returns the
        ids asked."""
        ids = [j for j in (self.active() if job_ids is None else job_ids) if j in self._futures]
        if not ids:
            return []
        self._suspended.update(ids)
        self.client.run(_worker.mark_cancelled, ids, on_error="ignore")
        for job_id in ids:
            future = self._futures.get(job_id)
            if future is not None and not self._runs.get(job_id):  # no start seen: drop the task
                self._futures.pop(job_id, None)  # before its done callback can run
                future.cancel()
                self._suspended.discard(job_id)
                self.store.update(job_id, status="queued", worker=None)
        return ids

    def workers(self) -> list:
        """``[{"address", "nthreads", "memory_limit_mb", "resources"}, ...]`` of the cluster's workers now."""
        info = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return [{"address": a, "nthreads": w.get("nthreads"), "memory_limit_mb": (w.get("memory_limit") or 0) / 2**20,
                 "resources": dict(w.get("resources") or {})} for a, w in info.items()]

    def next_finished(self, timeout: float | None = None) -> str | None:
        """The id of a job of this engine that reached a final state (each once), or None after ``timeout`` s."""
        try:
            return self._finished.get(timeout=timeout)
        except queue.Empty:
            return None

    def running(self) -> int:
        """Jobs of this engine submitted and not final."""
        return len(self._futures)

    def active(self) -> list:
        """The ids of this engine's submitted jobs that are not final."""
        return list(self._futures)

    def close(self) -> None:
        """Stop the pump, the client and the embedded cluster (running tasks of this client are dropped)."""
        self._stop.set()
        self._pump.join(timeout=5)
        try:
            self.client.close(timeout=10)
        finally:
            if self.cluster is not None:
                self.cluster.close(timeout=10)

    # ------------------------------------------------------------------------------------------- the pump

    def _pump_events(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._events.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                if item[0] == "done":
                    self._on_done(item[1], item[2])
                else:
                    self._on_event(item[1])
            except Exception as exc:  # the pump must survive a store hiccup; the job is seen again on resume
                logging.getLogger("nst.jobs").warning("job engine: %s", one_line(exc))

    def _on_event(self, msg: dict) -> None:
        job_id = msg.get("id")
        if job_id not in self._futures:
            return  # another engine's job
        rec = self.store.get(job_id)
        if rec is None or rec.final:
            return
        if msg.get("event") == "started":
            runs = self._runs.setdefault(job_id, set())
            if msg["run"] in runs:
                return
            runs.add(msg["run"])
            self.store.update(job_id, status="running", attempts=rec.attempts + 1, worker=msg.get("worker"),
                              started=rec.started or msg.get("time"))
            if rec.cancel:  # a retry on a worker that never heard of the cancel
                self.client.run(_worker.mark_cancelled, [job_id], on_error="ignore")
        elif msg.get("event") == "progress":
            preview = {"preview": msg["preview"]} if isinstance(msg.get("preview"), bytes) else {}
            self.store.update(job_id, evaluations=int(msg["evaluations"]), scale=int(msg["scale"]),
                              loss=msg.get("loss"), **preview)

    def _on_done(self, job_id: str, future) -> None:
        if self._futures.get(job_id) is not future:
            return
        rec = self.store.get(job_id)
        if rec is None or rec.final:
            self._futures.pop(job_id, None)
            return
        if job_id in self._suspended and (future.cancelled() or future.exception() is not None
                                          or future.result()["status"] == "cancelled"):
            self._hand_back(job_id, None if future.cancelled() or future.exception() else future.result())
            return
        if future.cancelled():
            self._finish(job_id, "cancelled", error="cancelled")
            return
        exc = future.exception()
        if exc is not None:
            died = isinstance(exc, distributed.scheduler.KilledWorker)
            message = (f"the worker running it died {max(rec.attempts, 1)} times; giving up (a crash, or more "
                       f"memory than the worker has)" if died else f"{type(exc).__name__}: {one_line(exc)}")
            self._finish(job_id, "failed", error=message)
            return
        reply = future.result()
        attempts = rec.attempts + (0 if reply["run"] in self._runs.get(job_id, ()) else 1)
        self._finish(job_id, reply["status"], png=reply["png"], error=reply["error"], loss=reply["loss"],
                     seconds=reply["seconds"], worker=reply["worker"], attempts=attempts,
                     evaluations=reply["evaluations"], partial=reply["status"] == "cancelled")

    def _finish(self, job_id: str, status: str, png=None, **fields) -> None:
        self.store.finish(job_id, status, png=png, **fields)
        self._futures.pop(job_id, None)
        self._runs.pop(job_id, None)
        self._suspended.discard(job_id)
        self._finished.put(job_id)

    def _hand_back(self, job_id: str, reply: dict | None) -> None:
        """A suspended job stopped at its checkpoint (``reply``: its worker's, None when it did not run): queued
        again, with the evaluations it reached and its picture so far as the preview."""
        fields = {}
        if reply is not None:
            fields.update(evaluations=reply["evaluations"], loss=reply["loss"])
            if reply["png"]:
                fields["preview"] = _worker.png_preview(reply["png"])
        self.store.update(job_id, status="queued", worker=None, **fields)
        self._futures.pop(job_id, None)
        self._runs.pop(job_id, None)
        self._suspended.discard(job_id)

    def fail(self, job_id: str, message: str) -> None:
        """End a job of the store that cannot run (its inputs are gone, ...) as failed with ``message``."""
        self._finish(job_id, "failed", error=message)

    # ------------------------------------------------------------------------------------------- admission

    def _worker_info(self) -> dict:
        now = time.monotonic()
        if now - self._info_at > _INFO_EVERY or not self._info:
            self._info = self.client.scheduler_info(n_workers=-1).get("workers", {})
            self._info_at = now
        return self._info

    def _largest_worker_mb(self) -> float | None:
        limits = [w.get("memory_limit") or 0 for w in self._worker_info().values()]
        limits = [m for m in limits if m > 0]
        return max(limits) / 2**20 if limits else None

    def _all_declare_memory(self) -> bool:
        info = self._worker_info()
        return bool(info) and all("MEMORY" in (w.get("resources") or {}) for w in info.values())


