"""nst_core.api end to end: option validation, presets and style scale, feature inversion, texture, the
network cache, non-finite losses, and L-BFGS against Adam (CS231n) and torch.optim.LBFGS on CS231n's exact
starry_night problem."""
import math

import numpy as np
import pytest
from PIL import Image

from nst_core import objective as objective_module
from nst_core import api as transfer
from nst_core.errors import NSTError
from nst_core.inputs.images import open_image, preprocess
from nst_core.spec.presets import DEFAULT_STYLE_SCALE, PRESETS
from nst_core.spec import Spec, make, resolve
from nst_core.api import invert, stylize, texture
from nst_core.network import cache
from nst_core import schedule
import nst_core.schedule.problem
from nst_core.spec import LBFGS_HISTORY

FAST = dict(size=64, style_size=64, iterations=3, device="cpu")


@pytest.fixture(scope="module")
def paths(images_dir):
    return {"content": images_dir / "tubingen.jpg", "style": images_dir / "starry_night.jpg"}


# ------------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize("options, message", [
    (dict(content_weight=-1.0), "content weight must be a finite number >= 0"),
    (dict(content_weight=math.nan), "content weight must be a finite number >= 0, got nan"),
    (dict(tv_weight=math.inf), "TV weight must be a finite number >= 0, got inf"),
    (dict(style_weights=(1.0, -2.0, 3.0, 4.0)), "style weight must be a finite number >= 0"),
    (dict(style_scale=-1.0), "style scale"),
    (dict(size=0), "size must be >= 1"),
    (dict(style_size=0), "style size must be >= 1"),
    (dict(size=1.5), "size must be a whole number"),
    (dict(content_layer=13), "content layer 13 does not exist: SqueezeNet 1.1 layers are 0..12"),
    (dict(style_layers=(1, 4, 99), style_weights=(1, 1, 1)), "style layer 99 does not exist"),
    (dict(style_layers=(1, 1), style_weights=(1, 1)), "style layer 1 is given twice"),
    (dict(style_weights=(1.0, 2.0)), "2 style weights for 4 style layers"),
    (dict(style_layers=(1, 4)), "give one style weight per style layer"),
    (dict(iterations=0), "iterations must be >= 1"),
    (dict(lr=0.0), "learning rate must be a finite number > 0"),
    (dict(history=0), "L-BFGS history must be >= 1"),
    (dict(seed=-1), "seed must be >= 0"),
    (dict(optimizer="sgd"), "unknown optimizer 'sgd'"),
    (dict(init="zeros"), "unknown init 'zeros'"),
    (dict(device="tpu"), "unknown device 'tpu'"),
    (dict(preset="mona_lisa"), "unknown preset 'mona_lisa'"),
    (dict(content_weight=0.0, style_weights=(0, 0, 0, 0), tv_weight=0.0), "every loss weight is zero"),
    (dict(style_weights=(1e308, 1, 1, 1)), "overflows"),
    (dict(bogus=1), "unknown option 'bogus'"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(NSTError) as info:
        resolve(make("stylize", **options))
    text = str(info.value)
    assert message in text and "\n" not in text


def test_task_specific_options():
    with pytest.raises(NSTError, match="invert has no style image"):
        resolve(make("invert", init="style"))
    with pytest.raises(NSTError, match="texture has no content image"):
        resolve(make("texture", init="content"))
    with pytest.raises(NSTError, match="unknown option 'style_weights'"):
        resolve(make("invert", style_weights=(1.0,)))
    with pytest.raises(NSTError, match="texture needs a style weight"):
        resolve(make("texture", style_weights=(0, 0, 0, 0)))
    assert resolve(make("invert")).init == "noise"
    assert resolve(make("texture")).init == "noise"
    assert schedule.base_style_size(resolve(make("texture", size=100))) == 100  # texture: the style image at --size


def test_presets_and_style_scale():
    for name, p in PRESETS.items():
        o = resolve(make("stylize", preset=name, optimizer="adam"))  # the exercise exactly
        assert (o.size, schedule.base_style_size(o), o.content_layer, o.content_weight, o.style_layers,
                o.tv_weight) == (p["image_size"], p["style_size"], p["content_layer"], p["content_weight"],
                                    p["style_layers"], p["tv_weight"])
        assert o.style_scale == 1.0 and o.effective_style_weights == p["style_weights"]
        lb = resolve(make("stylize", preset=name))
        assert lb.style_scale == DEFAULT_STYLE_SCALE["lbfgs"]
        assert lb.effective_style_weights == tuple(w * lb.style_scale for w in p["style_weights"])
    assert PRESETS["composition_vii"]["style_weights"] == (20000, 500, 12, 1)
    assert PRESETS["scream"]["style_weights"] == (200000, 800, 12, 1)
    assert PRESETS["starry_night"]["style_weights"] == (300000, 1000, 15, 3)
    # explicit options override the preset's values
    o = resolve(make("stylize", preset="scream", content_weight=1.0, size=300, style_scale=2.0,
                         style_layers=(2, 3), style_weights=(5.0, 6.0)))
    assert (o.content_weight, o.size, schedule.base_style_size(o), o.tv_weight) == (1.0, 300, 224, 2e-2)
    assert o.effective_style_weights == (10.0, 12.0)
    assert resolve(make("stylize")).content_weight == PRESETS["starry_night"]["content_weight"]


# ------------------------------------------------------------------------------------------------ runs


def test_stylize_small(features_model, paths):
    seen, xs = [], []

    def callback(rec, x):
        seen.append(rec.evaluation)
        xs.append(np.array(x))

    image, result = stylize(paths["content"], paths["style"], model=features_model, seed=0, callback=callback, **FAST)
    assert image.dtype == np.uint8 and image.shape == (64, 85, 3)
    assert result.n_evals == 3 and seen == [1, 2, 3] and result.status == "budget"
    assert set(result.parts) == {"content", "style", "tv"}
    # the 3 L-BFGS evaluations lower the loss, and the result is the best evaluated point, its loss and its picture
    losses = [r.loss for r in result.history]
    assert result.loss < losses[0], f"3 L-BFGS evaluations did not lower the loss: {losses}"
    assert result.loss == min(losses) and result.best_evaluation == 1 + losses.index(min(losses))
    assert np.array_equal(result.x, xs[losses.index(min(losses))]), \
        f"result.x is not the x of the best evaluation ({1 + losses.index(min(losses))} of {losses})"
    rgb = result.x[0].transpose(1, 2, 0) * np.array([0.229, 0.224, 0.225]) + np.array([0.485, 0.456, 0.406])
    assert np.array_equal(image, np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)), \
        "the image is not the picture of result.x"


