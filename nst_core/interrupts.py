"""Ctrl-C around the few steps that must not be cut in half."""
from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["sigint_deferred"]


@contextlib.contextmanager
def sigint_deferred():
    """Hold Ctrl-C (SIGINT) for the duration of the block, then deliver it to whatever handler was installed.

    For creating a temporary file: a KeyboardInterrupt raised inside ``tempfile.mkstemp`` after it created the
    file, or just after it returned, escapes the cleanup that removes it (seen: a ``.out_000026.png.XXXX.png``
    left behind by a Ctrl-C during ``nst stylize --save-every``). Put the block inside the ``try`` whose cleanup
    removes the file: the held KeyboardInterrupt is raised as the block ends. Python runs signal handlers in the
    main thread only, so elsewhere (and where no Python handler is installed) the block runs as is.
    """
    caught = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
        if previous is not None:
            signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
            if caught:
                signal.raise_signal(signal.SIGINT)
