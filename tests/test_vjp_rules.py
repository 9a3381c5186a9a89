"""Each VJP rule on its own: small random one-op graphs run through our backward graph in ONNX Runtime (float32)
against torch autograd in float64. Bound: relative L2 error <= 1e-5."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from nst_core.network import vjp

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = 1e-5


def rel_l2(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def one_op_model(op_type, x_shape, inputs=(), attrs=None, n_inputs_extra=(), opset=18):
    """A model image -> op(image, *extra) -> out. `inputs` are (name, array) constants as initializers."""
    x_info = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", "C", "H", "W"][:len(x_shape)])
    node = helper.make_node(op_type, ["image"] + [n for n, _ in inputs], ["out"], **(attrs or {}))
    graph = helper.make_graph([node], "t", [x_info], [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(a.astype(np.float32), n) for n, a in inputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_vjp(model, x, g, taps=("out",), maxpool="scatter"):
    """grad_image from the self-contained VJP model, and from the split forward/backward pair (must agree)."""
    v = vjp.build_vjp(model, list(taps), maxpool=maxpool)
    full = vjp.vjp_model(v)
    onnx.checker.check_model(full, full_check=True)
    feeds = {"image": x.astype(np.float32)}
    feeds.update({vjp.grad_name(t): gi.astype(np.float32) for t, gi in zip(taps, g)})
    sess = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    gx = sess.run(["grad_image"], feeds)[0]
    fwd, bwd = vjp.split_models(v)
    onnx.checker.check_model(fwd, full_check=True)
    onnx.checker.check_model(bwd, full_check=True)
    fs = ort.InferenceSession(fwd.SerializeToString(), providers=["CPUExecutionProvider"])
    bs = ort.InferenceSession(bwd.SerializeToString(), providers=["CPUExecutionProvider"])
    fo = dict(zip([o.name for o in fwd.graph.output], fs.run(None, {"image": feeds["image"]})))
    bfeeds = {i.name: (fo[i.name] if i.name in fo else feeds[i.name]) for i in bwd.graph.input}
    gx_split = bs.run(["grad_image"], bfeeds)[0]
    np.testing.assert_array_equal(gx, gx_split)
    for n in full.graph.node:
        assert n.domain in ("", "ai.onnx"), n
    return gx, fo


def torch_vjp(fn, x, g):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = fn(xt)
    y.backward(torch.tensor(g, dtype=torch.float64))
    return y.detach().numpy(), xt.grad.numpy()


def check(model, fn, x_shape, seed=0, forward_tol=1e-5, maxpool="scatter"):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    with torch.no_grad():
        g = rng.standard_normal(fn(torch.tensor(x, dtype=torch.float64)).shape)
    gx, fo = run_vjp(model, x, [g], maxpool=maxpool)
    y_ref, gx_ref = torch_vjp(fn, x, g)
    assert fo["out"].shape == y_ref.shape, "forward semantics differ from torch's"
    assert rel_l2(fo["out"], y_ref) <= forward_tol
    err = rel_l2(gx, gx_ref)
    assert err <= RTOL, f"relative L2 error {err:.2e}"
    return err


CONV_CASES = [  # (cin, cout, k, stride, pad, dilation, groups, H, W)
    (3, 4, 3, 1, 0, 1, 1, 9, 8),
    (3, 5, 3, 1, 1, 1, 1, 8, 7),
    (4, 6, 3, 2, 0, 1, 1, 9, 9),
    (4, 6, 3, 2, 0, 1, 1, 10, 8),
    (4, 6, 3, 2, 1, 1, 2, 11, 10),
    (6, 6, 3, 1, 1, 1, 6, 7, 8),
    (4, 4, 3, 1, 2, 2, 1, 9, 10),
    (3, 4, 1, 1, 0, 1, 1, 5, 6),
    (3, 4, 5, 3, 1, 1, 1, 13, 12),
    (2, 3, (3, 2), (2, 1), (1, 0), 1, 1, 9, 8),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv(case):
    cin, cout, k, s, p, d, groups, h, w = case
    k = (k, k) if isinstance(k, int) else k
    s = (s, s) if isinstance(s, int) else s
    p = (p, p) if isinstance(p, int) else p
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((cout, cin // groups, *k)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    model = one_op_model("Conv", (1, cin, h, w), [("W", weight), ("B", bias)],
                         dict(kernel_shape=list(k), strides=list(s), pads=[p[0], p[1], p[0], p[1]],
                              dilations=[d, d], group=groups))
    wt, bt = torch.tensor(weight, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64)
    check(model, lambda x: F.conv2d(x, wt, bt, stride=s, padding=p, dilation=d, groups=groups), (1, cin, h, w))


def test_conv_asymmetric_pads():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    for s in (1, 2):
        model = one_op_model("Conv", (1, 2, 9, 8), [("W", weight)],
                             dict(kernel_shape=[3, 3], strides=[s, s], pads=[0, 1, 2, 0]))
        wt = torch.tensor(weight, dtype=torch.float64)
        check(model, lambda x: F.conv2d(F.pad(x, (1, 0, 0, 2)), wt, stride=s), (1, 2, 9, 8))


def test_relu():
    check(one_op_model("Relu", (1, 3, 7, 6)), torch.relu, (1, 3, 7, 6))


POOL_CASES = [  # (k, stride, pad, ceil_mode, H, W)
    (3, 2, 0, 1, 9, 9),
    (3, 2, 0, 1, 10, 8),
    (3, 2, 0, 0, 10, 11),
    (3, 2, 1, 0, 8, 9),
    (3, 2, 1, 1, 8, 9),
    (2, 2, 0, 0, 8, 8),
    (2, 2, 0, 1, 7, 9),
    (3, 1, 1, 0, 6, 7),
    (3, 1, 0, 0, 6, 7),
    (4, 3, 1, 1, 11, 10),
    ((3, 2), (2, 1), (1, 0), 0, 9, 8),
]


def _pool_attrs(k, s, p, ceil):
    k = (k, k) if isinstance(k, int) else k
    s = (s, s) if isinstance(s, int) else s
    p = (p, p) if isinstance(p, int) else p
    return k, s, p, dict(kernel_shape=list(k), strides=list(s), pads=[p[0], p[1], p[0], p[1]], ceil_mode=ceil)


@pytest.mark.parametrize("maxpool", vjp.MAXPOOL_MODES)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool(case, maxpool):
    k, s, p, attrs = _pool_attrs(*case[:4])
    shape = (2, 3, case[4], case[5])
    model = one_op_model("MaxPool", shape, attrs=attrs)
    check(model, lambda x: F.max_pool2d(x, k, s, p, ceil_mode=bool(case[3])), shape, maxpool=maxpool)


@pytest.mark.parametrize("maxpool", vjp.MAXPOOL_MODES)
def test_max_pool_dilation(maxpool):
    model = one_op_model("MaxPool", (1, 2, 11, 10), attrs=dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 2]))
    check(model, lambda x: F.max_pool2d(x, 3, 2, dilation=2), (1, 2, 11, 10), maxpool=maxpool)


@pytest.mark.parametrize("maxpool", vjp.MAXPOOL_MODES)
def test_max_pool_ties_go_to_first_element(maxpool):
    """Equal values in a window: the whole gradient goes to the first (row-major) maximum, as in torch."""
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 1:4, 1:4] = 1.0  # plateaus shared by overlapping windows
    x[0, 0, 0, 0] = 1.0
    model = one_op_model("MaxPool", x.shape, attrs=dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1))
    g = np.arange(1, 5, dtype=np.float64).reshape(1, 1, 2, 2)
    gx, _ = run_vjp(model, x, [g], maxpool=maxpool)
    _, ref = torch_vjp(lambda t: F.max_pool2d(t, 3, 2, ceil_mode=True), x, g)
    np.testing.assert_allclose(gx, ref, rtol=0, atol=1e-6)
    assert gx.sum() == pytest.approx(g.sum())  # each window hands out its gradient exactly once


@pytest.mark.parametrize("maxpool", vjp.MAXPOOL_MODES)
@pytest.mark.parametrize("pads", [0, 1])
def test_max_pool_ties_at_the_ragged_edge(maxpool, pads):
    """Flat regions (exact ties between positive values, as a flat image region gives after a ReLU) and windows
    that run past the input (ceil_mode, even sizes): each window's gradient goes to its first maximum in row-major
    order, exactly as torch's, also across planes (N=2, C=2: flat indices)."""
    rng = np.random.default_rng(10)
    x = rng.integers(0, 3, (2, 2, 8, 6)).astype(np.float32)  # small integers: many ties, positive and zero
    x[0, 0] = 1.0  # a constant plane: every window is one tie
    x[1, 1, :, 3:] = 2.0  # a plateau reaching the ragged right and bottom edges
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[pads] * 4, ceil_mode=1)
    model = one_op_model("MaxPool", x.shape, attrs=attrs)
    fn = lambda t: F.max_pool2d(t, 3, 2, pads, ceil_mode=True)
    g = rng.integers(1, 9, fn(torch.tensor(x)).shape).astype(np.float64)  # exact in float32 whatever the routing
    gx, fo = run_vjp(model, x, [g], maxpool=maxpool)
    y_ref, ref = torch_vjp(fn, x, g)
    assert fo["out"].shape == y_ref.shape
    np.testing.assert_array_equal(gx, ref)