def test_pil_inputs_and_inits(features_model, paths):
    content, style = open_image(paths["content"]), Image.open(paths["style"]).convert("L")
    for init in ("content", "noise", "style"):
        image, result = stylize(content, style, model=features_model, init=init, seed=1, **FAST)
        assert image.shape == (64, 85, 3) and result.n_evals == 3
    a = stylize(content, style, model=features_model, init="noise", seed=5, **dict(FAST, iterations=1))[1]
    b = stylize(content, style, model=features_model, init="noise", seed=5, **dict(FAST, iterations=1))[1]
    assert a.loss == b.loss  # the seed fixes the start


@pytest.mark.parametrize("optimizer", ["lbfgsb", "adam", "gd"])
def test_other_optimizers(features_model, paths, optimizer):
    image, result = stylize(paths["content"], paths["style"], model=features_model, optimizer=optimizer, **FAST)
    assert result.optimizer == optimizer and result.n_evals == 3
    if optimizer == "lbfgsb":
        assert "restarts" in result.info and "pairs_stored" not in result.info  # SciPy's, not ours


def test_lbfgs_and_lbfgsb_minimise_the_same_problem(features_model, paths):
    """Both L-BFGS engines get the same bounds and memory from stylize and end far below the start loss."""
    runs = {name: stylize(paths["content"], paths["style"], model=features_model, optimizer=name, history=5,
                          **dict(FAST, iterations=12))[1] for name in ("lbfgs", "lbfgsb")}
    assert runs["lbfgs"].history[0].loss == runs["lbfgsb"].history[0].loss  # same objective, same start
    assert runs["lbfgs"].info["history"] == 5
    for result in runs.values():
        assert result.n_evals == 12 and result.loss < 0.5 * result.history[0].loss


def test_texture_and_invert_shapes(features_model, paths):
    image, result = texture(paths["style"], model=features_model, seed=0, **FAST)
    assert image.shape == (64, 80, 3)  # starry_night is 1280x1014: smaller edge 64
    assert all(r.parts["content"] == 0.0 for r in result.history)
    image, result = invert(paths["content"], model=features_model, seed=0, size=64, iterations=3, device="cpu")
    assert image.shape == (64, 85, 3)
    assert all(r.parts["style"] == 0.0 for r in result.history)


