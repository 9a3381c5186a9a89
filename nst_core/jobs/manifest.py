"""``nst batch``'s manifest: JSON Lines, one job per line, checked row by row.

    {"content": "photos/a.jpg", "style": "starry_night.jpg", "output": "a.png", "size": 256}
    {"content": "photos/b.jpg", "style": ["scream.jpg", "starry_night.jpg"], "style_blend": [1, 3], "output": "b.png"}
    {"task": "texture", "style": "scream.jpg", "output": "textures/scream.png", "iterations": 100}

Keys: ``content``, ``style`` (a path or a list of paths), ``output`` (a file name under OUTDIR, required),
``task`` (stylize by default, invert, texture), and any Spec option by its command-line name (``style-size`` or
``style_size``; lists as JSON lists or as the CLI's "1,4,6"). Relative paths are relative to the manifest's
directory. Blank lines are skipped. A bad row (not JSON, an unknown key, an invalid option, a missing or
undecodable image, an output that leaves OUTDIR or repeats another row's) is a ``BadRow`` naming its line; the
others are ``Row``s.

A row's ``key`` (SHA-256 of its options, its images' SHA-256 and its output name) is what a rerun recognises: the
same line with the same images is the same job; an image changed on disk is a new one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from ..errors import NSTError
from ..inputs.images import one_line, open_image
from ..outputs.files import check_output_path, same_file
from ..spec.spec import Spec, make, parse_json, resolve, to_dict

__all__ = ["Row", "BadRow", "read_manifest", "output_path", "RESERVED"]

#: Names under OUTDIR that belong to nst batch itself.
RESERVED = ("summary.json", "nst-jobs.sqlite", "nst-jobs.sqlite-wal", "nst-jobs.sqlite-shm", ".nst-batch.lock")
_LISTS = ("style_layers", "style_weights", "style_blend")
_OPTIONS = tuple(f.name for f in dataclasses.fields(Spec) if f.name not in ("task", "content", "styles"))


@dataclasses.dataclass(frozen=True)
class Row:
    """A valid row: its 1-based ``line``, ``output`` name (relative to OUTDIR), the job (a Spec, not resolved: a
    noise start draws its seed when submitted), ``inputs`` ``[(role, path, sha256), ...]`` and ``key``."""

    line: int
    output: str
    job: Spec
    inputs: tuple
    key: str


@dataclasses.dataclass(frozen=True)
class BadRow:
    line: int
    output: str | None
    error: str


def output_path(outdir: str, name) -> str:
    """The file OUTDIR/name; NSTError when ``name`` is not a relative file name that stays inside OUTDIR (after
    symbolic links are followed) or is one of nst batch's own files."""
    if not isinstance(name, str) or not name.strip():
        raise NSTError(f"output must be a file name, got {name!r}")
    if os.path.isabs(name) or os.path.splitdrive(name)[0]:
        raise NSTError(f"output {name!r} is an absolute path; give a name under OUTDIR")
    norm = os.path.normpath(name)
    if norm == os.curdir or norm.split(os.sep)[0] == os.pardir:
        raise NSTError(f"output {name!r} leaves OUTDIR")
    if norm in RESERVED:
        raise NSTError(f"output {name!r} is a file of nst batch itself")
    root = os.path.realpath(outdir)
    target = os.path.realpath(os.path.join(root, norm))
    if os.path.commonpath([root, target]) != root or target == root:
        raise NSTError(f"output {name!r} leaves OUTDIR (through a symbolic link)")
    return os.path.join(outdir, norm)


class _Images:
    """Each image file read, hashed and decoded once (a style used by many rows)."""

    def __init__(self):
        self._seen: dict = {}

    def check(self, path: str) -> str:
        """The file's SHA-256; NSTError when it cannot be read or decoded."""
        if path not in self._seen:
            try:
                with open(path, "rb") as f:
                    data = f.read()
                open_image(path, data)
                self._seen[path] = hashlib.sha256(data).hexdigest()
            except FileNotFoundError:
                self._seen[path] = NSTError(f"{path}: no such file")
            except IsADirectoryError:
                self._seen[path] = NSTError(f"{path}: is a directory, not an image file")
            except OSError as exc:
                self._seen[path] = NSTError(f"{path}: cannot read file ({one_line(exc.strerror or exc)})")
            except NSTError as exc:
                self._seen[path] = exc
        found = self._seen[path]
        if isinstance(found, NSTError):
            raise found
        return found


