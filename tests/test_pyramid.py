"""The whole-picture term (nst_core.objective.pyramid): the Lanczos downsampling against PIL's own resize, its adjoint, the
combined objective's gradient by finite differences, and the schedule's use of it (against a problem prepared at
the first scale and PIL's resize, not against the module under test)."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_core.objective import pyramid
from nst_core import schedule
from nst_core.errors import NSTError
from nst_core.spec import Spec, make, resolve
from nst_core.api import invert, prepare, stylize, texture

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(size=128, calibration_size=64, iterations=3, device="cpu", scales=2)


def _pil_lanczos(x: np.ndarray, shape) -> np.ndarray:
    """x [1, 3, H, W] resized per channel by PIL (mode F, Lanczos) to shape (h, w): the reference."""
    h, w = shape
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(x[0, c], np.float32), mode="F")
                                .resize((w, h), Image.Resampling.LANCZOS), np.float64)
                     for c in range(x.shape[1])])[None]


@pytest.mark.parametrize("big, small", [((1024, 1365), (192, 256)), ((100, 77), (31, 200)), ((50, 50), (50, 50)),
                                        ((37, 5), (4, 3)), ((2480, 350), (192, 27))])
def test_downsample_is_pils_lanczos(big, small):
    x = np.random.default_rng(1).normal(size=(1, 3) + big)
    y = pyramid.Downsample(x.shape, small)(x)
    ref = _pil_lanczos(x, small)
    assert y.shape == ref.shape == (1, 3) + small and y.dtype == np.float64
    # PIL stores each pass in float32: its own rounding is ~1e-7 of the values
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-6 * np.abs(x).max())


def test_lanczos_rows_sum_to_one_and_equal_sizes_are_the_identity():
    m = pyramid.lanczos_matrix(1000, 97)
    np.testing.assert_allclose(np.asarray(m.sum(axis=1)).ravel(), 1.0, rtol=0, atol=1e-12)
    assert m.shape == (97, 1000)
    np.testing.assert_allclose(pyramid.lanczos_matrix(9, 9).toarray(), np.eye(9), atol=1e-15)
    with pytest.raises(ValueError):
        pyramid.lanczos_matrix(0, 3)


def test_adjoint_is_the_transpose():
    rng = np.random.default_rng(2)
    x, g = rng.normal(size=(1, 3, 83, 61)), rng.normal(size=(1, 3, 20, 15))
    down = pyramid.Downsample(x.shape, g.shape)
    base = rng.normal(size=x.shape)
    grad = base.copy()
    down.add_adjoint(grad, g, 2.5)
    # <D x, g> = <x, D^T g>, and add_adjoint adds weight * D^T g to what is there
    assert np.sum(down(x) * g) == pytest.approx(np.sum(x * (grad - base)) / 2.5, rel=1e-12)
    dense = np.kron(pyramid.lanczos_matrix(83, 20).toarray(), pyramid.lanczos_matrix(61, 15).toarray())
    np.testing.assert_allclose((grad - base)[0].reshape(3, -1), 2.5 * g[0].reshape(3, -1) @ dense, atol=1e-12)


def test_combined_gradient_by_finite_differences():
    rng = np.random.default_rng(3)
    a, t = rng.normal(size=(1, 3, 29, 23)), rng.normal(size=(1, 3, 9, 7))

    def fine(x):
        return float(np.sum(a * x ** 2)), 2 * a * x, {"content": 1.0, "style": 2.0, "tv": 3.0}

    def coarse(y):  # a quartic, so the chain rule through D is tested away from a quadratic's symmetry
        d = y - t
        return float(np.sum(d ** 4)), 4 * d ** 3, {"style": float(np.sum(d ** 4))}

    down = pyramid.Downsample(a.shape, t.shape)
    f = pyramid.with_whole_term(fine, coarse, down, 0.7)
    x = rng.normal(size=a.shape)
    loss, grad, parts = f(x)
    assert loss == pytest.approx(fine(x)[0] + 0.7 * coarse(_pil_lanczos(x, (9, 7)))[0], rel=1e-5)
    assert parts == pytest.approx({"content": 1.0, "style": 2.0, "tv": 3.0, "whole": loss - fine(x)[0]})
    for _ in range(3):
        v = rng.normal(size=x.shape)
        h = 1e-5
        fd = (f(x + h * v)[0] - f(x - h * v)[0]) / (2 * h)
        assert np.sum(grad * v) == pytest.approx(fd, rel=1e-7)


def test_combined_keeps_the_fresh_gradient_promise():
    """with_whole_term adds into the inner objective's gradient and returns it: it is a new array per call exactly
    when the inner one's is (``fresh_grad``, which lets the optimizers skip their copy)."""
    shape = (1, 3, 12, 10)
    down = pyramid.Downsample(shape, (1, 3, 6, 5))

    def coarse(y):
        return float(np.sum(y ** 2)), 2 * y, {}

    buf = np.zeros(shape)

    def reusing(x):
        buf[...] = x
        return 0.0, buf, {}

    def fresh(x):
        return 0.0, x.copy(), {}

    fresh.fresh_grad = True
    x = np.random.default_rng(4).normal(size=shape)
    assert pyramid.with_whole_term(fresh, coarse, down, 0.5).fresh_grad is True
    combined = pyramid.with_whole_term(reusing, coarse, down, 0.5)
    assert combined.fresh_grad is False and combined(x)[1] is buf


