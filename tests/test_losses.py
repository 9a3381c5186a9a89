"""Tests of nst_core.losses: values against direct formulas (hand-worked and torch float64), gradients against
central finite differences and torch autograd (float64), and dtype / scaling properties."""
import numpy as np
import pytest
import torch

from nst_core import losses

RNG = np.random.default_rng(1234)


def rand(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def finite_diff(f, x, eps=1e-6):
    """Central differences of scalar f at every element of float64 array x."""
    grad = np.zeros_like(x)
    flat_x, flat_g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat_x.size):
        old = flat_x[i]
        flat_x[i] = old + eps
        up = f(x)
        flat_x[i] = old - eps
        down = f(x)
        flat_x[i] = old
        flat_g[i] = (up - down) / (2 * eps)
    return grad


# ------------------------------------------------------------------------------------------- torch references


def torch_content(f, p, w):
    return w * torch.sum((f - p) ** 2)


def torch_gram(f):
    _, c, h, w = f.shape
    m = f.reshape(c, h * w)
    return m @ m.t() / (c * h * w)


def torch_style(feats, targets, weights):
    return sum(weights[k] * torch.sum((torch_gram(feats[k]) - targets[k]) ** 2) for k in weights)


def torch_tv(img, w):
    return w * (torch.sum((img[:, :, 1:, :] - img[:, :, :-1, :]) ** 2)
                + torch.sum((img[:, :, :, 1:] - img[:, :, :, :-1]) ** 2))


def torch_value_and_grad(fn, *arrays):
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward()
    return out.item(), [t.grad.numpy() for t in ts]


# ------------------------------------------------------------------------------------------------ content loss


def test_content_hand_computed():
    f = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    p = np.array([[[[0.0, 2.0], [5.0, 3.5]]]])
    # differences 1, 0, -2, 0.5 -> squares 1 + 0 + 4 + 0.25 = 5.25; weight 2 -> 10.5
    loss, grad = losses.content_loss(f, p, 2.0)
    assert loss == pytest.approx(10.5, rel=1e-15)
    np.testing.assert_allclose(grad, [[[[4.0, 0.0], [-8.0, 2.0]]]])


def test_content_against_torch_and_fd():
    f, p, w = rand(1, 3, 4, 5), rand(1, 3, 4, 5), 0.7
    loss, grad = losses.content_loss(f, p, w)
    t_loss, (t_grad, _) = torch_value_and_grad(lambda a, b: torch_content(a, b, w), f, p)
    assert loss == pytest.approx(t_loss, rel=1e-13)
    np.testing.assert_allclose(grad, t_grad, rtol=1e-12, atol=1e-14)
    fd = finite_diff(lambda x: losses.content_loss(x, p, w)[0], f.copy())
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)


def test_content_zero_at_target_and_linear_in_weight():
    f = rand(1, 4, 3, 3)
    loss, grad = losses.content_loss(f, f.copy(), 5.0)
    assert loss == 0.0 and not grad.any()
    p = rand(1, 4, 3, 3)
    l1, g1 = losses.content_loss(f, p, 1.0)
    l3, g3 = losses.content_loss(f, p, 3.0)
    assert l3 == pytest.approx(3 * l1, rel=1e-14)
    np.testing.assert_allclose(g3, 3 * g1, rtol=1e-14)


def test_content_float32_and_inputs_untouched():
    f, p = rand(1, 8, 6, 6, dtype=np.float32), rand(1, 8, 6, 6, dtype=np.float32)
    f0, p0 = f.copy(), p.copy()
    loss, grad = losses.content_loss(f, p, 1.5)
    assert isinstance(loss, float) and grad.dtype == np.float32 and grad.shape == f.shape
    exact = 1.5 * np.sum((f.astype(np.float64) - p.astype(np.float64)) ** 2)
    assert loss == pytest.approx(exact, rel=1e-6)
    np.testing.assert_array_equal(f, f0)
    np.testing.assert_array_equal(p, p0)


def test_content_shape_mismatch():
    with pytest.raises(ValueError):
        losses.content_loss(rand(1, 2, 3, 3), rand(1, 2, 3, 4), 1.0)


def test_float32_sum_is_accumulated_in_float64():
    # 2**24 + 1 equal squares of 1: a float32 accumulator would stall at 2**24.
    f = np.ones((1, 1, 1, 2**24 + 1), dtype=np.float32)
    loss, _ = losses.content_loss(f, np.zeros_like(f), 1.0)
    assert loss == float(2**24 + 1)


