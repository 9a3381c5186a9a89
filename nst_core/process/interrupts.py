"""Stopping a run by a signal: Ctrl-C (SIGINT), SIGTERM (a scheduler's timeout, ``docker stop``, ``kill``) and
SIGHUP (a closed terminal) all end the optimisation the same way, keeping the best result so far; and the few steps
that must not be cut in half (writing a file) hold those signals until they are done.

``stop_signals()`` is the context the command line runs in: each of the three signals raises KeyboardInterrupt in
the main thread (where the optimizers catch it and return the best point) and is remembered, so that the command
can say which signal stopped it and exit with 128 + its number (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP).
A signal that the process was started with ignored stays ignored (``nohup`` keeps SIGHUP away; a background job of
a non-interactive shell has SIGINT ignored).
"""
from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["STOP_SIGNALS", "stop_signals", "received", "exit_status", "stopped_by", "sigint_deferred"]

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_RECEIVED: list[int] = []
_WHAT = {"SIGINT": "interrupted", "SIGTERM": "terminated (SIGTERM)", "SIGHUP": "hung up (SIGHUP)"}


def _on_stop(signum, frame):
    _RECEIVED.append(signum)
    raise KeyboardInterrupt


def _ours_to_take(signum: int) -> bool:
    """Whether a stop handler may replace signum's current one: Python's default (SIGINT's default_int_handler,
    SIG_DFL for the others), never an ignore the process was started with or somebody else's handler."""
    current = signal.getsignal(signum)
    return current is signal.default_int_handler or current == signal.SIG_DFL


@contextlib.contextmanager
def stop_signals():
    """Within the block, SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt (main thread only; elsewhere a no-op)
    and are remembered for ``received()``. The previous handlers come back when the block ends."""
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            if _ours_to_take(signum):
                installed[signum] = signal.signal(signum, _on_stop)
    _RECEIVED.clear()
    try:
        yield
    finally:
        for signum, previous in installed.items():
            signal.signal(signum, previous)


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
        if caught:
            signal.raise_signal(caught[0])
