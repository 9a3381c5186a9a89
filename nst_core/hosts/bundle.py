"""The host bundle: a directory that a program in any language drives with plain ONNX Runtime calls.

    DIR/manifest.json        what everything is (format version, models' inputs / outputs, preprocessing, the
                             pixel box, the weights and their inputs, minimum size, weights' SHA-256, reference)
    DIR/targets.onnx         content_image -> content_target; style_image -> gram.<tap>   (lossgraph.targets_model)
    DIR/objective.onnx       image + targets + weights -> loss, content_loss, style_loss, tv_loss, grad_image
                             (lossgraph.objective_model_f32)
    DIR/reference/*.png      a small case: content, style and an evaluation point, with the expected results in
                             the manifest, for a host's own integration test

Both models are float32 only (no float64 input, output, initializer or intermediate: ORT's WebAssembly and mobile
builds have no double kernels). The expected values of the reference case come from the NumPy reference
(``make_objective(fused=False)``: NumPy Gram matrices and losses with float64 sums, TV in float64, the split VJP),
not from the bundle's models, so ``check_bundle`` tests the models against an independent computation.

``write_bundle`` builds into a temporary directory beside DIR and then swaps it in (``renameat2`` with
RENAME_EXCHANGE where the kernel has it, else two renames), so DIR is never a half-written bundle. Files in an old
bundle that nst did not write (a user's notes.txt) are hard-linked into the new one before the swap, so they stay
where the user put them and are never only in the directory being deleted (``foreign_files``, ``_keep``).
The manifest's fields are checked against one schema (``hosts.manifest``) whenever a bundle is read.
docs/hosts.md describes the contract for hosts.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from PIL import Image

from ..network import lossgraph
from ..network.shapes import min_side
from ..objective import make_objective, targets
from ..schedule.calibration import STYLE_SIZE_LIMIT, base_style_size
from ..spec.spec import DEFAULT_ITERATIONS, LBFGS_HISTORY, Spec
from ..network import model as _model
from ..errors import NSTError
from ..inputs.images import MEAN, STD, pixel_bounds, preprocess, sha256_file
from ..process.interrupts import sigint_deferred
from . import manifest as _schema

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "write_bundle", "check_bundle", "bundle_objective",
           "float64_tensors", "reference_case", "grad_checksums", "load_manifest",
           "foreign_files", "BUNDLE_FILES"]

FORMAT = "nst-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TARGETS = "targets.onnx"
OBJECTIVE = "objective.onnx"
#: Reference case: image sizes (height, width); the content image and the evaluation point share theirs.
REFERENCE_SIZE = (48, 64)
REFERENCE_STYLE_SIZE = (40, 40)
#: Tolerances a host's reference run is held to (relative; the signed gradient sums relative to sum |grad|).
REFERENCE_TOLERANCE = {"loss_rtol": 1e-5, "grad_rtol": 1e-4, "targets_rtol": 1e-5}
#: The reference images: manifest key -> file in the bundle.
REFERENCE_FILES = {"content_image": "reference/content.png", "style_image": "reference/style.png",
                   "image": "reference/image.png"}
#: Every file ``write_bundle`` writes (relative paths); anything else in a bundle directory is the user's and is kept.
BUNDLE_FILES = frozenset({MANIFEST, TARGETS, OBJECTIVE, *REFERENCE_FILES.values()})
#: The weighting of the signed gradient checksum: w_i = ((i mod 13) - 6) / 6 over the flat NCHW order.
CHECKSUM_PERIOD = 13


# ---------------------------------------------------------------------------------------------------------------
# Model facts


def float64_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of every float64 thing in `model`: inputs, outputs, initializers, inferred intermediate tensors,
    Cast nodes to double and Constant / ConstantOfShape values. Empty for a float32-only model."""
    double = TensorProto.DOUBLE
    found = []
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == double:
            found.append(vi.name)
    found += [t.name for t in g.initializer if t.data_type == double]
    for n in g.node:
        for a in n.attribute:
            if (a.name == "to" and n.op_type == "Cast" and a.i == double) or (a.t.data_type == double and
                                                                               a.type == onnx.AttributeProto.TENSOR):
                found.append(f"{n.op_type} node {n.name}")
    return sorted(set(found))


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in vi.type.tensor_type.shape.dim]