# -------------------------------------------------------------------------------------------------------- gram


def test_gram_hand_computed():
    # F = [[1, 2], [3, 4]] reshaped to [C=1, H*W=4] -> G = (1 + 4 + 9 + 16) / 4 = 7.5
    f = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    np.testing.assert_allclose(losses.gram(f), [[7.5]])
    # C=2, H=1, W=2: rows [1, 2] and [3, 4]; F F^T = [[5, 11], [11, 25]], divided by C*H*W = 4
    f2 = np.array([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    np.testing.assert_allclose(losses.gram(f2), [[1.25, 2.75], [2.75, 6.25]])


def test_gram_against_torch_and_symmetric():
    f = rand(1, 5, 4, 3)
    g = losses.gram(f)
    assert g.shape == (5, 5)
    np.testing.assert_allclose(g, torch_gram(torch.tensor(f)).numpy(), rtol=1e-13)
    np.testing.assert_array_equal(g, g.T)
    g32 = losses.gram(f.astype(np.float32))
    assert g32.dtype == np.float32
    np.testing.assert_allclose(g32, g32.T, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g32, g, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------------- style loss


def style_case(dtype=np.float64):
    feats = {1: rand(1, 3, 4, 4, dtype=dtype), 4: rand(1, 5, 2, 3, dtype=dtype)}
    targets = {1: losses.gram(rand(1, 3, 4, 4)), 4: losses.gram(rand(1, 5, 3, 3))}
    weights = {1: 2.0, 4: 0.5}
    return feats, targets, weights


def test_style_hand_computed():
    # One layer, C=1, H=W=2: G = 7.5 (see above); target A = 5.5; loss = w (G - A)^2 = 3 * 4 = 12.
    # dL/dF = 4 w (G - A) F / N = 4 * 3 * 2 * F / 4 = 6 F.
    f = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    loss, grads = losses.style_loss({3: f}, {3: np.array([[5.5]])}, {3: 3.0})
    assert loss == pytest.approx(12.0, rel=1e-15)
    np.testing.assert_allclose(grads[3], 6.0 * f, rtol=1e-15)


def test_style_against_torch():
    feats, targets, weights = style_case()
    loss, grads = losses.style_loss(feats, targets, weights)
    keys = sorted(weights)
    t_loss, t_grads = torch_value_and_grad(
        lambda *fs: torch_style(dict(zip(keys, fs)), {k: torch.tensor(targets[k]) for k in keys}, weights),
        *[feats[k] for k in keys],
    )
    assert loss == pytest.approx(t_loss, rel=1e-13)
    assert set(grads) == set(keys)
    for k, tg in zip(keys, t_grads):
        np.testing.assert_allclose(grads[k], tg, rtol=1e-11, atol=1e-14)


def test_style_against_finite_differences():
    feats, targets, weights = style_case()
    _, grads = losses.style_loss(feats, targets, weights)
    for k in weights:
        def f(x, k=k):
            return losses.style_loss({**feats, k: x}, targets, weights)[0]
        fd = finite_diff(f, feats[k].copy())
        np.testing.assert_allclose(grads[k], fd, rtol=1e-6, atol=1e-8)


def test_style_nonsymmetric_target_gradient():
    # The gradient formula uses D + D^T, so it stays correct even for a non-symmetric target.
    f = rand(1, 3, 2, 2)
    target = rand(3, 3)
    _, grads = losses.style_loss({0: f}, {0: target}, {0: 1.3})
    fd = finite_diff(lambda x: losses.style_loss({0: x}, {0: target}, {0: 1.3})[0], f.copy())
    np.testing.assert_allclose(grads[0], fd, rtol=1e-6, atol=1e-8)


def test_style_zero_at_target_and_linear_in_weights():
    feats, _, weights = style_case()
    own = {k: losses.gram(v) for k, v in feats.items()}
    loss, grads = losses.style_loss(feats, own, weights)
    assert loss == pytest.approx(0.0, abs=1e-25)
    for g in grads.values():
        np.testing.assert_allclose(g, 0.0, atol=1e-14)

    feats, targets, weights = style_case()
    l1, g1 = losses.style_loss(feats, targets, weights)
    l2, g2 = losses.style_loss(feats, targets, {k: 4.0 * w for k, w in weights.items()})
    assert l2 == pytest.approx(4.0 * l1, rel=1e-14)
    for k in weights:
        np.testing.assert_allclose(g2[k], 4.0 * g1[k], rtol=1e-13)
    # The total is the sum of the per-layer terms.
    parts = sum(losses.style_loss(feats, targets, {k: w})[0] for k, w in weights.items())
    assert l1 == pytest.approx(parts, rel=1e-14)


def test_style_only_weighted_layers_and_zero_weight():
    feats, targets, _ = style_case()
    loss, grads = losses.style_loss(feats, targets, {4: 1.0, 1: 0.0})
    assert set(grads) == {1, 4}
    assert not grads[1].any() and grads[1].shape == feats[1].shape
    assert loss == pytest.approx(losses.style_loss(feats, targets, {4: 1.0})[0], rel=1e-15)
    with pytest.raises(KeyError):
        losses.style_loss(feats, targets, {7: 1.0})
    with pytest.raises(ValueError):
        losses.style_loss(feats, {1: targets[4]}, {1: 1.0})


def test_style_float32():
    feats64, targets, weights = style_case()
    feats32 = {k: v.astype(np.float32) for k, v in feats64.items()}
    targets32 = {k: v.astype(np.float32) for k, v in targets.items()}
    loss32, g32 = losses.style_loss(feats32, targets32, weights)
    loss64, g64 = losses.style_loss(feats64, targets, weights)
    assert isinstance(loss32, float)
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    for k in weights:
        assert g32[k].dtype == np.float32 and g32[k].shape == feats32[k].shape
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-4, atol=1e-5 * np.abs(g64[k]).max())


# ---------------------------------------------------------------------------------------------------- TV loss


def test_tv_hand_computed():
    # One channel of [[1, 2], [4, 8]] (other channels constant): vertical diffs 3, 6; horizontal 1, 4.
    # sum of squares 9 + 36 + 1 + 16 = 62; weight 0.5 -> 31.
    img = np.zeros((1, 3, 2, 2))
    img[0, 1] = [[1.0, 2.0], [4.0, 8.0]]
    img[0, 2] = 7.0
    loss, grad = losses.tv_loss(img, 0.5)
    assert loss == pytest.approx(31.0, rel=1e-15)
    # dL/dx = 2 w * (sum of d over edges entering minus leaving): x00: -(3) - (1) = -4; x01: -6 + 1 = -5;
    # x10: 3 - 4 = -1; x11: 6 + 4 = 10.  With 2w = 1.
    np.testing.assert_allclose(grad[0, 1], [[-4.0, -5.0], [-1.0, 10.0]])
    assert not grad[0, 0].any() and not grad[0, 2].any()


def test_tv_against_torch_and_fd():
    img, w = rand(1, 3, 5, 4), 0.3
    loss, grad = losses.tv_loss(img, w)
    t_loss, (t_grad,) = torch_value_and_grad(lambda x: torch_tv(x, w), img)
    assert loss == pytest.approx(t_loss, rel=1e-13)
    np.testing.assert_allclose(grad, t_grad, rtol=1e-12, atol=1e-14)
    fd = finite_diff(lambda x: losses.tv_loss(x, w)[0], img.copy())
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)


def test_tv_constant_image_and_linear_weight_and_float32():
    loss, grad = losses.tv_loss(np.full((1, 3, 4, 4), 0.25), 10.0)
    assert loss == 0.0 and not grad.any()
    img = rand(1, 3, 6, 7)
    l1, g1 = losses.tv_loss(img, 1.0)
    l2, g2 = losses.tv_loss(img, 2.5)
    assert l2 == pytest.approx(2.5 * l1, rel=1e-14)
    np.testing.assert_allclose(g2, 2.5 * g1, rtol=1e-14)
    l32, g32 = losses.tv_loss(img.astype(np.float32), 1.0)
    assert isinstance(l32, float) and g32.dtype == np.float32
    assert l32 == pytest.approx(l1, rel=1e-5)
    np.testing.assert_allclose(g32, g1, rtol=1e-4, atol=1e-5)


def test_tv_single_row_and_column():
    # H = 1: only horizontal differences; W = 1: only vertical ones.
    img = np.array([[[[0.0, 1.0, 3.0]]] * 3]).reshape(1, 3, 1, 3)
    assert losses.tv_loss(img, 1.0)[0] == pytest.approx(3 * (1 + 4))
    assert losses.tv_loss(img.transpose(0, 1, 3, 2), 1.0)[0] == pytest.approx(3 * (1 + 4))
