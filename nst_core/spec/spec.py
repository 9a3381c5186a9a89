"""The job description: one typed, validated, serialisable ``Spec`` for every front end.

    spec = Spec(task="stylize", content="tubingen.jpg", styles=("starry_night.jpg",), size=384)   # validated
    job = resolve(spec)                     # every default filled in from the preset, the task and the optimizer
    text = to_json(job); assert from_json(text) == job                       # the JSON round trip
    again = override(job, optimizer="adam")  # a changed option; values that were defaults follow the change

Fields (None: the default, filled in by ``resolve``)
    task            "stylize", "invert" (content only, from noise) or "texture" (style only, from noise)
    content         path of the content image (stylize, invert); None when the caller passes the image itself
    styles          paths of the style images (stylize: several are blended; texture: one); () likewise
    preset          stylize: a CS231n parameter set (``presets.PRESETS``; default ``presets.DEFAULT_PRESET``)
    size            smaller edge of the output, px (default: the preset's / the task's image size, 192)
    style_size      smaller edge of the style image for its Gram matrices, px; None: the size rule of
                    ``schedule.calibration`` (stays None when resolved: a given value means something else)
    calibration_size  px at which the weights mean what they say (default: the preset's image size); 0: raw sums
    scales          "auto" or N >= 1 scales of the coarse-to-fine schedule (``schedule.plan``)
    whole_weight    stylize / texture: the whole-picture term's weight at later scales (``objective.pyramid``)
    content_layer, content_weight      stylize / invert: SqueezeNet ``features`` index 0..12, weight >= 0
    style_layers, style_weights        stylize / texture: indices 0..12 (each once), one weight >= 0 per layer
    style_scale     stylize / texture: multiplies every style weight (default per optimizer, ``presets``)
    tv_weight       total-variation weight >= 0
    init            "content", "noise" or "style" (default: content for stylize, noise otherwise)
    optimizer       "lbfgs", "lbfgsb", "adam" or "gd"
    iterations      objective evaluations at the first scale, >= 1 (default ``DEFAULT_ITERATIONS``)
    lr              adam / gd: the first scale's learning rate > 0 (default ``ADAM_LR`` / ``GD_LR``); None for lbfgs*
    history         L-BFGS correction pairs >= 1; None: ``LBFGS_HISTORY`` at the first scale and fewer later
                    (``schedule.histories``; stays None when resolved, as a given value is kept at every scale)
    seed            seed >= 0 of the noise start; ``resolve`` draws one for a noise start so the job can be rerun
    device          "auto", "cpu" or "cuda" (the ONNX Runtime provider)
    model           path of features.onnx; None: ``$NST_HOME`` or the cache directory
    original_colors stylize: "off", "luminance" or "match" (``inputs.colour``)
    style_blend     stylize: one weight >= 0 per style image (normalised to sum 1; default equal)
    pooling         "max" (SqueezeNet's) or "avg" (``network.pooling``)

Every problem is an ``NSTError`` with a one-line message: a wrong type or range when a Spec is made, an option the
task does not have, and, in ``resolve``, what only the whole job can tell (weights that do not match the layers,
every weight zero, ...). JSON: ``{"format": "nst-spec", "version": 1, <field>: <value>, ...}``; an unknown key, a
wrong type or a newer version is one line too.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import random
from typing import Optional, Union

from ..errors import NSTError
from . import blend
from .presets import DEFAULT_PRESET, INVERSION, PRESETS, TEXTURE, default_style_scale

__all__ = ["Spec", "make", "resolve", "override", "to_dict", "from_dict", "to_json", "from_json", "parse_json", "check_layer",
           "TASKS", "OPTIMIZERS", "INITS", "DEVICES", "POOLINGS", "NUM_LAYERS", "LBFGS_HISTORY", "ADAM_LR", "GD_LR",
           "DEFAULT_ITERATIONS", "WHOLE_WEIGHT", "FORMAT", "FORMAT_VERSION"]

FORMAT = "nst-spec"
#: The JSON layout's version; a file of a newer version is refused in one line.
FORMAT_VERSION = 1
TASKS = ("stylize", "invert", "texture")
OPTIMIZERS = ("lbfgs", "lbfgsb", "adam", "gd")
INITS = ("content", "noise", "style")
DEVICES = ("auto", "cpu", "cuda")
POOLINGS = ("max", "avg")
#: The modes of ``inputs.colour`` (the same tuple; tests/test_spec.py checks).
ORIGINAL_COLORS = ("off", "luminance", "match")
#: Layers are 0 .. NUM_LAYERS-1 (torchvision's SqueezeNet 1.1 ``features`` modules).
NUM_LAYERS = 13
#: L-BFGS memory of the first scale unless ``history`` is given.
LBFGS_HISTORY = 20
#: Adam's initial learning rate (CS231n); the recipe's second rate is ADAM_LR / 30 = 0.1.
ADAM_LR = 3.0
#: Gradient descent's default step size (normalised pixel units per unit of gradient); measured on the presets at
#: 192 px with style scale 100: 5e-5 decreases the loss steadily, 1e-4 oscillates, 1e-3 diverges.
GD_LR = 5e-5
#: Objective evaluations unless ``iterations`` is given.
DEFAULT_ITERATIONS = 200
#: Default ``whole_weight`` (see ``nst_core.objective.pyramid``).
WHOLE_WEIGHT = 1.0

#: Fields a task does not have (they must stay None).
_NOT_FOR = {"stylize": (),
            "invert": ("styles", "preset", "style_size", "style_layers", "style_weights", "style_scale",
                       "original_colors", "style_blend", "whole_weight"),
            "texture": ("content", "preset", "content_layer", "content_weight", "original_colors", "style_blend")}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One style-transfer job (see the module docstring); made valid or not at all."""

    task: str = "stylize"
    content: Optional[str] = None
    styles: tuple = ()
    preset: Optional[str] = None
    size: Optional[int] = None
    style_size: Optional[int] = None
    calibration_size: Optional[int] = None
    scales: Union[str, int, None] = None
    whole_weight: Optional[float] = None
    content_layer: Optional[int] = None
    content_weight: Optional[float] = None
    style_layers: Optional[tuple] = None
    style_weights: Optional[tuple] = None
    style_scale: Optional[float] = None
    tv_weight: Optional[float] = None
    init: Optional[str] = None
    optimizer: Optional[str] = None
    iterations: Optional[int] = None
    lr: Optional[float] = None
    history: Optional[int] = None
    seed: Optional[int] = None
    device: Optional[str] = None
    model: Optional[str] = None
    original_colors: Optional[str] = None
    style_blend: Optional[tuple] = None
    pooling: Optional[str] = None

    def __post_init__(self):
        task = _choice(self.task, "task", TASKS)
        for name, check in _CHECKS.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check(value))
        if self.styles is None:
            object.__setattr__(self, "styles", ())
        given = [name for name in _NOT_FOR[task] if getattr(self, name) not in (None, ())]
        if given:
            raise NSTError(f"{task}: unknown option {given[0]!r}")
        if task == "invert" and self.init == "style":
            raise NSTError("invert has no style image: use init content or noise")
        if task == "texture" and self.init == "content":
            raise NSTError("texture has no content image: use init noise or style")
        if task == "texture" and len(self.styles) > 1:
            raise NSTError("texture takes one style image")
        if self.style_blend is not None and self.styles:
            blend.blend_weights(self.style_blend, len(self.styles))  # the count

    @property
    def effective_style_weights(self) -> tuple:
        """``style_weights`` times ``style_scale`` (() when the task has no style term or it is not resolved)."""
        if not self.style_weights or self.style_scale is None:
            return ()
        return tuple(w * self.style_scale for w in self.style_weights)

    @property
    def content_terms(self) -> tuple:
        """(content layer, content weight) with (0, 0.0) for a task without a content term."""
        return (self.content_layer or 0, self.content_weight or 0.0)


