"""--pooling avg: the MaxPool -> AveragePool rewrite (nst_core.network.pooling) against torch's nn.AvgPool2d with the same
weights: the graph, the forward taps, and the gradient of the rewritten model against torch autograd in float64,
judged as test_vjp_squeezenet.py judges the max-pool network (on one ReLU pattern, against torch's own float32
deviation measured in the same test)."""
import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from nst_core.spec import make, resolve
from nst_core.network import pooling
from nst_core import api as transfer
from nst_core.network import vjp
from nst_core.errors import NSTError
from nst_core.network.model import Network, tap_name

import kinks  # noqa: E402  (tests/ is on the path)
from kinks import forced, pattern, torch_saved, unexplained_flips  # noqa: E402
from test_vjp_squeezenet import CS231N, figures, photo, torch_grad  # noqa: E402

torch = pytest.importorskip("torch")
nn = torch.nn


class Scaled(nn.Module):
    def __init__(self, pool, factor):
        super().__init__()
        self.pool, self.factor = pool, factor

    def forward(self, x):
        return self.pool(x) * self.factor


def torch_avg(net, dtype):
    """A copy of the torch SqueezeNet whose three max pools are nn.AvgPool2d(3, 2, ceil_mode=True) x AVG_SCALE."""
    out = copy.deepcopy(net).to(dtype)
    for i, module in enumerate(out.features):
        if isinstance(module, nn.MaxPool2d):
            assert (module.kernel_size, module.stride, module.padding, module.ceil_mode) == (3, 2, 0, True)
            out.features[i] = Scaled(nn.AvgPool2d(3, 2, padding=0, ceil_mode=True), pooling.AVG_SCALE)
    return out


@pytest.fixture(scope="module")
def avg_nets(torch_squeezenet):
    return torch_avg(torch_squeezenet, torch.float32), torch_avg(torch_squeezenet, torch.float64)


def test_the_rewrite_keeps_windows_and_weights(features_model):
    model = onnx.load(features_model)
    before = model.SerializeToString()
    assert pooling.with_pooling(model, "max") is model
    avg = pooling.with_pooling(model, "avg")
    assert model.SerializeToString() == before  # the original is untouched
    maxpools = [n for n in model.graph.node if n.op_type == "MaxPool"]
    avgpools = [n for n in avg.graph.node if n.op_type == "AveragePool"]
    assert len(maxpools) == len(avgpools) == 3 and not any(n.op_type == "MaxPool" for n in avg.graph.node)
    attrs = lambda n: {a.name: helper.get_attribute_value(a) for a in n.attribute}  # noqa: E731
    for m, a in zip(maxpools, avgpools):
        am, aa = attrs(m), attrs(a)
        for key in ("kernel_shape", "strides", "pads", "ceil_mode"):
            assert aa[key] == am[key]
        assert aa["count_include_pad"] == 0 and m.input[0] == a.input[0]
    assert [o.name for o in avg.graph.output] == [o.name for o in model.graph.output]
    weights = {t.name: t.raw_data for t in model.graph.initializer}
    assert {t.name: t.raw_data for t in avg.graph.initializer if t.name in weights} == weights
    onnx.checker.check_model(avg, full_check=True)
    with pytest.raises(NSTError, match="unknown pooling 'min'"):
        pooling.with_pooling(model, "min")
    with pytest.raises(NSTError, match="unknown pooling 'min'"):
        resolve(make("stylize", pooling="min"))


