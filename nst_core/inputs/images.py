"""Images in: decode, preprocess (CS231n), deprocess, the pixel box, hashes of input files.

Reading
    ``open_image(path)``  -> ``PIL.Image.Image``, mode "RGB", 8 bits per channel, fully decoded, EXIF orientation
                             applied, transparency composited over white.
    ``to_array(image)``   -> float32 ndarray [H, W, 3] in [0, 1].
    ``load_image(path)``  -> float32 ndarray [H, W, 3] in [0, 1]; like ``to_array(open_image(path))`` but keeps the
                             full precision of 16-bit and floating-point sources.
    Every problem with the file (missing, a directory, empty, not an image, truncated, a decompression bomb,
    unreadable) raises ``NSTError("<path>: <problem>")`` with a one-line message.
    A path that is not a regular file (a FIFO, ``<(cat img)``'s /dev/fd/N, a character device) is a stream: it is
    read once, up to ``MAX_STREAM_BYTES``, and its bytes kept for the process, so that every later reader (the
    recipe's hash and header, the run's decode, --original-colors) sees the same image (``input_bytes``).

Network input / output (the CS231n exercise, i.e. torchvision's ``Resize(size)``, ``ToTensor``, ``Normalize``)
    ``preprocess(image, size)``  -> float32 [1, 3, h, w], normalised with ``MEAN`` / ``STD``.
    ``deprocess(x)``             -> uint8 [h, w, 3]: un-normalise, clip to [0, 1], round.
    ``pixel_bounds(shape)``      -> per-element bounds of the normalised [0, 1] pixel range (for L-BFGS-B).

Hashing
    ``sha256_file(path)`` -> hex SHA-256 of a file's bytes (the recipe of a picture records its inputs' hashes).

Writing is ``nst_core.outputs.files``.

Transparency: an alpha channel (RGBA, LA, PA, premultiplied modes, or a palette / grey / RGB image with a
``transparency`` entry) is composited over WHITE, which is what a painting or a logo on a transparent background
looks like to a person. Transparent pixels therefore become white, half-transparent ones are blended.
"""
from __future__ import annotations

import hashlib
import io
import numbers
import os
import re
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..errors import NSTError

__all__ = [
    "MEAN",
    "STD",
    "open_image",
    "to_array",
    "load_image",
    "preprocess",
    "deprocess",
    "pixel_bounds",
    "resized_shape",
    "sha256_file",
    "input_sha256",
    "upright_size",
    "one_line",
    "set_max_pixels",
    "DEFAULT_MAX_PIXELS",
]

#: ImageNet channel means (R, G, B) of [0, 1] pixel values, as used by torchvision and CS231n.
MEAN = (0.485, 0.456, 0.406)
#: ImageNet channel standard deviations (R, G, B) of [0, 1] pixel values.
STD = (0.229, 0.224, 0.225)

_MEAN32 = np.asarray(MEAN, dtype=np.float32)
_STD32 = np.asarray(STD, dtype=np.float32)

# Modes whose samples have more than 8 bits: decoded to float by hand instead of Pillow's 8-bit conversion.
_INT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_HIGH_MODES = _INT16_MODES + ("I", "F")

#: The most bytes read from a stream input (a pipe or FIFO): 1 GiB, above any photo Pillow decodes by default.
MAX_STREAM_BYTES = 1 << 30
_STREAMS: dict[str, bytes] = {}  # stream path -> its bytes, read once per process

#: Pillow's decompression-bomb limit (pixels) as this process started: files with more are refused unless
#: ``set_max_pixels`` raises it (``nst --max-pixels``; a service keeps the default).
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def set_max_pixels(pixels: int | None) -> None:
    """The largest image (width x height, pixels) this process decodes: ``pixels`` >= 1, or None / 0 for no limit.
    Process-wide (it is Pillow's ``Image.MAX_IMAGE_PIXELS``), for a local user who trusts the files: 100 MP phone
    and camera pictures exceed Pillow's default, about 89.5 MP. NSTError for a negative value."""
    if pixels is not None and (isinstance(pixels, bool) or not isinstance(pixels, numbers.Integral) or pixels < 0):
        raise NSTError(f"--max-pixels must be a whole number >= 0 (0: no limit), got {pixels!r}")
    Image.MAX_IMAGE_PIXELS = int(pixels) if pixels else None


def one_line(text: object) -> str:
    """``str(text)`` with whitespace runs (including newlines) collapsed to single spaces."""
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------------------------------- reading


