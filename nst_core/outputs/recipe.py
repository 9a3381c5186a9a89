"""The recipe a picture carries: every PNG nst writes holds the job that made it, so it can be made again.

Two iTXt chunks (compressed UTF-8 JSON):
    nst-spec         the resolved ``spec.Spec`` (``spec.to_json``)
    nst-provenance   ``{"nst": version, "weights_sha256": hex or null, "inputs": [{"role": "content" | "style",
                     "path": str, "sha256": hex}, ...], "scales": [{"side", "evaluations", "pairs", "lr",
                     "style_size", "content_weight", "tv_weight"}, ...] (what the size rules decided, from
                     ``schedule.scale_table``), "note": optional str}``

``read_recipe(path)`` takes such a PNG or a JSON file (a Spec's JSON, or ``{"spec": ..., "provenance": ...}``) and
returns ``(Spec, provenance dict)``. It reads the PNG's chunks itself, without decoding the image, and at most
``MAX_TEXT`` bytes of text; every problem is a one-line ``NSTError``.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import struct
import zlib

from ..errors import NSTError
from ..inputs.images import input_sha256
from ..network import model as _model
from ..spec.spec import Spec, from_dict, from_json, parse_json, to_json

__all__ = ["SPEC_KEY", "PROVENANCE_KEY", "recipe", "png_text", "read_recipe", "changed_inputs", "nst_version",
           "weights_sha256", "MAX_TEXT"]

SPEC_KEY = "nst-spec"
PROVENANCE_KEY = "nst-provenance"
#: The most text (bytes, decompressed) read from a recipe: a Spec's JSON is about 1 KB.
MAX_TEXT = 1 << 20
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def nst_version() -> str:
    """The installed nst's version ("unknown" when it runs from a source tree without being installed)."""
    try:
        return importlib.metadata.version("nst-onnx")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def weights_sha256(job: Spec):
    """The SHA-256 of the weights in the job's model, from its metadata (None when it has none)."""
    return _model.metadata(_model.load_model(_model.find_model(job.model))).get("weights_sha256")


def _inputs(job: Spec) -> list:
    paths = ([("content", job.content)] if job.content else []) + [("style", s) for s in job.styles]
    out = []
    for role, path in paths:
        # a stream (FIFO, <(cat img)) is read once and kept for the run: images.input_bytes
        out.append({"role": role, "path": path, "sha256": input_sha256(path)})
    return out


def recipe(job: Spec, weights: str | None = None, note: str | None = None, scales=None, inputs=None) -> dict:
    """The text chunks of a picture made by ``job``: ``{SPEC_KEY: spec JSON, PROVENANCE_KEY: provenance JSON}``.
    ``weights``: the model's weights SHA-256 (``weights_sha256``); ``note``: what else to say (``nst compare``);
    ``scales``: the size rules' numbers per scale (``schedule.scale_table``); ``inputs``: the provenance's
    ``[{"role", "path", "sha256"}, ...]`` when the caller knows the hashes (a job engine's worker has the bytes, not
    the files); default: the job's files, hashed here."""
    provenance = {"nst": nst_version(), "weights_sha256": weights,
                  "inputs": _inputs(job) if inputs is None else list(inputs)}
    if scales:
        provenance["scales"] = scales
    if note:
        provenance["note"] = note
    return {SPEC_KEY: to_json(job), PROVENANCE_KEY: json.dumps(provenance)}


def _itxt(data: bytes) -> tuple[str, str]:
    """(keyword, text) of an iTXt chunk's data."""
    keyword, _, rest = data.partition(b"\0")
    if len(rest) < 2:
        raise ValueError("short iTXt chunk")
    compressed, rest = rest[0], rest[2:]
    _, _, rest = rest.partition(b"\0")  # language tag
    _, _, text = rest.partition(b"\0")  # translated keyword
    if compressed:
        inflater = zlib.decompressobj()
        text = inflater.decompress(text, MAX_TEXT + 1)
        if len(text) > MAX_TEXT:
            raise ValueError(f"text longer than {MAX_TEXT} bytes")
    return keyword.decode("latin-1"), text.decode("utf-8")


def png_text(path) -> dict:
    """The iTXt chunks of the PNG at ``path`` whose keywords start with "nst-", read chunk by chunk up to IDAT."""
    found = {}
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            raise ValueError("not a PNG file")
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("truncated PNG")
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):  # Pillow writes text chunks before the image data
                return found
            if kind == b"iTXt" and length <= MAX_TEXT:
                data = f.read(length)
                if len(data) < length:
                    raise ValueError("truncated PNG")
                if data.startswith(b"nst-"):
                    key, value = _itxt(data)
                    found[key] = value
            else:
                f.seek(length, os.SEEK_CUR)
            f.seek(4, os.SEEK_CUR)  # CRC


def read_recipe(path) -> tuple[Spec, dict]:
    """``(Spec, provenance)`` from a picture nst wrote or a JSON file; NSTError (one line) naming ``path``."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise NSTError(f"{name}: no such file" if not os.path.exists(name) else f"{name}: not a regular file")
    with open(name, "rb") as f:
        is_png = f.read(8) == _PNG_SIGNATURE
    if is_png:
        try:
            chunks = png_text(name)
        except (OSError, ValueError, zlib.error, UnicodeDecodeError) as exc:
            raise NSTError(f"{name}: cannot read its recipe ({' '.join(str(exc).split())})") from None
        if SPEC_KEY not in chunks:
            raise NSTError(f"{name}: this PNG has no nst recipe (no {SPEC_KEY} chunk)")
        provenance = {}
        if PROVENANCE_KEY in chunks:
            try:
                provenance = json.loads(chunks[PROVENANCE_KEY])
            except ValueError:
                provenance = {}
        return from_json(chunks[SPEC_KEY], where=name), provenance if isinstance(provenance, dict) else {}
    if os.path.getsize(name) > MAX_TEXT:
        raise NSTError(f"{name}: larger than {MAX_TEXT} bytes; not a spec")
    with open(name, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NSTError(f"{name}: neither a PNG written by nst nor a JSON spec") from None
    data = parse_json(text, name)
    if not isinstance(data, dict):
        raise NSTError(f"{name}: not a JSON object")
    if "spec" in data and isinstance(data.get("spec"), dict):
        extra = sorted(set(data) - {"spec", "provenance"})
        if extra:
            raise NSTError(f"{name}: unknown key {extra[0]!r}")
        provenance = data.get("provenance") or {}
        return from_dict(data["spec"], where=name), provenance if isinstance(provenance, dict) else {}
    return from_dict(data, where=name), {}


def changed_inputs(job: Spec, provenance: dict) -> list[str]:
    """One line per input of ``job`` whose file differs from the one the recipe recorded (same path, another
    SHA-256); inputs given anew (another path) are not compared."""
    recorded = {}
    for entry in provenance.get("inputs", []) if isinstance(provenance.get("inputs"), list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("sha256"), str):
            recorded[entry["path"]] = entry["sha256"]
    lines = []
    for entry in _inputs(job):
        want = recorded.get(entry["path"])
        if want is not None and entry["sha256"] is not None and entry["sha256"] != want:
            lines.append(f"{entry['role']} image {entry['path']} is not the one the recipe recorded (SHA-256 "
                         f"{entry['sha256'][:12]}... now, {want[:12]}... then); going on with it")
    return lines
