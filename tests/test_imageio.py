"""Tests of nst_core.inputs.images: decoding of every kind of input file (or a one-line NSTError naming it), the
CS231n preprocessing rule against an independent PIL + NumPy (+ torch tensor ops) computation, deprocessing,
pixel bounds, output-path checks and the atomic, input-protecting save."""
import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from nst_core.inputs import images as imageio
from nst_core.outputs import files
from nst_core.errors import NSTError

MEAN32 = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD32 = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_SCRIPT = Path(sys.executable).parent / "nst"
NST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, str(Path(__file__).resolve().parents[1] / "cli.py")]


def noise_rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def expect_error(path, *fragments, loader=imageio.load_image):
    """Call loader(path); require a one-line NSTError that starts with the path and contains fragments."""
    with pytest.raises(NSTError) as info:
        loader(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("loader", [imageio.load_image, imageio.open_image])
def test_missing_file(tmp_path, loader):
    expect_error(str(tmp_path / "nope.jpg"), "no such file", loader=loader)


def test_directory(tmp_path):
    expect_error(str(tmp_path), "directory")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    expect_error(str(path), "empty")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    expect_error(str(path), "not an image")


@pytest.mark.parametrize("fmt, ext", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_files_are_detected(tmp_path, fmt, ext):
    buf = io.BytesIO()
    Image.fromarray(noise_rgb(64, 80)).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: len(data) // 2])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    expect_error(str(path), "truncated")
    expect_error(str(path), "truncated", loader=imageio.open_image)


def test_decompression_bomb_warning_range_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (12, 12)).save(path)  # 144 pixels: above the limit, below twice the limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    expect_error(str(path), "144 pixels", "100 pixels", "decompression")


def test_decompression_bomb_error_range(tmp_path, monkeypatch):
    path = tmp_path / "bigger.png"
    Image.new("RGB", (30, 20)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    expect_error(str(path), "600 pixels", "100 pixels")


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_png_header_claiming_a_huge_size(tmp_path):
    # A 20-byte header claims 100000 x 100000 pixels: refused before any decoding, with the default limit.
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0")) \
        + png_chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    expect_error(str(path), "10000000000 pixels", f"{Image.MAX_IMAGE_PIXELS} pixels")


def test_permission_and_os_errors(tmp_path, monkeypatch):
    path = tmp_path / "ok.png"
    Image.new("RGB", (2, 2)).save(path)

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", deny)
    expect_error(str(path), "permission denied")

    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Image, "open", broken)
    expect_error(str(path), "Input/output error")


#: Run a command without the capabilities that let root ignore file modes (dropped from the bounding set, so gone
#: after exec): a root process then meets file modes as their owner does, while what it owns (the Python under
#: /root, the model) stays readable. So the permission tests run in root's CI too.
AS_OWNER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def nst_as_owner(args, env):
    """A real ``nst`` process that file modes bind, also when the tests run as root (CI)."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's CAP_DAC_OVERRIDE")
        prefix = AS_OWNER
    return subprocess.run(prefix + NST + [str(a) for a in args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_unreadable_file(tmp_path, env):
    path, style = tmp_path / "secret.png", tmp_path / "style.png"
    Image.new("RGB", (40, 40)).save(path)
    Image.new("RGB", (40, 40)).save(style)
    path.chmod(0)
    try:
        r = nst_as_owner(["stylize", path, style, "-o", tmp_path / "out.png", "--size", "32", "--iterations", "1"],
                         env)
    finally:
        path.chmod(0o600)
    assert (r.returncode, r.stderr) == (2, f"nst: error: {path}: permission denied\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.png", "style.png"]


# ------------------------------------------------------------------------------------------------ good inputs


def test_rgb_png_exact_and_types(tmp_path):
    rgb = noise_rgb(5, 7)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    arr = imageio.load_image(path)  # a pathlib.Path is accepted too
    assert arr.dtype == np.float32 and arr.shape == (5, 7, 3)
    np.testing.assert_array_equal(arr, rgb.astype(np.float32) / np.float32(255))
    pil = imageio.open_image(str(path))
    assert isinstance(pil, Image.Image) and pil.mode == "RGB" and pil.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(pil), rgb)
    np.testing.assert_array_equal(imageio.to_array(pil), arr)


def test_grayscale_L(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = tmp_path / "grey.png"
    Image.fromarray(grey).save(path)
    arr = imageio.load_image(str(path))
    assert arr.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(arr[:, :, c], grey / np.float32(255))


def composite_over_white(value, alpha):
    return np.rint(value * alpha / 255 + 255 * (1 - alpha / 255))


def test_la_composited_over_white(tmp_path):
    grey = np.full((1, 3), 100, np.uint8)
    alpha = np.array([[0, 128, 255]], np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(path)
    pil = imageio.open_image(str(path))
    expected = composite_over_white(100.0, alpha[0].astype(float))
    np.testing.assert_array_equal(np.asarray(pil)[0, :, 0], expected)
    assert list(expected) == [255, 177, 100]  # 100 * 128/255 + 255 * 127/255 = 177.2
    np.testing.assert_array_equal(np.asarray(pil)[0, :, 0], np.asarray(pil)[0, :, 2])


def test_rgba_composited_over_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]  # opaque red stays red
    rgba[0, 1] = [0, 0, 255, 0]  # fully transparent blue becomes white
    rgba[1, 0] = [0, 0, 0, 128]  # half-transparent black becomes mid grey
    rgba[1, 1] = [10, 200, 30, 64]
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = np.asarray(imageio.open_image(str(path)))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[1, 0], [127, 127, 127])
    np.testing.assert_array_equal(out[1, 1], composite_over_white(np.array([10.0, 200.0, 30.0]), 64.0))
    np.testing.assert_array_equal(imageio.load_image(str(path)), out / np.float32(255))


@pytest.mark.parametrize("ext", ["png", "gif"])
def test_palette_with_transparency(tmp_path, ext):
    im = Image.new("P", (4, 4))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.putdata([0] * 8 + [1] * 8)  # top half index 0 (red), bottom half index 1 (green, transparent)
    path = tmp_path / f"pal.{ext}"
    im.save(path, transparency=1)
    out = np.asarray(imageio.open_image(str(path)))
    np.testing.assert_array_equal(out[:2].reshape(-1, 3), np.tile([255, 0, 0], (8, 1)))
    np.testing.assert_array_equal(out[2:].reshape(-1, 3), np.full((8, 3), 255))


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    img = Image.new("CMYK", (16, 8))
    img.paste((255, 0, 0, 0), (0, 0, 8, 8))  # cyan
    img.paste((0, 0, 255, 0), (8, 0, 16, 8))  # yellow
    img.save(path, quality=95)
    out = np.asarray(imageio.open_image(str(path))).astype(int)
    assert out.shape == (8, 16, 3)
    np.testing.assert_allclose(out[4, 2], [0, 255, 255], atol=6)
    np.testing.assert_allclose(out[4, 13], [255, 255, 0], atol=6)


def test_16bit_grayscale_png(tmp_path):
    values = np.array([[0, 1000, 32768, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    arr = imageio.load_image(str(path))
    assert arr.dtype == np.float32 and arr.shape == (1, 4, 3)
    np.testing.assert_allclose(arr[0, :, 1], values[0] / 65535.0, rtol=1e-7)
    assert arr[0, 3, 0] == 1.0 and arr[0, 0, 2] == 0.0
    np.testing.assert_array_equal(np.asarray(imageio.open_image(str(path)))[0, :, 0],
                                  np.rint(values[0] / 65535.0 * 255))


def test_float_tiff_is_clipped(tmp_path):
    values = np.array([[-0.5, 0.25], [1.7, 1.0]], np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    arr = imageio.load_image(str(path))
    np.testing.assert_array_equal(arr[:, :, 0], [[0.0, 0.25], [1.0, 1.0]])
    np.testing.assert_array_equal(np.asarray(imageio.open_image(str(path)))[:, :, 2], [[0, 64], [255, 255]])


def test_float_tiff_with_nan(tmp_path):
    path = tmp_path / "nan.tif"
    Image.fromarray(np.array([[0.5, np.nan]], np.float32)).save(path)
    expect_error(str(path), "NaN")


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    out = np.asarray(imageio.open_image(str(path)))
    assert out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out.reshape(-1, 3), np.tile([255, 0, 0], (48, 1)))


@pytest.mark.parametrize("orientation, shape, red_corner", [
    (1, (40, 80), (0, 0)),  # as stored
    (3, (40, 80), (-1, -1)),  # rotated 180 degrees
    (6, (80, 40), (0, -1)),  # display = stored rotated 90 degrees clockwise: top-left goes to top-right
    (8, (80, 40), (-1, 0)),  # rotated 90 degrees counter-clockwise: top-left goes to bottom-left
])
def test_exif_orientation_is_applied(tmp_path, orientation, shape, red_corner):
    stored = np.full((40, 80, 3), 255, np.uint8)  # white, 80 wide and 40 high as stored
    stored[:16, :16] = [255, 0, 0]  # red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"exif{orientation}.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    out = imageio.load_image(str(path))
    assert out.shape == shape + (3,)
    assert imageio.upright_size(path) == (shape[1], shape[0])  # the header alone says the same (the recipe's sizes)
    r, c = red_corner
    np.testing.assert_allclose(out[r, c], [1.0, 0.0, 0.0], atol=0.06)
    for other in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        if other != red_corner:
            np.testing.assert_allclose(out[other], [1.0, 1.0, 1.0], atol=0.06)


def test_webp(tmp_path):
    rgb = noise_rgb(9, 11)
    path = tmp_path / "pic.webp"
    Image.fromarray(rgb).save(path, lossless=True)
    np.testing.assert_array_equal(np.asarray(imageio.open_image(str(path))), rgb)


def test_bilevel_and_bmp(tmp_path):
    bits = Image.new("1", (3, 2), 0)
    bits.putpixel((1, 0), 1)
    path = tmp_path / "bits.bmp"
    bits.save(path)
    out = np.asarray(imageio.open_image(str(path)))
    assert out[0, 1].tolist() == [255, 255, 255] and out[1, 1].tolist() == [0, 0, 0]


# ------------------------------------------------------------------------------------------------- preprocess


def torch_reference(pil, size):
    """torchvision's Resize(size) + ToTensor + Normalize, rebuilt from PIL and torch tensor ops."""
    w, h = pil.size
    if size is not None:
        if w <= h:
            new = (size, int(size * h / w))
        else:
            new = (int(size * w / h), size)
        if new != (w, h):
            pil = pil.resize(new, Image.BILINEAR)
    t = torch.from_numpy(np.array(pil)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    t = t.sub(torch.tensor(MEAN32)[:, None, None]).div(torch.tensor(STD32)[:, None, None])
    return t[None].numpy()


@pytest.mark.parametrize("hw, size, out_hw", [
    ((384, 512), 192, (192, 256)),
    ((512, 384), 192, (256, 192)),
    ((383, 511), 256, (256, 341)),  # 256 * 511 / 383 = 341.55: truncated, not rounded
    ((511, 383), 256, (341, 256)),
    ((100, 100), 37, (37, 37)),
    ((50, 120), 50, (50, 120)),  # smaller edge already equals size: no resampling
    ((30, 45), 64, (64, 96)),  # upscaling
    ((21, 34), None, (21, 34)),  # None keeps the size
])
def test_preprocess_matches_torchvision_rule(hw, size, out_hw):
    pil = Image.fromarray(noise_rgb(*hw, seed=sum(hw)))
    x = imageio.preprocess(pil, size)
    assert x.dtype == np.float32 and x.shape == (1, 3) + out_hw and x.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(x, torch_reference(pil, size))
    # The same from a uint8 array.
    np.testing.assert_array_equal(imageio.preprocess(np.asarray(pil), size), x)


def test_preprocess_of_open_image(tmp_path):
    path = tmp_path / "content.jpg"
    Image.fromarray(noise_rgb(60, 90)).save(path)
    x = imageio.preprocess(imageio.open_image(str(path)), 40)
    assert x.shape == (1, 3, 40, 60)
    with Image.open(path) as raw:  # what CS231n does: PIL.Image.open, then the transform
        np.testing.assert_array_equal(x, torch_reference(raw.convert("RGB"), 40))


def test_preprocess_normalisation_by_hand():
    rgb = np.array([[[0, 128, 255]]], np.uint8)
    x = imageio.preprocess(rgb, None)
    expected = [(0 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (255 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(x[0, :, 0, 0], expected, rtol=1e-6)


def test_preprocess_float_input():
    rgb8 = noise_rgb(45, 70, seed=3)
    rgbf = rgb8.astype(np.float32) / 255
    np.testing.assert_array_equal(imageio.preprocess(rgbf, None), imageio.preprocess(rgb8, None))
    np.testing.assert_array_equal(imageio.preprocess(rgbf, 45), imageio.preprocess(rgb8, 45))
    xf, x8 = imageio.preprocess(rgbf, 30), imageio.preprocess(rgb8, 30)
    assert xf.shape == x8.shape == (1, 3, 30, 46)
    # Back in [0, 1] units the float path differs from the 8-bit one by less than one 8-bit step.
    diff = (xf - x8) * STD32[None, :, None, None]
    assert np.abs(diff).max() < 1.0 / 255


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "256"])
def test_preprocess_rejects_bad_size(size):
    with pytest.raises(NSTError) as info:
        imageio.preprocess(noise_rgb(4, 4), size)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------- deprocess and bounds


def test_deprocess_round_trip():
    rgb = noise_rgb(13, 17, seed=5)
    out = imageio.deprocess(imageio.preprocess(rgb, None))
    assert out.dtype == np.uint8 and out.shape == (13, 17, 3)
    np.testing.assert_array_equal(out, rgb)
    np.testing.assert_array_equal(imageio.deprocess(imageio.preprocess(rgb, None)[0]), rgb)


def test_deprocess_clips_and_does_not_rescale():
    x = np.zeros((1, 3, 1, 4))
    mean = np.array(imageio.MEAN)[:, None]
    std = np.array(imageio.STD)[:, None]
    pixels = np.array([-0.5, 0.2, 0.4, 1.8])  # in [0, 1] units, same in every channel
    x[0, :, 0, :] = (pixels[None, :] - mean) / std
    out = imageio.deprocess(x)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 3], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1:3], [[51] * 3, [102] * 3])  # 0.2 * 255 = 51, 0.4 * 255 = 102
    # A low-contrast image stays low-contrast (a min-max rescale would stretch it to 0..255).
    flat = imageio.deprocess(x[:, :, :, 1:3])
    assert flat.min() == 51 and flat.max() == 102