def input_bytes(path) -> bytes | None:
    """The bytes of a stream input (not a regular file: a FIFO, /dev/fd/N of a pipe, a device), read once per process
    and kept; None for a regular file, a directory or a missing path. NSTError when it cannot be read or is larger
    than ``MAX_STREAM_BYTES``. A FIFO with no writer blocks here, as it would for any reader."""
    name = os.fspath(path)
    if name in _STREAMS:
        return _STREAMS[name]
    if not os.path.exists(name) or os.path.isfile(name) or os.path.isdir(name):
        return None
    blocks, size = [], 0
    try:
        with open(name, "rb", buffering=0) as f:  # in blocks: read(1 GiB) would reserve 1 GiB at once
            while size <= MAX_STREAM_BYTES:
                block = f.read(1 << 20)
                if not block:
                    break
                blocks.append(block)
                size += len(block)
    except OSError as exc:
        raise NSTError(f"{name}: cannot read it ({one_line(exc.strerror or exc)})") from None
    if size > MAX_STREAM_BYTES:
        raise NSTError(f"{name}: a stream of more than {MAX_STREAM_BYTES >> 20} MiB; give the image as a file")
    _STREAMS[name] = b"".join(blocks)
    return _STREAMS[name]


def input_sha256(path) -> str | None:
    """SHA-256 (hex) of an input image: a regular file's, or a stream's bytes (``input_bytes``); None when it
    cannot be read."""
    try:
        data = input_bytes(path)
        return sha256_file(path) if data is None else hashlib.sha256(data).hexdigest()
    except (OSError, NSTError):
        return None


def _source(name: str):
    """What Pillow should open for ``name``: the path of a regular file, or a stream's bytes as a file object.
    NSTError for a missing path, a directory or an empty file / stream."""
    if not os.path.exists(name):
        raise NSTError(f"{name}: no such file")
    if os.path.isdir(name):
        raise NSTError(f"{name}: is a directory, not an image file")
    data = input_bytes(name)
    if data is not None:
        if not data:
            raise NSTError(f"{name}: empty stream (nothing was written to it before it was closed)")
        return io.BytesIO(data)
    try:
        if os.path.getsize(name) == 0:
            raise NSTError(f"{name}: empty file")
    except OSError as exc:
        raise NSTError(f"{name}: cannot read file ({one_line(exc.strerror or exc)})") from None
    return name


def _decode(path, data: bytes | None = None) -> Image.Image:
    """Open and fully decode ``path`` (or ``data``, the file's bytes, ``path`` then naming it in messages); return a
    detached PIL image with EXIF orientation applied.

    The first frame is used for animated files. Raises NSTError with a one-line message on any problem.
    """
    name = os.fspath(path)
    if data is None:
        source = _source(name)
    elif not data:
        raise NSTError(f"{name}: empty file")
    else:
        source = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            # The warning is raised as an error so that images between the limit and twice the limit
            # are refused too, not decoded with a warning printed to stderr.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                im.load()  # full decode: a truncated file raises here (LOAD_TRUNCATED_IMAGES stays False)
                return ImageOps.exif_transpose(im)  # a new image (a copy when there is no orientation tag)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        match = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(match.group(1))} pixels" if match else "too many pixels"
        raise NSTError(
            f"{name}: image too large ({pixels}; the decompression-bomb limit is {Image.MAX_IMAGE_PIXELS} pixels: "
            f"raise it with --max-pixels if you trust the file)"
        ) from None
    except Image.UnidentifiedImageError:
        raise NSTError(f"{name}: not an image file Pillow can read (unknown or corrupt format)") from None
    except PermissionError:
        raise NSTError(f"{name}: permission denied") from None
    except MemoryError:
        raise NSTError(f"{name}: not enough memory to decode the image") from None
    except OSError as exc:
        text = one_line(exc.strerror if exc.strerror else exc)
        if "truncated" in text.lower():
            raise NSTError(f"{name}: truncated or incomplete image file (Pillow: {text})") from None
        raise NSTError(f"{name}: cannot read image ({text})") from None
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as exc:
        # Pillow's plugins report corrupt headers and streams with a variety of exception types.
        raise NSTError(f"{name}: corrupt or unsupported image ({type(exc).__name__}: {one_line(exc)})") from None


