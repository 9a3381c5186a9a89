"""The bundle manifest's schema: one table of field -> check, and ``validate`` that walks it.

A check is one of
    a callable ``value -> problem or None``   a leaf (``problem`` says what is wrong, e.g. "must be >= 1");
    a dict ``{key: check}``                    an object with these keys (``optional(check)``: may be absent);
    ``each(check)``                            a list whose every item passes ``check``.
``validate(manifest)`` returns ``(field, problem)`` of the first field that fails, e.g.
``("models.targets.sha256", "must be 64 hex digits")``, or None. JSON has no integers apart from floats in
Python's reading, so whole numbers are ints (not bools) and every number must be finite (json reads NaN).
Keys not in the table are allowed: they are for people (docs/hosts.md: "Everything else in the file is for people").
"""
from __future__ import annotations

import math
import re

from ..network.lossgraph import CONTENT_IMAGE, STYLE_IMAGE

__all__ = ["SCHEMA", "validate", "optional", "each"]


class optional:  # noqa: N801 - reads as a marker in the table
    """A key that may be absent (present, it must pass ``check``)."""

    def __init__(self, check):
        self.check = check


class each:  # noqa: N801
    """A list whose every item passes ``check``."""

    def __init__(self, check, length: int | None = None):
        self.check, self.length = check, length


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def whole(lo: int, hi: float = math.inf, null: bool = False):
    """A whole number in [lo, hi] (or null when ``null``)."""
    def check(v):
        if v is None and null:
            return None
        if not isinstance(v, int) or isinstance(v, bool):
            return f"is {_kind(v)}, expected a whole number"
        return None if lo <= v <= hi else f"is {v}, expected {lo} .. {hi:g}" if hi < math.inf else \
            f"is {v}, expected >= {lo}"
    return check


def number(lo: float = -math.inf, positive: bool = False):
    """A finite number >= lo (> 0 when ``positive``)."""
    def check(v):
        if not _number(v):
            return f"is {_kind(v)}, expected a finite number"
        if positive and not v > 0:
            return f"is {v!r}, expected > 0"
        return None if v >= lo else f"is {v!r}, expected >= {lo:g}"
    return check


def text(pattern: str | None = None, null: bool = False, what: str = "a string"):
    """A string (matching ``pattern`` in full, when given; or null when ``null``)."""
    def check(v):
        if v is None and null:
            return None
        if not isinstance(v, str) or (pattern is not None and not re.fullmatch(pattern, v)):
            return f"is {_kind(v)}, expected {what}"
        return None
    return check


def one_of(*values):
    def check(v):
        return None if v in values and type(v) is type(values[0]) else \
            f"is {_kind(v)}, expected one of {', '.join(map(repr, values))}"
    return check


def boolean(v):
    return None if isinstance(v, bool) else f"is {_kind(v)}, expected true or false"


def shape_dim(v):
    """A model dimension: a whole number >= 0, a symbol (string) or null (unknown)."""
    return None if v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool) and v >= 0) \
        else f"is {_kind(v)}, expected a whole number, a symbol or null"


TAP = r"features\.(\d|1[0-2])"
SHA256 = text(r"[0-9a-f]{64}", what="64 lowercase hex digits (a SHA-256)")
#: A file inside the bundle: relative, no '..', no backslash (the same on every host's file system).
FILE = text(r"(?!/)(?!.*(^|/)\.\.(/|$))[^\\\x00]+", what="a relative path inside the bundle")
TENSOR = {"name": text(r".+", what="a tensor name"), "dtype": one_of("float32"), "shape": each(shape_dim)}
MODEL = {"file": FILE, "sha256": SHA256, "inputs": each(TENSOR), "outputs": each(TENSOR)}
LAYER = whole(0, 12)

