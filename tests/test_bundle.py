"""The host bundle (nst_core.hosts.bundle, lossgraph.objective_model_f32 / targets_model): float32 only, its losses, TV and
gradient against the NumPy reference (float64 sums), the tree sum against float64, the manifest against the models,
atomic replacement, and `nst bundle --check` catching a changed bundle."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from nst_core.hosts import bundle
from nst_core.network import lossgraph
from nst_core.errors import NSTError
from nst_core.inputs.images import open_image, pixel_bounds, preprocess
from nst_core.losses import gram, tv_loss
from nst_core.network.model import Network, session
from nst_core.objective import make_objective, targets
from nst_core.spec import Spec, make, resolve
from test_checks import _set as set_field

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(REPO / "cli.py")]
STYLE = {"features.1": 3e5, "features.4": 1e3, "features.6": 15.0, "features.7": 3.0}


@pytest.fixture(scope="module")
def model(features_model):
    return onnx.load(features_model)


@pytest.fixture(scope="module")
def images(images_dir):
    content = preprocess(open_image(images_dir / "tubingen.jpg"), 72)
    style = preprocess(open_image(images_dir / "starry_night.jpg"), 64)
    rng = np.random.default_rng(5)
    lo, hi = pixel_bounds(content.shape)
    x = np.clip(content.astype(np.float64).ravel() + 0.3 * rng.standard_normal(content.size), lo, hi)
    return content, style, x.reshape(content.shape)


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def run_f32(m, feeds):
    sess = session(m, "cpu")
    return dict(zip(lossgraph.OUTPUTS_F32, sess.run(list(lossgraph.OUTPUTS_F32), feeds)))


def weight_feeds(content_weight, style, tv_weight):
    f = {lossgraph.CONTENT_WEIGHT: np.array(content_weight, np.float32), lossgraph.TV_WEIGHT: np.array(tv_weight,
                                                                                                      np.float32)}
    f.update({lossgraph.style_weight_input(t): np.array(w, np.float32) for t, w in style.items()})
    return f


def test_models_have_no_float64(model):
    for m in (lossgraph.objective_model_f32(model, "features.3", list(STYLE)),
              lossgraph.targets_model(model, "features.3", list(STYLE)),
              lossgraph.objective_model_f32(model, None, ["features.1"])):
        onnx.checker.check_model(m)
        assert bundle.float64_tensors(m) == []
    # the check finds the float64 sums of the original objective
    assert "content_loss" in bundle.float64_tensors(lossgraph.objective_model(model, "features.3", list(STYLE)))


@pytest.mark.parametrize("n", [1, 15, 16, 17, 4097, 2_800_000, 16 ** 6 + 3])
def test_tree_sum_of_squares_matches_float64(n):
    b = lossgraph._Builder(TensorProto.FLOAT, {}, {})
    out = lossgraph._sum_squares_f32(b, "t")
    b.nodes.append(helper.make_node("Identity", [out], ["s"]))
    g = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("t", TensorProto.FLOAT, [None])],
                          [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                          initializer=[onnx.numpy_helper.from_array(a, k) for k, a in b.constants.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    rng = np.random.default_rng(n)
    t = (rng.standard_normal(n) * rng.uniform(0.1, 3.0)).astype(np.float32)
    got = float(session(m, "cpu").run(["s"], {"t": t})[0])
    want = float(np.dot(t.astype(np.float64), t.astype(np.float64)))
    # float32 rounds the result itself to 6e-8 relative; the tree adds a few roundings of that size
    assert abs(got - want) <= 1e-6 * want


def test_objective_f32_matches_numpy_reference(model, images):
    """Losses within 1e-5 of the float64-summed NumPy losses (split path, TV in float64); gradient within the
    float64-accumulating fused model's own distance from that reference (same float32 network), or 1e-6."""
    content, style, x = images
    net = Network(model, ["features.1", "features.3", "features.4", "features.6", "features.7"], device="cpu")
    target, grams = targets(net, content, style, 3, [1, 4, 6, 7])
    ref = make_objective(net, content_target=target, content_layer=3, content_weight=6e-2, style_targets=grams,
                         style_layers=[1, 4, 6, 7], style_weights=list(STYLE.values()), tv_weight=2e-2, fused=False)
    fused = make_objective(net, content_target=target, content_layer=3, content_weight=6e-2, style_targets=grams,
                           style_layers=[1, 4, 6, 7], style_weights=list(STYLE.values()), tv_weight=2e-2)
    loss, grad, parts = ref(x)
    _, grad_fused, _ = fused(x)
    feeds = {"image": x.astype(np.float32), lossgraph.CONTENT_TARGET: target,
             **{lossgraph.gram_input(f"features.{k}"): g for k, g in grams.items()},
             **weight_feeds(6e-2, STYLE, 2e-2)}
    out = run_f32(lossgraph.objective_model_f32(model, "features.3", list(STYLE)), feeds)
    for name, want in (("loss", loss), ("content_loss", parts["content"]), ("style_loss", parts["style"]),
                       ("tv_loss", parts["tv"])):
        assert abs(float(out[name]) - want) <= 1e-5 * want, name
    assert rel(out["grad_image"], grad) <= max(1e-6, 2 * rel(grad_fused, grad))


