"""The networks of this process: ONNX Runtime sessions cached per (model file, taps, device, pooling), and the
smallest input side per (model file, taps), so repeated jobs in one process (``nst compare``, a worker) reuse them.

A cached network keeps the tensors of its last forward pass for the backward pass: do not run two optimisations on
the same (model, taps, device) from different threads at once.
"""
from __future__ import annotations

import os

from . import model as _model
from . import pooling as _pooling
from .shapes import min_side

__all__ = ["network", "min_size", "clear_cache"]

_NETWORKS: dict = {}
_MIN_SIZES: dict = {}


def clear_cache() -> None:
    """Drop the cached networks (ONNX Runtime sessions) and probed minimum sizes."""
    _NETWORKS.clear()
    _MIN_SIZES.clear()


def _model_key(path) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_mtime_ns, st.st_size)


def network(path, layers, device, pooling: str = "max"):
    """The cached ``Network`` for (model file, layers, device, pooling); check the sizes first with ``min_size``
    (the same for both poolings: kernel, strides, pads and ceil_mode are kept)."""
    taps = tuple(_model.tap_name(k) for k in layers)
    key = (_model_key(path), taps, device) + (() if pooling == "max" else (pooling, _pooling.AVG_SCALE))
    if key not in _NETWORKS:
        onnx_model = _pooling.with_pooling(_model.load_model(path, taps), pooling)
        _NETWORKS[key] = _model.Network(onnx_model, taps, device=device)
    return _NETWORKS[key]


def min_size(path, layers) -> int:
    """Smallest input side (pixels) for which the model at ``path`` computes every one of ``layers`` (cached)."""
    taps = tuple(_model.tap_name(k) for k in layers)
    key = (_model_key(path), taps)
    if key not in _MIN_SIZES:
        _MIN_SIZES[key] = min_side(_model.load_model(path, taps), taps)
    return _MIN_SIZES[key]
