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
Weights are inputs, so one model serves any weights; the sizes H, W stay dynamic. With ``tv=True`` (what
``make_objective`` runs) the TV term is inside too: input ``tv_weight`` float64 [], output ``tv_loss`` float64 []
(``OUTPUTS_TV``), its differences float32 (``_tv_by_convs``), per-pixel float32 sums of their squares summed in
float64, and dTV/dx added into ``grad_image``.

``objective_model_f32`` is the same objective with NO float64 tensor anywhere (for ORT builds without double
kernels: WebAssembly, mobile), TV inside the graph and the total as an output; ``targets_model`` computes the loss
targets (content features, style Gram matrices) as ONNX. Both are what ``nst bundle`` writes (``nst_core.bundle``)::

    objective_model_f32
    inputs   image, content_target, gram.<tap>      as above
             content_weight, style_weight.<tap>, tv_weight     float32 []
    outputs  loss, content_loss, style_loss, tv_loss           float32 []
             grad_image                                        float32 [1, 3, H, W]   dloss/dimage
    targets_model
    inputs   content_image  float32 [1, 3, H, W]      (only with a content tap)
             style_image    float32 [1, 3, Hs, Ws]    (only with style taps)
    outputs  content_target (the content tap's features), gram.<tap> float32 [C_l, C_l] (G = F F^T / (C H W))

Its sums of squares are float32, accumulated as a tree (``_sum_squares_f32``): on 2.8M random values (the content
tap's size at 512 px) ORT's plain float32 ReduceSumSquare was 1.1e-4 off the float64 sum (1.4e-3 on 11M, the size at
1024 px), the tree within 1.2e-7 (tests/test_bundle.py; bench/bench_bundle.py measures the whole objective).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import vjp

__all__ = ["objective_model", "objective_model_f32", "targets_model", "CONTENT_TARGET", "CONTENT_WEIGHT",
           "TV_WEIGHT", "gram_input", "style_weight_input", "OUTPUTS", "OUTPUTS_TV", "OUTPUTS_F32", "CONTENT_IMAGE",
           "STYLE_IMAGE"]

CONTENT_TARGET = "content_target"
CONTENT_WEIGHT = "content_weight"
TV_WEIGHT = "tv_weight"
OUTPUTS = ("content_loss", "style_loss", "grad_image")
OUTPUTS_TV = ("content_loss", "style_loss", "tv_loss", "grad_image")  # objective_model(..., tv=True)
OUTPUTS_F32 = ("loss", "content_loss", "style_loss", "tv_loss", "grad_image")
CONTENT_IMAGE = "content_image"
STYLE_IMAGE = "style_image"
#: The float32 tree sum: each level adds blocks of SUM_BLOCK values (zero-padded); SUM_LEVELS levels, then the rest.
SUM_BLOCK = 16
SUM_LEVELS = 6


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


def _sum_squares_f32(b: _Builder, t: str) -> str:
    """float32 []: sum(t^2) for t of any shape, in float32 as a tree of partial sums: t flattened, zero-padded to
    a multiple of SUM_BLOCK, each block of SUM_BLOCK squares summed, and the same for the partial sums, SUM_LEVELS
    levels (exact up to 16^6 = 16.7M values; beyond, the last level adds what is left). Every value then passes
    through about SUM_BLOCK * SUM_LEVELS additions instead of up to N, so the rounding error stays near one ulp of
    the sum; the order is fixed by the graph, not by the kernel."""
    block = b.ints([SUM_BLOCK])
    cur = b.op("Reshape", [t, b.ints([-1])], "flat")
    for level in range(SUM_LEVELS):
        n = b.op("Shape", [cur], "n")
        rows = b.op("Div", [b.op("Add", [n, b.ints([SUM_BLOCK - 1])], "n"), block], "rows")
        pad = b.op("Sub", [b.op("Mul", [rows, block], "n"), n], "pad")
        padded = b.op("Pad", [cur, b.op("Concat", [b.ints([0]), pad], "pads", axis=0)], "padded")
        blocks = b.op("Reshape", [padded, b.ints([-1, SUM_BLOCK])], "blocks")
        cur = b.op("ReduceSumSquare" if level == 0 else "ReduceSum", [blocks, b.ints([1])], "partial", keepdims=0)
    return b.op("ReduceSum", [cur], "sumsq", keepdims=0)


def _to_float(b: _Builder, t: str) -> str:
    return b.op("Cast", [t], "f32", to=b.dtype)


def _content(b: _Builder, tap: str, f32: bool = False) -> tuple[str, str]:
    """(L_c [], dL_c/dF float32) for features `tap`; L_c float64 (float32 with ``f32``: no float64 at all)."""
    diff = b.op("Sub", [tap, CONTENT_TARGET], "content_diff")
    loss = b.op("Mul", [(_sum_squares_f32 if f32 else _sum_squares)(b, diff), CONTENT_WEIGHT], "content_loss")
    scale = b.op("Add", [CONTENT_WEIGHT, CONTENT_WEIGHT], "two_w")
    return loss, b.op("Mul", [diff, scale if f32 else _to_float(b, scale)], "content_grad")


def _style(b: _Builder, tap: str, f32: bool = False, zero: Optional[str] = None) -> tuple[str, str]:
    """(w_l * sum((G - A)^2) [], its gradient w.r.t. F float32) for features `tap` [1, C, H, W]; the loss float64
    (float32 with ``f32``). zero: a scalar 0 (``vjp.Builder.zero_after``) that the gradient waits for."""
    weight = style_weight_input(tap)
    shape = b.op("Shape", [tap], "shape")
    count = b.op("Cast", [b.op("ReduceProd", [shape], "count", keepdims=0)], "count",
                 to=b.dtype if f32 else TensorProto.DOUBLE)
    mat = b.op("Flatten", [tap], "mat", axis=2)  # [C, H*W] for a batch of one
    g = b.op("Gemm", [mat, mat], "gram", transB=1)
    diff = b.op("Sub", [b.op("Div", [g, count if f32 else _to_float(b, count)], "gram"), gram_input(tap)],
                "gram_diff")
    loss = b.op("Mul", [(_sum_squares_f32 if f32 else _sum_squares)(b, diff), weight], "style_loss")
    scale = b.op("Div", [b.op("Add", [weight, weight], "two_w"), count], "scale")
    scale = scale if f32 else _to_float(b, scale)
    coeff = b.op("Mul", [b.op("Add", [diff, b.op("Transpose", [diff], "diff_t")], "sym"), scale], "coeff")
    if zero:
        coeff = b.op("Add", [coeff, zero], "coeff")
    grad = b.op("Reshape", [b.op("Gemm", [coeff, mat], "style_grad"), shape], "style_grad")
    return loss, grad


def _scalar(name: str, dtype: int = TensorProto.DOUBLE) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, [])


def _tv(b: _Builder, image: str) -> tuple[str, str]:
    """(w_t * (sum dv^2 + sum dh^2) float32 [], its gradient w.r.t. the image float32 [1, 3, H, W]), dv / dh the
    vertical / horizontal neighbour differences (nst_core.losses.tv_loss's formula), weight input ``tv_weight``."""
    big = np.iinfo(np.int64).max
    parts, grads = [], []
    for axis in (2, 3):
        diff = b.op("Sub", [b.op("Slice", [image, b.ints([1]), b.ints([big]), b.ints([axis])], "next"),
                            b.op("Slice", [image, b.ints([0]), b.ints([-1]), b.ints([axis])], "prev")], "tv_diff")
        parts.append(_sum_squares_f32(b, diff))
        before, after = [0] * 8, [0] * 8
        before[axis], after[4 + axis] = 1, 1
        grads.append(b.op("Sub", [b.op("Pad", [diff, b.ints(before)], "to_next"),
                                  b.op("Pad", [diff, b.ints(after)], "to_prev")], "tv_grad"))
    loss = b.op("Mul", [b.op("Add", parts, "tv_sum"), TV_WEIGHT], "tv_loss")
    scale = b.op("Add", [TV_WEIGHT, TV_WEIGHT], "two_w")
    return loss, b.op("Mul", [b.op("Add", grads, "tv_grad"), scale], "tv_grad")


def _tv_by_convs(b: _Builder, image: str, after: Optional[str] = None) -> tuple[str, str]:
    """TV for the float64-summed objective: (w_t * (sum dv^2 + sum dh^2) float64 [], its gradient float32
    [1, 3, H, W]) in two grouped Convs. The image is extended by its own last row and column (Pad, edge), so one
    2x2 Conv gives each channel's dv and dh (-1 / +1 taps: each difference rounded once, as a Sub would) with an
    exact zero where a neighbour is missing; each pixel's six squares are summed in float32, those sums in float64.
    The gradient, 2w (dv[i-1, j] -
    dv[i, j] + dh[i, j-1] - dh[i, j]) (missing terms zero), is the second Conv (zero padding before) with the
    weights scaled by 2w. Fewer, larger kernels than Slice / Sub / Pad (bench/bench_bundle.py, DESIGN-NOTES).
    after: a tensor that must exist before TV starts (``vjp.Builder.zero_after``, fed to the edge Pad's unused
    constant_value input): TV's image-sized tensors then live after the backward, not through it."""
    channels = 3
    diff_w = np.zeros((2 * channels, 1, 2, 2), b.np_dtype)  # out 2c: x[i+1, j] - x[i, j]; 2c+1: x[i, j+1] - x[i, j]
    grad_w = np.zeros((channels, 2, 2, 2), b.np_dtype)  # in (dv, dh) of channel c -> dTV/dx of channel c / 2w
    for c in range(channels):
        diff_w[2 * c, 0] = [[-1, 0], [1, 0]]
        diff_w[2 * c + 1, 0] = [[-1, 1], [0, 0]]
        grad_w[c] = [[[0, 1], [0, -1]], [[0, 0], [1, -1]]]
    wait = [b.zero_after(after)] if after else []
    extended = b.op("Pad", [image, b.ints([0, 0, 0, 0, 0, 0, 1, 1]), *wait], "edge", mode="edge")
    diffs = b.op("Conv", [extended, b.const(diff_w, hint="tv_diff_w")], "tv_diff", group=channels,
                 kernel_shape=[2, 2])
    # Each pixel's 6 squares summed in float32 (ReduceSumSquare over the channels: 7 roundings at most, 4e-7 relative),
    # the image-sized rest in float64: no float64 copy of the differences (that Cast and its sum were 11 of TV's
    # 19 ms in ORT's profile at 512 px).
    per_pixel = b.op("ReduceSumSquare", [diffs, b.ints([1])], "tv_sumsq", keepdims=0)
    total = b.op("ReduceSum", [b.op("Cast", [per_pixel], "f64", to=TensorProto.DOUBLE)], "tv_sum", keepdims=0)
    loss = b.op("Mul", [total, TV_WEIGHT], "tv_loss")
    scale = _to_float(b, b.op("Add", [TV_WEIGHT, TV_WEIGHT], "two_w"))
    weights = b.op("Mul", [b.const(grad_w, hint="tv_grad_w"), scale], "tv_grad_w")
    return loss, b.op("Conv", [diffs, weights], "tv_grad", group=channels, kernel_shape=[2, 2], pads=[1, 1, 0, 0])


def objective_model(model: onnx.ModelProto, content_tap: Optional[str], style_taps: Sequence[str],
                    input_name: str = "image", maxpool: str = "scatter", tv: bool = False) -> onnx.ModelProto:
    """The one-model objective (see the module docstring) of the feature model `model`.

    content_tap: the tap (output name, e.g. 'features.3') of the content loss, or None; style_taps: the taps of the
    style loss (may be empty, not both). A tap may be both. maxpool: the MaxPool backward (``vjp.build_vjp``).
    tv: also the TV term (``OUTPUTS_TV``): input ``tv_weight`` float64 [], output ``tv_loss`` float64 [] (float32
    neighbour differences of the image, per-pixel float32 sums of squares summed in float64), and ``grad_image``
    includes dTV/dx."""
    return _assemble(model, content_tap, style_taps, input_name, maxpool, f32=False, tv=tv)


def objective_model_f32(model: onnx.ModelProto, content_tap: Optional[str], style_taps: Sequence[str],
                        input_name: str = "image", maxpool: str = "scatter") -> onnx.ModelProto:
    """``objective_model`` without float64: float32 weights and losses (tree-summed), the TV term inside and the
    total ``loss`` as an output (``OUTPUTS_F32``, see the module docstring). Same arguments."""
    return _assemble(model, content_tap, style_taps, input_name, maxpool, f32=True, tv=True)


def _assemble(model: onnx.ModelProto, content_tap: Optional[str], style_taps: Sequence[str], input_name: str,
              maxpool: str, f32: bool, tv: bool) -> onnx.ModelProto:
    style_taps = list(dict.fromkeys(style_taps))
    taps = list(dict.fromkeys(([content_tap] if content_tap else []) + style_taps))
    if not taps:
        raise ValueError("objective_model needs a content tap or a style tap")
    v = vjp.build_vjp(model, taps, input_name, maxpool=maxpool)
    m = vjp.vjp_model(v)
    graph = m.graph
    declared = {i.name: i for i in graph.input}
    weight_type = v.dtype if f32 else TensorProto.DOUBLE

    b = _Builder(v.dtype, {}, {})
    cotangents: dict[str, list[str]] = {t: [] for t in taps}
    inputs = [declared[input_name]]
    content_loss = style_loss = None
    if content_tap:
        content_loss, g = _content(b, content_tap, f32)
        cotangents[content_tap].append(g)
        target = onnx.ValueInfoProto()
        target.CopyFrom(declared.get(vjp.grad_name(content_tap)) or helper.make_tensor_value_info(
            content_tap, v.dtype, [None] * 4))
        target.name = CONTENT_TARGET
        inputs += [target, _scalar(CONTENT_WEIGHT, weight_type)]
    style_parts = []
    for tap in style_taps:
        # The gradient (a tensor of F's size) is computed when the backward reaches the tap, not with the loss
        # values before the backward starts; where the backward starts, after the content loss's sum (its F - P
        # is then freed first). Without this, ONNX Runtime held them all through the backward (bench_memory.py).
        ready = v.ready.get(vjp.grad_name(tap))
        zero = b.zero_after(ready) if ready else (b.zero_after_value(content_loss) if content_loss else None)
        loss, g = _style(b, tap, f32, zero)
        style_parts.append(loss)
        cotangents[tap].append(g)
        channels = (v.shapes.get(tap) or [None, None])[1]
        inputs += [helper.make_tensor_value_info(gram_input(tap), v.dtype, [channels, channels]),
                   _scalar(style_weight_input(tap), weight_type)]
    zero = b.const(0.0, dtype=helper.tensor_dtype_to_np_dtype(weight_type))
    if style_parts:
        style_loss = style_parts[0] if len(style_parts) == 1 else b.op("Sum", style_parts, "style_loss")
    finals = [helper.make_node("Identity", [content_loss or zero], ["content_loss"], name="content_loss"),
              helper.make_node("Identity", [style_loss or zero], ["style_loss"], name="style_loss")]
    for tap in taps:  # the backward reads grad_<tap> for the taps that depend on the image
        if vjp.grad_name(tap) in v.grad_inputs:
            parts = cotangents[tap]
            finals.append(helper.make_node("Sum" if len(parts) > 1 else "Identity", parts, [vjp.grad_name(tap)],
                                           name=vjp.grad_name(tap)))

    n_forward = len(v.forward_nodes)
    nodes = list(graph.node)
    tail = []
    if tv:  # TV on the image and dTV/dx added to the network's gradient (and with f32, the total)
        for node in nodes[n_forward:]:
            node.output[:] = ["loss/grad_network" if o == "grad_image" else o for o in node.output]
        tv_loss, tv_grad = _tv(b, input_name) if f32 else _tv_by_convs(b, input_name, after="loss/grad_network")
        inputs.append(_scalar(TV_WEIGHT, weight_type))
        finals.append(helper.make_node("Identity", [tv_loss], ["tv_loss"], name="tv_loss"))
        if f32:
            total = b.op("Sum", [content_loss or zero, style_loss or zero, tv_loss], "total")
            finals.append(helper.make_node("Identity", [total], ["loss"], name="loss"))
        tail = [helper.make_node("Add", ["loss/grad_network", tv_grad], ["grad_image"], name="grad_image_total")]
    del graph.node[:]
    graph.node.extend(_topological(nodes[:n_forward] + b.nodes + finals + nodes[n_forward:] + tail))
    del graph.input[:]
    graph.input.extend(inputs)
    grad_out = [o for o in graph.output if o.name == OUTPUTS[2]]
    del graph.output[:]
    names = OUTPUTS_F32[:-1] if f32 else OUTPUTS_TV[:-1] if tv else OUTPUTS[:-1]
    graph.output.extend([_scalar(n, weight_type) for n in names] + grad_out)
    used = {i for n in graph.node for i in n.input}
    graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in b.constants.items() if n in used)
    m.producer_name = "nst_core.lossgraph"
    return m