#: The manifest's fields and their checks (the contract of docs/hosts.md, plus what ``check_bundle`` reads).
SCHEMA = {
    "format": one_of("nst-bundle"),
    "format_version": whole(1, 1),
    "network": {"taps": each(text(TAP, what="a tap name features.0 .. features.12")),
                "weights_sha256": optional(text(r"[0-9a-f]{64}", null=True, what="a SHA-256 or null"))},
    "problem": {"preset": optional(text(null=True)), "content_layer": whole(0, 12, null=True),
                "content_tap": text(TAP, null=True, what="a tap name or null"),
                "style_layers": each(LAYER), "style_taps": each(text(TAP, what="a tap name")),
                "style_scale": number(0), "size": whole(1), "style_size": whole(1),
                "calibration_size": optional(whole(0)), "style_size_given": optional(boolean),
                "style_weights_unscaled": optional(each(number(0)))},
    "weights": each({"term": one_of("content", "style", "tv"), "layer": whole(0, 12, null=True),
                     "input": text(r".+", what="an objective input name"), "value": number(0)}),
    "preprocessing": {"mean": each(number(), 3), "std": each(number(positive=True), 3),
                      "resize": {"content_size": whole(1), "style_size": whole(1)}},
    "calibration": optional({"size": whole(0), "style_size_follows_size": boolean,
                             "style_size_limit": optional(whole(1))}),
    "pixel_box": {"lo": each(number(), 3), "hi": each(number(), 3)},
    "min_input_size": whole(1),
    "models": {"targets": MODEL, "objective": MODEL},
    "optimizer": {"iterations": whole(1), "history": optional(whole(1))},
    "reference": {"content_image": FILE, "style_image": FILE, "image": FILE,
                  "sha256": optional({"content_image": SHA256, "style_image": SHA256, "image": SHA256}),
                  "expected": {**{k: number() for k in ("loss", "content_loss", "style_loss", "tv_loss", "grad_l2",
                                                         "grad_abs_sum", "grad_weighted_sum")},
                               "targets_l2": lambda v: None if isinstance(v, dict) and all(
                                   _number(x) for x in v.values()) else f"is {_kind(v)}, expected an object of "
                                                                        f"numbers"},
                  "tolerance": {k: number(positive=True) for k in ("loss_rtol", "grad_rtol", "targets_rtol")}},
}


def _walk(value, check, field: str):
    if isinstance(check, dict):
        if not isinstance(value, dict):
            return field, f"is {_kind(value)}, expected an object"
        for key, sub in check.items():
            path = f"{field}.{key}" if field else key
            if key not in value:
                if isinstance(sub, optional):
                    continue
                return path, "is missing"
            found = _walk(value[key], sub.check if isinstance(sub, optional) else sub, path)
            if found:
                return found
        return None
    if isinstance(check, each):
        if not isinstance(value, list):
            return field, f"is {_kind(value)}, expected a list"
        if check.length is not None and len(value) != check.length:
            return field, f"has {len(value)} entries, expected {check.length}"
        for i, item in enumerate(value):
            found = _walk(item, check.check, f"{field}[{i}]")
            if found:
                return found
        return None
    problem = check(value)
    return (field, problem) if problem else None


def _consistency(m: dict):
    """The checks between fields: names that must refer to each other, the box's order."""
    lo, hi = m["pixel_box"]["lo"], m["pixel_box"]["hi"]
    if not all(a < b for a, b in zip(lo, hi)):
        return "pixel_box", "has lo >= hi in some channel"
    targets, objective = m["models"]["targets"], m["models"]["objective"]
    t_in = [t["name"] for t in targets["inputs"]]
    if not t_in or not set(t_in) <= {CONTENT_IMAGE, STYLE_IMAGE}:
        return "models.targets.inputs", f"are {t_in}, expected {CONTENT_IMAGE} and / or {STYLE_IMAGE}"
    o_in = {t["name"] for t in objective["inputs"]}
    for i, w in enumerate(m["weights"]):
        if w["input"] not in o_in:
            return f"weights[{i}].input", f"is {w['input']!r}, not an input of the objective model"
    missing = o_in - {"image"} - {t["name"] for t in targets["outputs"]} - {w["input"] for w in m["weights"]}
    if missing:
        return "weights", f"lack the objective input {sorted(missing)[0]}"
    outs = {t["name"] for t in targets["outputs"]}
    extra = set(m["reference"]["expected"]["targets_l2"]) - outs
    if extra:
        return "reference.expected.targets_l2", f"names {sorted(extra)[0]}, not an output of the targets model"
    return None


def validate(manifest) -> tuple[str, str] | None:
    """``(field, problem)`` of the first field of ``manifest`` that breaks ``SCHEMA`` or a cross-field rule, else
    None. Field names are dotted paths with list indices, e.g. ``weights[2].value``."""
    return _walk(manifest, SCHEMA, "") or _consistency(manifest)
