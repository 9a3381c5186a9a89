"""The standard streams of the command line: closed ones, full ones and broken pipes never cost a picture.

- ``reopen_closed()``: a process started with stdin, stdout or stderr closed (``nst ... >&-``) gets /dev/null on
  that descriptor, before anything opens a file: otherwise the first file opened (a temporary picture) would take
  descriptor 1 or 2, and a message printed later would be written into it. Python leaves ``sys.stdout`` None for
  a closed descriptor; it gets a stream on the /dev/null again.
- ``guarded()``: while the block runs, a write or flush of ``sys.stdout`` / ``sys.stderr`` that fails (a reader
  gone: EPIPE; /dev/full: ENOSPC; a descriptor closed under us: EBADF) is absorbed and remembered instead of raised,
  and that descriptor is pointed at /dev/null, so that the text still buffered is dropped instead of failing again
  at exit (Python would print "Exception ignored ... BrokenPipeError" and exit 120). The command carries on and
  says with its exit status what happened (``exit_status``).

This module imports only the standard library: the command line uses it before NumPy or ONNX Runtime are loaded.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import sys

__all__ = ["reopen_closed", "guarded", "Guarded", "exit_status", "EXIT_BROKEN_PIPE"]

#: 128 + SIGPIPE: what a shell reports for a program that a closed pipe stopped (``yes | head -1``).
EXIT_BROKEN_PIPE = 141


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def reopen_closed() -> None:
    """Put /dev/null on whichever of descriptors 0, 1, 2 is closed, and a stream on it where Python has None."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        if _is_open(fd):
            continue
        opened = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if opened != fd:  # a lower descriptor was closed too and took this one: move it where it belongs
            os.dup2(opened, fd)
            os.close(opened)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False, errors="backslashreplace"))


class Guarded:
    """A text stream whose write and flush never raise OSError or ValueError (closed file): the first such error
    is kept in ``error`` and the descriptor is pointed at /dev/null (see the module docstring). Everything else is
    the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream
        self.error: BaseException | None = None

    def write(self, text):
        try:
            return self._stream.write(text)
        except (OSError, ValueError) as exc:
            self._failed(exc)
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except (OSError, ValueError) as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        try:
            fd = self._stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
            self._stream.flush()  # what is still buffered goes to /dev/null now
        except (OSError, ValueError, io.UnsupportedOperation):
            pass

    @property
    def broken_pipe(self) -> bool:
        return isinstance(self.error, OSError) and self.error.errno == errno.EPIPE

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def guarded():
    """``sys.stdout`` and ``sys.stderr`` wrapped in ``Guarded`` for the block (flushed at its end, inside the guard);
    yields the two wrappers ``(stdout, stderr)``; the originals come back afterwards."""
    saved = sys.stdout, sys.stderr
    out, err = Guarded(sys.stdout), Guarded(sys.stderr)
    sys.stdout, sys.stderr = out, err
    try:
        yield out, err
    finally:
        out.flush()
        err.flush()
        sys.stdout, sys.stderr = saved


def exit_status(status: int, stdout: Guarded, output_is_the_work: bool) -> int:
    """The exit status of a command that would return ``status``, given what happened to its stdout: unchanged when
    stdout was written, or when its output is only a report of work done elsewhere (a picture, a file: the work is
    there, 0 stays 0); when the output is the work (``nst info``), 141 for a broken pipe (the shell's convention for
    a reader that left early) and 2 (``EXIT_INPUT``'s value) for any other failure (/dev/full)."""
    if stdout.error is None or not output_is_the_work or status != 0:
        return status
    return EXIT_BROKEN_PIPE if stdout.broken_pipe else 2