def _topological(nodes: list) -> list:
    """``nodes`` in an order where every node comes after the producers of its inputs, keeping the given order
    where it already is one (a style gradient that waits for a backward tensor moves behind its producer)."""
    produced = {o for n in nodes for o in n.output}
    done, out, waiting = set(), [], list(nodes)
    while waiting:
        still = []
        for n in waiting:
            if all(i in done or i not in produced for i in n.input):
                out.append(n)
                done.update(n.output)
            else:
                still.append(n)
        if len(still) == len(waiting):
            raise ValueError("the objective graph has a cycle")
        waiting = still
    return out


def _copy_forward(model: onnx.ModelProto, taps: Sequence[str], input_name: str, image: str,
                  prefix: str) -> list[onnx.NodeProto]:
    """The nodes of `model` that the outputs `taps` need, with the input renamed to `image` and every other
    computed tensor prefixed by `prefix` (so that two copies, one per image, live in one graph and share weights)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    needed, stack = set(), list(taps)
    while stack:
        t = stack.pop()
        if t not in needed:
            needed.add(t)
            if t in producer:
                stack.extend(i for i in producer[t].input if i)
    computed = {o for n in model.graph.node for o in n.output}

    def rename(t: str) -> str:
        return image if t == input_name else (prefix + t if t in computed else t)

    out = []
    for n in model.graph.node:
        if any(o in needed for o in n.output):
            c = onnx.NodeProto()
            c.CopyFrom(n)
            c.input[:] = [rename(i) if i else i for i in n.input]
            c.output[:] = [rename(o) if o else o for o in n.output]
            c.name = prefix + n.name
            out.append(c)
    return out


def targets_model(model: onnx.ModelProto, content_tap: Optional[str], style_taps: Sequence[str],
                  input_name: str = "image") -> onnx.ModelProto:
    """The loss targets as one float32 model (module docstring): ``content_image`` -> ``content_target`` (the
    features at `content_tap`), ``style_image`` -> ``gram.<tap>`` for each of `style_taps`, G = F F^T / (C H W)
    (``nst_core.losses.gram``). The two images may differ in size; an input is present only if its taps are."""
    style_taps = list(dict.fromkeys(style_taps))
    if not content_tap and not style_taps:
        raise ValueError("targets_model needs a content tap or a style tap")
    declared = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    dtype = declared[input_name].type.tensor_type.elem_type
    b = _Builder(dtype, {}, {})
    nodes, inputs, outs = [], [], []

    def image_input(name: str, dims: Sequence) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, dtype, list(dims))

    if content_tap:
        nodes += _copy_forward(model, [content_tap], input_name, CONTENT_IMAGE, "content/")
        inputs.append(image_input(CONTENT_IMAGE, [1, 3, "H", "W"]))
        nodes.append(helper.make_node("Identity", ["content/" + content_tap], [CONTENT_TARGET], name=CONTENT_TARGET))
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(outputs[content_tap])
        vi.name = CONTENT_TARGET
        outs.append(vi)
    if style_taps:
        nodes += _copy_forward(model, style_taps, input_name, STYLE_IMAGE, "style/")
        inputs.append(image_input(STYLE_IMAGE, [1, 3, "H_style", "W_style"]))
        for tap in style_taps:
            feats = "style/" + tap
            count = b.op("Cast", [b.op("ReduceProd", [b.op("Shape", [feats], "shape")], "count", keepdims=0)],
                         "count", to=dtype)
            mat = b.op("Flatten", [feats], "mat", axis=2)
            g = b.op("Div", [b.op("Gemm", [mat, mat], "gram", transB=1), count], "gram")
            b.nodes.append(helper.make_node("Identity", [g], [gram_input(tap)], name=gram_input(tap)))
            channels = outputs[tap].type.tensor_type.shape.dim[1].dim_value or None
            outs.append(helper.make_tensor_value_info(gram_input(tap), dtype, [channels, channels]))
    used = {i for n in nodes + b.nodes for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    inits += [numpy_helper.from_array(a, n) for n, a in b.constants.items()]
    graph = helper.make_graph(nodes + b.nodes, "targets", inputs, outs, initializer=inits)
    m = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="nst_core.lossgraph")
    m.ir_version = model.ir_version
    for prop in model.metadata_props:
        m.metadata_props.add(key=prop.key, value=prop.value)
    return m
