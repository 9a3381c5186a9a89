"""The wiring from an option to its effect, pinned against references computed here (PIL, NumPy, hand arithmetic),
never against values the code under test produces.

Each test below failed with a bug planted by hand in the wiring it names and passed without it (see the commit that
added this file): the upsampling filter between scales, calibration's "never below the preset's own style size",
the Adam recipe's 90 % decay (in ``stylize`` and in ``compare``'s summary), ``init="style"`` (also with a style
blend) and an explicit style size scaled at the earlier scales (API and CLI).

The tests go through the public entry points (``transfer.stylize`` / ``prepare``, ``compare.compare``, ``cli.main``)
and observe the engine through two spies, the only places in this file that name where the code looks its
collaborators up at call time (re-point them there when modules move):

* ``_optimizer_sites()``: the optimizer functions (what each receives as its start ``x0``, its budget and keyword
  arguments, and what it returns);
* ``_target_site()``: ``Network.features``, through which every loss target (the content image's features, each
  style image's Gram matrices) is computed: the images the network sees as targets, i.e. the sizes actually used.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cli
from nst_core import api as transfer
from nst_core.compare import compare
from nst_core import optim
from nst_core.network import model

# the module (the package re-exports its function of the same name)
target_stage = importlib.import_module("nst_core.objective.targets")

#: ImageNet statistics, written out here (not imported) so that the references do not share the code's constants.
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
#: The normalised pixel range [0, 1] per channel, float64.
LO = (0.0 - MEAN.astype(np.float64)) / STD.astype(np.float64)
HI = (1.0 - MEAN.astype(np.float64)) / STD.astype(np.float64)

SMALL = dict(device="cpu")


# ------------------------------------------------------------------------------------------------ spies


def _optimizer_sites():
    """[(namespace, key, label)]: where ``schedule.problem`` (and through it ``schedule`` and ``compare``) looks the optimizers
    up at call time: ``optim.OPTIMIZERS[name]`` for the L-BFGS pair, ``optim.adam`` and ``optim.gradient_descent``
    as module attributes. The ONE place to re-point when the package layout changes."""
    return [(optim.OPTIMIZERS, "lbfgs", "lbfgs"), (optim.OPTIMIZERS, "lbfgsb", "lbfgsb"),
            (optim, "adam", "adam"), (optim, "gradient_descent", "gd")]


def _target_site():
    """(class, method name) through which the loss targets are computed (the content image's features, each style
    image's Gram matrices). The ONE place to re-point when the package layout changes."""
    return model.Network, "features"


@dataclasses.dataclass
class OptimizerCall:
    name: str
    x0: np.ndarray       # float64 copy of the start the optimizer received (a later scale's start materialised)
    budget: int
    kwargs: dict
    result: object = None


class Trace:
    """The events of one run, in order: ("optimise", OptimizerCall) and ("target", image shape [1, 3, h, w])."""

    def __init__(self):
        self.events = []

    @property
    def calls(self) -> list:
        return [e for kind, e in self.events if kind == "optimise"]

    def targets_by_scale(self) -> list:
        """The target image shapes (h, w) computed before each optimizer call: [[scale 1's], [scale 2's], ...]."""
        out, current = [], []
        for kind, e in self.events:
            if kind == "target":
                current.append(e)
            else:
                out.append(current)
                current = []
        return out


@pytest.fixture
def trace(monkeypatch) -> Trace:
    t = Trace()

    def wrap(label, real):
        def spy(objective, x0, budget, *args, **kwargs):
            call = OptimizerCall(label, np.array(x0, dtype=np.float64), budget, dict(kwargs))
            t.events.append(("optimise", call))
            call.result = real(objective, x0, budget, *args, **kwargs)
            return call.result
        return spy

    for where, key, label in _optimizer_sites():
        if isinstance(where, dict):
            monkeypatch.setitem(where, key, wrap(label, where[key]))
        else:
            monkeypatch.setattr(where, key, wrap(label, getattr(where, key)))

    cls, name = _target_site()
    real_features = getattr(cls, name)

    def features(self, x, *args, **kwargs):
        t.events.append(("target", tuple(np.shape(x)[2:])))
        return real_features(self, x, *args, **kwargs)

    monkeypatch.setattr(cls, name, features)
    # An empty Gram cache: style targets an earlier test made for the same images would skip the spied pass.
    monkeypatch.setattr(target_stage, "_GRAMS", collections.OrderedDict())
    return t


# ------------------------------------------------------------------------------------------------ references


def normalise(rgb_uint8: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] -> float32 [1, 3, h, w]: /255, minus MEAN, over STD (torchvision's ToTensor + Normalize)."""
    x = (rgb_uint8.astype(np.float32) / np.float32(255.0) - MEAN) / STD
    return x.transpose(2, 0, 1)[None]


def resized_normalised(path, width: int, height: int) -> np.ndarray:
    """The image at ``path`` resized by PIL (bilinear, 8-bit RGB) to exactly width x height, normalised."""
    with Image.open(path) as im:
        return normalise(np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)))


