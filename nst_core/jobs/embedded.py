"""Preloaded by the worker processes of the embedded cluster (``Engine(workers=N)``): they share the driver's
terminal, so the Ctrl-C (SIGINT) or hang-up (SIGHUP) the terminal sends to the whole process group must not kill
them mid-job. The driver takes those signals, cancels the running jobs, collects their best pictures and stops
the cluster itself. Workers started with ``dask worker`` on other machines do not load this.
"""
from __future__ import annotations

import signal
import threading

from . import worker  # noqa: F401  (imported now: the first job does not pay for NumPy and ONNX Runtime)

__all__ = ["dask_setup"]


def dask_setup(_worker) -> None:
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGINT", "SIGHUP"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_IGN)
