"""POST /v1/jobs's body: the size limit while it is read, the multipart form, the images checked before and by
decoding, and the spec by the CLI's option names. Nothing a client sends becomes a filesystem path: an image is
named by its role (``content.png``, ``style-2.jpg``) in messages and in the result's recipe.

    form = await read_form(request, settings.body_limit)             # {"content": [bytes], "style": [...], "spec": str}
    job = parse_spec(form["spec"])                                   # a Spec (content and styles left empty)
    inputs = check_inputs(job, form, settings.pixel_limit)           # [engine.Input, ...]; Problem 400 / 422

Images: JPEG, PNG and WebP only, told by their first bytes (not by a name or a Content-Type the client chose); the
width and height come from the header (PNG's IHDR, JPEG's SOF segment, WebP's VP8 / VP8L / VP8X chunk) and are
checked against the pixel limit before anything is decoded; then the image is decoded once here, so that a
truncated or corrupt file is refused at submission (422) instead of failing on a worker later.
"""
from __future__ import annotations

import dataclasses
import struct
import threading

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from ..errors import NSTError
from ..inputs.images import one_line, open_image
from ..jobs.engine import Input
from ..jobs.manifest import _value as list_value
from ..spec.blend import blend_weights
from ..spec.spec import Spec, make, parse_json, resolve
from .problems import Problem

__all__ = ["read_form", "parse_spec", "check_inputs", "sniff", "header_size", "SPEC_OPTIONS",
           "MAX_STYLES", "OPENAPI_BODY"]

MAX_STYLES = 16
#: Spec options a client may give (by the CLI's names, "-" or "_"): every field but the paths of the server.
SPEC_OPTIONS = tuple(f.name for f in dataclasses.fields(Spec) if f.name not in ("task", "content", "styles", "model"))
_NOT_OPTIONS = {"content": "send the content image as the multipart file 'content'",
                "styles": "send the style images as multipart files 'style'",
                "style": "send the style images as multipart files 'style'",
                "model": "the model is the server's; it is not chosen per job"}
_FORM_FIELDS = ("content", "style", "spec")
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
#: Images decoded at once by the web process: a 40 MP image is ~120 MB decoded, and the request threads are many.
DECODES_AT_ONCE = 2
_DECODING = threading.BoundedSemaphore(DECODES_AT_ONCE)
#: POST /v1/jobs's request body in OpenAPI terms (the route reads the body itself, to limit it first).
OPENAPI_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object",
    "properties": {
        "content": {"type": "string", "format": "binary",
                    "description": "the photo (JPEG, PNG or WebP); not for texture"},
        "style": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "the painting(s): one or more for stylize, one for texture, none for invert"},
        "spec": {"type": "string", "description": "a JSON object of options by their CLI names, e.g. "
                                                  "{\"size\": 256, \"preset\": \"starry_night\"}; empty: the "
                                                  "defaults; \"task\": stylize, invert or texture"}}}}}}


def _check_length(request: Request, limit: int) -> str:
    """The 413 message of a body over ``limit`` bytes; Problem 413 at once when the Content-Length says so (the
    body is not read: a client should not send 30 MB to hear "too large")."""
    too_big = f"the request body is over the limit of {limit} bytes ({limit / 2**20:g} MiB)"
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise Problem(400, f"Content-Length {declared!r} is not a number") from None
        if length > limit:
            raise Problem(413, f"{too_big}: Content-Length is {length}", {"Connection": "close"})
    return too_big


async def _fields(form) -> dict:
    out = {"content": [], "style": [], "spec": ""}
    for name, value in form.multi_items():
        if name not in _FORM_FIELDS:
            raise Problem(400, f"unknown form field {name!r}; the fields are content, style and spec")
        if name == "spec":
            text = await value.read() if isinstance(value, UploadFile) else value
            out["spec"] = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        elif isinstance(value, UploadFile):
            out[name].append(await value.read())
        else:
            raise Problem(400, f"form field {name!r} must be a file (multipart with a filename)")
    return out


async def read_form(request: Request, limit: int) -> dict:
    """{"content": [bytes, ...], "style": [bytes, ...], "spec": str} of a multipart/form-data body of at most
    ``limit`` bytes: 413 at once for a Content-Length over it, else as soon as the bytes read pass it (they are
    counted as they reach the multipart parser, so no copy of the whole body is kept); 400 for another content
    type, an unknown field, a malformed form or a client gone before the body's end."""
    kind = request.headers.get("content-type", "")
    if not kind.lower().startswith("multipart/form-data"):
        raise Problem(400, f"POST /v1/jobs takes multipart/form-data (files 'content' and 'style', a field 'spec'), "
                           f"got {kind or 'no Content-Type'}")
    too_big, size = _check_length(request, limit), 0

    async def counted():
        nonlocal size
        message = await request.receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise Problem(413, too_big, {"Connection": "close"})
        return message

    try:
        form = await Request(request.scope, counted).form(max_files=MAX_STYLES + 2, max_fields=8)
    except ClientDisconnect:
        raise Problem(400, "the client went away before the request body ended") from None
    try:
        return await _fields(form)
    finally:
        await form.close()


