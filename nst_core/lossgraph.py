"""The CS231n content and style losses as ONNX nodes with their analytic gradients, joined with the network and its
VJP into ONE model: image -> (content loss, style loss, dL/dx).

The formulas are those of ``nst_core.losses`` (which stays the NumPy reference; tests hold the two together)::

    content   L_c = w_c * sum((F - P)^2)                   dL_c/dF = 2 w_c (F - P)
    Gram      G   = F F^T / N,  N = C*H*W                  F reshaped to [C, H*W]
    style     L_s = sum_l w_l * sum((G_l - A_l)^2)         dL_s/dF_l = (2 w_l / N_l) (D + D^T) F_l,  D = G_l - A_l

Why one model: the loss's matrix products (the Gram matrices and their gradients, 5.6 GFLOP per evaluation at 512 px
with CS231n's layers: more than the network's forward) then run in ONNX Runtime's GEMM on all its threads, next to
the network, instead of in NumPy's BLAS on one thread (two BLAS threads fought ORT's for the cores); and the
feature maps never leave ORT. Measured on the 2-core development machine at 512 px: 252 ms per evaluation vs 305 ms
for the split forward / NumPy / backward path (bench/bench_objective.py has the current numbers).

The model (``objective_model``):
    inputs   image                float32 [1, 3, H, W]   ImageNet-normalised pixels
             content_target       float32, the content tap's shape        (only with a content tap)
             content_weight       float64 []                              (only with a content tap)
             gram.<tap>           float32 [C_l, C_l]   target Gram matrix  (one per style tap)
             style_weight.<tap>   float64 []                              (one per style tap)
    outputs  content_loss         float64 []   (0 without a content tap)
             style_loss           float64 []   (0 without style taps)
             grad_image           float32 [1, 3, H, W]   d(content_loss + style_loss)/d(image)
Feature maps and gradients are float32 (like the network); the sums of squares are accumulated in float64.
Weights are inputs, so one model serves any weights; the sizes H, W stay dynamic.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import vjp

__all__ = ["objective_model", "CONTENT_TARGET", "CONTENT_WEIGHT", "gram_input", "style_weight_input", "OUTPUTS"]

CONTENT_TARGET = "content_target"
CONTENT_WEIGHT = "content_weight"
OUTPUTS = ("content_loss", "style_loss", "grad_image")


def gram_input(tap: str) -> str:
    return f"gram.{tap}"


def style_weight_input(tap: str) -> str:
    return f"style_weight.{tap}"


class _Builder(vjp.Builder):
    """vjp's node emitter, with names of its own ("loss/...") so they cannot meet the backward's ("vjp/...")."""

    def fresh(self, hint: str) -> str:
        return "loss/" + super().fresh(hint).split("/", 1)[1]


def _sum_squares(b: _Builder, t: str) -> str:
    """float64 []: sum(t^2), squared and summed in float64."""
    return b.op("ReduceSumSquare", [b.op("Cast", [t], "f64", to=TensorProto.DOUBLE)], "sumsq", keepdims=0)


def _to_float(b: _Builder, t: str) -> str:
    return b.op("Cast", [t], "f32", to=b.dtype)


def _content(b: _Builder, tap: str) -> tuple[str, str]:
    """(L_c float64 [], dL_c/dF float32) for features `tap`."""
    diff = b.op("Sub", [tap, CONTENT_TARGET], "content_diff")
    loss = b.op("Mul", [_sum_squares(b, diff), CONTENT_WEIGHT], "content_loss")
    scale = _to_float(b, b.op("Add", [CONTENT_WEIGHT, CONTENT_WEIGHT], "two_w"))
    return loss, b.op("Mul", [diff, scale], "content_grad")


def _style(b: _Builder, tap: str) -> tuple[str, str]:
    """(w_l * sum((G - A)^2) float64 [], its gradient w.r.t. F float32) for features `tap` [1, C, H, W]."""
    weight = style_weight_input(tap)
    shape = b.op("Shape", [tap], "shape")
    count = b.op("Cast", [b.op("ReduceProd", [shape], "count", keepdims=0)], "count", to=TensorProto.DOUBLE)
    mat = b.op("Flatten", [tap], "mat", axis=2)  # [C, H*W] for a batch of one
    g = b.op("Gemm", [mat, mat], "gram", transB=1)
    diff = b.op("Sub", [b.op("Div", [g, _to_float(b, count)], "gram"), gram_input(tap)], "gram_diff")
    loss = b.op("Mul", [_sum_squares(b, diff), weight], "style_loss")
    scale = _to_float(b, b.op("Div", [b.op("Add", [weight, weight], "two_w"), count], "scale"))
    coeff = b.op("Mul", [b.op("Add", [diff, b.op("Transpose", [diff], "diff_t")], "sym"), scale], "coeff")
    grad = b.op("Reshape", [b.op("Gemm", [coeff, mat], "style_grad"), shape], "style_grad")
    return loss, grad


def _scalar(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.DOUBLE, [])


def objective_model(model: onnx.ModelProto, content_tap: Optional[str], style_taps: Sequence[str],
                    input_name: str = "image", maxpool: str = "scatter") -> onnx.ModelProto:
    """The one-model objective (see the module docstring) of the feature model `model`.

    content_tap: the tap (output name, e.g. 'features.3') of the content loss, or None; style_taps: the taps of the
    style loss (may be empty, not both). A tap may be both. maxpool: the MaxPool backward (``vjp.build_vjp``)."""
    style_taps = list(dict.fromkeys(style_taps))
    taps = list(dict.fromkeys(([content_tap] if content_tap else []) + style_taps))
    if not taps:
        raise ValueError("objective_model needs a content tap or a style tap")
    v = vjp.build_vjp(model, taps, input_name, maxpool=maxpool)
    m = vjp.vjp_model(v)
    graph = m.graph
    declared = {i.name: i for i in graph.input}

    b = _Builder(v.dtype, {}, {})
    cotangents: dict[str, list[str]] = {t: [] for t in taps}
    inputs = [declared[input_name]]
    content_loss = style_loss = None
    if content_tap:
        content_loss, g = _content(b, content_tap)
        cotangents[content_tap].append(g)
        target = onnx.ValueInfoProto()
        target.CopyFrom(declared.get(vjp.grad_name(content_tap)) or helper.make_tensor_value_info(
            content_tap, v.dtype, [None] * 4))
        target.name = CONTENT_TARGET
        inputs += [target, _scalar(CONTENT_WEIGHT)]
    style_parts = []
    for tap in style_taps:
        loss, g = _style(b, tap)
        style_parts.append(loss)
        cotangents[tap].append(g)
        channels = (v.shapes.get(tap) or [None, None])[1]
        inputs += [helper.make_tensor_value_info(gram_input(tap), v.dtype, [channels, channels]),
                   _scalar(style_weight_input(tap))]
    zero = b.const(0.0, dtype=np.float64)
    if style_parts:
        style_loss = style_parts[0] if len(style_parts) == 1 else b.op("Sum", style_parts, "style_loss")
    finals = [helper.make_node("Identity", [content_loss or zero], [OUTPUTS[0]], name=OUTPUTS[0]),
              helper.make_node("Identity", [style_loss or zero], [OUTPUTS[1]], name=OUTPUTS[1])]
    for tap in taps:  # the backward reads grad_<tap> for the taps that depend on the image
        if vjp.grad_name(tap) in v.grad_inputs:
            parts = cotangents[tap]
            finals.append(helper.make_node("Sum" if len(parts) > 1 else "Identity", parts, [vjp.grad_name(tap)],
                                           name=vjp.grad_name(tap)))

    n_forward = len(v.forward_nodes)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes[:n_forward] + b.nodes + finals + nodes[n_forward:])
    del graph.input[:]
    graph.input.extend(inputs)
    grad_out = [o for o in graph.output if o.name == OUTPUTS[2]]
    del graph.output[:]
    graph.output.extend([_scalar(OUTPUTS[0]), _scalar(OUTPUTS[1])] + grad_out)
    graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in b.constants.items())
    m.producer_name = "nst_core.lossgraph"
    return m
