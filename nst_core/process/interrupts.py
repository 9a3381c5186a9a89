"""Stopping a run by a signal: Ctrl-C (SIGINT), SIGTERM (a scheduler's timeout, ``docker stop``, ``kill``) and
SIGHUP (a closed terminal) all end the optimisation the same way, keeping the best result so far; and the few steps
that must not be cut in half (writing a file) hold those signals until they are done.

``stop_signals()`` is the context the command line runs in: each of the three signals raises KeyboardInterrupt in
the main thread (where the optimizers catch it and return the best point) and is remembered, so that the command
can say which signal stopped it and exit with 128 + its number (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP).
A signal that the process was started with ignored stays ignored (``nohup`` keeps SIGHUP away; a background job of
a non-interactive shell has SIGINT ignored).

Several signals close together (two Ctrl-C's, or a wrapper forwarding SIGTERM on top of the terminal's SIGINT) stop
the run once: only the first raises KeyboardInterrupt, the later ones are only recorded, so none can escape from
the saving of the picture; the exit status is the first one's. "First" is the order the kernel hands them out, which
Python's handlers do not keep: they run in the main thread in the order of the signals' numbers when several are
pending (SIGHUP 1, SIGINT 2, SIGTERM 15), the C-level handler may run in any thread, and a signal aimed at a main
thread inside fsync (an uninterruptible wait) was seen handled after one sent 2 ms later. So within the block every
thread blocks the three, and one thread of their own takes them with ``sigwait`` one at a time, records each, and
hands it to the main thread (``_thread.interrupt_main``: Python then runs the handler there, as for a signal). The
kernel's order is the order of sending, except for signals that became pending together before the watcher ran
(a gap below the scheduler's latency): those come lowest number first. Processes started within the block inherit
the blocked signals; nst starts none. With ``exiting=True`` (the command line, which ends with the block) the three
signals stay ignored after a stop instead of getting their default action back: a late one would kill the exiting
process with another status.
"""
from __future__ import annotations

import _thread
import contextlib
import signal
import threading

__all__ = ["STOP_SIGNALS", "stop_signals", "received", "exit_status", "stopped_by", "sigint_deferred"]

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_RECEIVED: list[int] = []  # every stop signal of the block, in the order it came
_STATE = {"raised": False, "watched": False}
_WHAT = {"SIGINT": "interrupted", "SIGTERM": "terminated (SIGTERM)", "SIGHUP": "hung up (SIGHUP)"}


def _on_stop(signum, frame):
    """The handler, in the main thread: the first stop raises KeyboardInterrupt, the later ones are only recorded
    (by the watcher when there is one, else here)."""
    if not _STATE["watched"]:
        _RECEIVED.append(signum)
    if not _STATE["raised"]:
        _STATE["raised"] = True
        raise KeyboardInterrupt


def _watch(signums, done: threading.Event) -> None:
    """The watcher thread: take each stop signal as the kernel hands it out, record it, pass it to the main thread."""
    while True:
        signum = signal.sigwait(signums)
        if done.is_set():
            return
        _RECEIVED.append(signum)
        _thread.interrupt_main(signum)


@contextlib.contextmanager
def _watched(signums):
    """Within the block ``signums`` are blocked in every thread (threads started later inherit it) and taken by
    ``_watch``. Nothing where pthread_sigmask / sigwait are missing: the handlers then record the signals."""
    if not signums or not (hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigwait")):
        yield
        return
    done = threading.Event()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    watcher = threading.Thread(target=_watch, args=(signums, done), name="nst-stop-signals", daemon=True)
    watcher.start()
    _STATE["watched"] = True
    try:
        yield
    finally:
        _STATE["watched"] = False
        done.set()
        try:
            signal.pthread_kill(watcher.ident, min(signums))  # wakes its sigwait; it sees done and ends
        except OSError:  # it has ended already
            pass
        watcher.join(timeout=5)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _ours_to_take(signum: int) -> bool:
    """Whether a stop handler may replace signum's current one: Python's default (SIGINT's default_int_handler,
    SIG_DFL for the others), never an ignore the process was started with or somebody else's handler."""
    current = signal.getsignal(signum)
    return current is signal.default_int_handler or current == signal.SIG_DFL


@contextlib.contextmanager
def stop_signals(exiting: bool = False):
    """Within the block, the first of SIGINT, SIGTERM and SIGHUP raises KeyboardInterrupt (main thread only;
    elsewhere a no-op) and every one is remembered for ``received()``. The previous handlers come back when the block
    ends; with ``exiting`` (the process ends with the block) the signals stay ignored after a stop instead."""
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            if _ours_to_take(signum):
                installed[signum] = signal.signal(signum, _on_stop)
    _RECEIVED.clear()
    _STATE["raised"] = False
    try:
        with _watched(set(installed)):
            yield
    finally:
        stopping = exiting and bool(_RECEIVED or _STATE["raised"])
        for signum, previous in installed.items():
            signal.signal(signum, signal.SIG_IGN if stopping else previous)


def received() -> int | None:
    """The first stop signal received inside ``stop_signals()``, or None."""
    return _RECEIVED[0] if _RECEIVED else None


def exit_status() -> int:
    """128 + the stop signal's number (SIGINT's when none was recorded: a KeyboardInterrupt raised otherwise)."""
    return 128 + int(received() or signal.SIGINT)


def stopped_by() -> str:
    """'interrupted', 'terminated (SIGTERM)' or 'hung up (SIGHUP)': for messages."""
    return _WHAT.get(signal.Signals(received() or signal.SIGINT).name, "interrupted")


@contextlib.contextmanager
def sigint_deferred():
    """Hold the stop signals (SIGINT, SIGTERM, SIGHUP) for the duration of the block, then deliver the first one
    caught to whatever handler was installed.

    For creating a temporary file: a KeyboardInterrupt raised inside ``tempfile.mkstemp`` after it created the
    file, or just after it returned, escapes the cleanup that removes it (seen: a ``.out_000026.png.XXXX.png``
    left behind by a Ctrl-C during ``nst stylize --save-every``). Put the block inside the ``try`` whose cleanup
    removes the file: the held KeyboardInterrupt is raised as the block ends. Python runs signal handlers in the
    main thread only, so elsewhere the block runs as is; a signal that is ignored stays ignored.
    """
    caught: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            current = signal.getsignal(signum)
            if current is not None and current != signal.SIG_IGN:
                previous[signum] = signal.signal(signum, lambda s, frame: caught.append(s))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:  # the handler is called here, in this thread: the signal may be blocked in it (stop_signals)
            handler = signal.getsignal(caught[0])
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])
