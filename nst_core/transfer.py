"""The Python API: style transfer, feature inversion and texture synthesis (the CLI is a thin layer over it).

    image, result = stylize("tubingen.jpg", "starry_night.jpg")              # Starry Night on Tübingen
    image, result = stylize(content, style, preset="scream", optimizer="adam")   # the CS231n exercise exactly
    image, result = invert("tubingen.jpg")                                    # reconstruct from layer-3 features
    image, result = texture("starry_night.jpg", size=256)                     # a texture of the painting

``image`` is uint8 [h, w, 3] (RGB, the best evaluated point, clipped to the valid range); ``result`` is the
optimizer's ``nst_core.optim.Result`` (``result.x`` normalised float64 [1, 3, h, w], ``result.history`` one record
per objective evaluation with the loss and its parts "content", "style", "tv", ``result.status`` one of budget,
converged, interrupted (Ctrl-C: the best image so far is still returned), nonfinite).

Options (keyword arguments; None means "the preset's value" / the default shown)
    preset          CS231n parameter set for ``stylize``: composition_vii, scream, starry_night (default starry_night)
    size            smaller edge of the output image in pixels (content image, or the style image for ``texture``)
    style_size      smaller edge of the style image when its Gram matrices are computed (pixels); default: the
                    preset's, scaled with ``size`` (``preset style_size * size / calibration_size``, never beyond
                    the style file's smaller edge when that enlarges it; exactly the preset's at its own size)
    calibration_size  the size (smaller edge, px) at which the weights mean what they say (default: the preset's
                    image size, 192); at another size the content and TV weights are multiplied by
                    ``losses.size_factor`` (pixels at calibration_size / pixels at size); 0: no rescaling
    scales          "auto" or N >= 1: the coarse-to-fine schedule (``nst_core.schedule``): auto is one scale up to
                    1.5 x calibration_size and more above; 1 is a single scale at ``size``
    whole_weight    stylize and texture with several scales: weight of the first scale's style term on the picture
                    downsampled to the first scale, kept at every later scale (``nst_core.pyramid``; default
                    ``WHOLE_WEIGHT``, 1: as much as at the first scale; 0: off)
    content_layer   SqueezeNet ``features`` index 0..12 of the content loss
    content_weight  weight of the content loss (>= 0)
    style_layers    sequence of ``features`` indices 0..12 of the style loss
    style_weights   one weight (>= 0) per style layer, in CS231n units
    style_scale     multiplies every style weight; default ``presets.DEFAULT_STYLE_SCALE[optimizer]`` (lbfgs and
                    lbfgsb 100, gd 100, adam 1)
    tv_weight       weight of the total-variation loss (>= 0)
    init            start image: "content", "noise" (uniform(0, 1) in normalised space, CS231n's init_random) or
                    "style" (the style image resized to the output's shape; of several, the most heavily weighted)
    optimizer       "lbfgs" (our NumPy L-BFGS, projected onto the pixel range; ``optim.lbfgs``), "lbfgsb" (SciPy's
                    L-BFGS-B with the pixel bounds), "adam" (CS231n's recipe) or "gd"
    iterations      objective evaluations (the budget), >= 1; with several scales, the first scale's (the later
                    ones get fewer: ``schedule.budgets``)
    lr              adam: initial learning rate (default 3.0; the recipe switches to lr/30 at 90% of the
                    evaluations and clamps to [-1.5, 1.5] until 95%, i.e. steps 180 and 190 of 200);
                    gd: step size (default ``GD_LR``); ignored by lbfgs and lbfgsb; with several scales, the
                    first scale's (the later ones: ``schedule.learning_rates``)
    history         L-BFGS memory (correction pairs) of lbfgs and lbfgsb, default ``LBFGS_HISTORY`` (the later scales
                    of a schedule keep fewer unless it is given: ``schedule.histories``)
    seed            seed of the noise initialisation (None: fresh randomness)
    device          "auto", "cpu" or "cuda" (ONNX Runtime execution provider)
    model           path of features.onnx (default: $NST_HOME or the cache directory, see ``nst_core.model``)
    callback        ``callback(record, x)`` after every evaluation (``optim`` semantics; x is read-only)
    original_colors stylize: "off" (default), "luminance" (transfer on luminance, the content's chroma kept) or
                    "match" (the style's colours matched to the content's first); ``nst_core.colour``
    style_blend     stylize: one weight >= 0 per style image when ``style`` is a list (normalised to sum 1;
                    default equal); each layer's target Gram matrix is the blend of the styles'; ``nst_core.blend``
    pooling         "max" (default, SqueezeNet's) or "avg": the network's max pools become average pools
                    (``nst_core.pooling``)

Every option is validated before any image is decoded or any model loaded; problems raise ``NSTError`` with a
one-line message. Networks (ONNX Runtime sessions) are cached per (model file, taps, device), so repeated calls in
one process reuse them; a cached network keeps the tensors of its last forward pass for the backward pass, so do not
run two optimisations on the same (model, taps, device) from different threads at once.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Callable

import numpy as np
from PIL import Image

from . import blend, colour, optim
from . import model as _model
from . import pooling as _pooling
from .errors import NSTError
from .imageio import deprocess, open_image, pixel_bounds, preprocess, resized_shape
from .losses import size_factor
from .objective import active_layers, make_objective, single_threaded_blas, targets
from .presets import INVERSION, PRESETS, TEXTURE, default_style_scale, preset as _preset

__all__ = ["stylize", "invert", "texture", "prepare", "Problem", "validate_options", "clear_cache", "optimise",
           "calibration", "NUM_LAYERS",
           "LBFGS_HISTORY", "ADAM_LR", "GD_LR", "DEFAULT_ITERATIONS", "WHOLE_WEIGHT", "STYLE_SIZE_LIMIT", "INITS", "DEVICES", "check_layer", "min_side"]

#: Layers are 0 .. NUM_LAYERS-1 (torchvision's SqueezeNet 1.1 ``features`` modules).
NUM_LAYERS = 13
#: L-BFGS memory used unless ``history`` is given.
LBFGS_HISTORY = 20
#: Adam's initial learning rate (CS231n); the recipe's second rate is ADAM_LR / 30 = 0.1.
ADAM_LR = 3.0
#: Gradient descent's default step size (normalised pixel units per unit of gradient); measured on the presets at
#: 192 px with style scale 100: 5e-5 decreases the loss steadily, 1e-4 oscillates, 1e-3 diverges.
GD_LR = 5e-5
#: Objective evaluations unless ``iterations`` is given.
DEFAULT_ITERATIONS = 200
#: The default style size follows the output size up to this many pixels (smaller edge), unless the preset's own
#: style size is larger. Measured at --size 1024 (starry_night, Tübingen, default schedule; bench_printsize's up-close
#: measure, the style term at the picture's own size as a share of the photo's, against the painting at 512 / 768 /
#: 1014 px): with the painting at the file's 1014 px at the last scale 22.7 / 15.5 / 0.11 %, capped at 512 px
#: 0.10 / 2.0 / 16 %. Both pictures look painted side by side; at 1014 px the network also copies the file's finest
#: detail (canvas grain, JPEG blocks), seen as coloured speckles, which are gone at 512 px. 512 is also the largest
#: style size of the CS231n presets.
STYLE_SIZE_LIMIT = 512
#: Default ``whole_weight`` (see ``nst_core.pyramid``).
WHOLE_WEIGHT = 1.0
INITS = ("content", "noise", "style")
DEVICES = ("auto", "cpu", "cuda")

_NETWORKS: dict = {}
_MIN_SIZES: dict = {}


def clear_cache() -> None:
    """Drop the cached networks (ONNX Runtime sessions) and probed minimum sizes."""
    _NETWORKS.clear()
    _MIN_SIZES.clear()


# ---------------------------------------------------------------------------------------------------------------
# Validation (no I/O beyond looking up onnxruntime's providers)


def _weight(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise NSTError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise NSTError(f"{what} must be a finite number >= 0, got {value:g}")
    return value


def _whole(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise NSTError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    if value < minimum:
        raise NSTError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def check_layer(value, what: str = "layer") -> int:
    """``value`` as an int if it is a SqueezeNet 1.1 layer (0..12); NSTError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < NUM_LAYERS:
        raise NSTError(f"{what} {value!r} does not exist: SqueezeNet 1.1 layers are 0..{NUM_LAYERS - 1}")
    return int(value)


