"""Reverse mode for ONNX graphs: build the vector-Jacobian product of a forward graph as ONNX, in standard ops.

Given a forward model with input ``image`` [1,3,H,W] and outputs (taps) ``features.K``, the VJP graph has inputs
``image`` and ``grad_features.K`` (one cotangent per requested tap, shaped like ``features.K``) and one output

    grad_image = sum_K (d features.K / d image)^T grad_features.K        # [1,3,H,W], same dtype as image

It is built in default-domain ONNX operators only, so it runs on every ONNX Runtime build and execution provider.
Each forward operator type has one short rule in ``RULES``: given the node, the cotangent of each of its outputs
and a builder to emit nodes, it returns the cotangent of each input (a tensor, or a ``ScatterAdd`` for a sparse
one such as a max pool's, which build_vjp adds into the input's other contributions). Spatial sizes stay dynamic:
whatever depends on H and W is computed from ``Shape`` at run time.

Two ways to use the result (both from the same backward nodes, see ``VJPGraph``):
- ``vjp_model``: one self-contained model (forward nodes + backward nodes), for hosts in other languages;
- ``split_models``: a forward model that also outputs the tensors the backward nodes read (ReLU outputs, pool
  inputs and outputs), and a backward model that takes them as inputs, so one optimizer evaluation runs the
  network's forward once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import NSTError

MIN_OPSET = 13  # Slice/Pad/Split/ReduceSum with tensor inputs


class UnsupportedOperator(NSTError):
    """The forward graph has an operator without a VJP rule."""


# ---------------------------------------------------------------------------------------------------------------
# Node emission


class Builder:
    """Collects the backward graph's nodes and constants; hands out unique tensor names."""

    def __init__(self, dtype: int, initializers: dict[str, np.ndarray], shapes: dict[str, list],
                 maxpool: str = "scatter"):
        self.dtype = dtype  # ONNX elem type of the image (and of every float tensor)
        self.np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
        self.initializers = initializers  # forward constants by name (read-only)
        self.shapes = shapes  # static/symbolic shapes from shape inference (may be missing)
        self.maxpool = maxpool  # MaxPool backward: "scatter" (arg-max + ScatterElements) or "masks" (no scatter)
        self.nodes: list[onnx.NodeProto] = []
        self.constants: dict[str, np.ndarray] = {}
        self._count = 0
        self._cache: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"vjp/{hint}_{self._count}"

    def op(self, op_type: str, inputs: list[str], hint: str = "", n_out: int = 1, **attrs):
        """Emit one node; returns its output name (or list of names when n_out > 1)."""
        outs = [self.fresh(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=outs[0] + "/" + op_type, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=None, hint: str = "c") -> str:
        """A constant tensor (deduplicated by value); float values take the image's dtype by default."""
        arr = np.asarray(value, dtype=dtype if dtype is not None else self.np_dtype)
        key = ("const", arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._cache:
            name = self.fresh(hint)
            self.constants[name] = arr
            self._cache[key] = name
        return self._cache[key]

    def ints(self, values) -> str:
        return self.const(np.asarray(values).reshape(-1), dtype=np.int64, hint="i")

    def dims(self, tensor: str, start: int, end: int) -> str:
        """int64 [end-start]: the run-time sizes of `tensor` along axes start..end-1 (cached per tensor)."""
        key = ("dims", tensor, start, end)
        if key not in self._cache:
            shape = self._cache.get(("shape", tensor))
            if shape is None:
                shape = self._cache[("shape", tensor)] = self.op("Shape", [tensor], "shape")
            self._cache[key] = self.op("Slice", [shape, self.ints([start]), self.ints([end])], "dims")
        return self._cache[key]

    def zero_after(self, tensor: str) -> str:
        """A scalar 0 of the image's dtype ([]) computed from ``tensor``'s run-time shape: a data dependency that
        makes ONNX Runtime run its consumers only once ``tensor`` exists (see ``_relu``)."""
        key = ("zero_after", tensor)
        if key not in self._cache:
            size = self.op("ReduceMin", [self.op("Shape", [tensor], "shape")], "size", keepdims=0)  # int64 []
            self._cache[key] = self.op("Mul", [self.op("Cast", [size], "size", to=self.dtype), self.const(0.0)],
                                       "zero")
        return self._cache[key]

    def zero_after_value(self, value: str) -> str:
        """A scalar 0 of the image's dtype that depends on the value of ``value`` (a scalar; 0 also for NaN/inf)."""
        return self.op("Mul", [self.op("Cast", [self.op("IsNaN", [value], "isnan")], "isnan", to=self.dtype),
                               self.const(0.0)], "zero")

    def cast_like(self, boolean: str) -> str:
        return self.op("Cast", [boolean], "mask", to=self.dtype)

    def zeros_like(self, tensor: str) -> str:
        shape = self.op("Shape", [tensor], "shape")
        return self.op("ConstantOfShape", [shape], "zeros",
                       value=numpy_helper.from_array(np.zeros(1, self.np_dtype)))

    def rank(self, tensor: str, default: int = 4) -> int:
        shape = self.shapes.get(tensor)
        return len(shape) if shape is not None else default


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _spatial(node: onnx.NodeProto, kernel: list[int]):
    """(kernel, strides, dilations, pads_begin, pads_end) of a 2-D conv/pool node with explicit padding."""
    a = _attrs(node)
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedOperator(f"{node.op_type} node {node.name!r}: auto_pad={auto_pad} is not supported "
                                  "(export with explicit pads)")
    n = len(kernel)
    if n != 2:
        raise UnsupportedOperator(f"{node.op_type} node {node.name!r}: only 2-D spatial ops are supported")
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    pads = list(a.get("pads", [0] * 2 * n)) if auto_pad == "NOTSET" else [0] * 2 * n
    return list(kernel), strides, dilations, pads[:n], pads[n:]


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces of the pooling rules


def _pad_to_windows(b: Builder, x: str, y: str, k, s, d, pb, value: float) -> str:
    """x [N,C,H,W] padded with `value` so that every window of the O = shape(y) outputs lies inside it:
    pads begin = pb, end = max(0, (O-1)*s + (k-1)*d + 1 - pb - H) (ceil_mode windows may run past the input)."""
    keff = [(ki - 1) * di + 1 for ki, di in zip(k, d)]
    need = b.op("Add", [b.op("Mul", [b.op("Sub", [b.dims(y, 2, 4), b.ints([1, 1])]), b.ints(s)]),
                        b.ints([ke - p for ke, p in zip(keff, pb)])])
    end = b.op("Max", [b.op("Sub", [need, b.dims(x, 2, 4)]), b.ints([0, 0])])
    pads = b.op("Concat", [b.ints([0, 0] + list(pb) + [0, 0]), end], axis=0)
    return b.op("Pad", [x, pads, b.const(np.asarray(value, b.np_dtype))], "padded")


def _window_slice(b: Builder, xp: str, y: str, offset, s) -> str:
    """[N,C,O0,O1]: the element at window offset `offset` (in padded coordinates) of every output window."""
    ends = b.op("Add", [b.op("Mul", [b.op("Sub", [b.dims(y, 2, 4), b.ints([1, 1])]), b.ints(s)]),
                        b.ints([o + 1 for o in offset])])
    return b.op("Slice", [xp, b.ints(offset), ends, b.ints([2, 3]), b.ints(s)], "window")


def _interleave(b: Builder, phases: list[str], axis: int) -> str:
    """Interleave s tensors [..., M, ...] along `axis` (2 or 3) into [..., M*s, ...]: out[i*s + p] = phases[p][i]."""
    if len(phases) == 1:
        return phases[0]
    stacked = b.op("Concat", [b.op("Unsqueeze", [p, b.ints([axis + 1])]) for p in phases], "stack", axis=axis + 1)
    if axis == 3:
        return b.op("Reshape", [stacked, b.ints([0, 0, 0, -1])], "interleave")
    shape = b.op("Concat", [b.ints([0, 0, -1]), b.dims(stacked, 4, 5)], axis=0)
    return b.op("Reshape", [stacked, shape], "interleave")


def _scatter_windows(b: Builder, parts: dict, x: str, k, s, d, pb) -> str:
    """Sum window contributions back onto the input grid.

    parts[(i, j)] is a tensor [N,C,O0,O1]: what each output window sends to its element at kernel tap (i, j)
    (input row o0*s0 + i*d0 - pb0, column o1*s1 + j*d1 - pb1). Returns [N,C,H,W] shaped like x, where windows
    overlap the contributions add up; padding positions are dropped. Strided placement is done without scatter
    ops: tap offsets are grouped by phase (offset mod stride), each phase grid is a sum of shifted (Pad) copies,
    and the phase grids are interleaved (Concat + Reshape)."""
    keff = [(ki - 1) * di + 1 for ki, di in zip(k, d)]
    q_max = [(ke - 1) // si for ke, si in zip(keff, s)]
    phase_sum: dict[tuple, list[str]] = {}
    for (i, j), t in parts.items():
        off = (i * d[0], j * d[1])
        phase = (off[0] % s[0], off[1] % s[1])
        q = (off[0] // s[0], off[1] // s[1])
        if q != (0, 0) or q_max != [0, 0]:
            t = b.op("Pad", [t, b.ints([0, 0, q[0], q[1], 0, 0, q_max[0] - q[0], q_max[1] - q[1]])], "shift")
        phase_sum.setdefault(phase, []).append(t)
    summed = {p: (ts[0] if len(ts) == 1 else b.op("Sum", ts, "phase")) for p, ts in phase_sum.items()}
    any_phase = next(iter(summed.values()))
    zero = None
    rows = []
    for p0 in range(s[0]):
        cols = []
        for p1 in range(s[1]):
            if (p0, p1) not in summed and zero is None:
                zero = b.zeros_like(any_phase)
            cols.append(summed.get((p0, p1), zero))
        rows.append(_interleave(b, cols, 3))
    canvas = _interleave(b, rows, 2)  # [N,C,(O0+q0)*s0,(O1+q1)*s1], row r = padded input row r
    # Input rows are canvas rows pb .. pb+H-1; the canvas may end early (rows no window covers get zero).
    return _fit(b, canvas, x, pb)


def _fit(b: Builder, t: str, x: str, begin) -> str:
    """Rows begin .. begin+H-1 (and likewise columns) of t [N,C,*,*], where H, W are x's spatial sizes: a canvas
    in padded-input coordinates cut back to the input. Where t ends early (rows no window reaches) zeros fill."""
    hw = b.dims(x, 2, 4)
    end = b.op("Add", [hw, b.ints(begin)])
    short = b.op("Max", [b.op("Sub", [end, b.dims(t, 2, 4)]), b.ints([0, 0])])
    t = b.op("Pad", [t, b.op("Concat", [b.ints([0, 0, 0, 0, 0, 0]), short], axis=0)], "extend")
    return b.op("Slice", [t, b.ints(begin), end, b.ints([2, 3])], "crop")


# ---------------------------------------------------------------------------------------------------------------
# The rules: rule(b, node, grads_out) -> list of input cotangents (tensor names or ScatterAdds; None where no
# gradient flows). grads_out are tensor names (None for an output without cotangent).


@dataclass(frozen=True)
class ScatterAdd:
    """A sparse cotangent contribution, as a rule may return it: `updates` (1-D) added at the flat positions
    `indices` (1-D int64) of a tensor shaped like `like`. build_vjp scatters it into the sum of the tensor's other
    contributions (or into zeros when there are none): no zeros tensor and one full-size Sum fewer than a dense
    contribution."""
    indices: str
    updates: str
    like: str


def _conv(b: Builder, node, g):
    x, w = node.input[0], node.input[1]
    a = _attrs(node)
    weight = b.initializers.get(w)
    kernel = list(a.get("kernel_shape") or (weight.shape[2:] if weight is not None else []))
    if not kernel:
        raise UnsupportedOperator(f"Conv node {node.name!r}: kernel_shape unknown (weights not a constant)")
    k, s, d, pb, pe = _spatial(node, kernel)
    group = a.get("group", 1)
    full = [di * (ki - 1) for ki, di in zip(k, d)]
    if s == [1, 1] and weight is not None and all(f - p >= 0 for f, p in zip(full * 2, pb + pe)):
        # Stride 1: a Conv with the kernel flipped and its in/out channels swapped (per group); measured a little
        # faster than ConvTranspose on ORT CPU (DESIGN.md).
        cout, cin_g = weight.shape[:2]
        wt = weight.reshape(group, cout // group, cin_g, *k).transpose(0, 2, 1, 3, 4)
        wt = np.ascontiguousarray(wt.reshape(group * cin_g, cout // group, *k)[:, :, ::-1, ::-1])
        pads = [f - p for f, p in zip(full, pb)] + [f - p for f, p in zip(full, pe)]
        gx = b.op("Conv", [g[0], b.const(wt.astype(b.np_dtype), hint="w_flipped")], "conv_grad",
                  kernel_shape=k, pads=pads, dilations=d, group=group)
        return [gx, None, None]
    # ConvTranspose gives the gradient on the padded input's grid, cut at the last window's end; the end padding
    # and up to s-1 input rows may lie past it.
    gx = b.op("ConvTranspose", [g[0], w], "conv_grad", kernel_shape=k, strides=s, dilations=d, group=group)
    return [_fit(b, gx, x, pb), None, None]


def _relu(b: Builder, node, g):
    # Cast(Greater) rather than Where (7x slower on ORT CPU, DESIGN.md) or Sign(y) (measured 1.6x slower than
    # Greater + Cast on ORT 1.32 CPU).
    # The threshold 0 comes from g's shape (Builder.zero_after): otherwise ONNX Runtime may compute the float mask,
    # a tensor of y's size, during the forward pass and hold it until the backward reaches this layer (about
    # 160 bytes per pixel of masks alive at once with CS231n's layers; nst_core/model.py).
    mask = b.cast_like(b.op("Greater", [node.output[0], b.zero_after(g[0])]))
    return [b.op("Mul", [g[0], mask], "relu_grad")]


def _max_pool(b: Builder, node, g):
    if len(node.output) > 1 and node.output[1]:
        raise UnsupportedOperator(f"MaxPool node {node.name!r}: the Indices output is not supported")
    return (_max_pool_scatter if b.maxpool == "scatter" else _max_pool_masks)(b, node, g)


def _max_pool_masks(b: Builder, node, g):
    """MaxPool backward without indices or scatter ops (for execution providers without ScatterElements-add,
    such as TensorRT): each window's elements are compared with its maximum (Equal), the first hit takes the
    gradient, and the window contributions are placed back on the input grid by phase (Pad, Concat, Reshape)."""
    a = _attrs(node)
    x, y = node.input[0], node.output[0]
    k, s, d, pb, _ = _spatial(node, a["kernel_shape"])
    xp = _pad_to_windows(b, x, y, k, s, d, pb, float("-inf"))
    # Each window's gradient goes to its FIRST maximal element in row-major order (as torch's and ORT's argmax):
    # `free` is 1 where the window has not yet handed out its gradient.
    parts, free = {}, None
    taps = [(i, j) for i in range(k[0]) for j in range(k[1])]
    for n, (i, j) in enumerate(taps):
        hit = b.cast_like(b.op("Equal", [_window_slice(b, xp, y, (i * d[0], j * d[1]), s), y]))
        if free is not None:
            hit = b.op("Mul", [hit, free], "first")
        if n < len(taps) - 1:
            free = b.op("Sub", [b.const(1.0), hit], "free") if free is None else b.op("Sub", [free, hit], "free")
        parts[(i, j)] = b.op("Mul", [g[0], hit], "route")
    return [_scatter_windows(b, parts, x, k, s, d, pb)]


def _max_pool_scatter(b: Builder, node, g):
    """MaxPool backward by scatter-add to the arg-max: MaxPool's Indices output (flat positions in x, first
    maximum of each window in row-major order) recomputed from the saved input; each window's cotangent is added
    there by ScatterElements(reduction='add'), opset >= 16. Returned as a ScatterAdd: build_vjp scatters it into
    the sum of x's other cotangent contributions (see _accumulate). Measured faster than the mask formulation on
    ORT CPU (bench/bench_vjp.py --maxpool)."""
    x = node.input[0]
    attrs = {k: v for k, v in _attrs(node).items() if k != "storage_order"}
    _, idx = b.op("MaxPool", [x], "argmax", n_out=2, **attrs)
    return [ScatterAdd(b.op("Reshape", [idx, b.ints([-1])], "flat"), b.op("Reshape", [g[0], b.ints([-1])], "flat"),
                       x)]


def _average_pool(b: Builder, node, g):
    a = _attrs(node)
    x, y = node.input[0], node.output[0]
    k, s, d, pb, _ = _spatial(node, a["kernel_shape"])
    # AveragePool is linear: y[o] = sum over the window's in-input elements of x / divisor(o). Rather than
    # re-deriving the runtime's divisor rules (count_include_pad, ceil_mode overhang), measure them with the
    # forward op itself: on an all-ones input y1[o] = n_valid(o) / divisor(o), so 1/divisor = y1 / n_valid.
    ones_shape = b.op("Concat", [b.ints([1, 1]), b.dims(x, 2, 4)], axis=0)
    ones = b.op("ConstantOfShape", [ones_shape], "ones", value=numpy_helper.from_array(np.ones(1, b.np_dtype)))
    y1 = b.op("AveragePool", [ones], "ones_pool", **a)
    window = _pad_to_windows(b, ones, y, k, s, d, pb, 0.0)
    count = b.op("Conv", [window, b.const(np.ones((1, 1, *k), b.np_dtype))], "n_valid", strides=s, dilations=d,
                 kernel_shape=k)
    count = b.op("Slice", [count, b.ints([0, 0]), b.dims(y, 2, 4), b.ints([2, 3])], "n_valid")
    scale = b.op("Div", [y1, b.op("Max", [count, b.const(1.0)])], "inv_divisor")
    gs = b.op("Mul", [g[0], scale], "avg_grad")
    return [_scatter_windows(b, {(i, j): gs for i in range(k[0]) for j in range(k[1])}, x, k, s, d, pb)]


def _global_average_pool(b: Builder, node, g):
    x = node.input[0]
    n = b.op("Cast", [b.op("ReduceProd", [b.dims(x, 2, b.rank(x))], keepdims=0)], to=b.dtype)
    return [b.op("Expand", [b.op("Div", [g[0], n]), b.op("Shape", [x])], "gap_grad")]


def _concat(b: Builder, node, g):
    if len(node.input) == 1:
        return [g[0]]
    axis = _attrs(node)["axis"]
    axis = axis + b.rank(node.input[0]) if axis < 0 else axis
    static = [(b.shapes.get(t) or [None] * (axis + 1))[axis] for t in node.input]
    if all(isinstance(v, int) and v > 0 for v in static):  # channel counts are known: nothing to read at run time
        sizes = b.ints(static)
    else:
        sizes = b.op("Concat", [b.dims(t, axis, axis + 1) for t in node.input], axis=0)
    return b.op("Split", [g[0], sizes], "concat_grad", n_out=len(node.input), axis=axis)


def _unbroadcast(b: Builder, grad: str, target: str, out: str) -> str:
    """Sum `grad` (shaped like `out`) down to the shape of `target` (numpy broadcasting rules)."""
    ts, os_ = b.shapes.get(target), b.shapes.get(out)
    if ts is not None and ts == os_:
        return grad
    if ts is None or os_ is None or any(isinstance(v, str) or v is None for v in ts):
        if target in b.initializers or ts == os_:
            return grad
        raise UnsupportedOperator(f"cannot unbroadcast the gradient of {target!r}: its shape is unknown")
    lead = len(os_) - len(ts)
    axes = list(range(lead)) + [lead + i for i, v in enumerate(ts) if v == 1 and os_[lead + i] != 1]
    if axes:
        grad = b.op("ReduceSum", [grad, b.ints(axes)], "unbroadcast", keepdims=1)
    if lead or axes:
        grad = b.op("Reshape", [grad, b.ints(ts)], "unbroadcast")
    return grad


def _add(b: Builder, node, g):
    return [_unbroadcast(b, g[0], t, node.output[0]) for t in node.input]


def _sub(b: Builder, node, g):
    return [_unbroadcast(b, g[0], node.input[0], node.output[0]),
            _unbroadcast(b, b.op("Neg", [g[0]]), node.input[1], node.output[0])]


def _mul(b: Builder, node, g):
    x0, x1 = node.input
    return [_unbroadcast(b, b.op("Mul", [g[0], x1], "mul_grad"), x0, node.output[0]),
            _unbroadcast(b, b.op("Mul", [g[0], x0], "mul_grad"), x1, node.output[0])]


def _div(b: Builder, node, g):
    x0, x1 = node.input
    g0 = b.op("Div", [g[0], x1], "div_grad")
    g1 = b.op("Neg", [b.op("Mul", [g0, node.output[0]])], "div_grad")  # -(g/x1) (x0/x1) = -g x0/x1^2
    return [_unbroadcast(b, g0, x0, node.output[0]), _unbroadcast(b, g1, x1, node.output[0])]


def _batch_norm(b: Builder, node, g):
    a = _attrs(node)
    if a.get("training_mode", 0):
        raise UnsupportedOperator(f"BatchNormalization node {node.name!r}: training_mode=1 is not supported")
    _, scale, _, _, var = node.input[:5]
    factor = b.op("Div", [scale, b.op("Sqrt", [b.op("Add", [var, b.const(a.get("epsilon", 1e-5))])])])
    factor = b.op("Reshape", [factor, b.ints([-1] + [1] * (b.rank(node.input[0]) - 2))], "bn_scale")
    return [b.op("Mul", [g[0], factor], "bn_grad"), None, None, None, None]


def _identity(b: Builder, node, g):
    return [g[0]] + [None] * (len(node.input) - 1)


def _reshape(b: Builder, node, g):
    return [b.op("Reshape", [g[0], b.op("Shape", [node.input[0]])], "reshape_grad")] + [None] * (len(node.input) - 1)


RULES = {
    "Conv": _conv,
    "Relu": _relu,
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _global_average_pool,
    "Concat": _concat,
    "Add": _add,
    "Sub": _sub,
    "Mul": _mul,
    "Div": _div,
    "BatchNormalization": _batch_norm,
    "Identity": _identity,
    "Dropout": _identity,  # inference: output 0 is the input
    "Flatten": _reshape,
    "Reshape": _reshape,
    "Squeeze": _reshape,
    "Unsqueeze": _reshape,
}


# ---------------------------------------------------------------------------------------------------------------
# The graph walk


@dataclass
class VJPGraph:
    """The pieces of a VJP: the forward nodes it needs, the backward nodes and what connects them."""
    forward: onnx.ModelProto  # the original model
    taps: list[str]  # tap (output) names, in request order
    forward_nodes: list[onnx.NodeProto]  # forward nodes the taps need, in topological order
    backward_nodes: list[onnx.NodeProto]
    constants: dict[str, np.ndarray]  # backward constants (new ones and the forward initializers it reads)
    saved: list[str]  # forward tensors the backward nodes read
    input_name: str
    dtype: int
    opset: int
    grad_inputs: list[str]  # grad_<tap> for the taps that depend on the image
    shapes: dict[str, list] = field(default_factory=dict)  # inferred shapes of forward tensors
    # grad_<tap> -> a backward tensor that exists only once the backward has reached the tap (another cotangent
    # contribution of the tap), for the taps that have one: what makes a loss's gradient wait (Builder.zero_after)
    ready: dict[str, str] = field(default_factory=dict)


def grad_name(tap: str) -> str:
    return "grad_" + tap


MAXPOOL_MODES = ("scatter", "masks")


def _relu_after_concat(nodes: list, keep: set) -> list:
    """Rewrite Concat(Relu(a), Relu(b), ...) as Relu(Concat(a, b, ...)): the same values, but the backward then
    needs one mask over the concatenation (which is saved anyway) instead of one per branch. Only where each Relu
    output feeds just that Concat and is not in `keep` (graph outputs)."""
    producer = {o: n for n in nodes for o in n.output}
    uses: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    dropped, out = set(), []
    for n in nodes:
        relus = [producer.get(i) for i in n.input]
        if (n.op_type == "Concat" and len(n.input) > 1 and all(r is not None and r.op_type == "Relu" for r in relus)
                and all(uses[i] == 1 and i not in keep for i in n.input)):
            dropped.update(id(r) for r in relus)
            joined = n.output[0] + "/pre_relu"
            out.append(helper.make_node("Concat", [r.input[0] for r in relus], [joined], name=n.name,
                                        axis=_attrs(n)["axis"]))
            out.append(helper.make_node("Relu", [joined], [n.output[0]], name=n.name + "/relu"))
        else:
            out.append(n)
    return [n for n in out if id(n) not in dropped]


def _accumulate(b: Builder, parts: list) -> str | None:
    """The sum of a tensor's cotangent contributions (tensor names and ScatterAdds); None when there are none."""
    dense = [p for p in parts if isinstance(p, str)]
    sparse = [p for p in parts if isinstance(p, ScatterAdd)]
    total = (dense[0] if len(dense) == 1 else b.op("Sum", dense, "accumulate")) if dense else None
    if not sparse:
        return total
    shape = b.op("Shape", [dense[0] if dense else sparse[0].like], "shape")
    if total is None:
        total = b.op("ConstantOfShape", [shape], "zeros", value=numpy_helper.from_array(np.zeros(1, b.np_dtype)))
    flat = b.op("Reshape", [total, b.ints([-1])], "flat")
    for p in sparse:  # ORT runs ScatterElements in place on a data input that is not used elsewhere
        flat = b.op("ScatterElements", [flat, p.indices, p.updates], "scatter_add", axis=0, reduction="add")
    return b.op("Reshape", [flat, shape], "accumulate")


def build_vjp(model: onnx.ModelProto, taps, input_name: str = "image", maxpool: str = "scatter") -> VJPGraph:
    """Build the backward nodes of `model` for the cotangents of `taps` (output names) w.r.t. `input_name`.

    maxpool: "scatter" (default, fastest on ORT CPU) or "masks" (no ScatterElements, for providers without it)."""
    if maxpool not in MAXPOOL_MODES:
        raise ValueError(f"maxpool must be one of {MAXPOOL_MODES}")
    graph = model.graph
    taps = list(dict.fromkeys(taps))
    outputs = {o.name for o in graph.output}
    missing = [t for t in taps if t not in outputs]
    if missing:
        raise NSTError(f"the model has no output {missing[0]!r} (it has {', '.join(sorted(outputs))})")
    inputs = {i.name: i for i in graph.input}
    if input_name not in inputs:
        raise NSTError(f"the model has no input {input_name!r}")
    dtype = inputs[input_name].type.tensor_type.elem_type
    opset = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] + [MIN_OPSET])

    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # Constant nodes are constants too
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            initializers[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    # Prune to what the taps need.
    producer = {o: n for n in graph.node for o in n.output}
    needed, stack = set(), list(taps)
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        if t in producer:
            stack.extend(i for i in producer[t].input if i)
    forward_nodes = [n for n in graph.node if any(o in needed for o in n.output)]
    # The backward is built from a rewritten forward (one ReLU mask per Concat); the forward that runs stays the
    # original one, whose Conv+Relu pairs ORT fuses, as long as the backward reads only tensors it computes.
    walk_nodes = _relu_after_concat(forward_nodes, outputs)

    # Tensors that depend on the image.
    active = {input_name}
    for n in walk_nodes:
        if any(i in active for i in n.input):
            active.update(o for o in n.output if o)

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # pragma: no cover - shape inference is only a help for unbroadcasting
        inferred = model
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                               for d in vi.type.tensor_type.shape.dim]
    for name, arr in initializers.items():
        shapes[name] = list(arr.shape)

    b = Builder(dtype, initializers, shapes, maxpool)
    contributions: dict[str, list] = {}  # tensor -> its cotangent contributions (names and ScatterAdds)
    grad_inputs = []
    for tap in taps:
        if tap in active:
            grad_inputs.append(grad_name(tap))
            contributions.setdefault(tap, []).append(grad_name(tap))

    ready = {}
    for node in reversed(walk_nodes):
        if node.op_type == "Constant" or not any(i in active for i in node.input):
            continue
        for o in node.output:
            others = [p for p in contributions.get(o, ()) if p != grad_name(o)]
            if grad_name(o) in grad_inputs and others:
                ready[grad_name(o)] = others[0] if isinstance(others[0], str) else others[0].updates
        g_out = [_accumulate(b, contributions.pop(o, [])) for o in node.output]
        if all(g is None for g in g_out):
            continue
        rule = RULES.get(node.op_type)
        if rule is None:
            raise UnsupportedOperator(f"no VJP rule for ONNX operator {node.op_type!r} (node {node.name!r}); "
                                      f"supported: {', '.join(sorted(RULES))}")
        if g_out[0] is None:  # only secondary outputs (e.g. a Dropout mask) carry gradient: none flows back
            continue
        for inp, gi in zip(node.input, rule(b, node, g_out)):
            if gi is not None and inp in active:
                contributions.setdefault(inp, []).append(gi)

    final = _accumulate(b, contributions.pop(input_name, []))
    if final is not None:
        b.nodes.append(helper.make_node("Identity", [final], ["grad_image"], name="grad_image"))
    else:  # no tap depends on the image
        b.nodes.append(helper.make_node("Mul", [input_name, b.const(0.0)], ["grad_image"], name="grad_image"))

    b.nodes = _live(b.nodes, "grad_image")
    produced = {o for n in b.nodes for o in n.output}
    read = [i for n in b.nodes for i in n.input if i]
    constants = {n: a for n, a in b.constants.items() if n in set(read)}
    for name in read:
        if name in initializers and name not in produced:
            constants[name] = initializers[name]
    forward_tensors = {o for n in walk_nodes for o in n.output} | {input_name}
    saved = list(dict.fromkeys(i for i in read if i in forward_tensors and i not in constants
                               and i not in produced))
    original = {o for n in forward_nodes for o in n.output} | {input_name}
    if any(t not in original for t in saved):
        forward_nodes = walk_nodes
    return VJPGraph(model, taps, forward_nodes, b.nodes, constants, saved, input_name, dtype, opset, grad_inputs,
                    shapes, ready)


def _live(nodes: list, output: str) -> list:
    """The nodes `output` depends on (rules also emit cotangents of constant inputs; those are dropped here)."""
    wanted, keep = {output}, []
    for n in reversed(nodes):
        if any(o in wanted for o in n.output):
            keep.append(n)
            wanted.update(n.input)
    return keep[::-1]


# ---------------------------------------------------------------------------------------------------------------
# Assembling models


def _value_info(v: "VJPGraph", name: str) -> onnx.ValueInfoProto:
    """Type and shape of a forward tensor, from the model's declarations or shape inference (dims may be
    symbolic or unknown)."""
    for vi in list(v.forward.graph.output) + list(v.forward.graph.input):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            out = onnx.ValueInfoProto()
            out.CopyFrom(vi)
            return out
    return helper.make_tensor_value_info(name, v.dtype, v.shapes.get(name, [None] * 4))


def _grad_info(v: VJPGraph, tap: str) -> onnx.ValueInfoProto:
    vi = _value_info(v, tap)
    vi.name = grad_name(tap)
    return vi


def _make_model(v: VJPGraph, nodes, inputs, outputs, initializers: dict, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              initializer=[numpy_helper.from_array(a, n) for n, a in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", v.opset)],
                              producer_name="nst_core.vjp")
    model.ir_version = min(v.forward.ir_version or onnx.IR_VERSION, onnx.IR_VERSION)
    for prop in v.forward.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    return model


def _forward_initializers(v: VJPGraph, nodes) -> dict:
    used = {i for n in nodes for i in n.input}
    return {t.name: numpy_helper.to_array(t) for t in v.forward.graph.initializer if t.name in used}


def vjp_model(v: VJPGraph) -> onnx.ModelProto:
    """One self-contained model: inputs image + grad_<tap> for each tap; output grad_image."""
    nodes = list(v.forward_nodes) + list(v.backward_nodes)
    inits = _forward_initializers(v, v.forward_nodes)
    inits.update(v.constants)
    inputs = [_value_info(v, v.input_name)] + [_grad_info(v, t) for t in v.taps
                                                                if grad_name(t) in v.grad_inputs]
    out = _value_info(v, v.input_name)
    out.name = "grad_image"
    return _make_model(v, nodes, inputs, [out], inits, "vjp")


def split_models(v: VJPGraph) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(forward, backward): the forward outputs the taps, then the saved tensors the backward reads (names in
    v.saved, minus the taps and the image); the backward takes the saved tensors and grad_<tap> inputs."""
    fwd_outputs = list(v.taps) + [s for s in v.saved if s not in v.taps and s != v.input_name]
    fwd = _make_model(v, list(v.forward_nodes), [_value_info(v, v.input_name)],
                      [_value_info(v, o) for o in fwd_outputs],
                      _forward_initializers(v, v.forward_nodes), "forward")
    bwd_inputs = [_value_info(v, s) for s in v.saved] + \
                 [_grad_info(v, t) for t in v.taps if grad_name(t) in v.grad_inputs]
    out = _value_info(v, v.input_name)
    out.name = "grad_image"
    bwd = _make_model(v, list(v.backward_nodes), bwd_inputs, [out], dict(v.constants), "backward")
    return fwd, bwd
