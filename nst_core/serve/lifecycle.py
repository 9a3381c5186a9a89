"""The life of an ``nst serve`` process around its HTTP app: one server per store, resume on start, a drain on a stop
signal, and retention.

    holder = claim(store)                 # NSTError (one line) when another nst serve uses this store
    status = serve(app, engine, settings, sock, drain_wait=0.0)      # resume, serve, drain; the exit status

The store is the record, so a process that starts resubmits every queued and running job it holds
(``Engine.resume``): after a SIGKILL, after a drained stop, after a machine's reboot alike. Two servers on one store
would both resume the same jobs, so a server holds a lock on its store while it lives (a ``flock`` on a file beside
an SQLite store, a session advisory lock on PostgreSQL); the kernel or the database drops it when the process dies,
however it dies.

Stop signals (SIGTERM, SIGINT, SIGHUP): the first starts a drain.
    - POST /v1/jobs answers 503 from then on (``app.state.accepting = False``); reads keep working.
    - Jobs that have not started go back to the store's queue at once.
    - Running jobs get ``drain_wait`` seconds to finish, then stop at their next checkpoint: the end of the
      evaluation under way, where the optimizer's state is whole. The best picture so far becomes the job's preview,
      the attempt is counted, and the job is queued again in the store (``Engine.suspend``).
    - The process exits 0; the next start runs those jobs again, from the start.
A second stop signal skips the waits (the jobs stay queued or running in the store; the next start resumes them).
Why a rerun from the start and not from the saved picture: the optimizer's state is more than the picture (L-BFGS
keeps its last correction pairs, Adam its moments, the schedule its scale), and a run continued from an 8-bit picture
with a fresh optimizer would give a picture that its recipe (the Spec) does not reproduce. A rerun gives the same
picture as a run never stopped, at the cost of the stopped run's time (seconds at the sizes a service takes).

Retention: a thread forgets final jobs older than ``settings.retention`` seconds (by their finish time), and the
uploaded images no job names any more (after a DELETE or an expiry), every ``SWEEP_EVERY`` s at most.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sys
import threading
import time

import sqlalchemy as sa
import uvicorn

from ..errors import NSTError
from ..inputs.images import one_line
from ..jobs import embedded
from ..process.interrupts import STOP_SIGNALS

__all__ = ["claim", "serve", "sweep", "drain", "worker_nice", "WORKER_NICE", "SWEEP_EVERY", "STOP_WAIT",
           "ADVISORY_KEY"]

#: Niceness the embedded workers add to the server's (``$NST_WORKER_NICE`` overrides; 0: none), so that the web
#: process gets a core at once when a request comes while the jobs keep every core busy (bench/bench_serve.py, 40
#: jobs at 128 px from 10 clients: GET p95 13.9 ms with it, 27.0 ms without; 14.9 against 15.4 jobs/min).
WORKER_NICE = 10
#: Seconds between two retention sweeps at most (sooner for a short retention).
SWEEP_EVERY = 60.0
#: Seconds a drain waits for the running jobs to reach their checkpoint after they are asked to stop.
STOP_WAIT = 30.0
#: The PostgreSQL advisory lock key of a store's server (any fixed 64-bit number; "nstserve" in ASCII).
ADVISORY_KEY = int.from_bytes(b"nstserve", "big") & (2**63 - 1)
_log = logging.getLogger("nst.serve")


def say(text: str) -> None:
    print(f"nst serve: {text}", file=sys.stderr, flush=True)


def worker_nice() -> int:
    """The niceness the embedded workers add: ``$NST_WORKER_NICE`` if set (0 turns it off), else ``WORKER_NICE``."""
    text = os.environ.get(embedded.NICE_VAR, "").strip()
    try:
        return max(0, int(text)) if text else WORKER_NICE
    except ValueError:
        raise NSTError(f"{embedded.NICE_VAR}={text!r}: expected a niceness 0..19") from None


# ------------------------------------------------------------------------------------------------ one per store


class _Claim:
    """A held store lock (``claim``); ``release()`` drops it (ending the process does too)."""

    def __init__(self, release):
        self.release = release


def claim(store) -> _Claim:
    """Lock ``store`` (a ``jobs.store.Store``) for this server; NSTError naming it when another process holds it."""
    url = sa.engine.make_url(store.url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        handle = open(f"{url.database}.serve-lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise NSTError(f"{url.database}: another nst serve is using this store; stop it first") from None
        return _Claim(handle.close)
    conn = store.engine.connect()
    held = conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}).scalar()
    conn.commit()  # the lock is the session's: it outlives the transaction
    if not held:
        conn.close()
        raise NSTError(f"--store {shown}: another nst serve is using this store; stop it first")
    return _Claim(conn.close)


# ------------------------------------------------------------------------------------------------ retention


def sweep(store, retention: float | None, now: float | None = None) -> tuple[int, int]:
    """One retention pass: (final jobs finished more than ``retention`` s before ``now`` forgotten, input blobs no
    job names forgotten)."""
    jobs = store.expire((time.time() if now is None else now) - retention) if retention else 0
    return jobs, store.drop_unused_blobs()


def _sweeper(store, retention: float | None, stop: threading.Event) -> None:
    every = SWEEP_EVERY if not retention else min(SWEEP_EVERY, max(0.5, retention / 10))
    while not stop.wait(every):
        try:
            jobs, blobs = sweep(store, retention)
            if jobs or blobs:
                _log.info("retention: forgot %d jobs and %d uploaded images", jobs, blobs)
        except Exception as exc:  # a database hiccup: the next pass tries again
            _log.warning("retention: %s", one_line(exc))


# ------------------------------------------------------------------------------------------------ the drain


def _wait_idle(engine, seconds: float, force: threading.Event) -> None:
    deadline = time.monotonic() + seconds
    while engine.active() and time.monotonic() < deadline and not force.is_set():
        force.wait(0.1)


def drain(engine, app, drain_wait: float, force: threading.Event) -> dict:
    """Stop taking jobs and hand this engine's jobs back to the store (see the module docstring). Returns
    ``{"queued": jobs back in the queue, "finished": jobs that ended in the wait, "left": still running}``."""
    app.state.accepting = False
    before = set(engine.active())
    waiting = [j for j in before if (rec := engine.status(j)) is not None and rec.status == "queued"]
    engine.suspend(waiting)
    _wait_idle(engine, drain_wait, force)
    running = engine.active()
    if running and not force.is_set():
        say(f"{len(running)} running job(s) stop at their next checkpoint and go back to the queue")
        engine.suspend(running)
        _wait_idle(engine, STOP_WAIT, force)
    left = engine.active()
    finished = [j for j in before if (rec := engine.status(j)) is not None and rec.final]
    return {"queued": len(before) - len(finished) - len(left), "finished": len(finished), "left": len(left)}


class _Server(uvicorn.Server):
    """uvicorn's server, whose stop signals start a drain (in a thread) instead of ending the serving at once; the
    server ends when the drain is done. uvicorn's own handling would stop listening first (new requests would be
    refused, not answered 503) and re-raise the signal at the end (exit status 143, not 0)."""

    def __init__(self, config, on_stop):
        super().__init__(config)
        self._on_stop, self._stopping, self.force = on_stop, None, threading.Event()

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle_exit) for s in STOP_SIGNALS  # an ignored one stays so (nohup)
                    if signal.getsignal(s) != signal.SIG_IGN}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def handle_exit(self, sig, frame) -> None:
        if self._stopping is None:
            self._stopping = threading.Thread(target=self._drain, args=(signal.Signals(sig).name,),
                                              name="nst-serve-drain", daemon=True)
            self._stopping.start()
        else:  # a second signal: stop now
            self.force.set()
            self.should_exit = True

    def _drain(self, name: str) -> None:
        try:
            self._on_stop(name, self.force)
        except Exception as exc:  # the drain must not keep the server from stopping
            _log.error("drain: %s", one_line(exc))
        self.should_exit = True


def serve(app, engine, settings, sock, drain_wait: float = 0.0, **uvicorn_options) -> int:
    """Run the service until a stop signal and its drain: resume the store's unfinished jobs, sweep for retention,
    serve ``app`` with uvicorn on the listening socket ``sock`` (``uvicorn_options``: log_level, access_log, ...),
    then close the engine. Returns the exit status (0 after a drain)."""
    app.state.accepting = True
    resumed = engine.resume()
    if resumed:
        say(f"resumed {len(resumed)} unfinished job(s) from the store")
    stop_sweeps = threading.Event()
    sweeper = threading.Thread(target=_sweeper, args=(engine.store, settings.retention, stop_sweeps),
                               name="nst-serve-retention", daemon=True)
    sweeper.start()

    def on_stop(name: str, force: threading.Event) -> None:
        say(f"{name}: not taking new jobs; stopping")
        counts = drain(engine, app, drain_wait, force)
        say(f"stopped: {counts['queued']} job(s) queued for the next start, {counts['finished']} finished meanwhile"
            + (f", {counts['left']} did not reach a checkpoint (the next start resumes them)" if counts["left"]
               else ""))

    options = dict(dict(log_level="warning", lifespan="off", server_header=False, proxy_headers=False),
                   **uvicorn_options, timeout_graceful_shutdown=3)  # open event streams: cut after 3 s
    config = uvicorn.Config(app, **options)
    server = _Server(config, on_stop)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        stop_sweeps.set()
        engine.close()
    return 0 if server.started else 1