def _io(m: onnx.ModelProto) -> dict:
    def one(vi):
        return {"name": vi.name, "dtype": helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name,
                "shape": _dims(vi)}
    return {"inputs": [one(vi) for vi in m.graph.input], "outputs": [one(vi) for vi in m.graph.output]}


def grad_checksums(grad: np.ndarray) -> dict:
    """Checksums of a gradient [1, 3, H, W] (flat NCHW order): L2 norm, sum of |g|, and sum of w_i g_i with
    w_i = ((i mod 13) - 6) / 6, which changes when the layout or the channel order is wrong. float64 sums."""
    g = np.asarray(grad, dtype=np.float64).ravel()
    w = (np.arange(g.size) % CHECKSUM_PERIOD - (CHECKSUM_PERIOD // 2)) / (CHECKSUM_PERIOD // 2)
    return {"grad_l2": float(np.linalg.norm(g)), "grad_abs_sum": float(np.abs(g).sum()),
            "grad_weighted_sum": float(np.dot(w, g))}


# ---------------------------------------------------------------------------------------------------------------
# The reference case


def _reference_images() -> dict:
    """Three small deterministic RGB uint8 images [h, w, 3]: content (smooth colour fields and a disc), style
    (diagonal stripes with grain) and the evaluation point (the content image with noise)."""
    rng = np.random.default_rng(20261201)
    h, w = REFERENCE_SIZE
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    disc = ((yy - 0.55) ** 2 + (xx - 0.4) ** 2 < 0.08).astype(float)
    content = np.stack([0.2 + 0.6 * xx, 0.3 + 0.5 * np.sin(3 * yy) * (1 - disc) + 0.6 * disc, 0.8 - 0.6 * yy], -1)
    sh, sw = REFERENCE_STYLE_SIZE
    sy, sx = np.mgrid[0:sh, 0:sw]
    stripes = (np.sin((sx + sy) * 0.7) > 0).astype(float)
    style = np.stack([0.9 * stripes + 0.1, 0.5 - 0.3 * stripes, 0.2 + 0.6 * (1 - stripes)], -1)
    style += 0.08 * rng.standard_normal(style.shape)
    start = content + 0.1 * rng.standard_normal(content.shape)
    return {k: np.rint(np.clip(v, 0, 1) * 255).astype(np.uint8) for k, v in
            (("content", content), ("style", style), ("image", start))}


def _weights_feed(problem: dict) -> dict:
    """{input name: float value} of the objective's weight inputs from the manifest's problem section."""
    return {w["input"]: float(w["value"]) for w in problem["weights"]}


def reference_case(network, problem: dict, images: dict) -> dict:
    """The expected results of the reference case, from the NumPy reference objective (split path).

    ``network``: a ``model.Network`` with the problem's taps; ``images``: uint8 [h, w, 3] "content", "style",
    "image". Returns the expected losses, gradient checksums (``grad_checksums``) and target L2 norms."""
    content_x, style_x = preprocess(images["content"], None), preprocess(images["style"], None)
    layer = problem["content_layer"]
    style_layers = problem["style_layers"]
    content_target, grams = targets(network, content_x if problem["content_tap"] else None,
                                    style_x if style_layers else None, layer if layer is not None else 0,
                                    style_layers)
    weights = _weights_feed(problem)
    objective = make_objective(
        network, content_target=content_target, content_layer=layer if layer is not None else 0,
        content_weight=weights.get(lossgraph.CONTENT_WEIGHT, 0.0), style_targets=grams, style_layers=style_layers,
        style_weights=[weights[lossgraph.style_weight_input(_model.tap_name(k))] for k in style_layers],
        tv_weight=weights[lossgraph.TV_WEIGHT], fused=False)
    loss, grad, parts = objective(preprocess(images["image"], None).astype(np.float64))
    expected = {"loss": float(loss), "content_loss": float(parts["content"]), "style_loss": float(parts["style"]),
                "tv_loss": float(parts["tv"])}
    expected.update(grad_checksums(grad))
    tl2 = {}
    if content_target is not None:
        tl2[lossgraph.CONTENT_TARGET] = float(np.linalg.norm(content_target.astype(np.float64)))
    for k, g in grams.items():
        tl2[lossgraph.gram_input(_model.tap_name(k))] = float(np.linalg.norm(g.astype(np.float64)))
    expected["targets_l2"] = tl2
    return expected


# ---------------------------------------------------------------------------------------------------------------
# Writing


def _problem(job: Spec) -> dict:
    """The manifest's problem section from a resolved stylize job."""
    content_tap = _model.tap_name(job.content_layer) if job.content_weight else None
    style = [(k, w) for k, w in zip(job.style_layers, job.effective_style_weights) if w]
    weights = []
    if content_tap:
        weights.append({"term": "content", "layer": job.content_layer, "input": lossgraph.CONTENT_WEIGHT,
                        "value": job.content_weight})
    for k, w in style:
        weights.append({"term": "style", "layer": k, "input": lossgraph.style_weight_input(_model.tap_name(k)),
                        "value": w})
    weights.append({"term": "tv", "layer": None, "input": lossgraph.TV_WEIGHT, "value": job.tv_weight})
    return {"preset": job.preset, "content_layer": job.content_layer if content_tap else None,
            "content_tap": content_tap, "style_layers": [k for k, _ in style],
            "style_taps": [_model.tap_name(k) for k, _ in style], "style_scale": job.style_scale,
            "style_weights_unscaled": [w for k, w in zip(job.style_layers, job.style_weights)
                                       if w * job.style_scale],
            "weights": weights, "size": job.size, "style_size": base_style_size(job),
            "style_size_given": job.style_size is not None, "calibration_size": job.calibration_size}


def _calibration(problem: dict) -> dict:
    """The manifest's calibration section: how a host rescales the weights and the style size with the output size,
    as ``schedule.calibration`` does for ``nst stylize`` (one scale; the coarse-to-fine schedule is Python's)."""
    return {
        "size": problem["calibration_size"],
        "weights_rule": "k = (h_c * w_c) / (h * w). (h, w) is the output's shape: the content image resized so that "
                        "its smaller edge is the content size, the longer edge int(size * long / short) (the "
                        "division in floating point, truncated); (h_c, w_c) the same with calibration.size in place "
                        "of the content size. Multiply the content and tv weight inputs (weights' terms content and "
                        "tv) by k; style weights unchanged. calibration.size 0 or no calibration section: k = 1",
        "style_size_follows_size": bool(problem["calibration_size"]) and not problem["style_size_given"],
        "style_size_rule": "when style_size_follows_size is true and the host's style size is not given explicitly: "
                           "style size = round_half_even(style_size * size / calibration.size), style_size the "
                           "manifest's preprocessing.resize.style_size and size the content size; when that is larger "
                           "than style_size, at most max(style_size, min(style_size_limit, the style file's smaller "
                           "edge)); unchanged when size equals calibration.size",
        "style_size_limit": STYLE_SIZE_LIMIT,
        "scales": "one: a host paints at the content size only, as nst stylize --scales 1 (nst's coarse-to-fine "
                  "schedule, used above 1.5 x calibration.size by default, is not part of the bundle)",
        "computed_by": "nst_core.schedule.calibration (k: nst_core.losses.size_factor)",
    }


def _manifest(problem: dict, features: onnx.ModelProto, models: dict, files: dict, min_size: int,
              expected: dict, reference_sha256: dict) -> dict:
    meta = _model.metadata(features)
    lo, hi = pixel_bounds((1, 3, 1, 1))
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created_by": "nst bundle (nst_core.bundle)",
        "network": {"name": meta.get("model", "squeezenet1_1 features"),
                    "weights_sha256": meta.get("weights_sha256"), "taps": sorted(
                        set(problem["style_taps"]) | ({problem["content_tap"]} if problem["content_tap"] else set()))},
        "problem": {k: v for k, v in problem.items() if k != "weights"},
        "weights": [dict(w, model="objective", dtype="float32") for w in problem["weights"]],
        "preprocessing": {
            "color_order": "RGB", "layout": "NCHW", "batch": 1,
            "resize": {"rule": "smaller edge to size, the other int(size * long / short) (truncated)",
                       "filter": "Pillow BILINEAR on the 8-bit image (triangle filter widened by the scale factor "
                                 "when shrinking, 22-bit fixed-point weights, horizontal pass first)",
                       "content_size": problem["size"], "style_size": problem["style_size"]},
            "scale": 1.0 / 255.0, "mean": list(MEAN), "std": list(STD),
            "formula": "x[c] = (v[c] / 255 - mean[c]) / std[c], in float32",
            "deprocess": "v = round(255 * clip(x * std + mean, 0, 1))"},
        "calibration": _calibration(problem),
        "pixel_box": {"lo": [float(v) for v in lo], "hi": [float(v) for v in hi],
                      "meaning": "per channel, the normalised values of pixel 0 and 1: project the image onto it"},
        "min_input_size": min_size,
        "models": {name: dict({"file": files[name], "sha256": sha256_file(files[name + "_path"])}, **_io(m))
                   for name, m in models.items()},
        "optimizer": {"name": "lbfgs", "history": LBFGS_HISTORY, "step": "armijo", "lr": 1.0, "c1": 1e-4,
                      "max_backtracks": 10, "iterations": DEFAULT_ITERATIONS, "init": "content",
                      "reference": "nst_core.optim.lbfgs"},
        "reference": {**REFERENCE_FILES, "sha256": reference_sha256,
                      "how": "decode each PNG (RGB, no resize), normalise as preprocessing says; run targets on "
                             "content_image / style_image, then objective at image with the weights above",
                      "expected": expected, "tolerance": dict(REFERENCE_TOLERANCE),
                      "grad_weighted_sum": f"sum_i ((i mod {CHECKSUM_PERIOD}) - 6) / 6 * grad_i, flat NCHW order",
                      "computed_by": "the NumPy reference objective (float64 sums), not these models"},
    }


def _is_bundle_dir(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def foreign_files(directory) -> list[str]:
    """The files in a bundle directory that ``write_bundle`` did not write (relative paths, sorted): a user's notes,
    say. ``write_bundle`` keeps them. Empty for a directory that does not exist."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        return []
    found = []
    for base, dirs, files in os.walk(root):
        rel = Path(base).relative_to(root)
        for name in files + [n for n in dirs if os.path.islink(os.path.join(base, n))]:
            if (rel / name).as_posix() not in BUNDLE_FILES:
                found.append((rel / name).as_posix())
        dirs[:] = [n for n in dirs if not os.path.islink(os.path.join(base, n))]
        if rel != Path(".") and not files and not dirs:
            found.append(rel.as_posix() + "/")  # an empty directory of the user's
    return sorted(found)


def _keep(old: Path, new: Path, names: list[str]) -> None:
    """Hard-link (copy, where links fail) the user's files `names` of the old bundle `old` into the new one `new`,
    before the swap: whatever happens next, each is in one of the two directories, never only in one being deleted."""
    for name in names:
        src, dst = old / name, new / name
        try:
            if name.endswith("/"):
                dst.mkdir(parents=True, exist_ok=True)
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst, follow_symlinks=False)
            except OSError:  # another file system (a mount point), or one without hard links
                shutil.copy2(src, dst, follow_symlinks=False)
        except OSError as e:
            raise NSTError(f"{old}: cannot keep {name}, which nst bundle did not write ({e.strerror or e}); nothing "
                           f"was changed: move it out of the bundle and run again") from None


def _swap_in(tmp: Path, final: Path) -> None:
    """Put the finished bundle `tmp` at `final`, replacing an old bundle there and keeping the files in it that
    are not the bundle's (``foreign_files``); removes the old bundle's own files."""
    with sigint_deferred():
        if not final.exists():
            os.rename(tmp, final)
            return
        _keep(final, tmp, foreign_files(final))
        if _exchange(tmp, final):
            _remove_old(tmp, final)   # tmp now holds the old bundle
            return
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.rename(final, old / final.name)
        os.rename(tmp, final)
        _remove_old(old / final.name, final)
        os.rmdir(old)


def _remove_old(old: Path, final: Path) -> None:
    """Delete the old bundle `old` after the swap. A file that appeared in it after the user's files were linked
    into the new bundle (written meanwhile) is moved into `final` rather than deleted."""
    late = [n for n in foreign_files(old) if not os.path.lexists(final / n.rstrip("/"))]
    for name in late:
        (final / name).parent.mkdir(parents=True, exist_ok=True)
        os.rename(old / name.rstrip("/"), final / name.rstrip("/"))
    shutil.rmtree(old, ignore_errors=True)


def write_bundle(directory, job: Spec, model_path=None, progress=None) -> dict:
    """Write the bundle of the resolved stylize job `job` to
    `directory`, replacing an existing bundle atomically. Returns the manifest. NSTError for a directory that
    exists and is not a bundle (it is never deleted), a parent that does not exist, or a missing model.
    Files in an old bundle that nst bundle did not write (``foreign_files``: a user's notes) are kept in place."""
    final = Path(directory).expanduser().absolute()
    if final.exists() and not final.is_dir():
        raise NSTError(f"{final}: exists and is not a directory")
    if final.is_dir() and any(final.iterdir()) and not _is_bundle_dir(final):
        raise NSTError(f"{final}: exists, is not empty and is not an nst bundle; refusing to replace it")
    if not final.parent.is_dir():
        raise NSTError(f"{final}: directory {final.parent} does not exist")
    if not os.access(final.parent, os.W_OK | os.X_OK):
        raise NSTError(f"{final}: directory {final.parent} is not writable")
    problem = _problem(job)
    taps = list(dict.fromkeys(([problem["content_tap"]] if problem["content_tap"] else []) + problem["style_taps"]))
    if not taps:
        raise NSTError("the bundle needs a content or style weight > 0")
    features = _model.load_model(_model.find_model(model_path or job.model), taps)
    min_size = min_side(features, taps)
    for what, side in (("size", job.size), ("style size", base_style_size(job))):
        if side < min_size:
            raise NSTError(f"{what} of {side} px is too small: the network needs at least {min_size} px")
    models = {"targets": lossgraph.targets_model(features, problem["content_tap"], problem["style_taps"]),
              "objective": lossgraph.objective_model_f32(features, problem["content_tap"], problem["style_taps"])}
    for name, m in models.items():
        onnx.checker.check_model(m)
        bad = float64_tensors(m)
        if bad:  # a bug, not a user error
            raise RuntimeError(f"{name} model has float64 tensors: {bad[:5]}")
    if progress:
        progress("models built; computing the reference case")
    images = _reference_images()
    expected = reference_case(_model.Network(features, taps, device="cpu"), problem, images)

    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        files = {}
        for name, m in models.items():
            files[name] = f"{name}.onnx"
            files[name + "_path"] = tmp / files[name]
            onnx.save(m, str(files[name + "_path"]))
        (tmp / "reference").mkdir()
        for key, arr in images.items():
            Image.fromarray(arr).save(tmp / "reference" / f"{key}.png")
        ref_sha = {k: sha256_file(tmp / f) for k, f in REFERENCE_FILES.items()}
        manifest = _manifest(problem, features, models, files, min_size, expected, ref_sha)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        os.chmod(tmp, 0o777 & ~_umask())
        _swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------------------------
# Checking


def load_manifest(directory) -> tuple[Path, dict]:
    """(bundle directory, its manifest) after checking the format and version; NSTError otherwise."""
    d = Path(directory).expanduser()
    path = d / MANIFEST
    if not d.is_dir():
        raise NSTError(f"{d}: no such bundle directory")
    try:
        manifest = json.loads(path.read_text())
    except OSError:
        raise NSTError(f"{d}: no {MANIFEST}; make a bundle with: nst bundle {d}") from None
    except ValueError as e:
        raise NSTError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise NSTError(f"{path}: not an nst bundle manifest (format {manifest.get('format')!r})"
                       if isinstance(manifest, dict) else f"{path}: not an nst bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise NSTError(f"{path}: format version {manifest.get('format_version')!r}, this nst reads "
                       f"{FORMAT_VERSION}")
    bad = _schema.validate(manifest)
    if bad:
        raise NSTError(f"{path}: field {bad[0]} {bad[1]}; remake the bundle: nst bundle {d} [options]")
    return d, manifest


def _rel_err(got: float, want: float, scale: float | None = None) -> float:
    return abs(got - want) / max(abs(scale if scale is not None else want), 1e-30)


def _reference_inputs(d: Path, ref: dict) -> dict:
    """The reference images, normalised: {manifest key: float32 [1, 3, h, w]}, after their SHA-256 (when the
    manifest has them: bundles from before it do not) and their sizes are checked."""
    x = {}
    for key in REFERENCE_FILES:
        p = d / ref[key]
        if not p.is_file():
            raise NSTError(f"{p}: missing (the reference case's {key})")
        if "sha256" in ref and sha256_file(p) != ref["sha256"][key]:
            raise NSTError(f"{p}: SHA-256 differs from the manifest's reference.sha256.{key} (the image was changed); "
                           f"remake the bundle: nst bundle {d} [options]")
        try:
            with Image.open(p) as im:
                x[key] = preprocess(np.asarray(im.convert("RGB")), None)
        except (OSError, ValueError, SyntaxError) as e:
            raise NSTError(f"{p}: cannot read the reference image ({' '.join(str(e).split())})") from None
    if x["image"].shape != x["content_image"].shape:
        raise NSTError(f"{d / ref['image']}: {x['image'].shape[3]}x{x['image'].shape[2]} px, but the content image is "
                       f"{x['content_image'].shape[3]}x{x['content_image'].shape[2]}: they must be the same size")
    return x


def _run_reference(d: Path, manifest: dict, sessions: dict, x: dict) -> tuple[dict, dict]:
    """({target name: array}, {objective output: array}) of the reference case; NSTError when a model refuses it."""
    t_names = [o["name"] for o in manifest["models"]["targets"]["outputs"]]
    t_feeds = {i["name"]: x[i["name"]] for i in manifest["models"]["targets"]["inputs"]}  # names: the schema's
    try:
        targets = dict(zip(t_names, sessions["targets"].run(t_names, t_feeds)))
        feeds = dict(targets, image=x["image"])
        for w in manifest["weights"]:
            feeds[w["input"]] = np.array(w["value"], dtype=np.float32)
        o_names = [o["name"] for o in manifest["models"]["objective"]["outputs"]]
        got = dict(zip(o_names, sessions["objective"].run(o_names, feeds)))
    except Exception as e:  # ONNX Runtime's errors (shapes, names) come as several exception types
        raise NSTError(f"{d}: the reference case does not run ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:200]})") from None
    missing = [k for k in lossgraph.OUTPUTS_F32 if k not in got] + [k for k in manifest["reference"]["expected"][
        "targets_l2"] if k not in targets]
    if missing:
        raise NSTError(f"{d}: the models do not output {missing[0]}; remake the bundle: nst bundle {d} [options]")
    return targets, got


def check_bundle(directory) -> dict:
    """Validate a bundle against its manifest: files present with their SHA-256, models load in ONNX Runtime
    with the declared inputs and outputs and no float64, and the reference case reproduces within the manifest's
    tolerances. Returns {"worst": {quantity: relative error}, ...}; NSTError (one line) on the first problem."""
    d, manifest = load_manifest(directory)
    sessions = {}
    for name in ("targets", "objective"):
        info = manifest["models"][name]
        path = d / info["file"]
        if not path.is_file():
            raise NSTError(f"{path}: missing")
        if sha256_file(path) != info["sha256"]:
            raise NSTError(f"{path}: SHA-256 differs from the manifest's (the file was changed)")
        try:
            m = onnx.load(str(path))
        except Exception as e:
            raise NSTError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
        if _io(m) != {"inputs": info["inputs"], "outputs": info["outputs"]}:
            raise NSTError(f"{path}: inputs / outputs differ from the manifest's")
        bad = float64_tensors(m)
        if bad:
            raise NSTError(f"{path}: has float64 tensors ({', '.join(bad[:3])})")
        sessions[name] = _model.session(m, "cpu")
    x = _reference_inputs(d, manifest["reference"])
    targets, got = _run_reference(d, manifest, sessions, x)
    exp, tol = manifest["reference"]["expected"], manifest["reference"]["tolerance"]
    worst = {}
    for k in ("loss", "content_loss", "style_loss", "tv_loss"):
        worst[k] = _rel_err(float(got[k]), exp[k])
    sums = grad_checksums(got["grad_image"])
    worst["grad_l2"] = _rel_err(sums["grad_l2"], exp["grad_l2"])
    worst["grad_abs_sum"] = _rel_err(sums["grad_abs_sum"], exp["grad_abs_sum"])
    worst["grad_weighted_sum"] = _rel_err(sums["grad_weighted_sum"], exp["grad_weighted_sum"], exp["grad_abs_sum"])
    for k, v in exp["targets_l2"].items():
        worst[k] = _rel_err(float(np.linalg.norm(targets[k].astype(np.float64))), v)
    limits = {k: tol["loss_rtol"] if "loss" in k else tol["grad_rtol"] if k.startswith("grad") else
              tol["targets_rtol"] for k in worst}
    for k, err in worst.items():
        if not err <= limits[k]:
            raise NSTError(f"{d}: reference case: {k} is off by {err:.3g} relative (tolerance {limits[k]:g})")
    return {"directory": str(d), "worst": worst, "limits": limits}


# ---------------------------------------------------------------------------------------------------------------
# A Python host of a bundle (tests and benchmarks: the same models that other hosts run)


def bundle_objective(directory, content_x: np.ndarray, style_x: np.ndarray, device: str = "cpu",
                     size_factor: float = 1.0):
    """``objective(x) -> (loss, grad, parts)`` over the bundle's objective.onnx, with the targets of
    ``content_x`` / ``style_x`` (float32 [1, 3, h, w] normalised, e.g. ``imageio.preprocess``) from its
    targets.onnx and the manifest's weights, the content and tv weights times ``size_factor`` (the calibration's k,
    as a host applies it: ``schedule.calibration``): the optimizers of ``nst_core.optim`` can run it. x float64
    [1, 3, H, W] (H, W those of content_x); grad float32 as the model returns it."""
    d, manifest = load_manifest(directory)
    targets = _model.session(onnx.load(str(d / manifest["models"]["targets"]["file"])), device)
    objective = _model.session(onnx.load(str(d / manifest["models"]["objective"]["file"])), device)
    images = {lossgraph.CONTENT_IMAGE: content_x, lossgraph.STYLE_IMAGE: style_x}
    t_in = [i["name"] for i in manifest["models"]["targets"]["inputs"]]
    t_out = [o["name"] for o in manifest["models"]["targets"]["outputs"]]
    feeds = dict(zip(t_out, targets.run(t_out, {k: np.ascontiguousarray(images[k], np.float32) for k in t_in})))
    for w in manifest["weights"]:
        k = size_factor if w["term"] in ("content", "tv") else 1.0
        feeds[w["input"]] = np.array(w["value"] * k, dtype=np.float32)

    def run(x: np.ndarray):
        feeds["image"] = np.ascontiguousarray(x, dtype=np.float32)
        loss, content, style, tv, grad = objective.run(list(lossgraph.OUTPUTS_F32), feeds)
        return float(loss), grad, {"content": float(content), "style": float(style), "tv": float(tv)}

    return run