# --------------------------------------------------------------------------------------------- field checks


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise NSTError(f"{what} must be a number, got {value!r}")
    return float(value)


def _weight(value, what: str) -> float:
    value = _number(value, what)
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise NSTError(f"{what} must be a finite number >= 0, got {value:g}")
    return value


def _whole(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise NSTError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    if value < minimum:
        raise NSTError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _choice(value, what: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise NSTError(f"unknown {what} {value!r} (choose {', '.join(choices)})")
    return value


def _path(value, what: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise NSTError(f"{what} must be a file path, got {value!r}")
    return value


def _sequence(value, what: str) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise NSTError(f"{what} must be a sequence, got {value!r}")
    return tuple(value)


def check_layer(value, what: str = "layer") -> int:
    """``value`` as an int if it is a SqueezeNet 1.1 layer (0..12); NSTError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < NUM_LAYERS:
        raise NSTError(f"{what} {value!r} does not exist: SqueezeNet 1.1 layers are 0..{NUM_LAYERS - 1}")
    return int(value)


def _style_layers(value) -> tuple:
    layers = tuple(check_layer(v, "style layer") for v in _sequence(value, "style layers"))
    for i, layer in enumerate(layers):
        if layer in layers[:i]:
            raise NSTError(f"style layer {layer} is given twice")
    return layers


def _scales(value):
    if value == "auto":
        return value
    return _whole(value, "scales (auto or a number)", 1)


def _lr(value) -> float:
    value = _number(value, "learning rate")
    if not (math.isfinite(value) and value > 0):
        raise NSTError(f"learning rate must be a finite number > 0, got {value!r}")
    return value


_CHECKS = {
    "content": lambda v: _path(v, "content"),
    "styles": lambda v: tuple(_path(s, "style") for s in _sequence(v, "styles")),
    "preset": lambda v: _choice(v, "preset", tuple(PRESETS)),
    "size": lambda v: _whole(v, "size", 1),
    "style_size": lambda v: _whole(v, "style size", 1),
    "calibration_size": lambda v: _whole(v, "calibration size", 0),
    "scales": _scales,
    "whole_weight": lambda v: _weight(v, "whole weight"),
    "content_layer": lambda v: check_layer(v, "content layer"),
    "content_weight": lambda v: _weight(v, "content weight"),
    "style_layers": _style_layers,
    "style_weights": lambda v: tuple(_weight(w, "style weight") for w in _sequence(v, "style weights")),
    "style_scale": lambda v: _weight(v, "style scale"),
    "tv_weight": lambda v: _weight(v, "TV weight"),
    "init": lambda v: _choice(v, "init", INITS),
    "optimizer": lambda v: _choice(v, "optimizer", OPTIMIZERS),
    "iterations": lambda v: _whole(v, "iterations", 1),
    "lr": _lr,
    "history": lambda v: _whole(v, "L-BFGS history", 1),
    "seed": lambda v: _whole(v, "seed", 0),
    "device": lambda v: _choice(v, "device", DEVICES),
    "model": lambda v: _path(v, "model"),
    "original_colors": lambda v: _choice(v, "original-colors mode", ORIGINAL_COLORS),
    "style_blend": blend.check_blend,
    "pooling": lambda v: _choice(v, "pooling", POOLINGS),
}


def make(task: str, **options) -> Spec:
    """A Spec of ``task`` from keyword options (None values are left out): NSTError (one line) for an option the
    task does not have, where ``Spec(...)`` itself would raise TypeError."""
    names = {f.name for f in dataclasses.fields(Spec)} - {"task"}
    unknown = sorted(k for k, v in options.items() if k not in names and v is not None)
    if unknown:
        raise NSTError(f"{task}: unknown option {unknown[0]!r}")
    return Spec(task=task, **{k: v for k, v in options.items() if v is not None})


# --------------------------------------------------------------------------------------------- resolving


def _base(task: str, preset: Optional[str]) -> dict:
    """The parameter set a task's defaults come from."""
    if task == "stylize":
        return dict(PRESETS[preset or DEFAULT_PRESET], init="content")
    if task == "invert":
        return dict(INVERSION, init="noise")
    return dict(TEXTURE, init="noise")


def defaults(spec: Spec) -> dict:
    """{field: value} that ``resolve`` gives each field of ``spec`` left None (the seed excepted)."""
    task, base = spec.task, _base(spec.task, spec.preset)
    optimizer = spec.optimizer or "lbfgs"
    out = {"optimizer": optimizer, "size": base["image_size"], "calibration_size": base["image_size"],
           "scales": "auto", "tv_weight": base["tv_weight"], "init": base["init"],
           "iterations": DEFAULT_ITERATIONS, "device": "auto", "pooling": "max",
           "lr": {"adam": ADAM_LR, "gd": GD_LR}.get(optimizer)}
    if task == "stylize":
        out.update(preset=DEFAULT_PRESET, original_colors="off")
    if task != "texture":
        out.update(content_layer=base["content_layer"], content_weight=base["content_weight"])
    if task != "invert":
        out.update(style_layers=tuple(base["style_layers"]), style_weights=tuple(base["style_weights"]),
                   style_scale=default_style_scale(optimizer), whole_weight=WHOLE_WEIGHT)
    return out


def resolve(spec: Spec) -> Spec:
    """``spec`` with every default filled in (``defaults``), checked as a whole; a noise start without a seed gets
    a drawn one. ``style_size`` and ``history`` stay None when not given: the size rules then decide per scale
    (``schedule.plan``), and a value given means a fixed one. Idempotent: ``resolve(resolve(s)) == resolve(s)``."""
    base = defaults(spec)
    if (spec.style_layers is not None and spec.style_weights is None
            and spec.style_layers != base.get("style_layers")):
        raise NSTError(f"style layers {','.join(map(str, spec.style_layers))} differ from the defaults; "
                       f"give one style weight per style layer too")
    fill = {k: v for k, v in base.items() if getattr(spec, k) is None}
    job = dataclasses.replace(spec, **fill)
    if (job.init or "") == "noise" and job.seed is None:
        job = dataclasses.replace(job, seed=random.SystemRandom().randrange(2 ** 31))
    _check_whole(job)
    return job


def _check_whole(job: Spec) -> None:
    """The checks that need the whole resolved job."""
    layers, weights = job.style_layers or (), job.style_weights or ()
    if len(weights) != len(layers):
        raise NSTError(f"{len(weights)} style weights for {len(layers)} style layers "
                       f"({','.join(map(str, layers)) or 'none'}); give one weight per layer")
    effective = job.effective_style_weights
    if any(math.isinf(w) for w in effective):
        raise NSTError("style weight x style scale overflows; use smaller values")
    content_weight = job.content_terms[1]
    if content_weight == 0.0 and not any(effective) and job.tv_weight == 0.0:
        raise NSTError("every loss weight is zero: nothing to optimise")
    if job.task == "invert" and content_weight == 0.0:
        raise NSTError("invert needs a content weight > 0")
    if job.task != "invert" and not layers:  # --style-layers '' --style-weights '': no style loss at all
        zero = "; to paint without style on purpose give zero weights (--style-weights 0,0,0,0), or use nst invert"
        raise NSTError(f"{job.task} needs at least one style layer, and --style-layers is empty"
                       f"{zero if job.task == 'stylize' else ''}")
    if job.task == "texture" and not any(effective):
        raise NSTError("texture needs a style weight > 0")


def override(job: Spec, **changes) -> Spec:
    """``job`` with ``changes`` (field values; None ones are ignored), resolved again. A field of ``job`` whose
    value is the default ``resolve`` would give it (``defaults``) follows the change: ``--preset scream`` brings the
    scream's weights unless they were set by hand, ``--optimizer adam`` Adam's style scale and learning rate."""
    changes = {k: v for k, v in changes.items() if v is not None}
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Spec)})
    if unknown:
        raise NSTError(f"unknown option {unknown[0]!r}")
    old = defaults(job)
    values = {f.name: getattr(job, f.name) for f in dataclasses.fields(Spec)}
    for name, value in old.items():
        if name not in changes and values[name] == value:
            values[name] = None
    values.update(changes)
    return resolve(Spec(**values))


