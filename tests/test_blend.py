"""Several styles (--style-blend): the weights, the blended Gram targets against a direct computation, a 1,0 blend
is the single-style run evaluation for evaluation, a 1,1 blend lies between its two styles, and bad blends are
one-line errors with exit status 2 at the command line."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nst_core.spec import make, resolve
from nst_core.spec import blend
from nst_core.objective import blended_grams
from nst_core import api as transfer
from nst_core.errors import NSTError
from nst_core.inputs.images import open_image, preprocess
from nst_core.network.model import Network, load_model, tap_name

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "nst"
NST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, str(REPO / "cli.py")]
FAST = dict(size=48, style_size=48, device="cpu")


@pytest.fixture(scope="module")
def paths(images_dir, features_model):
    return dict(content=images_dir / "tubingen.jpg", starry=images_dir / "starry_night.jpg",
                scream=images_dir / "the_scream.jpg", model=str(features_model))


def test_blend_weights():
    assert blend.blend_weights(None, 3) == pytest.approx((1 / 3,) * 3)
    assert blend.blend_weights((1, 3), 2) == (0.25, 0.75)
    assert blend.blend_weights((2.0, 0), 2) == (1.0, 0.0)
    assert blend.as_list("a.jpg") == ["a.jpg"] and blend.as_list(["a", "b"]) == ["a", "b"]
    for weights, n, message in [((1, 2, 3), 2, "style blend has 3 weights for 2 style images"),
                                ((1, -1), 2, "style blend weights must be finite numbers >= 0, got -1"),
                                ((0, 0), 2, "style blend weights are all zero"),
                                ((1, float("nan")), 2, "finite numbers >= 0"), ((), 1, "style blend is empty")]:
        with pytest.raises(NSTError, match=message):
            blend.blend_weights(weights, n)


def test_style_lists_in_the_api(paths):
    opts = dict(model=paths["model"], iterations=1, **FAST)
    with pytest.raises(NSTError, match="texture takes one style image"):
        transfer.texture([paths["starry"], paths["scream"]], **opts)
    with pytest.raises(NSTError, match="style blend has 2 weights for 1 style image;"):
        transfer.stylize(paths["content"], paths["starry"], style_blend=(1, 1), **opts)
    with pytest.raises(NSTError, match="unknown option 'style_blend'"):
        resolve(make("invert", style_blend=(1,)))
    one = transfer.prepare("stylize", paths["content"], [paths["starry"]], style_blend=(5,), **opts)
    plain = transfer.prepare("stylize", paths["content"], paths["starry"], **opts)
    assert one.objective(one.x0)[0] == plain.objective(plain.x0)[0]


def test_blended_grams_are_the_weighted_sum(paths):
    layers = (1, 4)
    net = Network(load_model(paths["model"], [tap_name(k) for k in layers]), [tap_name(k) for k in layers],
                  device="cpu")
    xs = [preprocess(open_image(paths[k]), 40) for k in ("starry", "scream")]  # different shapes
    got = blended_grams(net, xs, (0.25, 0.75), layers)
    for k in layers:
        grams = []
        for x in xs:
            f = net.features(x)[tap_name(k)].astype(np.float64)[0]
            c = f.shape[0]
            f = f.reshape(c, -1)
            grams.append(f @ f.T / f.size)
        expected = 0.25 * grams[0] + 0.75 * grams[1]
        assert got[k].dtype == np.float32
        assert np.abs(got[k] - expected).max() <= 1e-5 * np.abs(expected).max()


def test_blend_1_0_is_the_single_style_run(paths):
    opts = dict(model=paths["model"], iterations=8, **FAST)
    _, single = transfer.stylize(paths["content"], paths["starry"], **opts)
    _, blended = transfer.stylize(paths["content"], [paths["starry"], paths["scream"]], style_blend=(1, 0), **opts)
    assert [r.loss for r in blended.history] == [r.loss for r in single.history]
    assert [r.parts for r in blended.history] == [r.parts for r in single.history]
    assert np.array_equal(blended.x, single.x)


def test_blend_1_1_lies_between_the_two_styles(paths):
    """Each style's own style term at the 1,1 blend's result lies between its value at the run with that style
    alone and at the run with the other style alone."""
    opts = dict(model=paths["model"], iterations=40, **FAST)
    styles = (paths["starry"], paths["scream"])
    runs = {"starry": transfer.stylize(paths["content"], styles[0], **opts)[1].x,
            "scream": transfer.stylize(paths["content"], styles[1], **opts)[1].x,
            "blend": transfer.stylize(paths["content"], list(styles), style_blend=(1, 1), **opts)[1].x}
    for own, other, style in (("starry", "scream", styles[0]), ("scream", "starry", styles[1])):
        objective = transfer.prepare("stylize", paths["content"], style, **opts).objective
        term = {k: objective(x)[2]["style"] for k, x in runs.items()}
        print(f"{own}'s style term: alone {term[own]:.5g}, blend {term['blend']:.5g}, other alone {term[other]:.5g}")
        assert term[own] < term["blend"] < term[other]


def nst(*args, env):
    return subprocess.run(NST + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", ["stylize", "compare"])
@pytest.mark.parametrize("blend_arg, message", [("1,2,3", "style blend has 3 weights for 2 style images"),
                                                ("1,-1", "style blend weights must be finite numbers >= 0"),
                                                ("0,0", "style blend weights are all zero")],
                         ids=["count", "negative", "zeros"])
def test_bad_blends_at_the_command_line(paths, env, tmp_path, command, blend_arg, message):
    out = tmp_path / ("out.png" if command == "stylize" else "out")
    r = nst(command, paths["content"], paths["starry"], paths["scream"], "--style-blend", blend_arg, "-o", out,
            "--size", 32, "--style-size", 32, "--iterations", 2, env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and message in lines[0], r.stderr
    assert not out.exists()


def test_two_styles_at_the_command_line(paths, env, tmp_path):
    out = tmp_path / "blend.png"
    r = nst("stylize", paths["content"], paths["starry"], paths["scream"], "--style-blend", "3,1", "-o", out,
            "--size", 32, "--style-size", 32, "--iterations", 2, "--device", "cpu", env=env)
    assert r.returncode == 0, r.stderr
    assert out.is_file()