def test_deprocess_rounds():
    x = np.zeros((1, 3, 1, 2))
    value = np.array([100.4, 100.6]) / 255
    x[0, :, 0, :] = (value[None, :] - np.array(imageio.MEAN)[:, None]) / np.array(imageio.STD)[:, None]
    np.testing.assert_array_equal(imageio.deprocess(x)[0, 0], [100, 100, 100])
    np.testing.assert_array_equal(imageio.deprocess(x)[0, 1], [101, 101, 101])


def test_deprocess_nan():
    x = np.zeros((1, 3, 2, 2), np.float32)
    x[0, 1, 1, 0] = np.nan
    with pytest.raises(NSTError, match="1 non-finite"):
        imageio.deprocess(x)


def test_pixel_bounds():
    lo, hi = imageio.pixel_bounds((1, 3, 2, 3))
    assert lo.dtype == hi.dtype == np.float64 and lo.shape == hi.shape == (18,)
    for c in range(3):
        np.testing.assert_allclose(lo[6 * c: 6 * (c + 1)], -imageio.MEAN[c] / imageio.STD[c], rtol=1e-15)
        np.testing.assert_allclose(hi[6 * c: 6 * (c + 1)], (1 - imageio.MEAN[c]) / imageio.STD[c], rtol=1e-15)
    assert np.all(lo < hi)
    # Black and white images land on the bounds (up to float32 rounding) and deprocess to 0 and 255.
    black = imageio.preprocess(np.zeros((2, 3, 3), np.uint8), None).ravel()
    white = imageio.preprocess(np.full((2, 3, 3), 255, np.uint8), None).ravel()
    np.testing.assert_allclose(black, lo, atol=1e-6)
    np.testing.assert_allclose(white, hi, atol=1e-6)
    assert imageio.deprocess(lo.reshape(1, 3, 2, 3)).max() == 0
    assert imageio.deprocess(hi.reshape(1, 3, 2, 3)).min() == 255
    lo3, _ = imageio.pixel_bounds((3, 2, 3))
    np.testing.assert_array_equal(lo3, lo)
    with pytest.raises(ValueError):
        imageio.pixel_bounds((1, 4, 2, 2))