def _high_depth_to_float(im: Image.Image, name: str) -> np.ndarray:
    """Single-channel image of mode I;16*, I or F -> float32 [H, W, 3] in [0, 1] (grey replicated to RGB).

    Integer modes are divided by 65535 (the 16-bit full scale) and clipped; mode F is assumed to hold [0, 1]
    values and is clipped. Non-finite values raise NSTError.
    """
    arr = np.asarray(im)
    if im.mode == "F":
        grey = arr.astype(np.float32, copy=False)
        if not np.all(np.isfinite(grey)):
            raise NSTError(f"{name}: floating-point image contains NaN or infinite values")
    else:
        grey = arr.astype(np.float32) / np.float32(65535.0)
    grey = np.clip(grey, 0.0, 1.0)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _to_rgb8(im: Image.Image, name: str) -> Image.Image:
    """Any decoded PIL image -> a new mode "RGB" 8-bit image (alpha composited over white)."""
    if im.mode in _HIGH_MODES:
        rgb = _high_depth_to_float(im, name)
        return Image.fromarray(np.rint(rgb * np.float32(255.0)).astype(np.uint8))
    try:
        if im.has_transparency_data:
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
            alpha = rgba[:, :, 3:4] / np.float32(255.0)
            rgb = rgba[:, :, :3] * alpha + np.float32(255.0) * (np.float32(1.0) - alpha)
            return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
        if im.mode == "RGB":
            return im
        return im.convert("RGB")  # L, 1, P, CMYK (Pillow's plain conversion, no ICC), YCbCr, RGBX, ...
    except (ValueError, OSError) as exc:
        raise NSTError(f"{name}: cannot convert image mode {im.mode} to RGB ({one_line(exc)})") from None


def open_image(path, data: bytes | None = None) -> Image.Image:
    """Decode an image file into an 8-bit RGB PIL image, as the CS231n pipeline consumes it.

    ``path``: str or os.PathLike; ``data``: the file's bytes instead of reading ``path`` (which then only names the
    image in messages: a job engine's worker gets bytes, not files). Returns a fully decoded, file-independent ``PIL.Image.Image`` of mode "RGB"
    (size W x H). EXIF orientation is applied; animated files give their first frame; transparency is
    composited over white; grey, palette, CMYK, etc. are converted with Pillow; 16-bit (divided by 65535) and
    float (assumed [0, 1], clipped) images are rounded to 8 bits. Raises NSTError("<path>: <problem>").
    """
    name = os.fspath(path)
    return _to_rgb8(_decode(name, data), name)


def upright_size(path):
    """(width, height) of an image file as ``open_image`` turns it (EXIF orientation applied), from its header,
    without decoding the pixels; None when it cannot be read as an image. A stream is read once (``input_bytes``),
    so ``open_image`` decodes the same bytes later."""
    try:
        data = input_bytes(path)
        source = path if data is None else io.BytesIO(data)
        if data is None and not os.path.isfile(path):
            return None
        with warnings.catch_warnings():  # a decompression-bomb warning is open_image's to report, in one line
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                width, height = im.size
                orientation = im.getexif().get(0x0112, 1)
    except Exception:  # any unreadable file: the run itself reports it in one line
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def to_array(image: Image.Image) -> np.ndarray:
    """8-bit PIL image -> float32 ndarray [H, W, 3] with values k/255 in [0, 1] (converted to RGB if needed)."""
    if image.mode != "RGB":
        image = _to_rgb8(image, "<image>")
    return np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255.0)


def load_image(path) -> np.ndarray:
    """Decode an image file into float32 ndarray [H, W, 3], RGB, values in [0, 1].

    Same handling as ``open_image``; 16-bit and float sources keep their full precision (k / 65535, or the
    clipped float value) instead of being rounded to 8 bits. Raises NSTError("<path>: <problem>").
    """
    name = os.fspath(path)
    im = _decode(name)
    if im.mode in _HIGH_MODES:
        return _high_depth_to_float(im, name)
    return to_array(_to_rgb8(im, name))