def resize_float(x: np.ndarray, width: int, height: int, resample) -> np.ndarray:
    """Normalised float [1, 3, h, w] resized per channel by PIL in float32 (mode "F") with ``resample``, clipped to
    the normalised pixel range; float64 [1, 3, height, width]."""
    out = np.empty((1, 3, height, width))
    for c in range(3):
        channel = Image.fromarray(np.ascontiguousarray(x[0, c], dtype=np.float32), mode="F")
        out[0, c] = np.clip(np.asarray(channel.resize((width, height), resample)), LO[c], HI[c])
    return out


@pytest.fixture(scope="module")
def paths(images_dir):
    return {"content": images_dir / "tubingen.jpg", "style": images_dir / "starry_night.jpg",
            "scream": images_dir / "the_scream.jpg"}


def _save(path: Path, width: int, height: int, seed: int) -> Path:
    """A smooth random RGB picture of width x height (blocks of colour upsampled), saved as PNG."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    Image.fromarray(blocks).resize((width, height), Image.Resampling.BILINEAR).save(path)
    return path


# ------------------------------------------------------------------------------------------------ 1. upsampling


def test_later_scale_starts_from_the_bicubic_upsampled_best_image(features_model, paths, trace):
    """scales=2 at size 96: the first scale is 96 / 2 = 48 px; the second scale's optimizer starts from the first
    scale's best x resized bicubic in float32 (PIL mode "F") per channel to the 96 px shape, clipped to the pixel
    range; not bilinear."""
    image, result = transfer.stylize(paths["content"], paths["style"], model=features_model, scales=2, size=96,
                                     style_size=64, iterations=3, seed=0, **SMALL)
    first, second = trace.calls
    # Tübingen is 1024 x 768: smaller edge 48 -> 48 x int(48 * 1024 / 768) = 48 x 64; 96 -> 96 x 128
    assert first.x0.shape == (1, 3, 48, 64) and second.x0.shape == (1, 3, 96, 128)
    assert image.shape == (96, 128, 3)
    best = first.result.x
    bicubic = resize_float(best, 128, 96, Image.Resampling.BICUBIC)
    bilinear = resize_float(best, 128, 96, Image.Resampling.BILINEAR)
    assert np.abs(bicubic - bilinear).max() > 0.05  # the reference can tell the two filters apart
    err = np.abs(second.x0 - bicubic).max()
    assert err < 1e-6, (f"scale 2 does not start from the bicubic upsampling of scale 1's best image (max diff "
                        f"{err:.3g}; from the bilinear one: {np.abs(second.x0 - bilinear).max():.3g})")


# ------------------------------------------------------------------------------------------------ 2. calibration


def test_default_style_size_never_falls_below_the_presets_own(features_model, paths, tmp_path, trace):
    """composition_vii (image size 192, style size 512) at size 200 with a 400 x 300 painting: the preset's
    proportion asks round(512 * 200 / 192) = 533 px, more than the file's 300 px, so the style size is capped; but
    never below the preset's own 512: the painting is seen at 512 x int(512 * 400 / 300) = 512 x 682 (not 300 x
    400)."""
    style = _save(tmp_path / "painting_400x300.png", 400, 300, seed=1)
    problem = transfer.prepare("stylize", paths["content"], style, model=features_model, preset="composition_vii",
                               size=200, iterations=1, **SMALL)
    # content 1024 x 768 at 200 -> 200 x int(200 * 1024 / 768) = 200 x 266; the style target at 512 x 682
    assert sorted(e for k, e in trace.events if k == "target") == [(200, 266), (512, 682)]  # any order
    assert problem.calibration.style_size == 512

    trace.events.clear()
    target_stage._GRAMS.clear()  # the prepare above filled the Gram cache for this painting
    image, _ = transfer.stylize(paths["content"], style, model=features_model, preset="composition_vii", size=200,
                                iterations=1, **SMALL)
    assert image.shape == (200, 266, 3)
    assert sorted(e for k, e in trace.events if k == "target") == [(200, 266), (512, 682)]  # any order


# ------------------------------------------------------------------------------------------------ 3. Adam's decay


def test_adam_recipe_decays_at_90_percent_of_the_budget(features_model, paths, trace):
    """Budget 20: CS231n's steps 180 / 190 of 200 scale to 18 / 19 (0-based): lr 3 until the evaluation of step 18,
    a fresh Adam at 3 / 30 = 0.1 from there, x clamped to [-1.5, 1.5] before the evaluations of steps 0..18."""
    xs = []
    transfer.stylize(paths["content"], paths["style"], model=features_model, optimizer="adam", size=64,
                     style_size=64, iterations=20, callback=lambda rec, x: xs.append(np.array(x)), **SMALL)
    (call,) = trace.calls
    assert call.name == "adam" and call.budget == 20
    assert call.kwargs["lr"] == 3.0 and call.kwargs["decayed_lr"] == pytest.approx(0.1)
    assert (call.kwargs["decay_at"], call.kwargs["clamp_until"]) == (18, 19)
    assert tuple(call.kwargs["clamp"]) == (-1.5, 1.5)

    # the same seen in the iterates (xs[t]: the x evaluated at 0-based step t). The updates after steps 0..17 are
    # lr 3's (the largest pixel move measured 3.0 falling to 1.04 at step 17); the one after step 18 is the first of a
    # fresh Adam at 0.1, which moves a pixel by lr * |g| / (|g| + eps) <= 0.1 (an Adam at 0.1 in its first few steps
    # moves a pixel by well under 0.5)
    moves = [float(np.abs(b - a).max()) for a, b in zip(xs, xs[1:])]
    assert len(xs) == 20
    assert min(moves[:18]) > 0.5, f"the steps up to evaluation 19 are lr 3's: largest pixel moves {moves}"
    assert 0.09 < moves[18] <= 0.1 + 1e-9, f"the step from evaluation 19 to 20 is the fresh lr 0.1's: {moves}"
    assert all(np.abs(x).max() <= 1.5 for x in xs[:19])


def test_compare_reports_and_runs_the_90_percent_decay(features_model, paths, tmp_path, trace):
    """``compare``'s adam run is the same recipe, and its summary says so: decay at 18, clamp until 19 of 20."""
    summary = compare(paths["content"], paths["style"], tmp_path / "c", optimizers="adam", iterations=20,
                      checkpoints=(), model=features_model, size=64, style_size=64, **SMALL)
    settings = summary["optimizers"]["adam"]["settings"]
    assert (settings["decay_at"], settings["clamp_until"]) == (18, 19)
    assert settings["lr"] == 3.0 and settings["decayed_lr"] == pytest.approx(0.1)
    (call,) = trace.calls
    assert (call.kwargs["decay_at"], call.kwargs["clamp_until"]) == (18, 19)