# --------------------------------------------------------------------------------------------- JSON


def to_dict(spec: Spec) -> dict:
    """The JSON-ready form: ``{"format": "nst-spec", "version": 1, <every field>: value}`` (tuples as lists)."""
    out = {"format": FORMAT, "version": FORMAT_VERSION}
    for f in dataclasses.fields(Spec):
        value = getattr(spec, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def from_dict(data, where: str = "spec") -> Spec:
    """A Spec from ``to_dict``'s form (fields may be left out: None); NSTError naming ``where`` for anything else."""
    if not isinstance(data, dict):
        raise NSTError(f"{where}: not a JSON object")
    fmt, version = data.get("format", FORMAT), data.get("version", FORMAT_VERSION)
    if fmt != FORMAT:
        raise NSTError(f"{where}: format {fmt!r} is not {FORMAT!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise NSTError(f"{where}: version must be a whole number >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise NSTError(f"{where}: version {version} is newer than this nst reads ({FORMAT_VERSION}); upgrade nst")
    names = {f.name for f in dataclasses.fields(Spec)}
    unknown = sorted(k for k in data if k not in names and k not in ("format", "version"))
    if unknown:
        raise NSTError(f"{where}: unknown key {unknown[0]!r}")
    fields = {k: v for k, v in data.items() if k in names}
    if "task" in fields and fields["task"] is None:
        del fields["task"]
    try:
        return Spec(**fields)
    except NSTError as exc:
        raise NSTError(f"{where}: {exc}") from None


def to_json(spec: Spec) -> str:
    """``to_dict`` as JSON text (one line, keys in field order)."""
    return json.dumps(to_dict(spec), allow_nan=False)


def parse_json(text, where: str = "spec"):
    """JSON text -> Python data, NaN and Infinity refused; NSTError (one line, naming ``where``) otherwise."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise NSTError(f"{where}: not valid JSON ({' '.join(str(exc).split())})") from None


def from_json(text, where: str = "spec") -> Spec:
    """A Spec from JSON text; NSTError (one line, naming ``where``) for text that is not JSON or not a Spec."""
    return from_dict(parse_json(text, where), where)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")