# ---------------------------------------------------------------------------------------------- output paths


def expect_path_error(path, *fragments, func=files.check_output_path):
    with pytest.raises(NSTError) as info:
        func(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message


def test_check_output_path(tmp_path):
    assert files.check_output_path(str(tmp_path / "out.png")) == "PNG"
    assert files.check_output_path(str(tmp_path / "out.JPG")) == "JPEG"
    assert files.check_output_path(str(tmp_path / "out.webp")) == "WEBP"
    expect_path_error(str(tmp_path), "directory")
    expect_path_error(str(tmp_path / "missing" / "out.png"), "does not exist")
    expect_path_error(str(tmp_path / "out.xyz"), "unknown image extension '.xyz'")
    expect_path_error(str(tmp_path / "out"), "no file extension")
    expect_path_error(str(tmp_path / "out.psd"), "cannot write PSD")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    expect_path_error(str(blocker / "out.png"), "not a directory")


def test_check_output_path_unwritable_directory(tmp_path, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(tmp_path) else real_access(p, mode))
    expect_path_error(str(tmp_path / "out.png"), "not writable")


def test_read_only_output_directory(tmp_path, env):
    """-o into a directory the user cannot write: one line before any work, nothing written (as root too)."""
    locked, content = tmp_path / "locked", tmp_path / "c.png"
    Image.new("RGB", (40, 40)).save(content)
    locked.mkdir()
    locked.chmod(0o500)
    try:
        r = nst_as_owner(["stylize", content, content, "-o", locked / "out.png", "--size", "32",
                          "--iterations", "1"], env)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)
    assert (r.returncode, r.stderr) == (2, f"nst: error: {locked / 'out.png'}: directory {locked} is not writable\n")