def _pool_after_relu(taps, second_pool=False, fan_out=False):
    """image -> Relu -> r -> MaxPool(3, 2, ceil) -> p (+ r -> MaxPool(2, 2) -> q, + r -> Conv 1x1 -> c)."""
    nodes = [helper.make_node("Relu", ["image"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)]
    inits = {}
    if second_pool:
        nodes.append(helper.make_node("MaxPool", ["r"], ["q"], kernel_shape=[2, 2], strides=[2, 2]))
    if fan_out:
        inits["w"] = np.random.default_rng(11).standard_normal((4, 3, 1, 1)).astype(np.float32)
        nodes.append(helper.make_node("Conv", ["r", "w"], ["c"], kernel_shape=[1, 1]))
    x_info = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"])
    graph = helper.make_graph(nodes, "t", [x_info], [helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                                                     for t in taps],
                              initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    def fn(xt):
        r = torch.relu(xt)
        out = {"r": r, "p": F.max_pool2d(r, 3, 2, ceil_mode=True), "q": F.max_pool2d(r, 2, 2)}
        if fan_out:
            out["c"] = F.conv2d(r, torch.tensor(inits["w"], dtype=torch.float64))
        return [out[t] for t in taps]
    return model, fn


@pytest.mark.parametrize("maxpool", vjp.MAXPOOL_MODES)
@pytest.mark.parametrize("taps", [("p",), ("r", "p"), ("p", "q"), ("r", "p", "q", "c")],
                         ids=["pool_only", "pool_input_tapped", "two_pools", "tap_pools_and_conv"])
def test_max_pool_gradient_adds_to_other_contributions(maxpool, taps):
    """The pool input's cotangent is the pool's scatter plus whatever else reaches it: nothing (scattered into
    zeros), its own tap's cotangent (scattered into that, no zeros and no Sum), a second pool (two scatters),
    a tap and a Conv (scattered into their sum). Plateaus of positive values make ties."""
    model, fn = _pool_after_relu(taps, second_pool="q" in taps, fan_out="c" in taps)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 3, 9, 10)).astype(np.float32)
    x[0, :, 2:7, 3:8] = 0.5
    with torch.no_grad():
        shapes = [o.shape for o in fn(torch.tensor(x, dtype=torch.float64))]
    g = [rng.standard_normal(s) for s in shapes]
    gx, _ = run_vjp(model, x, g, taps=taps, maxpool=maxpool)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    sum((o * torch.tensor(gi)).sum() for o, gi in zip(fn(xt), g)).backward()
    assert rel_l2(gx, xt.grad.numpy()) <= RTOL
    if maxpool == "scatter":
        ops = [n.op_type for n in vjp.build_vjp(model, list(taps)).backward_nodes]
        assert ops.count("ScatterElements") == 1 + ("q" in taps)
        assert ("ConstantOfShape" in ops) == (taps == ("p",) or taps == ("p", "q"))  # zeros only with no other
        assert "Sum" not in ops or "c" in taps  # a tap's cotangent is scattered into, not summed with