def _value(name: str, value):
    """A manifest value as the Spec wants it: "1,4,6" -> a list for the list options."""
    if name in _LISTS and isinstance(value, str):
        try:
            return [float(v) if name != "style_layers" else int(v) for v in value.split(",")]
        except ValueError:
            raise NSTError(f"{name.replace('_', '-')} must be numbers separated by commas, got {value!r}") from None
    return value


def _paths(value, base: str, what: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise NSTError(f"{what} must be a path or a list of paths, got {value!r}")
    return [os.path.normpath(os.path.join(base, v)) for v in values]


def _row(data, line: int, base: str, outdir: str, images: _Images) -> Row:
    if not isinstance(data, dict):
        raise NSTError("not a JSON object")
    fields = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(k for k in fields if k not in _OPTIONS + ("task", "content", "style", "output"))
    if unknown:
        raise NSTError(f"unknown key {unknown[0]!r}")
    if "output" not in fields:
        raise NSTError("no output name (\"output\": NAME)")
    output = fields.pop("output")
    task = fields.pop("task", "stylize")
    content = _paths(fields.pop("content"), base, "content")[0] if "content" in fields else None
    styles = tuple(_paths(fields.pop("style"), base, "style")) if "style" in fields else ()
    options = {k: _value(k, v) for k, v in fields.items()}
    job = make(task, content=content, styles=styles, **options)
    resolve(job)  # the checks that need the whole job
    if job.task != "texture" and job.content is None:
        raise NSTError(f"{job.task} needs a content image (\"content\": PATH)")
    if job.task != "invert" and not job.styles:
        raise NSTError(f"{job.task} needs a style image (\"style\": PATH)")
    target = output_path(outdir, output)
    for path in (job.content, *job.styles):
        if path is not None and same_file(target, path):
            raise NSTError(f"output {output!r} is the input image {path}")
    inputs = tuple([("content", job.content, images.check(job.content))] if job.content else []) + tuple(
        ("style", s, images.check(s)) for s in job.styles)
    described = dict(to_dict(job), content=None, styles=[])
    key = hashlib.sha256(json.dumps({"spec": described, "inputs": [i[2] for i in inputs], "output": output},
                                    sort_keys=True).encode()).hexdigest()
    return Row(line=line, output=os.path.normpath(output), job=job, inputs=inputs, key=key)


def read_manifest(path: str, outdir: str) -> tuple[list, list]:
    """``([Row, ...], [BadRow, ...])`` of the manifest at ``path`` for outputs under ``outdir``. NSTError (one
    line) when the file itself cannot be read; a bad row never stops the others."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise NSTError(f"{path}: no such manifest file") from None
    except IsADirectoryError:
        raise NSTError(f"{path}: is a directory, not a manifest file") from None
    except OSError as exc:
        raise NSTError(f"{path}: cannot read the manifest ({one_line(exc.strerror or exc)})") from None
    except UnicodeDecodeError:
        raise NSTError(f"{path}: not a text file (JSON Lines, UTF-8)") from None
    base = os.path.dirname(os.path.abspath(path))
    rows, bad, outputs, images = [], [], {}, _Images()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        data, output = None, None
        try:
            data = parse_json(line, where="the row")
            output = data.get("output") if isinstance(data, dict) else None
            row = _row(data, number, base, outdir, images)
            if row.output in outputs:
                raise NSTError(f"output {row.output!r} is also line {outputs[row.output]}'s")
            outputs[row.output] = number
            rows.append(row)
        except NSTError as exc:
            bad.append(BadRow(number, output if isinstance(output, str) else None, one_line(exc)))
    for row in list(rows):  # the format of each output, once its directory exists
        target = output_path(outdir, row.output)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            check_output_path(target)
        except (NSTError, OSError) as exc:
            rows.remove(row)
            bad.append(BadRow(row.line, row.output, one_line(exc)))
    return rows, sorted(bad, key=lambda b: b.line)