def _choice(value, what: str, choices) -> str:
    if value not in choices:
        raise NSTError(f"unknown {what} {value!r} (choose {', '.join(choices)})")
    return value


def validate_options(task: str, **options) -> dict:
    """Fill in defaults (preset, style scale, ...) and check every option; returns the complete option dict.

    ``task``: "stylize", "invert" or "texture". Raises ``NSTError`` (one line) for an unknown option or preset,
    a negative / NaN / infinite weight or scale, a size or iteration count < 1, an unknown layer (valid
    0..12), a style layer given twice, style weights whose count differs from the style layers', an unknown
    init / optimizer / device, a non-positive learning rate, an L-BFGS history < 1, a negative seed, an init
    the task has no image for, or all weights zero; an unknown original-colors mode or pooling, a negative,
    non-finite or all-zero style blend (its count is checked against the styles by ``prepare`` / ``stylize``).
    Also raises for ``device="cuda"`` without onnxruntime-gpu.
    """
    allowed = {"preset", "size", "style_size", "content_layer", "content_weight", "style_layers", "style_weights",
               "style_scale", "tv_weight", "init", "optimizer", "iterations", "lr", "history", "seed", "device",
               "model", "callback", "original_colors", "style_blend", "pooling", "calibration_size", "scales",
               "whole_weight"}
    if task == "invert":
        allowed -= {"preset", "style_size", "style_layers", "style_weights", "style_scale", "original_colors",
                    "style_blend", "whole_weight"}
    elif task == "texture":
        allowed -= {"preset", "content_layer", "content_weight", "original_colors", "style_blend"}
    elif task != "stylize":
        raise ValueError(f"unknown task {task!r}")
    unknown = sorted(k for k, v in options.items() if k not in allowed and v is not None)
    if unknown:
        raise NSTError(f"{task}: unknown option {unknown[0]!r}")
    opt = {k: v for k, v in options.items() if v is not None}

    if task == "stylize":
        name = opt.get("preset")
        if name is not None and name not in PRESETS:
            raise NSTError(f"unknown preset {name!r} (choose {', '.join(PRESETS)})")
        base = _preset(name)
        base.update(init="content")
    elif task == "invert":
        base = dict(INVERSION, style_layers=(), style_weights=(), init="noise")
    else:
        base = dict(TEXTURE, content_layer=0, content_weight=0.0, init="noise")

    out = {"task": task, "preset": opt.get("preset") if task == "stylize" else None}
    out["optimizer"] = _choice(opt.get("optimizer", "lbfgs"), "optimizer", tuple(optim.OPTIMIZERS))
    out["size"] = _whole(opt.get("size", base["image_size"]), "size", 1)
    out["style_size"] = _whole(opt.get("style_size", base.get("style_size", out["size"])), "style size", 1)
    out["style_size_given"] = "style_size" in opt
    out["calibration_size"] = _whole(opt.get("calibration_size", base["image_size"]), "calibration size", 0)
    scales = opt.get("scales", "auto")
    out["scales"] = scales if scales == "auto" else _whole(scales, "scales (auto or a number)", 1)
    out["content_layer"] = check_layer(opt.get("content_layer", base["content_layer"]), "content layer")
    out["content_weight"] = _weight(opt.get("content_weight", base["content_weight"]), "content weight")
    layers = opt.get("style_layers", base["style_layers"])
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise NSTError(f"style layers must be a sequence of layer numbers, got {layers!r}")
    out["style_layers"] = tuple(check_layer(v, "style layer") for v in layers)
    for i, layer in enumerate(out["style_layers"]):
        if layer in out["style_layers"][:i]:
            raise NSTError(f"style layer {layer} is given twice")
    weights = opt.get("style_weights")
    if weights is None:
        if "style_layers" in opt and tuple(opt["style_layers"]) != tuple(base["style_layers"]):
            raise NSTError(f"style layers {','.join(map(str, out['style_layers']))} differ from the defaults; "
                           f"give one style weight per style layer too")
        weights = base["style_weights"]
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
        raise NSTError(f"style weights must be a sequence of numbers, got {weights!r}")
    weights = tuple(_weight(w, "style weight") for w in weights)
    if len(weights) != len(out["style_layers"]):
        raise NSTError(f"{len(weights)} style weights for {len(out['style_layers'])} style layers "
                       f"({','.join(map(str, out['style_layers'])) or 'none'}); give one weight per layer")
    out["style_weights"] = weights
    out["style_scale"] = _weight(opt.get("style_scale", default_style_scale(out["optimizer"])), "style scale")
    out["tv_weight"] = _weight(opt.get("tv_weight", base["tv_weight"]), "TV weight")
    out["whole_weight"] = 0.0 if task == "invert" else _weight(opt.get("whole_weight", WHOLE_WEIGHT), "whole weight")

    out["init"] = _choice(opt.get("init", base["init"]), "init", INITS)
    if task == "invert" and out["init"] == "style":
        raise NSTError("invert has no style image: use init content or noise")
    if task == "texture" and out["init"] == "content":
        raise NSTError("texture has no content image: use init noise or style")
    out["iterations"] = _whole(opt.get("iterations", DEFAULT_ITERATIONS), "iterations", 1)
    lr = opt.get("lr")
    if lr is not None:
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
            raise NSTError(f"learning rate must be a finite number > 0, got {lr!r}")
        lr = float(lr)
    out["lr"] = lr
    out["history"] = _whole(opt.get("history", LBFGS_HISTORY), "L-BFGS history", 1)
    out["history_given"] = "history" in opt
    seed = opt.get("seed")
    out["seed"] = None if seed is None else _whole(seed, "seed", 0)
    out["device"] = _choice(opt.get("device", "auto"), "device", DEVICES)
    out["model"] = opt.get("model")
    callback = opt.get("callback")
    if callback is not None and not callable(callback):
        raise NSTError("callback must be callable")
    out["callback"] = callback
    out["original_colors"] = colour.check_mode(opt.get("original_colors", "off"))
    out["style_blend"] = blend.check_blend(opt["style_blend"]) if "style_blend" in opt else None
    out["pooling"] = _pooling.check_pooling(opt.get("pooling", "max"))

    if task == "texture":
        out["content_weight"] = 0.0
    out["effective_style_weights"] = tuple(w * out["style_scale"] for w in weights)
    if any(math.isinf(w) for w in out["effective_style_weights"]):
        raise NSTError("style weight x style scale overflows; use smaller values")
    if out["content_weight"] == 0.0 and not any(out["effective_style_weights"]) and out["tv_weight"] == 0.0:
        raise NSTError("every loss weight is zero: nothing to optimise")
    if task == "invert" and out["content_weight"] == 0.0:
        raise NSTError("invert needs a content weight > 0")
    if task == "texture" and not any(out["effective_style_weights"]):
        raise NSTError("texture needs a style weight > 0")
    _model.providers(out["device"])  # NSTError now (not after the images) for cuda without onnxruntime-gpu
    return out