# ------------------------------------------------------------------------------------------------ 4. init="style"


def test_init_style_starts_from_the_style_image(features_model, paths, trace):
    """init="style": the optimizer starts from the style image resized (PIL bilinear, 8-bit) to the output's exact
    shape (Tübingen at 64 px: 64 x 85) and normalised; not from the photo."""
    image, _ = transfer.stylize(paths["content"], paths["style"], model=features_model, init="style", size=64,
                                style_size=64, iterations=1, **SMALL)
    (call,) = trace.calls
    assert image.shape == (64, 85, 3) and call.x0.shape == (1, 3, 64, 85)
    expected = resized_normalised(paths["style"], 85, 64)
    photo = resized_normalised(paths["content"], 85, 64)
    assert np.abs(expected - photo).max() > 1.0
    err = np.abs(call.x0 - expected).max()
    assert err < 1e-5, (f"init style: the start is not the style image (max diff {err:.3g}; from the photo: "
                        f"{np.abs(call.x0 - photo).max():.3g})")


@pytest.mark.parametrize("blend, heaviest", [((1.0, 3.0), "scream"), ((3.0, 1.0), "style")])
def test_init_style_with_a_blend_starts_from_the_most_heavily_weighted_style(features_model, paths, trace, blend,
                                                                            heaviest):
    transfer.stylize(paths["content"], [paths["style"], paths["scream"]], model=features_model, init="style",
                     style_blend=blend, size=64, style_size=64, iterations=1, **SMALL)
    (call,) = trace.calls
    assert call.x0.shape == (1, 3, 64, 85)
    expected = resized_normalised(paths[heaviest], 85, 64)
    err = np.abs(call.x0 - expected).max()
    assert err < 1e-5, f"style_blend {blend}: the start is not {paths[heaviest].name} (max diff {err:.3g})"


