"""The smallest input a tap needs, from the graph's Conv / pooling arithmetic alone (never by running it: ONNX
Runtime can die with SIGFPE on an input too small for a pooling layer)."""
from __future__ import annotations

from onnx import helper

from ..errors import NSTError
from .model import INPUT

__all__ = ["min_side"]


def _out_side(n: int, node, attrs: dict) -> int:
    """Output length along one spatial axis of a Conv / pooling node for input length ``n`` (<= 0: invalid)."""
    k = int(attrs["kernel_shape"][0])
    s = int((attrs.get("strides") or [1])[0])
    d = int((attrs.get("dilations") or [1])[0])
    pads = attrs.get("pads") or [0, 0, 0, 0]
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return -(-n // s)
    pb, pe = (0, 0) if auto_pad == "VALID" else (int(pads[0]), int(pads[len(pads) // 2]))
    span = n + pb + pe - (d * (k - 1) + 1)
    if span < 0 and node.op_type == "Conv":
        return 0
    ceil = bool(attrs.get("ceil_mode", 0))
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and out > 0 and (out - 1) * s >= n + pb:  # the last window must start inside the input
        out -= 1
    return out


def min_side(onnx_model, taps) -> int:
    """Smallest image side (pixels) for which ``onnx_model`` produces non-empty ``taps`` (tap names).

    Computed from the Conv / pooling arithmetic of the graph (floor, or ceil for ``ceil_mode``), without running
    it: ONNX Runtime can crash (SIGFPE) on inputs too small for a pooling layer. Other operators are assumed
    to keep the spatial size (ReLU, Concat, element-wise ops); global pools give 1."""
    weight_dims = {t.name: list(t.dims) for t in onnx_model.graph.initializer}
    nodes = []
    for n in onnx_model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv" and "kernel_shape" not in attrs:  # optional for Conv: the weight's [.., kh, kw]
            attrs["kernel_shape"] = weight_dims.get(n.input[1], [1, 1, 1, 1])[2:] or [1]
        nodes.append((n, attrs))

    def valid(side: int) -> bool:
        sizes = {INPUT: side}
        for node, attrs in nodes:
            ins = [sizes[i] for i in node.input if i in sizes]
            if not ins:
                continue
            if node.op_type in ("Conv", "MaxPool", "AveragePool", "LpPool"):
                out = _out_side(ins[0], node, attrs)
            elif node.op_type in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
                out = 1
            else:
                out = max(ins)
            if min(ins) <= 0:
                out = 0
            for o in node.output:
                sizes[o] = out
        return all(sizes.get(t, 0) > 0 for t in taps)

    for side in range(1, 4097):
        if valid(side):
            return side
    raise NSTError(f"the model cannot compute {', '.join(taps)} at any size up to 4096 px")
