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
the saving of the picture; the exit status is the first one's. "First" is the order of arrival: Python runs the
handlers of signals pending together in the order of their numbers (SIGHUP 1, SIGINT 2, SIGTERM 15), so the C-level
handler's wake-up byte (``signal.set_wakeup_fd``, written at delivery) is what tells the order. The kernel gives
a signal sent to the process to its main thread unless that thread has one pending already; seen: SIGHUP aimed at a
main thread inside fsync (an uninterruptible wait) ran after a SIGINT sent 2 ms later, which an idle ORT thread
took at once. So within the block the main thread blocks the three, and a thread of their own, always waiting,
takes them in the order they come (Python then runs their handlers in the main thread, as ever). With
``exiting=True`` (the command line, which ends with the block) the three signals stay ignored after a stop instead
of getting their default action back: a late one would kill the exiting process with another status.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

__all__ = ["STOP_SIGNALS", "stop_signals", "received", "exit_status", "stopped_by", "sigint_deferred"]

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_RECEIVED: list[int] = []
_WAKEUP: list[int] = []  # the read end of the wake-up pipe while stop_signals() has one, else empty
_WHAT = {"SIGINT": "interrupted", "SIGTERM": "terminated (SIGTERM)", "SIGHUP": "hung up (SIGHUP)"}


def _arrived() -> list[int]:
    """The stop signals the wake-up pipe holds, in the order they were delivered (drained)."""
    if not _WAKEUP:
        return []
    try:
        data = os.read(_WAKEUP[0], 4096)
    except (BlockingIOError, InterruptedError, OSError):
        return []
    return [b for b in data if b in STOP_SIGNALS]


def _on_stop(signum, frame):
    first = not _RECEIVED
    arrived = _arrived()
    _RECEIVED.extend(arrived or [signum])
    if first:
        raise KeyboardInterrupt


def _ours_to_take(signum: int) -> bool:
    """Whether a stop handler may replace signum's current one: Python's default (SIGINT's default_int_handler,
    SIG_DFL for the others), never an ignore the process was started with or somebody else's handler."""
    current = signal.getsignal(signum)
    return current is signal.default_int_handler or current == signal.SIG_DFL


@contextlib.contextmanager
def _wakeup_pipe():
    """A non-blocking pipe whose write end is the process's wake-up fd for the block (when no one else has one:
    asyncio's loop keeps its own, and then the handlers' calling order stands in for the order of arrival)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (ValueError, OSError):
        previous = None
    if previous not in (None, -1):
        signal.set_wakeup_fd(previous)
        previous = None
    if previous is not None:
        _WAKEUP.append(read_fd)
    try:
        yield
    finally:
        if previous is not None:
            signal.set_wakeup_fd(-1)
            _WAKEUP.clear()
        os.close(read_fd)
        os.close(write_fd)


@contextlib.contextmanager
def _taken_by_a_watcher(signums):
    """Within the block the main thread blocks ``signums``, and a daemon thread started before (so without them
    blocked) receives them: it waits on an event, an interruptible sleep, so each signal is taken as it comes.
    Threads started within the block (ONNX Runtime's) inherit the block. Nothing on a platform without
    pthread_sigmask."""
    if not signums or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    done = threading.Event()
    threading.Thread(target=done.wait, name="nst-stop-signals", daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)
        done.set()


@contextlib.contextmanager
def stop_signals(exiting: bool = False):
    """Within the block, the first of SIGINT, SIGTERM and SIGHUP raises KeyboardInterrupt (main thread only;
    elsewhere a no-op) and every one is remembered for ``received()``. The previous handlers come back when the block
    ends; with ``exiting`` (the process ends with the block) the signals stay ignored after a stop instead."""
    installed = {}
    main = threading.current_thread() is threading.main_thread()
    with contextlib.ExitStack() as stack:
        if main:
            stack.enter_context(_wakeup_pipe())
            for signum in STOP_SIGNALS:
                if _ours_to_take(signum):
                    installed[signum] = signal.signal(signum, _on_stop)
            stack.enter_context(_taken_by_a_watcher(set(installed)))
        _RECEIVED.clear()
        try:
            yield
        finally:
            stopping = exiting and bool(_RECEIVED)
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