# ---------------------------------------------------------------------------------------------------------------
# Model and images


def _model_key(path) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_mtime_ns, st.st_size)


def _out_side(n: int, node, attrs: dict) -> int:
    """Output length along one spatial axis of a Conv / pooling node for input length ``n`` (<= 0: invalid)."""
    k = int(attrs["kernel_shape"][0])
    s = int((attrs.get("strides") or [1])[0])
    d = int((attrs.get("dilations") or [1])[0])
    pads = attrs.get("pads") or [0, 0, 0, 0]
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return -(-n // s)
    pb, pe = (0, 0) if auto_pad == "VALID" else (int(pads[0]), int(pads[len(pads) // 2]))
    span = n + pb + pe - (d * (k - 1) + 1)
    if span < 0 and node.op_type == "Conv":
        return 0
    ceil = bool(attrs.get("ceil_mode", 0))
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and out > 0 and (out - 1) * s >= n + pb:  # the last window must start inside the input
        out -= 1
    return out


def min_side(onnx_model, taps) -> int:
    """Smallest image side (pixels) for which ``onnx_model`` produces non-empty ``taps`` (tap names).

    Computed from the Conv / pooling arithmetic of the graph (floor, or ceil for ``ceil_mode``), without running
    it: ONNX Runtime can crash (SIGFPE) on inputs too small for a pooling layer. Other operators are assumed
    to keep the spatial size (ReLU, Concat, element-wise ops); global pools give 1."""
    from onnx import helper

    weight_dims = {t.name: list(t.dims) for t in onnx_model.graph.initializer}
    nodes = []
    for n in onnx_model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv" and "kernel_shape" not in attrs:  # optional for Conv: the weight's [.., kh, kw]
            attrs["kernel_shape"] = weight_dims.get(n.input[1], [1, 1, 1, 1])[2:] or [1]
        nodes.append((n, attrs))

    def valid(side: int) -> bool:
        sizes = {_model.INPUT: side}
        for node, attrs in nodes:
            ins = [sizes[i] for i in node.input if i in sizes]
            if not ins:
                continue
            if node.op_type in ("Conv", "MaxPool", "AveragePool", "LpPool"):
                out = _out_side(ins[0], node, attrs)
            elif node.op_type in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
                out = 1
            else:
                out = max(ins)
            if min(ins) <= 0:
                out = 0
            for o in node.output:
                sizes[o] = out
        return all(sizes.get(t, 0) > 0 for t in taps)

    for side in range(1, 4097):
        if valid(side):
            return side
    raise NSTError(f"the model cannot compute {', '.join(taps)} at any size up to 4096 px")


def _network(path, layers, device, pooling: str = "max"):
    """The cached ``Network`` for (model file, layers, device, pooling), and the minimum input side for those
    layers (the same for both poolings: kernel, strides, pads and ceil_mode are kept)."""
    taps = tuple(_model.tap_name(k) for k in layers)
    key = (_model_key(path), taps, device) + (() if pooling == "max" else (pooling, _pooling.AVG_SCALE))
    net = _NETWORKS.get(key)
    min_key = (key[0], taps)
    if net is None or min_key not in _MIN_SIZES:
        onnx_model = _model.load_model(path, taps)
        if min_key not in _MIN_SIZES:
            _MIN_SIZES[min_key] = min_side(onnx_model, taps)
        if net is None:
            net = _model.Network(_pooling.with_pooling(onnx_model, pooling), taps, device=device)
            _NETWORKS[key] = net
    return net, _MIN_SIZES[min_key]


def _min_size(path, layers) -> int:
    """Smallest input side (pixels) for which the model at ``path`` computes every one of ``layers`` (cached)."""
    taps = tuple(_model.tap_name(k) for k in layers)
    key = (_model_key(path), taps)
    if key not in _MIN_SIZES:
        _MIN_SIZES[key] = min_side(_model.load_model(path, taps), taps)
    return _MIN_SIZES[key]


def _open(source, what: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, bytes, os.PathLike)):
        return open_image(source)
    raise TypeError(f"{what} must be a path or a PIL image, got {type(source).__name__}")


def _check_size(side: int, minimum: int, what: str, layers) -> None:
    if side < minimum:
        raise NSTError(f"{what} of {side} px is too small for layer {max(layers)}: the network needs at least "
                       f"{minimum} px there (use a size >= {minimum})")


# ---------------------------------------------------------------------------------------------------------------
# The engine


def _box(shape) -> tuple[np.ndarray, np.ndarray]:
    """``pixel_bounds`` as two read-only float64 views of ``shape`` [1, 3, h, w] over 3 values each (no full-size
    arrays: 48 bytes per pixel less than ``pixel_bounds(shape)``)."""
    lo, hi = pixel_bounds((1, 3, 1, 1))
    return np.broadcast_to(lo.reshape(1, 3, 1, 1), shape), np.broadcast_to(hi.reshape(1, 3, 1, 1), shape)


def _optimise(objective, x0: np.ndarray, opt: dict) -> optim.Result:
    budget, callback = opt["iterations"], opt["callback"]
    name = opt["optimizer"]
    if name in ("lbfgs", "lbfgsb"):
        return optim.OPTIMIZERS[name](objective, x0, budget, bounds=_box(x0.shape), history=opt["history"],
                                      callback=callback)
    if name == "adam":
        lr = ADAM_LR if opt["lr"] is None else opt["lr"]
        return optim.adam(objective, x0, budget, lr=lr, decay_at=round(0.9 * budget), decayed_lr=lr / 30.0,
                          clamp=(-1.5, 1.5), clamp_until=round(0.95 * budget), callback=callback)
    return optim.gradient_descent(objective, x0, budget, lr=GD_LR if opt["lr"] is None else opt["lr"],
                                  bounds=_box(x0.shape), callback=callback)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One prepared optimisation problem: everything an optimizer needs, built once, optimisable many times.

    Attributes
    ----------
    objective : callable
        ``objective(x) -> (loss, grad, parts)``: x float64 [1, 3, h, w] (ImageNet-normalised pixels), loss a
        float, grad float64 [1, 3, h, w], parts ``{"content", "style", "tv"}`` (floats, unitless loss terms).
    x0 : ndarray, float64 [1, 3, h, w], read-only
        The start image (``options["init"]``), normalised; NOT yet clipped to ``bounds`` (each optimizer projects
        its own copy onto its box). At a later scale of ``nst_core.schedule`` an array-like with ``shape`` that
        makes the upsampled start only when an optimizer copies it (``np.array(x0)``).
    bounds : (ndarray, ndarray), float64 [1, 3, h, w] each
        The normalised [0, 1] pixel range (``imageio.pixel_bounds``), as L-BFGS-B and gradient descent use it
        (read-only broadcast views of one value per channel).
    options : dict
        The validated options (``validate_options``); ``options["optimizer"]`` etc. say how ``stylize`` would
        optimise it.
    finish : callable
        ``finish(x) -> uint8 [h, w, 3]``: the picture of an optimised x: ``imageio.deprocess``, or with
        ``original_colors="luminance"`` its luminance joined with the content's chroma (``colour.recombine``).
    """

    objective: Callable
    x0: np.ndarray
    bounds: tuple
    options: dict
    finish: Callable = deprocess


def _resized(image, width: int, height: int):
    """A PIL image or a float [H, W, 3] array resized (bilinear) to exactly width x height."""
    if isinstance(image, Image.Image):
        return image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32))
                                .resize((width, height), Image.Resampling.BILINEAR)) for c in range(3)], axis=2)


def calibration(opt: dict, image: Image.Image, style_image: Image.Image | None = None) -> dict:
    """The size-dependent values of validated options ``opt`` for an output made from ``image`` (the content
    image, or the style image for texture) at ``opt["size"]``: ``{"size_factor": k, "content_weight",
    "tv_weight": the weights times k, "style_size": px, "pixels", "calibration_pixels"}``.

    k = ``losses.size_factor`` (pixels of the output at calibration_size / at size; 1 when calibration_size is 0
    or equals size). The style size, unless given explicitly (stylize only), keeps the preset's proportion to the
    output: ``round(style_size * size / calibration_size)``, never enlarged beyond ``STYLE_SIZE_LIMIT`` or the
    style file's smaller edge, whichever is smaller (nor below the preset's own value) when that is larger than
    the preset's value."""
    h, w = resized_shape(image.width, image.height, opt["size"])
    cal = opt["calibration_size"]
    cal_pixels = math.prod(resized_shape(image.width, image.height, cal)) if cal else 0
    k = size_factor(h * w, cal_pixels)
    style_size = opt["style_size"]
    if cal and opt["task"] == "stylize" and not opt["style_size_given"] and opt["size"] != cal:
        scaled = max(1, round(style_size * opt["size"] / cal))
        if scaled > style_size:
            limit = STYLE_SIZE_LIMIT if style_image is None else min(STYLE_SIZE_LIMIT, min(style_image.size))
            scaled = min(scaled, max(style_size, limit))
        style_size = scaled
    return {"size_factor": k, "content_weight": opt["content_weight"] * k, "tv_weight": opt["tv_weight"] * k,
            "style_size": style_size, "pixels": h * w, "calibration_pixels": cal_pixels}


def _prepare(opt: dict, content=None, style=None) -> Problem:
    """Load the model and images, compute the targets and build the objective for validated options ``opt``."""
    model_path = _model.find_model(opt["model"])  # NSTError (how to make one) before decoding any image
    styles = blend.as_list(style)
    if opt["task"] == "texture" and len(styles) > 1:
        raise NSTError("texture takes one style image")
    weights = blend.blend_weights(opt.get("style_blend"), len(styles)) if styles else ()
    content_pil = _open(content, "content") if content is not None else None
    style_pils = [_open(s, "style") for s in styles]
    # the size rules see the files' own sizes; of several styles, the smallest caps the style size
    smallest = min(style_pils, key=lambda im: min(im.size)) if style_pils else None
    cal = calibration(opt, content_pil if content_pil is not None else smallest, smallest)
    opt = dict(opt, calibration=cal)
    content_img, style_imgs = colour.network_images(opt.get("original_colors", "off"), content_pil, style_pils)

    style_weights = opt["effective_style_weights"]
    layers = active_layers(opt["content_layer"], opt["content_weight"], opt["style_layers"], style_weights)
    network = None
    if layers:
        # sizes first (graph arithmetic only), before the ORT sessions are built. The style image goes through
        # the same network, which computes every active layer (ORT can die with SIGFPE on an input too small for
        # one of them), so its minimum is that of all the layers too.
        minimum = _min_size(model_path, layers)
        _check_size(opt["size"], minimum, "size", layers)
        if any(style_weights):
            _check_size(cal["style_size"], minimum, "style size", layers)
        network, _ = _network(model_path, layers, opt["device"], opt.get("pooling", "max"))

    # the output's shape: the content image at `size`, or (texture) the style image at `size`
    base_x = preprocess(content_img if content_pil is not None else style_imgs[0], opt["size"])
    style_xs = []
    if style_imgs and any(style_weights):  # each style on its own at the style size; weight-0 styles skipped
        style_xs = [preprocess(s, cal["style_size"]) if w else None for s, w in zip(style_imgs, weights)]
    content_x = base_x if content_pil is not None and opt["content_weight"] else None
    content_target, grams = (None, {})
    if network is not None:
        with single_threaded_blas():
            content_target, _ = targets(network, content_x, None, opt["content_layer"], ())
            if style_xs:
                grams = blend.blended_grams(network, style_xs, weights,
                                            [k for k, w in zip(opt["style_layers"], style_weights) if w])

    if opt["init"] == "content" or (opt["init"] == "style" and content_pil is None):
        x0 = base_x.astype(np.float64)
    elif opt["init"] == "noise":
        rng = np.random.default_rng(opt["seed"])
        x0 = rng.uniform(0.0, 1.0, size=base_x.shape)
        if opt.get("original_colors") == "luminance":
            x0 = colour.grey_normalised(x0)
    else:  # the (most heavily weighted) style image resized to the output's exact shape
        h, w = base_x.shape[2:]
        x0 = preprocess(_resized(style_imgs[int(np.argmax(weights))], w, h), None).astype(np.float64)

    objective = make_objective(network, content_target=content_target, content_layer=opt["content_layer"],
                               content_weight=cal["content_weight"], style_targets=grams,
                               style_layers=opt["style_layers"], style_weights=style_weights,
                               tv_weight=cal["tv_weight"])
    x0.flags.writeable = False
    finish = colour.finisher(opt.get("original_colors", "off"), content_pil)
    return Problem(objective=objective, x0=x0, bounds=_box(x0.shape), options=opt, finish=finish)


def prepare(task: str, content=None, style=None, **options) -> Problem:
    """Validate ``options`` (see the module docstring) and build the problem of ``task`` without optimising it.

    ``task``: "stylize" (needs ``content`` and ``style``: one image or a list, blended by ``style_blend``), "invert"
    (``content``) or "texture" (``style``, one image); images are paths or PIL images. Returns a ``Problem`` whose objective and start image several optimizers can share
    (``nst_core.compare`` does); ``stylize(...)`` is ``prepare("stylize", ...)`` followed by the optimizer of
    ``options["optimizer"]``. Raises ``NSTError`` like ``stylize``.
    """
    opt = validate_options(task, **options)
    if task != "texture" and content is None:
        raise NSTError(f"{task} needs a content image")
    if task != "invert" and not blend.as_list(style):
        raise NSTError(f"{task} needs a style image")
    if task == "stylize":  # the blend's count, before any image is decoded
        blend.blend_weights(opt["style_blend"], len(blend.as_list(style)))
    return _prepare(opt, content=content if task != "texture" else None, style=style if task != "invert" else None)


def optimise(problem: Problem) -> optim.Result:
    """Run ``problem.options["optimizer"]`` on ``problem`` (its budget ``iterations``, its ``callback``), as
    ``stylize`` does: one BLAS thread, no NumPy overflow warnings (non-finite values end the run with status
    "nonfinite")."""
    with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _optimise(problem.objective, problem.x0, problem.options)


def _run(opt: dict, content=None, style=None) -> tuple[np.ndarray, optim.Result]:
    """Shared by stylize / invert / texture once ``opt`` is validated: prepare the problem and optimise it, or run
    the coarse-to-fine schedule (``nst_core.schedule``) when it has more than one scale. Returns the picture
    (``Problem.finish`` of the best x: uint8 [h, w, 3]) and the result."""
    from . import schedule  # it builds on this module

    _model.find_model(opt["model"])  # NSTError (how to make one) before decoding any image
    content = _open(content, "content") if content is not None else None
    styles = [_open(s, "style") for s in blend.as_list(style)]
    style = (styles if len(styles) > 1 else styles[0]) if styles else None
    schedule.check_memory(opt, content if content is not None else styles[0])  # before any work
    if len(schedule.sides(opt)) > 1:
        return schedule.run(opt, content=content, style=style)
    problem = _prepare(opt, content=content, style=style)
    result = optimise(problem)
    return problem.finish(result.x), result


def stylize(content, style, **options) -> tuple[np.ndarray, optim.Result]:
    """Paint ``content`` in the style of ``style`` (paths or PIL images; ``style`` may be a list of them, blended
    by ``style_blend``); see the module docstring for options.

    Defaults: preset starry_night's sizes, layers and weights, init "content", L-BFGS with 200 evaluations and
    style scale 100 (Adam: 1, i.e. CS231n exactly). Returns ``(image uint8 [h, w, 3], Result)``; h, w: the
    content image with its smaller edge resized to ``size``.
    """
    opt = validate_options("stylize", **options)
    blend.blend_weights(opt["style_blend"], len(blend.as_list(style)))  # the count, before decoding any image
    return _run(opt, content=content, style=style)


def invert(content, **options) -> tuple[np.ndarray, optim.Result]:
    """Feature inversion: reconstruct ``content`` from its features at ``content_layer`` (style weights 0).

    Defaults (CS231n): size 192, content layer 3, content weight 6e-2, TV weight 2e-2, init "noise",
    L-BFGS with 200 evaluations. Returns ``(image uint8 [h, w, 3], Result)``.
    """
    opt = validate_options("invert", **options)
    return _run(opt, content=content)


def texture(style, **options) -> tuple[np.ndarray, optim.Result]:
    """Texture synthesis: an image with the Gram statistics of ``style`` (content weight 0), from noise.

    ``size`` is the smaller edge of the output, which has the style image's aspect ratio; ``style_size``
    (default: ``size``) the style image's when its Gram matrices are computed. Defaults: Starry Night's style
    layers and weights (CS231n), TV weight 2e-2, style scale per optimizer, L-BFGS with 200 evaluations.
    Returns ``(image uint8 [h, w, 3], Result)``.
    """
    opt = validate_options("texture", **options)
    return _run(opt, style=style)
