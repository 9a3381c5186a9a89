"""Threads of this process: NumPy's BLAS kept to one thread beside ONNX Runtime's.

Measured on the 2-core development machine at 192 x 256 px: an evaluation took 360 ms with OpenBLAS's default
threads (its worker threads fight ONNX Runtime's for the cores; the style loss alone went from 9 ms to 270 ms) and
51 ms with one BLAS thread. The Gram products are small, so one thread loses little.
"""
from __future__ import annotations

import os

from threadpoolctl import threadpool_limits

__all__ = ["single_threaded_blas", "ort_threads", "ORT_THREADS_VAR"]

#: Environment variable: ONNX Runtime's intra-op threads per session (default: ORT's, one per physical core). The
#: job engine's embedded cluster sets it so that its worker processes share the cores instead of each taking all.
ORT_THREADS_VAR = "NST_ORT_THREADS"


def single_threaded_blas():
    """Context manager limiting NumPy's / SciPy's BLAS (OpenBLAS, MKL, ...) to one thread while it is active."""
    return threadpool_limits(limits=1, user_api="blas")


def ort_threads(env=None) -> int:
    """``$NST_ORT_THREADS`` as a whole number >= 1, or 0 (ORT's default) when unset or not such a number."""
    text = (os.environ if env is None else env).get(ORT_THREADS_VAR, "").strip()
    return int(text) if text.isdigit() and int(text) >= 1 else 0
