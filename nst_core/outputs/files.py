"""Files out: output paths checked before any work, images and bytes written atomically (never half-written).

    ``check_output_path(path)`` validates an output path before any work is done (returns the Pillow format);
    ``save_image(path, rgb, forbid=inputs, text=chunks)`` writes atomically (temporary file in the same directory,
    fsync, ``os.replace``) and never overwrites an input; a PNG gets ``text`` as iTXt chunks (the recipe);
    ``write_bytes(path, data)`` is the atomic write underneath (logs, CSVs, models).
"""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np
from PIL import Image, PngImagePlugin

from ..errors import NSTError
from ..inputs.images import one_line
from ..process.interrupts import sigint_deferred

__all__ = ["check_output_path", "save_image", "write_bytes", "same_file", "png_bytes"]

# Extra keyword arguments for Image.save, by Pillow format name.
_SAVE_OPTIONS = {
    "JPEG": {"quality": 95},
    "WEBP": {"quality": 95},
}





def _writable_formats() -> dict[str, str]:
    """Map lower-case extension (with dot) -> Pillow format name, for formats Pillow can save."""
    return {ext.lower(): fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def check_output_path(path) -> str:
    """Validate an output image path before any work is done; return the Pillow format name (e.g. "PNG").

    NSTError("<path>: <problem>") if: the path is an existing directory; its directory does not exist, is not a
    directory, or is not writable; an existing file there is read-only; the extension is missing, unknown, or
    names a format Pillow cannot write, or cannot write in RGB (checked by encoding a 2x2 image in memory).
    """
    name = os.fspath(path)
    if name == "" or name.endswith(os.sep) or os.path.isdir(name):
        raise NSTError(f"{name}: is a directory; give an output file name such as out.png")
    directory = os.path.dirname(os.path.abspath(name))
    if not os.path.exists(directory):
        raise NSTError(f"{name}: directory {directory} does not exist")
    if not os.path.isdir(directory):
        raise NSTError(f"{name}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise NSTError(f"{name}: directory {directory} is not writable")
    if os.path.exists(name) and not os.access(name, os.W_OK):
        raise NSTError(f"{name}: file exists and is read-only")
    ext = os.path.splitext(name)[1].lower()
    if not ext:
        raise NSTError(f"{name}: no file extension; use e.g. .png or .jpg to choose the image format")
    known = Image.registered_extensions()
    if ext not in {e.lower() for e in known}:
        raise NSTError(f"{name}: unknown image extension '{ext}'; use e.g. .png or .jpg")
    formats = _writable_formats()
    if ext not in formats:
        fmt = {e.lower(): f for e, f in known.items()}[ext]
        raise NSTError(f"{name}: Pillow cannot write {fmt} files ('{ext}'); use e.g. .png or .jpg")
    fmt = formats[ext]
    # Some registered writers cannot encode an RGB image (XBM, MSP, Palm: 1-bit; BLP) or have no handler
    # installed (BUFR, GRIB, HDF5, WMF): find out now with a tiny image, not after the optimisation.
    try:
        Image.new("RGB", (2, 2)).save(io.BytesIO(), format=fmt, **_SAVE_OPTIONS.get(fmt, {}))
    except Exception as exc:
        raise NSTError(f"{name}: Pillow cannot write RGB images as {fmt} ({one_line(exc)}); "
                       "use e.g. .png or .jpg") from None
    return fmt


def same_file(a: str, b) -> bool:
    """True if paths ``a`` and ``b`` name the same file (symlinks and hard links included)."""
    try:
        b = os.fspath(b)
    except TypeError:
        return False
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _new_file_mode(name: str) -> int:
    """Permission bits for the output: those of the file being replaced, else 0o666 minus the umask."""
    try:
        return os.stat(name).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _pnginfo(text: dict):
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_itxt(key, value, zip=True)
    return info


def png_bytes(rgb_uint8: np.ndarray, text: dict | None = None) -> bytes:
    """An RGB image (uint8 [h, w, 3]) as PNG file bytes, ``text`` as iTXt chunks (the recipe): what a job engine's
    worker sends back instead of writing a file."""
    buffer = io.BytesIO()
    extra = {"pnginfo": _pnginfo(text)} if text else {}
    Image.fromarray(np.ascontiguousarray(rgb_uint8)).save(buffer, format="PNG", **extra)
    return buffer.getvalue()


def save_image(path, rgb_uint8: np.ndarray, forbid=(), text: dict | None = None) -> None:
    """Write an RGB image atomically; the format follows the extension (JPEG quality 95).

    ``rgb_uint8``: uint8 ndarray [h, w, 3]. ``forbid``: paths (e.g. the input images) that must never be
    overwritten; NSTError if ``path`` resolves to one of them. The image is written to a temporary file in the
    destination directory, flushed and fsynced, then moved onto ``path`` with ``os.replace``, so ``path`` holds
    either its old content or the complete new image. ``text``: {keyword: str} written as compressed iTXt chunks
    when the format is PNG (the recipe, ``outputs.recipe``); other formats are written without it. The temporary file is removed on any failure, including
    KeyboardInterrupt. Problems with the path or the write raise NSTError("<path>: <problem>").
    """
    name = os.fspath(path)
    arr = np.asarray(rgb_uint8)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"save_image: expected a uint8 [h, w, 3] array, got {arr.dtype} {arr.shape}")
    for other in forbid:
        if same_file(name, other):
            raise NSTError(f"{name}: refusing to overwrite the input image {os.fspath(other)}")
    fmt = check_output_path(name)
    image = Image.fromarray(np.ascontiguousarray(arr))
    buffer = io.BytesIO()
    try:  # encode in memory first: an encoder failure never touches the file system
        extra = {"pnginfo": _pnginfo(text)} if text and fmt == "PNG" else {}
        image.save(buffer, format=fmt, **_SAVE_OPTIONS.get(fmt, {}), **extra)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise NSTError(f"{name}: cannot write {fmt} image ({one_line(text)})") from None
    write_bytes(name, buffer.getvalue())


def write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory (same extension), fsync,
    ``os.replace``, then fsync of the directory. ``path`` holds either its old content or all of ``data``; the
    temporary file is removed on any failure, KeyboardInterrupt included, and a Ctrl-C during the write is held
    until the file is complete (or removed). A replaced file keeps its permission bits.
    Problems raise NSTError("<path>: <problem>")."""
    path = os.fspath(path)
    with sigint_deferred():
        _write_bytes(path, data)


def _write_bytes(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    mode = _new_file_mode(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                                   suffix=os.path.splitext(path)[1] or ".tmp")
    except OSError as exc:
        raise NSTError(f"{path}: cannot create a file in {directory} ({one_line(exc.strerror or exc)})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), mode)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise NSTError(f"{path}: cannot write ({one_line(exc.strerror or exc)})") from None
        raise
    try:  # make the rename durable; not possible on every platform / file system
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