# ------------------------------------------------------------------------------------------------ 5. --style-size


@pytest.fixture
def square_style_pair(tmp_path):
    """A 2:1 content picture and a square style picture: the style targets are the square ones."""
    return _save(tmp_path / "content_2x1.png", 200, 100, seed=2), _save(tmp_path / "style_sq.png", 120, 120, seed=3)


def _squares(shapes) -> list:
    return [h for h, w in shapes if h == w]


def test_explicit_style_size_is_scaled_at_the_earlier_scales(features_model, square_style_pair, trace):
    """scales=2, size 96, style_size 80: the scales are 48 and 96 px; the given style size is the last scale's, and
    the first scale's is round(80 * 48 / 96) = 40."""
    content, style = square_style_pair
    image, _ = transfer.stylize(content, style, model=features_model, scales=2, size=96, style_size=80,
                                whole_weight=0, iterations=2, **SMALL)
    assert image.shape == (96, 192, 3)
    per_scale = trace.targets_by_scale()
    assert len(per_scale) == 2
    assert [_squares(s) for s in per_scale] == [[40], [80]], per_scale
    assert [[s for s in scale if s[0] != s[1]] for scale in per_scale] == [[(48, 96)], [(96, 192)]]


def test_cli_style_size_is_scaled_at_the_earlier_scales(features_model, square_style_pair, tmp_path, trace):
    """The same through ``nst stylize --scales 2 --size 96 --style-size 80`` (default whole-picture term: its targets
    are the first scale's, 40 px, too)."""
    content, style = square_style_pair
    out = tmp_path / "out.png"
    rc = cli.main(["stylize", str(content), str(style), "-o", str(out), "--scales", "2", "--size", "96",
                   "--style-size", "80", "--iterations", "2", "--device", "cpu", "--model", str(features_model),
                   "--quiet"])
    assert rc == 0
    with Image.open(out) as im:
        assert im.size == (192, 96)
    first, second = [_squares(s) for s in trace.targets_by_scale()]
    assert first == [40], trace.targets_by_scale()
    assert 80 in second and set(second) <= {40, 80}, trace.targets_by_scale()
