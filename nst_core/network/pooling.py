"""Max or average pooling in the feature network: a graph rewrite applied when the model is loaded.

``with_pooling(model, "avg")`` returns a copy of the ONNX feature model in which every ``MaxPool`` node is an
``AveragePool`` node with the same kernel_shape, strides, pads and ceil_mode, the same input and output names
(so the taps keep their names) and the same weights everywhere else. Gatys et al. (2016) report smoother pictures
with average pooling. ``"max"`` returns the model unchanged (SqueezeNet's own pooling, CS231n's).

Semantics of the average (``count_include_pad=0``): every output is the mean of the window's elements that lie
inside the input, times the factor ``AVG_SCALE`` (below),

    y[c, i, j] = AVG_SCALE / n(i, j) * sum_{(p, q) in window(i, j), inside x} x[c, p, q]

where n(i, j) counts those elements. A max pool ignores its padding and the part of a ceil_mode window that runs
past the input, and so does this average. For SqueezeNet 1.1 (k 3, s 2, no pads, ceil_mode) only the last
row / column of windows is affected, and this is exactly torch's ``nn.AvgPool2d(3, 2, ceil_mode=True)`` (whose
divisor also leaves out the overhang past the input; with no pads its ``count_include_pad`` makes no difference),
times the factor. tests/test_pooling.py checks forward and gradient against it.

The average pools' outputs are multiplied by ``AVG_SCALE`` = 1.4, so that the presets' weights keep their
meaning. An average is smaller than a maximum (on the four images, the mean pooled activation is 1.8-2.6x smaller
at SqueezeNet's three pools; crowsonkb/style-transfer-pytorch multiplies VGG's average pools by 2 for this), and
the shrinkage compounds through the pools: without a factor the content term fell to 0.41-0.59x and the style
terms of layers 4, 6, 7 to 0.10-0.47x of max pooling's (the same images, the presets' weights), so the style
weights lost most of their weight against the content and TV terms. Factor 2 overshoots: those terms rose 1.5x
to 16.5x. With 1.4 every term of the three presets stayed within 0.60-1.62x of max pooling's, and 200 L-BFGS
evaluations of starry_night at 192 px ended with style / content 0.32 against max pooling's 0.36 (factor 1:
0.22, factor 2: 0.68). ``bench/bench_pooling.py`` measures all of this; the README has the table.

The VJP builder (``nst_core.vjp``) differentiates the rewritten graph with its AveragePool rule, which measures the
runtime's divisor with the forward op itself, so gradient and forward agree by construction.
"""
from __future__ import annotations

import onnx
from onnx import helper

from ..errors import NSTError

__all__ = ["POOLINGS", "AVG_SCALE", "with_pooling", "check_pooling"]

#: Allowed values of the ``pooling`` option.
POOLINGS = ("max", "avg")
#: Factor on every average pool's output with ``pooling="avg"`` (see the module docstring for why and how chosen).
AVG_SCALE = 1.4

_KEEP = ("kernel_shape", "strides", "pads", "ceil_mode", "auto_pad")


def check_pooling(value) -> str:
    """``value`` if it is one of ``POOLINGS``; NSTError (one line) otherwise."""
    if value not in POOLINGS:
        raise NSTError(f"unknown pooling {value!r} (choose {', '.join(POOLINGS)})")
    return value


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _average_node(node: onnx.NodeProto, opset: int) -> onnx.NodeProto:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if len(node.output) > 1 and node.output[1]:
        raise NSTError(f"MaxPool node {node.name!r} has an Indices output; it cannot become an average pool")
    dilations = list(attrs.get("dilations") or [])
    if any(d != 1 for d in dilations) and opset < 19:
        raise NSTError(f"MaxPool node {node.name!r} is dilated; AveragePool needs opset >= 19 for that "
                       f"(the model has {opset})")
    kept = {k: attrs[k] for k in _KEEP if k in attrs}
    if opset >= 19 and dilations:
        kept["dilations"] = dilations
    return helper.make_node("AveragePool", list(node.input[:1]), [node.output[0]],
                            name=(node.name or "pool") + "/avg", count_include_pad=0, **kept)


def with_pooling(model: onnx.ModelProto, pooling: str = "max", scale: float | None = None) -> onnx.ModelProto:
    """The feature model with ``pooling`` ("max": ``model`` itself, unchanged; "avg": a rewritten copy).

    ``model``: an ONNX ModelProto (e.g. ``model.load_model``'s). The copy has the same inputs, outputs,
    initializers and node order; only the op type (and MaxPool-only attributes: storage_order, dilations below
    opset 19) of the pooling nodes change. ``scale`` (default ``AVG_SCALE``) != 1 multiplies every average pool's
    output by it (a Mul node after the pool; the tap keeps its name); ``bench/bench_pooling.py`` passes other
    factors to measure them. Raises NSTError for an unknown ``pooling``.
    """
    check_pooling(pooling)
    if pooling == "max":
        return model
    scale = AVG_SCALE if scale is None else float(scale)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = _opset(out)
    typed = {v.name: v for v in list(out.graph.output) + list(out.graph.value_info)}
    nodes = []
    for n in out.graph.node:
        if n.op_type != "MaxPool":
            nodes.append(n)
            continue
        avg = _average_node(n, opset)
        if scale != 1.0:
            pooled = avg.output[0] + "/unscaled"
            avg.output[0] = pooled
            factor = helper.make_tensor(pooled + "/scale", onnx.TensorProto.FLOAT, [], [float(scale)])
            out.graph.initializer.append(factor)
            if n.output[0] in typed:  # the same shape as the scaled tensor's (for the VJP builder's Mul rule)
                info = out.graph.value_info.add()
                info.CopyFrom(typed[n.output[0]])
                info.name = pooled
            nodes += [avg, helper.make_node("Mul", [pooled, factor.name], [n.output[0]], name=avg.name + "/scale")]
        else:
            nodes.append(avg)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
