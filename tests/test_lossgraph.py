"""The one-model objective (nst_core.network.lossgraph): its losses and gradient against the NumPy losses of nst_core.losses
run on the same features, and its gradient against finite differences of its own losses (float64 direction
derivative through a torch float64 reference is in test_objective.py).

The network inside is the real SqueezeNet; the loss nodes are checked on their own by giving the model only one
term at a time, and together where a tap carries both a content and a style loss.
"""
import numpy as np
import onnx
import pytest
from PIL import Image

from nst_core.network import lossgraph
from nst_core.inputs.images import open_image, preprocess
from nst_core.losses import content_loss, gram, style_loss, tv_loss
from nst_core.network.model import Network, session

H, W = 96, 128


@pytest.fixture(scope="module")
def model(features_model):
    return onnx.load(features_model)


@pytest.fixture(scope="module")
def images(images_dir):
    content = preprocess(open_image(images_dir / "tubingen.jpg").resize((W, H), Image.Resampling.BILINEAR), None)
    style = preprocess(open_image(images_dir / "starry_night.jpg"), 80)
    rng = np.random.default_rng(11)
    x = (content + 0.3 * rng.standard_normal(content.shape)).astype(np.float32)
    return content, style, x


def reference(network, x, content_tap, target, content_weight, grams, style_weights):
    """NumPy losses on ORT features, cotangents through the split VJP: (L_c, L_s, dL/dx float32)."""
    feats = network.forward(x)
    cot = {t: np.zeros_like(f) for t, f in feats.items()}
    l_c = 0.0
    if content_tap:
        l_c, cot[content_tap] = content_loss(feats[content_tap], target, content_weight)
    l_s, grads = style_loss(feats, grams, style_weights)
    for t, g in grads.items():
        cot[t] = cot[t] + g
    return l_c, l_s, network.backward(cot)


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