def test_tv_term_and_its_gradient(model, images):
    """With the content and style weights at zero, loss and gradient are TV's alone: against losses.tv_loss in
    float64 on the same (float32) pixels."""
    content, _, x = images
    target = session(lossgraph.targets_model(model, "features.3", []), "cpu").run(
        None, {lossgraph.CONTENT_IMAGE: content})[0]
    feeds = {"image": x.astype(np.float32), lossgraph.CONTENT_TARGET: np.zeros_like(target),
             lossgraph.gram_input("features.1"): np.zeros((64, 64), np.float32),
             **weight_feeds(0.0, {"features.1": 0.0}, 0.7)}
    out = run_f32(lossgraph.objective_model_f32(model, "features.3", ["features.1"]), feeds)
    want, want_grad = tv_loss(x.astype(np.float32).astype(np.float64), 0.7)
    assert abs(float(out["tv_loss"]) - want) <= 1e-6 * want
    assert float(out["loss"]) == float(out["tv_loss"])
    assert rel(out["grad_image"], want_grad) <= 1e-6


def test_targets_model_matches_numpy_gram(model, images):
    content, style, _ = images
    net = Network(model, ["features.1", "features.3", "features.7"], device="cpu")
    feats_c, feats_s = net.features(content), net.features(style)
    m = lossgraph.targets_model(model, "features.3", ["features.1", "features.7"])
    sess = session(m, "cpu")
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, {lossgraph.CONTENT_IMAGE: content, lossgraph.STYLE_IMAGE: style})))
    assert names == [lossgraph.CONTENT_TARGET, "gram.features.1", "gram.features.7"]
    np.testing.assert_array_equal(out[lossgraph.CONTENT_TARGET], feats_c["features.3"])
    for t in ("features.1", "features.7"):
        want = gram(feats_s[t].astype(np.float64))
        assert rel(out[f"gram.{t}"], want) <= 1e-6


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory, features_model):
    d = tmp_path_factory.mktemp("bundle") / "b"
    opt = resolve(make("stylize", optimizer="lbfgs", size=64, style_size=64))
    manifest = bundle.write_bundle(d, opt, model_path=features_model)
    return d, manifest