def test_max_pool_on_the_image_with_another_use():
    """The pool reads the image itself, which another op also reads: the scatter lands in grad_image's sum."""
    nodes = [helper.make_node("MaxPool", ["image"], ["p"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             helper.make_node("Relu", ["image"], ["r"])]
    x_info = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2, 7, 8])
    graph = helper.make_graph(nodes, "t", [x_info], [helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                                                     for t in ("p", "r")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1, 2, 7, 8)).astype(np.float32)
    gp, gr = rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 2, 7, 8))  # 3 x 4 windows, ceil_mode
    gx, _ = run_vjp(model, x, [gp, gr], taps=("p", "r"))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ((F.max_pool2d(xt, 3, 2, ceil_mode=True) * torch.tensor(gp)).sum() + (torch.relu(xt) * torch.tensor(gr)).sum()
     ).backward()
    assert rel_l2(gx, xt.grad.numpy()) <= RTOL
    ops = [n.op_type for n in vjp.build_vjp(model, ["p", "r"]).backward_nodes]
    assert "ConstantOfShape" not in ops and "Sum" not in ops


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("include_pad", [0, 1])
def test_average_pool(case, include_pad):
    k, s, p, attrs = _pool_attrs(*case[:4])
    if max(p) * 2 > min(k):
        pytest.skip("torch requires pad <= kernel/2")
    shape = (1, 3, case[4], case[5])
    model = one_op_model("AveragePool", shape, attrs=dict(attrs, count_include_pad=include_pad))
    check(model, lambda x: F.avg_pool2d(x, k, s, p, ceil_mode=bool(case[3]), count_include_pad=bool(include_pad)),
          shape)