def parse_spec(text: str) -> Spec:
    """A Spec (not resolved, no paths) from the JSON object ``text`` of options by their CLI names ("style-weights"
    or "style_weights"; lists as JSON lists or "1,4,6"; "task": stylize, invert or texture); empty: the
    defaults. Problem 400 (one line) otherwise."""
    try:
        data = parse_json(text, where="spec") if text.strip() else {}
        if not isinstance(data, dict):
            raise NSTError(f"spec: must be a JSON object of options, got {type(data).__name__}")
        fields = {str(k).replace("-", "_"): v for k, v in data.items()}
        for name, why in _NOT_OPTIONS.items():
            if name in fields:
                raise NSTError(f"spec: {name!r} is not an option here: {why}")
        unknown = sorted(k for k in fields if k not in SPEC_OPTIONS + ("task",))
        if unknown:
            raise NSTError(f"spec: unknown key {unknown[0]!r}")
        task = fields.pop("task", "stylize")
        if task not in ("stylize", "invert", "texture"):
            raise NSTError(f"spec: task must be stylize, invert or texture, got {task!r}")
        job = make(task, **{k: list_value(k, v) for k, v in fields.items()})
        resolve(job)  # the checks of the whole job (the drawn seed is drawn again at submission)
        return job
    except NSTError as exc:
        raise Problem(400, one_line(exc) if str(exc).startswith("spec") else f"spec: {one_line(exc)}") from None


def sniff(data: bytes) -> str | None:
    """"JPEG", "PNG" or "WEBP" from the first bytes, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _jpeg_size(data: bytes):
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    return None


def _webp_size(data: bytes):
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def header_size(data: bytes, kind: str):
    """(width, height) from the header of a ``kind`` image ("JPEG", "PNG", "WEBP"), or None when it cannot be
    read. Nothing is decoded."""
    if kind == "PNG":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return struct.unpack(">II", data[16:24])
    if kind == "JPEG":
        return _jpeg_size(data)
    return _webp_size(data)


def check_image(name: str, data: bytes, pixel_limit: int) -> str:
    """The image's format ("JPEG", "PNG", "WEBP") after the checks of the module docstring; Problem 422 naming
    ``name`` otherwise."""
    if not data:
        raise Problem(422, f"{name}: empty file")
    kind = sniff(data)
    if kind is None:
        what = "a GIF image" if data[:6] in (b"GIF87a", b"GIF89a") else "not a JPEG, PNG or WebP image"
        raise Problem(422, f"{name}: {what}; send JPEG, PNG or WebP")
    size = header_size(data, kind)
    if size is None:
        raise Problem(422, f"{name}: a {kind} file whose header gives no width and height (truncated or corrupt)")
    width, height = size
    if width * height > pixel_limit:
        raise Problem(422, f"{name}: {width}x{height} is {width * height} pixels, over this server's limit of "
                           f"{pixel_limit} pixels; send a smaller image")
    if width < 1 or height < 1:
        raise Problem(422, f"{name}: the header says {width}x{height} pixels")
    try:
        with _DECODING:
            open_image(name, data)
    except NSTError as exc:
        raise Problem(422, one_line(exc)) from None
    return kind


def check_inputs(job: Spec, form: dict, pixel_limit: int) -> list:
    """The job's images as ``engine.Input``s (content first), each checked (``check_image``); Problem 400 when the
    files do not match the task (content for stylize and invert, one or more styles for stylize, one for texture,
    none for invert)."""
    contents, styles = form["content"], form["style"]
    if job.task == "texture" and contents:
        raise Problem(400, "texture takes no content image; send only 'style'")
    if job.task != "texture" and len(contents) != 1:
        raise Problem(400, f"{job.task} needs one content image (the file 'content'), got {len(contents)}")
    if job.task == "invert" and styles:
        raise Problem(400, "invert takes no style image; send only 'content'")
    if job.task == "stylize" and not styles:
        raise Problem(400, "stylize needs at least one style image (files 'style')")
    if job.task == "texture" and len(styles) != 1:
        raise Problem(400, f"texture needs one style image (the file 'style'), got {len(styles)}")
    if len(styles) > MAX_STYLES:
        raise Problem(400, f"at most {MAX_STYLES} style images, got {len(styles)}")
    if job.task == "stylize" and job.style_blend is not None:
        try:
            blend_weights(job.style_blend, len(styles))
        except NSTError as exc:
            raise Problem(400, f"spec: {one_line(exc)}") from None
    named = [("content", "content", d) for d in contents] + [
        ("style", "style" if len(styles) == 1 else f"style-{k}", d) for k, d in enumerate(styles, 1)]
    inputs = []
    for role, name, data in named:
        kind = check_image(name, data, pixel_limit)
        inputs.append(Input(role, f"{name}.{_EXTENSIONS[kind]}", data))
    return inputs