@pytest.mark.parametrize("hw, pads", [((9, 12), 0), ((10, 11), 1), ((7, 8), 1)])
def test_average_pool_semantics_match_torch_with_pads_and_ceil_mode(hw, pads):
    """A MaxPool with pads and ceil_mode, rewritten: forward and gradient as torch's AvgPool2d with
    count_include_pad=False (padding left out of the divisor, like the max pool leaves it out of its max)."""
    h, w = hw
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2, h, w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("MaxPool", ["image"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                            pads=[pads] * 4, ceil_mode=1)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    avg = pooling.with_pooling(model, "avg")
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((1, 2, h, w)).astype(np.float32)
    got = ort.InferenceSession(avg.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"],
                                                                                                {"image": xv})[0]
    xt = torch.tensor(xv, dtype=torch.float64, requires_grad=True)
    ref = nn.AvgPool2d(3, 2, padding=pads, ceil_mode=True, count_include_pad=False)(xt) * pooling.AVG_SCALE
    assert got.shape == tuple(ref.shape)
    assert np.abs(got - ref.detach().numpy()).max() <= 1e-5
    cot = rng.standard_normal(got.shape).astype(np.float32)
    (ref * torch.tensor(cot, dtype=torch.float64)).sum().backward()
    v = vjp.vjp_model(vjp.build_vjp(avg, ["y"]))
    grad = ort.InferenceSession(v.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["grad_image"], {"image": xv, vjp.grad_name("y"): cot})[0]
    assert np.linalg.norm(grad - xt.grad.numpy()) <= 1e-5 * np.linalg.norm(xt.grad.numpy())


def is_relu_output(net, name: str) -> bool:
    try:
        return bool(kinks._relu_modules(net, name))
    except KeyError:
        return False


def relu_masks(pat: dict) -> dict:
    """The ReLU part of a kinks.pattern: an average pool has no winners to force."""
    return {k: v for k, v in pat.items() if not isinstance(k, tuple)}


@pytest.mark.parametrize("hw, taps", [((192, 256), CS231N), ((161, 223), tuple(range(13)))],
                         ids=["192x256-cs231n", "161x223-all13"])  # 161: a ceil_mode window past the edge
def test_avg_squeezenet_vjp_matches_torch_float64(features_model, images_dir, avg_nets, hw, taps):
    """As test_vjp_squeezenet.py judges the max-pool network: on our forward's ReLU pattern, torch float64
    (forced onto it, tests/kinks.py) must give our gradient within 20x float32 torch's own deviation on that piece
    + 1e-6, with at most 0.5 % more elements off; every ReLU on another side than float64's must be a near-tie."""
    net32, net64 = avg_nets
    x = photo(images_dir, *hw)
    names = [tap_name(k) for k in taps]
    model = pooling.with_pooling(onnx.load(features_model), "avg")
    network = Network(model, names, device="cpu")
    feats = network.forward(x)
    with torch.no_grad():
        ref_feats = net64.feature_maps(torch.tensor(x, dtype=torch.float64))
    for k in taps:  # the rewritten forward is torch's average-pool network
        a, r = feats[tap_name(k)].astype(np.float64), ref_feats[k].numpy()
        assert a.shape == r.shape and np.linalg.norm(a - r) <= 1e-5 * np.linalg.norm(r)

    rng = np.random.default_rng(0)
    cot = {k: rng.standard_normal(ref_feats[k].shape).astype(np.float32) for k in taps}
    full = vjp.vjp_model(vjp.build_vjp(model, names))
    assert not any(n.op_type in ("MaxPool", "ScatterElements") for n in full.graph.node)
    sess = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = sess.run(["grad_image"], {"image": x} | {vjp.grad_name(tap_name(k)): cot[k] for k in taps})[0]
    split = network.backward({tap_name(k): cot[k] for k in taps})

    # the ReLU outputs among the saved tensors (the backward also reads the pools' outputs, for their shapes)
    saved = {k: v for k, v in network.saved().items() if k == "image" or is_relu_output(net64, k)}
    ours_pattern = relu_masks(pattern(saved))
    with forced(net64, ours_pattern):
        piece = torch_grad(net64, x, taps, cot, torch.float64)
    with forced(net32, ours_pattern):
        piece32 = torch_grad(net32, x, taps, cot, torch.float32)
    rel_p, off_p = figures(piece32, piece)
    print(f"\n{hw} taps={taps}: on our pattern: torch float32 {rel_p:.2e}, {off_p:.3%} off", end="")
    for label, got in (("one model", ours), ("split", split)):
        rel, off = figures(got.astype(np.float64), piece)
        print(f" | {label} {rel:.2e}, {off:.3%}", end="")
        assert rel <= 20 * rel_p + 1e-6 and off <= off_p + 0.005, label
    ref = torch_grad(net64, x, taps, cot, torch.float64)
    rel, off = figures(split.astype(np.float64), ref)
    rel_t, off_t = figures(torch_grad(net32, x, taps, cot, torch.float32), ref)
    print(f"\n  plain float64 torch: ours {rel:.2e}, {off:.3%} off | torch float32 {rel_t:.2e}, {off_t:.3%}")
    values64, pre64 = torch_saved(net64, x, saved)
    _, pre32 = torch_saved(net32, x, saved)
    assert unexplained_flips(ours_pattern, relu_masks(pattern(values64)), pre64, pre32) == []


def test_stylize_with_average_pooling(images_dir, features_model):
    opts = dict(size=48, style_size=48, iterations=3, device="cpu", model=str(features_model))
    content, style = images_dir / "tubingen.jpg", images_dir / "starry_night.jpg"
    _, avg = transfer.stylize(content, style, pooling="avg", **opts)
    _, mx = transfer.stylize(content, style, **opts)
    assert avg.n_evals == mx.n_evals == 3 and np.isfinite(avg.loss)
    assert avg.history[0].parts["style"] != mx.history[0].parts["style"]
    # the same problem through the objective of a Network on the rewritten model: the transfer uses the rewrite
    problem = transfer.prepare("stylize", content, style, pooling="avg", **opts)
    assert problem.objective(problem.x0)[0] == avg.history[0].loss
