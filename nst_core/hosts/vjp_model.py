"""The self-contained VJP model of ``nst export-vjp``: image + one cotangent per tap -> dL/dimage, in standard ONNX
operators, for hosts in other languages (optionally with fixed image and cotangent shapes)."""
from __future__ import annotations

import os

import numpy as np
import onnx

from ..errors import NSTError
from ..network import model as _model
from ..network import vjp
from ..network.shapes import min_side
from ..outputs.files import same_file, write_bytes
from ..spec.spec import check_layer

__all__ = ["write_vjp_model"]


def _fix_shapes(vjp, tap_names, height: int, width: int):
    """Fix the VJP model's image / grad_image dims to [1,3,H,W] and each grad_<tap> to the tap's inferred shape."""
    def set_dims(vi, dims):
        shape = vi.type.tensor_type.shape
        shape.ClearField("dim")
        for d in dims:
            shape.dim.add().dim_value = int(d)

    for vi in vjp.graph.input:
        if vi.name == "image":
            set_dims(vi, [1, 3, height, width])
    inferred = onnx.shape_inference.infer_shapes(vjp, strict_mode=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for vi in vjp.graph.input:
        if vi.name.startswith("grad_"):
            tap = vi.name[len("grad_"):]
            dims = shapes.get(tap)
            if not dims or not all(d > 0 for d in dims):
                raise NSTError(f"cannot infer the shape of {tap} at {height}x{width}")
            set_dims(vi, dims)
    for vi in vjp.graph.output:
        if vi.name == "grad_image":
            set_dims(vi, [1, 3, height, width])
    return vjp


def write_vjp_model(out: str, taps, height=None, width=None, model_path=None) -> list[str]:
    """Build, check and write (atomically) the VJP model of the feature model's ``taps`` (layers 0..12) to
    ``out``; with ``height`` and ``width`` its shapes are fixed and it is run once at that size. Returns the tap
    names. NSTError (one line) for bad taps, sizes or paths."""
    if not taps:
        raise NSTError("--taps needs at least one layer")
    for t in taps:
        check_layer(t, "tap")
    if (height is None) != (width is None):
        raise NSTError("give both --height and --width, or neither")
    for name, value in (("height", height), ("width", width)):
        if value is not None and value < 1:
            raise NSTError(f"--{name} must be >= 1, got {value}")
    if not out.lower().endswith(".onnx"):
        raise NSTError(f"{out}: the output must be an .onnx file")
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise NSTError(f"{out}: directory {directory} does not exist")
    path = _model.find_model(model_path)
    if same_file(out, path):
        raise NSTError(f"{out}: would overwrite the feature model")
    names = [_model.tap_name(t) for t in sorted(set(taps))]
    onnx_model = _model.load_model(path, names)
    v = vjp.vjp_model(vjp.build_vjp(onnx_model, names))
    if height is not None:
        minimum = min_side(onnx_model, names)
        if min(height, width) < minimum:
            raise NSTError(f"{height}x{width} is too small for tap {names[-1]}: the network needs at "
                           f"least {minimum} px on each side")
        v = _fix_shapes(v, names, height, width)
    try:
        onnx.checker.check_model(v, full_check=True)
    except Exception as exc:  # a bug rather than a user error, but say it in one line
        raise NSTError(f"the VJP model fails onnx.checker: {str(exc).splitlines()[0]}") from None
    if height is not None:  # it must run at that size
        sess = _model.session(v, "cpu")
        feeds = {}
        for inp in sess.get_inputs():
            feeds[inp.name] = np.zeros(inp.shape, np.float32)
        sess.run(["grad_image"], feeds)
    write_bytes(out, v.SerializeToString())
    return names