def test_whole_weight_is_checked():
    assert resolve(make("stylize")).whole_weight == 1.0
    assert resolve(make("texture", whole_weight=0)).whole_weight == 0.0
    with pytest.raises(NSTError, match="whole weight"):
        resolve(make("stylize", whole_weight=-1))
    with pytest.raises(NSTError, match="unknown option 'whole_weight'"):
        resolve(make("invert", whole_weight=1))


def test_later_scales_add_the_first_scales_style_term(features_model, images_dir):
    content, style = images_dir / "tubingen.jpg", images_dir / "starry_night.jpg"
    seen = []
    _, result = stylize(content, style, model=features_model, whole_weight=0.5,
                        callback=lambda rec, x: seen.append(np.array(x)), **SMALL)
    assert result.sides == [64, 128] and "whole" not in result.scales[0].history[0].parts
    # scale 2's objective = the problem prepared alone at 128 px + 0.5 x the style term of a problem prepared at
    # 64 px (no content, no TV) on the picture resized by PIL
    x = seen[3]
    alone = prepare("stylize", content, style, model=features_model, size=128, calibration_size=64, device="cpu")
    first = prepare("stylize", content, style, model=features_model, size=64, calibration_size=64, device="cpu",
                    content_weight=0, tv_weight=0)
    loss_alone, _, parts = alone.objective(x)
    whole = first.objective(_pil_lanczos(x, first.x0.shape[2:]))[0]
    rec = result.history[3]
    assert rec.parts["whole"] == pytest.approx(0.5 * whole, rel=1e-4)  # PIL's float32 resize: ~1e-7 per pixel
    assert rec.loss == pytest.approx(loss_alone + 0.5 * whole, rel=1e-4)
    assert {k: rec.parts[k] for k in parts} == pytest.approx(parts, rel=1e-12)
    # whole_weight 0: exactly the scale's own objective
    seen.clear()
    _, off = stylize(content, style, model=features_model, whole_weight=0,
                     callback=lambda rec, x: seen.append(np.array(x)), **SMALL)
    assert "whole" not in off.history[3].parts
    assert off.history[3].loss == pytest.approx(alone.objective(seen[3])[0], rel=1e-12)


def test_texture_keeps_the_whole_term_and_invert_has_none(features_model, images_dir):
    _, result = texture(images_dir / "starry_night.jpg", model=features_model, seed=0, **dict(SMALL, iterations=2))
    assert result.history[-1].parts["whole"] > 0 and result.history[-1].parts["content"] == 0.0
    _, result = invert(images_dir / "tubingen.jpg", model=features_model, seed=0, **dict(SMALL, iterations=2))
    assert result.sides == [64, 128] and all("whole" not in rec.parts for rec in result.history)


def test_cli_log_gets_a_whole_column(env, images_dir, tmp_path):
    out, log = tmp_path / "out.png", tmp_path / "run.csv"
    r = subprocess.run([sys.executable, str(REPO / "cli.py"), "stylize", str(images_dir / "tubingen.jpg"),
                        str(images_dir / "starry_night.jpg"), "-o", str(out), "--size", "128", "--calibration-size",
                        "64", "--iterations", "2", "--device", "cpu", "--log", str(log), "--whole-weight", "2"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(log.open()))
    assert list(rows[0])[-2:] == ["whole", "scale"]
    assert [row["whole"] for row in rows[:2]] == ["nan", "nan"] and all(float(row["whole"]) > 0 for row in rows[2:])
    bad = subprocess.run([sys.executable, str(REPO / "cli.py"), "stylize", "--whole-weight", "-1", "-o",
                          str(tmp_path / "x.png")], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