@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("ceil", [0, 1])
def test_average_pool_is_adjoint_of_ort_forward(include_pad, ceil):
    """AveragePool is linear, so <g, A x> = <A^T g, x> must hold against ORT's own forward, whatever divisor
    convention (ceil_mode overhang) the runtime uses."""
    shape = (1, 2, 10, 9)
    model = one_op_model("AveragePool", shape, attrs=dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                                          ceil_mode=ceil, count_include_pad=include_pad))
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"image": x})[0]
    g = rng.standard_normal(y.shape)
    gx, _ = run_vjp(model, x, [g])
    lhs, rhs = float(np.sum(g * y)), float(np.sum(gx * x))
    assert abs(lhs - rhs) <= 1e-5 * (abs(lhs) + 1e-3)


def test_global_average_pool():
    check(one_op_model("GlobalAveragePool", (2, 3, 5, 4)), lambda x: x.mean(dim=(2, 3), keepdim=True), (2, 3, 5, 4))


def _graph(nodes, inits, out="out", shape=(1, 3, 6, 5)):
    x_info = helper.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))
    graph = helper.make_graph(nodes, "t", [x_info], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(np.asarray(a, np.float32), n)
                                           for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_concat_of_two_branches():
    """Concat along channels of two ops of the image (and the image itself); each part gets its slice."""
    nodes = [helper.make_node("Relu", ["image"], ["a"]),
             helper.make_node("Mul", ["image", "c"], ["b"]),
             helper.make_node("Concat", ["a", "image", "b"], ["out"], axis=1)]
    model = _graph(nodes, {"c": np.float32(1.5)})
    check(model, lambda x: torch.cat([torch.relu(x), x, x * 1.5], 1), (1, 3, 6, 5))


def test_concat_negative_axis():
    nodes = [helper.make_node("Relu", ["image"], ["a"]),
             helper.make_node("Concat", ["a", "image"], ["out"], axis=-1)]
    check(_graph(nodes, {}), lambda x: torch.cat([torch.relu(x), x], -1), (1, 3, 6, 5))


@pytest.mark.parametrize("op,fn", [("Add", torch.add), ("Sub", torch.sub), ("Mul", torch.mul), ("Div", torch.div)])
def test_binary_by_constant(op, fn):
    c = np.random.default_rng(4).uniform(0.5, 2.0, (1, 3, 1, 1)).astype(np.float32)
    model = _graph([helper.make_node(op, ["image", "c"], ["out"])], {"c": c})
    ct = torch.tensor(c, dtype=torch.float64)
    check(model, lambda x: fn(x, ct), (1, 3, 6, 5))
    model = _graph([helper.make_node(op, ["c", "image"], ["out"])], {"c": c})
    if op != "Div":
        check(model, lambda x: fn(ct, x), (1, 3, 6, 5))


@pytest.mark.parametrize("op,fn", [("Add", torch.add), ("Sub", torch.sub), ("Mul", torch.mul), ("Div", torch.div)])
def test_binary_of_two_active_tensors(op, fn):
    """Both operands depend on the image, the second broadcast over rows and columns: gradients flow into both
    and the broadcast one is summed back to its shape."""
    nodes = [helper.make_node("Relu", ["image"], ["a"]),
             helper.make_node("GlobalAveragePool", ["image"], ["m"]),
             helper.make_node("Add", ["m", "three"], ["b"]),
             helper.make_node(op, ["a", "b"], ["out"])]
    model = _graph(nodes, {"three": np.float32(3.0)})
    check(model, lambda x: fn(torch.relu(x), x.mean(dim=(2, 3), keepdim=True) + 3.0), (1, 3, 6, 5))


def test_binary_both_active_same_shape():
    nodes = [helper.make_node("Relu", ["image"], ["a"]),
             helper.make_node("Mul", ["image", "c"], ["b"]),
             helper.make_node("Mul", ["a", "b"], ["p"]),
             helper.make_node("Div", ["p", "d"], ["q"]),
             helper.make_node("Sub", ["q", "a"], ["out"])]
    d = np.random.default_rng(5).uniform(1, 2, (1, 3, 6, 5)).astype(np.float32)
    model = _graph(nodes, {"c": np.float32(0.7), "d": d})
    dt = torch.tensor(d, dtype=torch.float64)
    check(model, lambda x: torch.relu(x) * (x * 0.7) / dt - torch.relu(x), (1, 3, 6, 5))


def test_batch_normalization():
    rng = np.random.default_rng(6)
    scale, bias = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    nodes = [helper.make_node("BatchNormalization", ["image", "s", "b", "m", "v"], ["out"], epsilon=1e-3)]
    model = _graph(nodes, {"s": scale, "b": bias, "m": mean, "v": var})
    ts = [torch.tensor(a.astype(np.float32), dtype=torch.float64) for a in (scale, bias, mean, var)]
    check(model, lambda x: F.batch_norm(x, ts[2], ts[3], ts[0], ts[1], training=False, eps=1e-3), (1, 3, 6, 5))


def test_identity_dropout_flatten_reshape():
    nodes = [helper.make_node("Identity", ["image"], ["a"]),
             helper.make_node("Dropout", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]),
             helper.make_node("Flatten", ["c"], ["d"], axis=1),
             helper.make_node("Mul", ["d", "w"], ["e"]),
             helper.make_node("Reshape", ["e", "shape"], ["out"])]
    w = np.random.default_rng(7).standard_normal(90).astype(np.float32)
    model = _graph(nodes, {"w": w})
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 9, 10], np.int64), "shape"))
    wt = torch.tensor(w, dtype=torch.float64)
    check(model, lambda x: (torch.relu(x).flatten(1) * wt).reshape(1, 9, 10), (1, 3, 6, 5))