CASES = {
    "content_only": ("features.3", {}),
    "style_only": (None, {"features.1": 3e5, "features.4": 1e3, "features.7": 3.0}),
    "shared_tap": ("features.4", {"features.1": 2e6, "features.4": 5e4, "features.6": 15.0}),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_matches_numpy_losses(model, images, case):
    content, style, x = images
    content_tap, style_weights = CASES[case]
    taps = ([content_tap] if content_tap else []) + list(style_weights)
    network = Network(model, taps, device="cpu")
    target = network.forward(content)[content_tap] if content_tap else None
    style_feats = network.forward(style)
    grams = {t: gram(style_feats[t]) for t in style_weights}
    run = network.objective(content_tap, target, 0.07, grams, style_weights)
    l_c, l_s, grad = run(x)
    r_c, r_s, r_grad = reference(network, x, content_tap, target, 0.07, grams, style_weights)
    assert grad.dtype == np.float32 and grad.shape == x.shape
    assert l_c == pytest.approx(r_c, rel=1e-6, abs=0.0)
    assert l_s == pytest.approx(r_s, rel=1e-4, abs=0.0)  # Gram products by two GEMM libraries in float32
    assert (l_c > 0) == bool(content_tap) and (l_s > 0) == bool(style_weights)
    assert rel(grad, r_grad) <= 1e-4


def test_content_loss_is_exact_for_a_known_difference(model, images):
    """x = content: features equal the target, so L_c = 0 and the gradient is 0; the target shifted by a constant
    c gives L_c = w * c^2 * size and a gradient equal to the VJP of 2 w (F - P)."""
    content, _, _ = images
    network = Network(model, ["features.3"], device="cpu")
    target = network.forward(content)["features.3"]
    l_c, l_s, grad = network.objective("features.3", target, 0.5, {}, {})(content)
    assert l_c == 0.0 and l_s == 0.0 and not grad.any()
    shifted = target - np.float32(0.25)
    l_c, _, grad = network.objective("features.3", shifted, 0.5, {}, {})(content)
    assert l_c == pytest.approx(0.5 * 0.0625 * target.size, rel=1e-12)
    expect = network.backward({"features.3": np.full_like(target, 2 * 0.5 * 0.25)})
    assert rel(grad, expect) <= 1e-6


def test_gradient_finite_differences(model, images):
    """The model's own losses along a random direction d: central difference vs grad . d. The network is float32 and
    piecewise smooth: here the difference is -5.318 / -5.437 / -5.499 / -5.580 at eps 0.1 / 0.03 / 0.01 / 0.003
    around the slope -5.422 (the split NumPy path's differences behave the same), so eps = 0.03."""
    content, style, x = images
    weights = {"features.1": 3e5, "features.4": 1e3}
    network = Network(model, ["features.3", *weights], device="cpu")
    target = network.forward(content)["features.3"]
    feats = network.forward(style)
    run = network.objective("features.3", target, 0.06, {t: gram(feats[t]) for t in weights}, weights)
    _, _, grad = run(x)
    d = np.random.default_rng(5).standard_normal(x.shape)
    d /= np.linalg.norm(d)
    eps = 3e-2
    plus, minus = run(x + eps * d), run(x - eps * d)
    fd = (plus[0] + plus[1] - minus[0] - minus[1]) / (2 * eps)
    slope = float(np.sum(grad.astype(np.float64) * d))
    assert abs(fd - slope) <= 1e-2 * abs(slope)


def test_weights_are_inputs_and_sizes_dynamic(model, images):
    """One session serves other weights (losses scale linearly) and other image sizes."""
    content, style, x = images
    network = Network(model, ["features.1", "features.6"], device="cpu")
    feats = network.forward(style)
    grams = {t: gram(feats[t]) for t in ("features.1", "features.6")}
    a = network.objective(None, None, 0.0, grams, {"features.1": 1.0, "features.6": 2.0})(x)
    b = network.objective(None, None, 0.0, grams, {"features.1": 3.0, "features.6": 6.0})(x)
    assert len(network._objectives) == 1
    assert b[1] == pytest.approx(3 * a[1], rel=1e-12)
    assert rel(b[2], 3 * a[2]) <= 1e-6
    small = np.ascontiguousarray(x[:, :, :64, :80])
    l_s, grad = network.objective(None, None, 0.0, grams, {"features.1": 1.0, "features.6": 2.0})(small)[1:]
    ref = style_loss(network.forward(small), grams, {"features.1": 1.0, "features.6": 2.0})[0]
    assert grad.shape == small.shape and l_s == pytest.approx(ref, rel=1e-4)


def test_model_is_standard_onnx(model):
    m = lossgraph.objective_model(model, "features.3", ["features.1", "features.3"])
    onnx.checker.check_model(m, full_check=True)
    assert {i.name for i in m.graph.input} == {
        "image", lossgraph.CONTENT_TARGET, lossgraph.CONTENT_WEIGHT, "gram.features.1", "gram.features.3",
        "style_weight.features.1", "style_weight.features.3"}
    assert [o.name for o in m.graph.output] == list(lossgraph.OUTPUTS)
    assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"}
    session(m, "cpu")  # ORT accepts it
    with pytest.raises(ValueError, match="content tap or a style tap"):
        lossgraph.objective_model(model, None, [])



def test_tv_inside_the_float64_summed_objective(model, images):
    """objective_model(tv=True): the content and style losses are those of the model without TV, TV's loss is
    losses.tv_loss in float64 on the same float32 pixels within an a-priori bound of its float32 arithmetic (each
    difference rounded once, each pixel's 6 squares summed in float32: 10u relative, u = 2^-24), and the gradient is
    the network's plus TV's within the bound of its float32 operations: per element 8u times (2w the sum of the
    |differences| that touch the pixel plus |the network's gradient|)."""
    content, style, x = images
    weights = {"features.1": 3e5, "features.4": 1e3}
    network = Network(model, ["features.3", *weights], device="cpu")
    target = network.forward(content)["features.3"]
    feats = network.forward(style)
    grams = {t: gram(feats[t]) for t in weights}
    l_c, l_s, l_tv, grad = network.objective("features.3", target, 0.06, grams, weights, tv_weight=0.7)(x)
    n_c, n_s, g_net = network.objective("features.3", target, 0.06, grams, weights)(x)
    assert len(network._objectives) == 2 and grad.dtype == np.float32 and grad.shape == x.shape
    assert l_c == pytest.approx(n_c, rel=1e-12) and l_s == pytest.approx(n_s, rel=1e-12)
    pixels = x.astype(np.float32).astype(np.float64)
    want, want_grad = tv_loss(pixels, 0.7)
    u = 2.0 ** -24
    assert abs(l_tv - want) <= 10 * u * want
    dv, dh = np.abs(np.diff(pixels, axis=2)), np.abs(np.diff(pixels, axis=3))
    touching = np.zeros_like(pixels)
    touching[:, :, 1:] += dv
    touching[:, :, :-1] += dv
    touching[:, :, :, 1:] += dh
    touching[:, :, :, :-1] += dh
    bound = 8 * u * (2 * 0.7 * touching + np.abs(g_net.astype(np.float64)))
    assert np.all(np.abs(grad - (g_net.astype(np.float64) + want_grad)) <= bound)
