"""Threads of this process: NumPy's BLAS kept to one thread beside ONNX Runtime's.

Measured on the 2-core development machine at 192 x 256 px: an evaluation took 360 ms with OpenBLAS's default
threads (its worker threads fight ONNX Runtime's for the cores; the style loss alone went from 9 ms to 270 ms) and
51 ms with one BLAS thread. The Gram products are small, so one thread loses little.
"""
from __future__ import annotations

from threadpoolctl import threadpool_limits

__all__ = ["single_threaded_blas"]


def single_threaded_blas():
    """Context manager limiting NumPy's / SciPy's BLAS (OpenBLAS, MKL, ...) to one thread while it is active."""
    return threadpool_limits(limits=1, user_api="blas")