def test_fan_out_accumulates_and_several_taps():
    """A tensor used twice (fan-out) and two taps at different depths: contributions add up."""
    rng = np.random.default_rng(8)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    w3 = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["t1"]),
             helper.make_node("Conv", ["t1", "w2"], ["e1"], kernel_shape=[1, 1]),
             helper.make_node("Conv", ["t1", "w3"], ["e3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["e1", "e3"], ["t2"], axis=1)]
    x_info = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("t1", "t2")]
    graph = helper.make_graph(nodes, "t", [x_info], outs, initializer=[
        numpy_helper.from_array(a, n) for n, a in {"w1": w1, "w2": w2, "w3": w3}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((1, 3, 11, 10)).astype(np.float32)
    W = [torch.tensor(a, dtype=torch.float64) for a in (w1, w2, w3)]

    def fn(xt):
        t1 = torch.relu(F.conv2d(xt, W[0], stride=2))
        return t1, torch.cat([F.conv2d(t1, W[1]), F.conv2d(t1, W[2], padding=1)], 1)

    t1, t2 = fn(torch.tensor(x, dtype=torch.float64))
    g1, g2 = rng.standard_normal(t1.shape), rng.standard_normal(t2.shape)
    gx, _ = run_vjp(model, x, [g1, g2], taps=("t1", "t2"))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    a, c = fn(xt)
    ((a * torch.tensor(g1)).sum() + (c * torch.tensor(g2)).sum()).backward()
    assert rel_l2(gx, xt.grad.numpy()) <= RTOL


def test_pruned_to_the_taps_used():
    """Asking for the shallow tap only leaves the deeper nodes out of both graphs."""
    nodes = [helper.make_node("Relu", ["image"], ["t1"]),
             helper.make_node("MaxPool", ["t1"], ["t2"], kernel_shape=[2, 2], strides=[2, 2])]
    x_info = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("t1", "t2")]
    model = helper.make_model(helper.make_graph(nodes, "t", [x_info], outs),
                              opset_imports=[helper.make_opsetid("", 18)])
    v = vjp.build_vjp(model, ["t1"])
    ops = {n.op_type for n in vjp.vjp_model(v).graph.node}
    assert "MaxPool" not in ops and "Equal" not in ops


def test_relu_after_concat_rewrite():
    """Concat(Relu(a), Relu(b)) is rewritten to Relu(Concat(a, b)) in the VJP's forward; values and gradients are
    unchanged (checked against torch) and only one mask is computed."""
    rng = np.random.default_rng(9)
    w1, w2 = (rng.standard_normal((2, 3, 1, 1)).astype(np.float32) for _ in range(2))
    nodes = [helper.make_node("Conv", ["image", "w1"], ["a"], kernel_shape=[1, 1]),
             helper.make_node("Conv", ["image", "w2"], ["b"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["a"], ["ra"]), helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Concat", ["ra", "rb"], ["out"], axis=1)]
    model = _graph(nodes, {"w1": w1, "w2": w2})
    v = vjp.build_vjp(model, ["out"])
    assert sum(n.op_type == "Relu" for n in v.forward_nodes) == 2  # the forward that runs is unchanged
    assert sum(n.op_type == "Greater" for n in v.backward_nodes) == 1
    W = [torch.tensor(w, dtype=torch.float64) for w in (w1, w2)]
    check(model, lambda x: torch.cat([torch.relu(F.conv2d(x, W[0])), torch.relu(F.conv2d(x, W[1]))], 1),
          (1, 3, 6, 5))


def test_unknown_operator_is_named():
    model = _graph([helper.make_node("Tanh", ["image"], ["out"])], {})
    with pytest.raises(vjp.UnsupportedOperator, match="Tanh"):
        vjp.build_vjp(model, ["out"])


def test_unknown_tap_is_named():
    model = _graph([helper.make_node("Relu", ["image"], ["out"])], {})
    with pytest.raises(vjp.NSTError, match="features.7"):
        vjp.build_vjp(model, ["features.7"])
