"""The Node.js host (hosts/node) against the Python side on one 128 px problem, and its own `node --test` suite.

Same inputs for both hosts: PNG copies of the shared JPEGs (JPEG decoders differ by a few levels; PNG decodes
identically), resized by each host itself (the Node host's bilinear reproduces Pillow's bit for bit, checked here).
The problem is starry_night's at 128 px with style scale 1 (CS231n's own weights): at L-BFGS's default scale 100 the
50-evaluation history is chaotic, Python's own history moves by 16 % when its loss is multiplied by (1 + 1e-7)
(bench/bench_bundle.py), so no two implementations that round differently can agree to 1 % there.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_core.spec import make, resolve
from nst_core.hosts import bundle
from nst_core import optim
from nst_core import api as transfer
from nst_core import schedule
from nst_core.inputs.images import open_image, pixel_bounds, preprocess
from nst_core.network.model import Network, load_model, tap_name
from nst_core.objective import make_objective, targets

REPO = Path(__file__).resolve().parents[1]
HOST = REPO / "hosts" / "node"
CLI = [sys.executable, str(REPO / "cli.py")]
SIZE = 128
# No --calibration-size: the bundle records the preset's 192 px and the Node host multiplies the content and TV
# weights by k = pixels(192) / pixels(128) as nst stylize does (manifest.calibration).
PROBLEM = ["--size", str(SIZE), "--style-size", str(SIZE), "--style-scale", "1"]
EVALS = 50


@pytest.fixture(scope="module")
def node():
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not installed (the Node host's tests need Node.js 20)")
    if not (HOST / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail("hosts/node/node_modules is missing: run `make test` (it runs npm ci) or `cd hosts/node && npm ci`")
    return exe


@pytest.fixture(scope="module")
def pngs(images_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("pngs")
    out = []
    for name in ("tubingen", "starry_night"):
        path = d / f"{name}.png"
        open_image(images_dir / f"{name}.jpg").save(path)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, env):
    d = tmp_path_factory.mktemp("node_bundle") / "bundle"
    r = subprocess.run(CLI + ["bundle", str(d), *PROBLEM], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return d


def run_node(node, script, *args, timeout=300):
    r = subprocess.run([node, str(HOST / script), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def test_node_test_suite(node, bundle_dir):
    """`node --test` over hosts/node/test, with the bundle, so that none of its tests is skipped."""
    r = subprocess.run([node, "--test", "test/"], cwd=HOST, env=dict(os.environ, NST_TEST_BUNDLE=str(bundle_dir)),
                       capture_output=True, text=True, timeout=600)
    summary = [line for line in r.stdout.splitlines() if line.startswith("# ")]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "# fail 0" in summary and "# skipped 0" in summary, summary


def test_first_evaluation_matches_python_float64_reference(node, bundle_dir, pngs, env, tmp_path):
    """Node's preprocessing equals Python's bit for bit; its calibration factor k and calibrated weights equal
    nst_core.api.calibration's; its loss within 1e-5 relative and its gradient within 1e-5 relative L2 of the
    NumPy float64-summed reference objective (with those calibrated weights) at the same point."""
    run_node(node, "evaluate.mjs", "--bundle", bundle_dir, *pngs, "--out", tmp_path, "--size", SIZE,
             "--style-size", SIZE)
    got = json.loads((tmp_path / "result.json").read_text())
    problem = transfer.prepare("stylize", str(pngs[0]), str(pngs[1]), size=SIZE, style_size=SIZE, style_scale=1.0,
                               model=str(Path(env["NST_HOME"]) / "features.onnx"))
    lo, hi = problem.bounds
    x0 = np.clip(problem.x0, lo, hi)
    assert got["dims"] == list(x0.shape)
    x_node = np.fromfile(tmp_path / "image.f32", dtype="<f4").reshape(x0.shape)
    np.testing.assert_array_equal(x_node, x0.astype(np.float32))
    np.testing.assert_array_equal(preprocess(Image.open(pngs[1]), SIZE).shape, [1, 3] + got["style_dims"][2:])
    taps = [tap_name(k) for k in (1, 3, 4, 6, 7)]
    net = Network(load_model(Path(env["NST_HOME"]) / "features.onnx", taps), taps, device="cpu")
    opt = problem.job
    cal = problem.calibration
    assert cal.size_factor != 1.0  # 128 px against the 192 px calibration
    assert got["k"] == cal.size_factor
    assert got["weights"]["content_weight"] == pytest.approx(cal.content_weight, rel=1e-15)
    assert got["weights"]["tv_weight"] == pytest.approx(cal.tv_weight, rel=1e-15)
    # the float64 reference: NumPy losses with float64 sums, TV in float64, on Python's own targets
    target, grams = targets(net, preprocess(open_image(pngs[0]), SIZE), preprocess(open_image(pngs[1]), SIZE),
                            opt.content_layer, opt.style_layers)
    ref = make_objective(net, content_target=target, content_layer=opt.content_layer,
                         content_weight=cal.content_weight, style_targets=grams, style_layers=opt.style_layers,
                         style_weights=opt.effective_style_weights, tv_weight=cal.tv_weight, fused=False)
    loss, grad, parts = ref(x0)
    grad_node = np.fromfile(tmp_path / "grad.f32", dtype="<f4").reshape(x0.shape)
    assert abs(got["loss"] - loss) <= 1e-5 * loss
    for k in ("style", "tv"):
        assert abs(got["parts"][k] - parts[k]) <= 1e-5 * parts[k]
    assert rel(grad_node, grad) <= 1e-5


def read_log(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=np.float64)


def test_history_follows_python(node, bundle_dir, pngs, env, tmp_path, capsys):
    """`nst stylize --log` (calibrated at its default 192 px) and stylize.mjs --log (the manifest's calibration):
    the same columns, the same first loss (1e-5), a picture each;
    over 50 evaluations with float64 L-BFGS pairs on both sides, Node's history stays within 1 % of
    nst_core.optim.lbfgs's on the same bundle objective (the optimizer port), and within 5 % of `nst stylize`'s
    (float32 pairs, float64-summed objective: see bench/bench_bundle.py for why they drift apart)."""
    py_log, node_log, node64_log = tmp_path / "py.csv", tmp_path / "node.csv", tmp_path / "node64.csv"
    r = subprocess.run(CLI + ["stylize", *map(str, pngs), "-o", str(tmp_path / "py.png"), *PROBLEM,
                              "--iterations", str(EVALS), "--log", str(py_log), "--device", "cpu"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    run_node(node, "stylize.mjs", "--bundle", bundle_dir, *pngs, "-o", tmp_path / "node.png", "--size", SIZE,
             "--iterations", EVALS, "--log", node_log)
    run_node(node, "stylize.mjs", "--bundle", bundle_dir, *pngs, "-o", tmp_path / "node64.png", "--size", SIZE,
             "--iterations", EVALS, "--memory", "float64", "--log", node64_log)
    cols_py, py = read_log(py_log)
    cols_node, nd = read_log(node_log)
    assert cols_py == cols_node == ["evaluation", "seconds", "loss", "content", "style", "tv", "scale"]
    assert len(py) == len(nd) == EVALS
    with capsys.disabled():
        print(f"\nnode host vs nst stylize at {SIZE} px (calibrated): first loss {nd[0, 2]:.9g} vs {py[0, 2]:.9g}: "
              f"{abs(nd[0, 2] - py[0, 2]) / py[0, 2]:.2g} relative")
    assert abs(nd[0, 2] - py[0, 2]) <= 1e-5 * py[0, 2]
    assert np.max(np.abs(nd[:, 2] - py[:, 2]) / py[:, 2]) <= 0.05
    assert Image.open(tmp_path / "node.png").size == Image.open(tmp_path / "py.png").size

    content = preprocess(open_image(pngs[0]), SIZE)
    opt = resolve(make("stylize", size=SIZE, style_size=SIZE, style_scale=1.0))
    k = schedule.calibration(opt, Image.open(pngs[0]), Image.open(pngs[1])).size_factor
    objective = bundle.bundle_objective(bundle_dir, content, preprocess(open_image(pngs[1]), SIZE), size_factor=k)
    lo, hi = pixel_bounds(content.shape)
    result = optim.lbfgs(objective, content.astype(np.float64), EVALS, bounds=(lo.reshape(content.shape),
                                                                              hi.reshape(content.shape)),
                         history=20, memory_dtype="float64")
    py64 = np.array([h.loss for h in result.history])
    _, nd64 = read_log(node64_log)
    assert np.max(np.abs(nd64[:, 2] - py64) / py64) <= 0.01


def test_style_size_follows_the_size_as_in_nst_stylize(node, pngs, env, tmp_path):
    """A bundle made without --style-size (scream: 224 px at 192): at --size 100 the Node host's style size is
    round(224 * 100 / 192) = 117 and its k that of transfer.calibration, and its first loss equals the one
    `nst stylize --preset scream --size 100` evaluates first (its own objective) within 1e-5 relative."""
    d = tmp_path / "scream"
    r = subprocess.run(CLI + ["bundle", str(d), "--preset", "scream", "--style-scale", "1"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    run_node(node, "evaluate.mjs", "--bundle", d, *pngs, "--out", tmp_path, "--size", 100)
    got = json.loads((tmp_path / "result.json").read_text())
    problem = transfer.prepare("stylize", str(pngs[0]), str(pngs[1]), preset="scream", size=100, style_scale=1.0,
                               model=str(Path(env["NST_HOME"]) / "features.onnx"))
    cal = problem.calibration
    assert cal.style_size == 117
    assert got["style_dims"] == list(preprocess(Image.open(pngs[1]), 117).shape)
    assert got["k"] == cal.size_factor != 1
    lo, hi = problem.bounds
    loss = problem.objective(np.clip(problem.x0, lo, hi))[0]
    assert abs(got["loss"] - loss) <= 1e-5 * loss, (got["loss"], loss)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_as_in_python(node, tmp_path, orientation):
    """The Node host's readImage turns a JPEG upright as nst's open_image (PIL's exif_transpose) does: the same
    shape, and the pixels within JPEG decoders' differences (a wrong turn moves whole colour blocks)."""
    blocks = np.zeros((24, 40, 3), np.uint8)  # four flat blocks and a stripe: every flip and turn differs
    blocks[:12, :20], blocks[:12, 20:], blocks[12:, :20], blocks[12:, 20:] = (220, 30, 30), (30, 200, 40), \
        (40, 40, 210), (230, 230, 40)
    blocks[:, :4] = (250, 250, 250)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(blocks).save(path, quality=95, subsampling=0, exif=exif.tobytes())
    expected = np.asarray(open_image(path), np.float64)
    script = ("import { readImage } from './lib/image.mjs';"
              f"const im = readImage({json.dumps(str(path))});"
              "console.log(JSON.stringify({w: im.width, h: im.height, rgb: Array.from(im.rgb)}));")
    r = subprocess.run([node, "--input-type=module", "-e", script], cwd=HOST, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["h"], got["w"]) == expected.shape[:2]
    ours = np.asarray(got["rgb"], np.float64).reshape(expected.shape)
    # decoders differ by a few levels; every other flip or turn of the same shape is much further away
    others = [np.asarray(Image.fromarray(expected.astype(np.uint8)).transpose(t), np.float64)
              for t in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180)]
    assert np.abs(ours - expected).mean() < 0.2 * min(np.abs(ours - o).mean() for o in others)