def test_manifest_describes_the_models(small_bundle):
    d, manifest = small_bundle
    assert json.loads((d / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "nst-bundle" and manifest["format_version"] == 1
    for name in ("targets", "objective"):
        m = onnx.load(str(d / manifest["models"][name]["file"]))
        assert [i.name for i in m.graph.input] == [i["name"] for i in manifest["models"][name]["inputs"]]
        dtypes = {i["dtype"] for i in manifest["models"][name]["inputs"] + manifest["models"][name]["outputs"]}
        assert dtypes == {"float32"}
    obj_inputs = {i["name"] for i in manifest["models"]["objective"]["inputs"]}
    target_outputs = {o["name"] for o in manifest["models"]["targets"]["outputs"]}
    weight_inputs = {w["input"] for w in manifest["weights"]}
    assert obj_inputs == {"image"} | target_outputs | weight_inputs  # every input is an image, target or weight
    styles = {w["layer"]: w["value"] for w in manifest["weights"] if w["term"] == "style"}
    assert styles == {1: 3e7, 4: 1e5, 6: 1500.0, 7: 300.0}  # starry_night x style scale 100
    assert manifest["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert manifest["min_input_size"] >= 1 and manifest["network"]["weights_sha256"]
    lo, hi = pixel_bounds((1, 3, 1, 1))
    assert manifest["pixel_box"] == {"lo": list(lo), "hi": list(hi), "meaning": manifest["pixel_box"]["meaning"]}
    for key in ("content_image", "style_image", "image"):
        assert (d / manifest["reference"][key]).is_file()
    cal = manifest["calibration"]  # the preset's 192 px; the style size was given, so it does not follow the size
    assert cal["size"] == 192 and cal["style_size_follows_size"] is False
    assert manifest["problem"]["calibration_size"] == 192 and manifest["problem"]["style_size_given"] is True


def test_check_accepts_a_manifest_without_calibration(small_bundle, tmp_path):
    """A bundle from before the calibration section (hosts then use k = 1) still validates."""
    d = tmp_path / "old"
    shutil.copytree(small_bundle[0], d)
    manifest = json.loads((d / "manifest.json").read_text())
    del manifest["calibration"]
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert bundle.check_bundle(d)["worst"]


def test_check_passes_and_catches_changes(small_bundle, tmp_path):
    d, _ = small_bundle
    report = bundle.check_bundle(d)
    assert all(err <= report["limits"][k] for k, err in report["worst"].items())
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["reference"]["expected"]["style_loss"] *= 1.001
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NSTError, match="style_loss is off"):
        bundle.check_bundle(bad)
    manifest["reference"]["expected"]["style_loss"] /= 1.001
    manifest["weights"][0]["value"] *= 2  # the content weight: its loss no longer matches
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NSTError, match="content_loss is off"):
        bundle.check_bundle(bad)
    with open(bad / "objective.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(NSTError, match="SHA-256"):
        bundle.check_bundle(bad)


def test_rewrite_replaces_atomically_and_never_a_foreign_directory(features_model, tmp_path, env):
    d = tmp_path / "b"
    r = subprocess.run(CLI + ["bundle", str(d), "--size", "64", "--style-size", "64"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # the user's files in the bundle are kept where they are, said on stdout; the bundle's own files are replaced
    (d / "notes.txt").write_text("my notes")
    (d / "reference" / "mine.png").write_bytes(b"not nst's")
    (d / "drafts").mkdir()
    (d / "drafts" / "a.txt").write_text("draft")
    old_manifest = (d / "manifest.json").read_text()
    r = subprocess.run(CLI + ["bundle", str(d), "--preset", "scream", "--size", "64", "--calibration-size", "0"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (d / "notes.txt").read_text() == "my notes" and (d / "drafts" / "a.txt").read_text() == "draft"
    assert (d / "reference" / "mine.png").read_bytes() == b"not nst's"
    assert "kept what nst bundle did not write: drafts/a.txt, notes.txt, reference/mine.png" in r.stdout
    assert (d / "manifest.json").read_text() != old_manifest
    assert bundle.foreign_files(d) == ["drafts/a.txt", "notes.txt", "reference/mine.png"]
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["problem"]["preset"] == "scream"
    assert manifest["calibration"]["size"] == 0 and manifest["calibration"]["style_size_follows_size"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary directory left
    r = subprocess.run(CLI + ["bundle", "--check", str(d)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.jpg").write_text("x")
    for args, message in (([str(foreign)], "not an nst bundle; refusing"),
                          (["--check", str(tmp_path / "missing")], "no such bundle directory"),
                          (["--check", str(foreign)], "no manifest.json"),
                          ([str(tmp_path / "c"), "--size", "4"], "too small"),
                          ([str(tmp_path / "c"), "--calibration-size", "-1"], "calibration size")):
        r = subprocess.run(CLI + ["bundle", *args], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert (foreign / "keep.jpg").read_text() == "x"


def test_reference_images_are_hashed(small_bundle, tmp_path):
    """A reference image replaced by one of another size fails --check with one line, by its SHA-256 in the manifest
    and, for a bundle without the hashes (older ones), by its size."""
    d, manifest = small_bundle
    for key, name in bundle.REFERENCE_FILES.items():
        assert manifest["reference"][key] == name
        assert manifest["reference"]["sha256"][key] == hashlib.sha256((d / name).read_bytes()).hexdigest()
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    Image.new("RGB", (30, 20), (9, 9, 9)).save(bad / "reference" / "image.png")
    with pytest.raises(NSTError, match=r"image.png: SHA-256 differs from the manifest's reference.sha256.image"):
        bundle.check_bundle(bad)
    m = json.loads((bad / "manifest.json").read_text())
    del m["reference"]["sha256"]
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(NSTError, match=r"image.png: 30x20 px, but the content image is 64x48"):
        bundle.check_bundle(bad)


def test_manifest_schema_names_the_field(small_bundle):
    """Every field of a real manifest passes; a wrong type or range anywhere is caught and named."""
    from nst_core.hosts.manifest import validate

    _, manifest = small_bundle
    assert validate(manifest) is None

    def root(path, value):
        m = json.loads(json.dumps(manifest))
        set_field(path, value)(m)
        return m

    for path, value, field in (
            (["models", "targets", "sha256"], "abc", "models.targets.sha256"),
            (["models", "objective", "inputs", 0, "shape"], "1,3", "models.objective.inputs[0].shape"),
            (["weights", 1, "value"], -1.0, "weights[1].value"),
            (["weights", 1, "value"], True, "weights[1].value"),
            (["preprocessing", "std"], [0.2, 0.2], "preprocessing.std"),
            (["preprocessing", "std", 0], 0, "preprocessing.std[0]"),
            (["problem", "size"], 64.5, "problem.size"),
            (["problem", "style_layers", 0], 13, "problem.style_layers[0]"),
            (["optimizer"], KeyError, "optimizer"),
            (["reference", "tolerance", "grad_rtol"], 0, "reference.tolerance.grad_rtol"),
            (["reference", "content_image"], "/etc/passwd", "reference.content_image"),
            (["pixel_box", "lo"], [3.0, 3.0, 3.0], "pixel_box"),
            (["weights", 0, "input"], "nope", "weights[0].input")):
        found = validate(root(path, value))
        assert found is not None and found[0] == field, (path, value, found)


def test_user_files_survive_both_swaps_and_a_late_write(small_bundle, tmp_path, monkeypatch, features_model):
    """The user's files are kept with renameat2's exchange and with the two-rename fallback; a file written into
    the old bundle after the links were made (between them and the swap) is moved into the new one, not deleted."""
    job = resolve(make("stylize", optimizer="lbfgs", size=64, style_size=64))
    d = tmp_path / "b"
    shutil.copytree(small_bundle[0], d)
    (d / "notes.txt").write_text("mine")
    monkeypatch.setattr(bundle, "_exchange", lambda a, b: False)  # the fallback: two renames
    bundle.write_bundle(d, job, model_path=features_model)
    assert (d / "notes.txt").read_text() == "mine"
    monkeypatch.undo()
    real_keep = bundle._keep

    def keep_then_write(old, new, names):
        real_keep(old, new, names)
        (old / "late.txt").write_text("written during the swap")

    monkeypatch.setattr(bundle, "_keep", keep_then_write)
    bundle.write_bundle(d, job, model_path=features_model)
    assert (d / "notes.txt").read_text() == "mine"
    assert (d / "late.txt").read_text() == "written during the swap"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary directory left
    assert bundle.check_bundle(d)["worst"]
