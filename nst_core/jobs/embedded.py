"""Preloaded by the worker processes of the embedded cluster (``Engine(workers=N)``): they share the driver's
terminal, so the Ctrl-C (SIGINT) or hang-up (SIGHUP) the terminal sends to the whole process group must not kill
them mid-job. The driver takes those signals, cancels the running jobs, collects their best pictures and stops
the cluster itself. Workers started with ``dask worker`` on other machines do not load this.

``NST_WORKER_NICE`` (set by ``Engine(worker_nice=N)``): every thread of the worker process adds N to its niceness (on
Linux a niceness is per thread, and threads started later inherit their starter's), so that the driver's process
(a web server answering status requests) gets a core at once while the workers keep both busy.
"""
from __future__ import annotations

import os
import signal
import threading

from . import worker  # noqa: F401  (imported now: the first job does not pay for NumPy and ONNX Runtime)

__all__ = ["dask_setup", "NICE_VAR"]

NICE_VAR = "NST_WORKER_NICE"


def _renice(more: int) -> None:
    value = min(19, os.getpriority(os.PRIO_PROCESS, 0) + more)
    for task in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else [0]:
        try:
            os.setpriority(os.PRIO_PROCESS, int(task), value)
        except OSError:  # a thread gone meanwhile; or no permission (a lower niceness than now)
            pass


def dask_setup(_worker) -> None:
    if os.environ.get(NICE_VAR):
        _renice(int(os.environ[NICE_VAR]))
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGINT", "SIGHUP"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_IGN)