def test_too_small_names_the_minimum(features_model, paths):
    with pytest.raises(NSTError, match=r"--size 8 is too small for layer 7: .* at least 9 px there; use --size >= 9"):
        stylize(paths["content"], paths["style"], model=features_model, size=8, device="cpu")
    with pytest.raises(NSTError, match=r"style size 4 px is too small .* at least 9 px"):
        stylize(paths["content"], paths["style"], model=features_model, size=64, style_size=4, device="cpu")
    # shallow layers need less: 4 px is enough for layer 1 alone
    image, _ = texture(paths["style"], model=features_model, size=4, style_layers=(1,), style_weights=(1.0,),
                       iterations=1, device="cpu")
    assert min(image.shape[:2]) == 4


def test_missing_model_and_image(features_model, tmp_path, paths):
    with pytest.raises(NSTError, match="no model at .*nst export"):
        stylize(paths["content"], paths["style"], model=tmp_path / "none.onnx", **FAST)
    with pytest.raises(NSTError, match="nothing.jpg"):
        stylize(tmp_path / "nothing.jpg", paths["style"], model=features_model, **FAST)


def test_network_cache_reuses_sessions(features_model, paths):
    stylize(paths["content"], paths["style"], model=features_model, **FAST)
    cached = dict(cache._NETWORKS)
    stylize(paths["content"], paths["style"], model=features_model, **FAST)
    assert cache._NETWORKS == cached  # same keys, same Network objects


def test_nonfinite_keeps_the_best_finite_image(features_model, paths, monkeypatch):
    real = objective_module.make_objective

    def poisoned(*args, **kwargs):
        inner = real(*args, **kwargs)
        calls = [0]

        def objective(x):
            calls[0] += 1
            loss, grad, parts = inner(x)
            if calls[0] == 4:
                return math.nan, grad, parts
            return loss, grad, parts
        return objective

    monkeypatch.setattr(schedule.problem, "make_objective", poisoned)
    image, result = stylize(paths["content"], paths["style"], model=features_model,
                            **dict(FAST, iterations=10))
    assert result.status == "nonfinite" and result.n_evals == 4
    assert result.best_evaluation in (1, 2, 3) and math.isfinite(result.loss)
    assert image.dtype == np.uint8 and image.any()


# ------------------------------------------------------------------------------------------------ quality


def test_feature_inversion_from_noise(features_model, paths):
    """CS231n's inversion (layer 3, content weight 6e-2, TV 2e-2) at 192 px: the content loss falls >= 100x."""
    image, result = invert(paths["content"], model=features_model, size=192, iterations=200, seed=0, device="cpu")
    first = result.history[0].parts["content"]
    best = result.parts["content"]
    print(f"\ninversion 192 px, 200 L-BFGS evaluations: content loss {first:.6g} -> {best:.6g} "
          f"({first / best:.0f}x), total {result.history[0].loss:.6g} -> {result.loss:.6g}, "
          f"{result.history[-1].seconds:.1f} s")
    assert result.n_evals == 200
    assert first / best >= 100


def test_lbfgs_beats_adam_and_matches_torch_lbfgs(features_model, weights_path, paths):
    """CS231n's exact starry_night objective at 192 px (style scale 1), content-image init, 200 evaluations each."""
    torch = pytest.importorskip("torch")
    from torch_reference import lbfgs_run, load_net, make_loss

    exact = dict(preset="starry_night", style_scale=1.0, iterations=200, model=features_model, device="cpu")
    _, ours = stylize(paths["content"], paths["style"], **exact)
    _, adam = stylize(paths["content"], paths["style"], optimizer="adam", **exact)

    p = dict(PRESETS["starry_night"])
    content_x = preprocess(open_image(paths["content"]), p.pop("image_size"))
    style_x = preprocess(open_image(paths["style"]), p.pop("style_size"))
    torch.manual_seed(0)
    ref = lbfgs_run(make_loss(load_net(weights_path), content_x, style_x, **p), content_x, evaluations=200,
                    history=100)
    print(f"\nstarry_night 192 px, 200 evaluations: ours L-BFGS-B (history {LBFGS_HISTORY}) "
          f"{ours.loss:.6g} in {ours.history[-1].seconds:.1f} s; CS231n Adam {adam.loss:.6g} (best of its "
          f"evaluations; last {adam.history[-1].loss:.6g}); torch.optim.LBFGS(history 100) {ref['best']:.6g} "
          f"(last {ref['last']:.6g}) in {ref['seconds']:.1f} s; ours / torch = {ours.loss / ref['best']:.4f}")
    assert ours.n_evals == 200 and adam.n_evals == 200 and ref["evaluations"] == 200
    assert ours.loss < adam.loss
    assert ours.loss <= 1.02 * ref["best"]