# ------------------------------------------------------------------------------------------------------- save


@pytest.mark.parametrize("ext, exact", [("png", True), ("bmp", True), ("tif", True), ("jpg", False),
                                         ("jpeg", False), ("webp", False), ("gif", False)])
def test_save_image_formats(tmp_path, ext, exact):
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[:, :16] = [200, 40, 10]
    rgb[:, 16:] = [10, 90, 220]
    path = tmp_path / f"out.{ext}"
    files.save_image(str(path), rgb)
    back = np.asarray(Image.open(path).convert("RGB")).astype(int)
    if exact:
        np.testing.assert_array_equal(back, rgb)
    else:
        assert np.abs(back - rgb).mean() < 4
    assert sorted(os.listdir(tmp_path)) == [f"out.{ext}"]


def test_save_jpeg_quality_95(tmp_path, monkeypatch):
    seen = {}
    real_save = Image.Image.save

    def spy(self, fp, format=None, **params):
        seen.update(params, format=format)
        return real_save(self, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", spy)
    files.save_image(str(tmp_path / "o.jpg"), noise_rgb(8, 8))
    assert seen["format"] == "JPEG" and seen["quality"] == 95


def test_save_file_mode(tmp_path):
    path = tmp_path / "o.png"
    umask = os.umask(0o022)
    try:
        files.save_image(str(path), noise_rgb(4, 4))
        assert path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o640)
        files.save_image(str(path), noise_rgb(4, 4, seed=1))
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_save_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch, failure):
    path = tmp_path / "out.png"
    old = noise_rgb(6, 6)
    files.save_image(str(path), old)
    old_bytes = path.read_bytes()

    def fail_midway(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial data")
        raise failure

    monkeypatch.setattr(Image.Image, "save", fail_midway)
    expected = NSTError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        files.save_image(str(path), noise_rgb(6, 6, seed=9))
    if expected is NSTError:
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "No space left" in message and "\n" not in message
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["out.png"]


@pytest.mark.parametrize("where", ["mkstemp", "fsync"])
def test_ctrl_c_during_the_write_comes_after_a_complete_file(tmp_path, monkeypatch, where):
    """A real SIGINT while the temporary file is created (just after mkstemp made it: it used to be left behind) or
    written: the KeyboardInterrupt arrives once the new file is complete and in place, with no temporary left."""
    import signal
    import tempfile
    path = tmp_path / "out.png"
    files.save_image(str(path), noise_rgb(6, 6))
    if where == "mkstemp":
        real = tempfile.mkstemp

        def interrupted(*args, **kwargs):
            made = real(*args, **kwargs)
            signal.raise_signal(signal.SIGINT)
            return made
        monkeypatch.setattr(files.tempfile, "mkstemp", interrupted)
    else:
        real = os.fsync

        def interrupted(fd):
            signal.raise_signal(signal.SIGINT)
            real(fd)
        monkeypatch.setattr(files.os, "fsync", interrupted)
    new = noise_rgb(6, 6, seed=9)
    with pytest.raises(KeyboardInterrupt):
        files.save_image(str(path), new)
    monkeypatch.undo()
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), new)
    assert os.listdir(tmp_path) == ["out.png"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_save_failure_without_previous_file(tmp_path, monkeypatch):
    def fail(self, fp, *args, **kwargs):
        raise ValueError("encoder exploded")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(NSTError, match="encoder exploded"):
        files.save_image(str(tmp_path / "new.png"), noise_rgb(3, 3))
    assert os.listdir(tmp_path) == []


def test_save_refuses_to_overwrite_inputs(tmp_path):
    content = tmp_path / "content.png"
    Image.fromarray(noise_rgb(5, 5)).save(content)
    original = content.read_bytes()
    style = tmp_path / "style.jpg"
    Image.fromarray(noise_rgb(5, 5)).save(style)
    forbid = (str(content), style)

    for target in [str(content), str(tmp_path / "." / "content.png"), os.path.relpath(content)]:
        expect_path_error(target, "refusing to overwrite the input",
                          func=lambda p: files.save_image(p, noise_rgb(5, 5, seed=2), forbid=forbid))
    link = tmp_path / "link.png"
    link.symlink_to(content)
    hard = tmp_path / "hard.png"
    os.link(content, hard)
    for target in [str(link), str(hard)]:
        expect_path_error(target, "refusing",
                          func=lambda p: files.save_image(p, noise_rgb(5, 5, seed=2), forbid=forbid))
    assert content.read_bytes() == original
    files.save_image(str(tmp_path / "result.png"), noise_rgb(5, 5), forbid=forbid)  # other names are fine


def test_save_path_errors(tmp_path):
    rgb = noise_rgb(2, 2)
    for path, fragment in [(str(tmp_path / "out.xyz"), "unknown image extension"),
                           (str(tmp_path / "nodir" / "out.png"), "does not exist"),
                           (str(tmp_path), "directory")]:
        expect_path_error(path, fragment, func=lambda p: files.save_image(p, rgb))
    with pytest.raises(ValueError):
        files.save_image(str(tmp_path / "o.png"), rgb.astype(np.float32))
    assert os.listdir(tmp_path) == []


def test_upright_size_of_a_bomb_or_junk_is_none_without_a_warning(tmp_path, recwarn):
    """The recipe reads sizes from headers; a decompression bomb or a non-image is open_image's to report."""
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10000, 10000)).save(bomb)  # 100 MP: over Pillow's warning limit, tiny on disk
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    assert imageio.upright_size(bomb) is None and imageio.upright_size(junk) is None
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