# ------------------------------------------------------------------------------------------ network tensors


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` rule: the smaller edge becomes ``size``, the other ``int(size * long / short)``.

    Returns (new_width, new_height). Ties (square images) give size x size.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def resized_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(height, width) of a ``width`` x ``height`` image after ``preprocess(image, size)`` (pixels)."""
    new_w, new_h = _resized_size(int(width), int(height), int(size))
    return new_h, new_w


def preprocess(image, size: int | None = 512) -> np.ndarray:
    """Resize and normalise an image for the network: float32 [1, 3, h, w].

    ``image``: an 8-bit PIL image (converted to RGB if it is not), a uint8 ndarray [H, W, 3], or a floating
    ndarray [H, W, 3] with values in [0, 1].
    ``size``: the smaller edge after resizing, in pixels; the longer edge becomes ``int(size * long / short)``
    (torchvision's truncation). ``None`` keeps the original size. ``size < 1`` raises NSTError.

    PIL images and uint8 arrays reproduce torchvision's ``Resize(size)`` (PIL BILINEAR on the 8-bit image) +
    ``ToTensor`` (/255 in float32) + ``Normalize(MEAN, STD)`` (float32) bit for bit, i.e. CS231n's
    ``preprocess``. Float arrays are resized per channel in floating point (PIL mode "F", same bilinear filter,
    no 8-bit rounding): within about 1/255 of the 8-bit path, and exact when no resize is needed.
    """
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise NSTError(f"image size must be a whole number of pixels >= 1, got {size!r}")
        size = int(size)

    if isinstance(image, Image.Image):
        pil = image if image.mode == "RGB" else _to_rgb8(image, "<image>")
        rgb = None
    else:
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"preprocess: expected an [H, W, 3] image, got shape {arr.shape}")
        if arr.dtype == np.uint8:
            pil, rgb = Image.fromarray(arr), None
        elif np.issubdtype(arr.dtype, np.floating):
            pil, rgb = None, arr.astype(np.float32, copy=False)
        else:
            raise ValueError(f"preprocess: expected uint8 or floating pixels, got {arr.dtype}")

    if pil is not None:
        if size is not None:
            new = _resized_size(pil.width, pil.height, size)
            if new != pil.size:
                pil = pil.resize(new, Image.Resampling.BILINEAR)
        rgb = np.asarray(pil, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    elif size is not None:
        height, width = rgb.shape[:2]
        new = _resized_size(width, height, size)
        if new != (width, height):
            channels = [
                np.asarray(Image.fromarray(np.ascontiguousarray(rgb[:, :, c])).resize(new, Image.Resampling.BILINEAR))
                for c in range(3)
            ]
            rgb = np.stack(channels, axis=2)

    x = (rgb - _MEAN32) / _STD32
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def deprocess(x: np.ndarray) -> np.ndarray:
    """Normalised image -> uint8 ndarray [h, w, 3].

    ``x``: [1, 3, h, w] (or [3, h, w]), any float dtype, normalised with ``MEAN`` / ``STD``. Computes
    ``x * std + mean`` in float64, CLIPS to [0, 1] (no min-max rescaling, so colours are not stretched), and
    rounds ``255 * value`` to the nearest integer. Non-finite values raise NSTError.
    """
    arr = np.asarray(x)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"deprocess: expected a batch of one image, got shape {arr.shape}")
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"deprocess: expected [1, 3, h, w] or [3, h, w], got shape {np.shape(x)}")
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise NSTError(f"the image contains {bad} non-finite values (NaN or infinity): the optimisation diverged")
    rgb = arr.transpose(1, 2, 0).astype(np.float64) * np.asarray(STD) + np.asarray(MEAN)
    np.clip(rgb, 0.0, 1.0, out=rgb)
    return np.rint(rgb * 255.0).astype(np.uint8)


def pixel_bounds(shape) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the normalised pixel range [0, 1] for every element of an image of ``shape``.

    ``shape``: (1, 3, h, w) or (3, h, w). Returns ``(lo, hi)``, two float64 1-D arrays of length
    ``prod(shape)`` in C order, i.e. matching ``x.ravel()``: element of channel c gets
    ``lo = (0 - MEAN[c]) / STD[c]`` and ``hi = (1 - MEAN[c]) / STD[c]``. Suitable for
    ``scipy.optimize.minimize(..., bounds=scipy.optimize.Bounds(lo, hi))``. Note that float32 ``preprocess``
    output can lie outside these float64 bounds by a rounding error; L-BFGS-B projects the start point.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (3, 4) or shape[-3] != 3 or (len(shape) == 4 and shape[0] != 1):
        raise ValueError(f"pixel_bounds: expected (1, 3, h, w) or (3, h, w), got {shape}")
    mean = np.asarray(MEAN, dtype=np.float64)
    std = np.asarray(STD, dtype=np.float64)
    per_channel = (shape[-3], 1, 1)
    lo = np.broadcast_to(((0.0 - mean) / std).reshape(per_channel), shape[-3:])
    hi = np.broadcast_to(((1.0 - mean) / std).reshape(per_channel), shape[-3:])
    return np.ascontiguousarray(lo).ravel(), np.ascontiguousarray(hi).ravel()


def sha256_file(path) -> str:
    """The SHA-256 of a file's bytes, hex, read in 1 MiB blocks (weights files, bundle models)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
