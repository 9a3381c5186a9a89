"""Issue 7 at the command line: bad input gets a clear answer, and nothing is ever lost or half-written.

Every case runs the real command line in a separate process. Most run through ``nst`` itself (the console
script); the two big matrices (image files of every kind, bad options) run through a fork server: ONE
subprocess imports ``cli`` (NumPy, SciPy, ONNX, Pillow: about a second) and then forks a fresh child per case that
calls ``cli.main(args)`` with its own stdout / stderr files and exits with its return value, exactly like the
``nst`` script does. So each case still has its own process, exit status and stderr, without paying the import
time 60 times.

Every image a test reads is generated here: solid-coloured halves, so that the expected output colours are
known independently of the code under test.
"""
from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "nst"
NST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, str(REPO / "cli.py")]
TINY = ["--size", "32", "--style-size", "32", "--iterations", "2", "--device", "cpu"]
TINY_INVERT = ["--size", "32", "--iterations", "2", "--device", "cpu"]  # invert has no --style-size
# content loss only, one evaluation: the output is the content image itself (resized), so its colours are known
IDENTITY = ["--size", "32", "--style-size", "32", "--iterations", "1", "--style-weights", "0,0,0,0",
            "--tv-weight", "0", "--device", "cpu"]
RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


# ------------------------------------------------------------------------------------------------ helpers


def nst(args, env, cwd=None, timeout=120):
    return subprocess.run(NST + [str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def leftovers(directory) -> list[str]:
    """Hidden (temporary) files in ``directory``: save_image and the exporters use '.name.XXXX' temp files."""
    return sorted(p.name for p in Path(directory).iterdir() if p.name.startswith("."))


def assert_one_line_error(returncode, stderr, *needles):
    assert returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and "error:" in lines[0], stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


def halves(top, bottom, size=(60, 40), mode="RGB"):
    """A ``mode`` image of ``size`` (w, h): the top half ``top``, the bottom half ``bottom``."""
    w, h = size
    im = Image.new(mode, size, top)
    im.paste(bottom, (0, h // 2, w, h))
    return im


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height RGB pixels, with a tiny (wrong) IDAT: a decompression-bomb header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def colours(path):
    """(size, top colour, bottom colour) of an output image: pixels at 1/8 and 7/8 of the height, mid-width."""
    with Image.open(path) as im:
        im.load()
        assert im.mode == "RGB"
        arr = np.asarray(im).astype(int)
    h, w = arr.shape[:2]
    return (w, h), arr[h // 8, w // 2], arr[(7 * h) // 8, w // 2]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Directory with one generated file per input-image case (content 60x40 w x h unless said otherwise)."""
    d = tmp_path_factory.mktemp("images")
    halves(RED, BLUE).save(d / "rgb.png")
    halves(GREEN, RED).save(d / "style.png")  # an ordinary style image
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is a text file, not a JPEG\n")
    (d / "folder.png").mkdir()
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    jpeg, png = encoded(noise, "JPEG", quality=95), encoded(noise, "PNG")
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    (d / "bomb.png").write_bytes(png_header_only(100_000, 100_000))          # > 2x Pillow's limit: an error
    (d / "bomb_warning.png").write_bytes(png_header_only(10_000, 10_000))    # between 1x and 2x: a warning
    halves(200, 50, mode="L").save(d / "grey.png")
    halves((200, 255), (0, 0), mode="LA").save(d / "grey_alpha.png")        # bottom fully transparent
    pal = halves(1, 0, mode="P")
    pal.putpalette([0, 255, 0, 255, 0, 0] + [0] * 762)                       # 0: green (transparent), 1: red
    pal.save(d / "palette_transparent.png", transparency=0)
    halves((255, 0, 0, 128), (0, 0, 255, 255), mode="RGBA").save(d / "rgba.png")
    halves((0, 255, 255, 0), (255, 255, 0, 0), mode="CMYK").save(d / "cmyk.jpg", quality=95)  # red / blue
    grey16 = np.full((40, 60), 52428, np.uint16)                              # 0.8 of full scale
    grey16[20:] = 13107                                                       # 0.2
    Image.fromarray(grey16).save(d / "grey16.png")
    grey_f = np.full((40, 60), 0.8, np.float32)
    grey_f[20:] = 0.2
    Image.fromarray(grey_f, "F").save(d / "float.tif")
    frames = [halves(RED, BLUE, mode="RGB"), Image.new("RGB", (60, 40), GREEN)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    # stored 60x40 with the left half red; orientation 6 = rotate 90 degrees clockwise to display: 40x60 with
    # the TOP half red
    stored = Image.new("RGB", (60, 40), BLUE)
    stored.paste(RED, (0, 0, 30, 40))
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(d / "exif_rotated.jpg", quality=95, exif=exif.tobytes())
    halves(RED, BLUE).save(d / "image.webp", quality=90)
    halves(RED, BLUE, size=(3, 2)).save(d / "tiny.png")                      # upscaled to --size
    for name in ("cmyk.jpg", "grey16.png", "float.tif", "animated.gif", "exif_rotated.jpg", "image.webp"):
        with Image.open(d / name) as im:  # the cases are what they claim to be
            assert {"cmyk.jpg": "CMYK", "grey16.png": "I;16", "float.tif": "F"}.get(name, im.mode) == im.mode
            assert getattr(im, "n_frames", 1) == (2 if name == "animated.gif" else 1)
    return d


DRIVER = r"""
import json, os, sys, time, traceback
import cli
import onnxruntime  # noqa: F401  (imported, no session yet: safe to fork)
cli.build_parser()  # the heavy imports happen here, once
results = []
for case in json.load(sys.stdin):
    sys.stdout.flush(); sys.stderr.flush()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(case["cwd"])
            os.environ.clear()
            os.environ.update(case["env"])
            for fd, name in ((1, case["stdout"]), (2, case["stderr"])):
                os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            code = cli.main(case["args"])
        except SystemExit as exc:  # argparse errors and --help, as in the console script
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    results.append({"returncode": os.waitstatus_to_exitcode(status), "seconds": time.perf_counter() - start})
print(json.dumps(results))
"""


class Run:
    def __init__(self, returncode, stdout, stderr, seconds):
        self.returncode, self.stdout, self.stderr, self.seconds = returncode, stdout, stderr, seconds


def run_batch(specs: dict, env: dict, workdir: Path) -> dict:
    """Run ``{case id: [nst arguments]}`` in one fork server; return ``{case id: Run}``.

    Each case runs with cwd ``workdir / <case id>`` (created, empty) and its own stdout / stderr files outside it.
    """
    if not hasattr(os, "fork"):
        pytest.skip("the fork server needs os.fork")
    logs = workdir / "_logs"
    logs.mkdir()
    payload = []
    for i, (cid, args) in enumerate(specs.items()):
        cwd = workdir / f"case{i}"
        cwd.mkdir()
        payload.append({"args": [str(a) for a in args], "env": env, "cwd": str(cwd),
                        "stdout": str(logs / f"{i}.out"), "stderr": str(logs / f"{i}.err")})
    r = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(payload), env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout.splitlines()[-1])
    return {cid: Run(res["returncode"], Path(case["stdout"]).read_text(), Path(case["stderr"]).read_text(),
                     res["seconds"])
            for cid, case, res in zip(specs, payload, results)}


# ------------------------------------------------------------------------ 1. every kind of input image

# (file, expected (w, h) of the output at --size 32, expected top colour, bottom colour, tolerance)
GOOD_CONTENT = [
    ("rgb.png", (48, 32), RED, BLUE, 2),
    ("grey.png", (48, 32), (200,) * 3, (50,) * 3, 2),
    ("grey_alpha.png", (48, 32), (200,) * 3, WHITE, 2),               # transparent over white
    ("palette_transparent.png", (48, 32), RED, WHITE, 2),
    ("rgba.png", (48, 32), (255, 127, 127), BLUE, 2),                 # half-transparent red over white
    ("cmyk.jpg", (48, 32), RED, BLUE, 12),
    ("grey16.png", (48, 32), (204,) * 3, (51,) * 3, 2),
    ("float.tif", (48, 32), (204,) * 3, (51,) * 3, 2),
    ("animated.gif", (48, 32), RED, BLUE, 2),                         # the first frame, not the green second
    ("exif_rotated.jpg", (32, 48), RED, BLUE, 12),                    # portrait, red on top
    ("image.webp", (48, 32), RED, BLUE, 16),
    ("tiny.png", (48, 32), RED, BLUE, 2),                             # 3x2 upscaled
]
BAD_IMAGES = [
    ("missing.jpg", "no such file"),
    ("folder.png", "is a directory"),
    ("empty.jpg", "empty file"),
    ("text.jpg", "not an image file"),
    ("truncated.jpg", "truncated"),
    ("truncated.png", "truncated"),
    ("bomb.png", "image too large (10000000000 pixels"),
    ("bomb_warning.png", "image too large (100000000 pixels"),
]
GOOD_STYLE = ["rgba.png", "grey16.png", "float.tif", "animated.gif", "cmyk.jpg", "palette_transparent.png"]
BAD_STYLE = [("truncated.png", "truncated"), ("bomb.png", "image too large"), ("text.jpg", "not an image file"),
             ("missing.png", "no such file")]
# too small for the layers asked for: the message names the minimum (computed from the graph)
TOO_SMALL = {
    "stylize --size 4": (["stylize", "rgb.png", "style.png", *TINY, "--size", "4"],
                         ["--size 4 is too small for layer 7", "at least 9 px"]),
    "stylize --style-size 4 --style-layers 7": (
        ["stylize", "rgb.png", "style.png", *TINY, "--style-size", "4", "--style-layers", "7",
         "--style-weights", "1"], ["the style size 4 px is too small for layer 7", "use --style-size >= 9", "at least 9 px"]),
    # the style image goes through the content layer too (one network): minimum of layer 3, no SIGFPE
    "stylize --style-size 4 --style-layers 1": (
        ["stylize", "rgb.png", "style.png", *TINY, "--style-size", "4", "--style-layers", "1",
         "--style-weights", "1"], ["the style size 4 px is too small for layer 3", "at least 5 px"]),
    "stylize --size 16 layer 12": (
        ["stylize", "rgb.png", "style.png", *TINY, "--size", "16", "--content-layer", "12"],
        ["too small for layer 12", "at least 17 px"]),
    "invert --size 4": (["invert", "rgb.png", *TINY_INVERT, "--size", "4"], ["too small for layer 3", "at least 5 px"]),
    "texture --size 8": (["texture", "style.png", *TINY, "--size", "8"], ["too small for layer 7", "at least 9 px"]),
}
# exactly at the minimum it works
AT_MINIMUM = {
    "stylize --size 9": (["stylize", "rgb.png", "style.png", *TINY, "--size", "9", "--style-size", "9"], (13, 9)),
    "stylize --size 3 layers 1": (["stylize", "rgb.png", "style.png", *TINY, "--size", "3", "--style-size", "3",
                                   "--content-layer", "1", "--style-layers", "1", "--style-weights", "1"], (4, 3)),
    "stylize --size 17 layer 12": (["stylize", "rgb.png", "style.png", *TINY, "--size", "17", "--style-size", "17",
                                    "--content-layer", "12"], (25, 17)),
}


@pytest.fixture(scope="module")
def image_runs(env, cases, tmp_path_factory):
    specs = {}
    for name, *_ in GOOD_CONTENT:
        specs[f"content {name}"] = ["stylize", cases / name, cases / "style.png", "-o", "out.png", *IDENTITY]
    for name, _ in BAD_IMAGES:
        specs[f"bad content {name}"] = ["stylize", cases / name, cases / "style.png", "-o", "out.png", *TINY]
    for name in GOOD_STYLE:
        specs[f"style {name}"] = ["stylize", cases / "rgb.png", cases / name, "-o", "out.png", *TINY]
    for name, _ in BAD_STYLE:
        specs[f"bad style {name}"] = ["stylize", cases / "rgb.png", cases / name, "-o", "out.png", *TINY]
    specs["texture image.webp"] = ["texture", cases / "image.webp", "-o", "out.png", *TINY]
    specs["texture bomb.png"] = ["texture", cases / "bomb.png", "-o", "out.png", *TINY]
    specs["invert exif_rotated.jpg"] = ["invert", cases / "exif_rotated.jpg", "-o", "out.png", *TINY_INVERT]
    specs["invert truncated.jpg"] = ["invert", cases / "truncated.jpg", "-o", "out.png", *TINY_INVERT]
    for cid, (args, _) in {**TOO_SMALL, **AT_MINIMUM}.items():
        specs[cid] = [cases / a if (cases / a).is_file() else a for a in args] + ["-o", "out.png"]
    workdir = tmp_path_factory.mktemp("image_runs")
    runs = run_batch(specs, env, workdir)
    return {cid: (run, workdir / f"case{i}") for i, (cid, run) in enumerate(runs.items())}


@pytest.mark.parametrize("name, size, top, bottom, tol", GOOD_CONTENT, ids=[c[0] for c in GOOD_CONTENT])
def test_every_readable_content_image_gives_its_picture(image_runs, name, size, top, bottom, tol):
    run, cwd = image_runs[f"content {name}"]
    assert run.returncode == 0, run.stderr
    assert run.stderr == "" and "Traceback" not in run.stdout
    got_size, got_top, got_bottom = colours(cwd / "out.png")
    assert got_size == size
    assert np.abs(got_top - top).max() <= tol, (got_top, top)
    assert np.abs(got_bottom - bottom).max() <= tol, (got_bottom, bottom)
    assert sorted(p.name for p in cwd.iterdir()) == ["out.png"]


@pytest.mark.parametrize("name, problem", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_every_bad_content_image_is_one_line_naming_the_file(image_runs, cases, name, problem):
    run, cwd = image_runs[f"bad content {name}"]
    assert_one_line_error(run.returncode, run.stderr, f"{cases / name}: ", problem)
    assert list(cwd.iterdir()) == []  # no output, no temporary file


@pytest.mark.parametrize("name", GOOD_STYLE)
def test_unusual_style_images_work(image_runs, name):
    run, cwd = image_runs[f"style {name}"]
    assert run.returncode == 0 and run.stderr == "", run.stderr
    with Image.open(cwd / "out.png") as im:
        assert im.size == (48, 32)
    assert sorted(p.name for p in cwd.iterdir()) == ["out.png"]


@pytest.mark.parametrize("name, problem", BAD_STYLE, ids=[c[0] for c in BAD_STYLE])
def test_bad_style_images_are_one_line_naming_the_file(image_runs, cases, name, problem):
    run, cwd = image_runs[f"bad style {name}"]
    assert_one_line_error(run.returncode, run.stderr, f"{cases / name}: ", problem)
    assert list(cwd.iterdir()) == []


def test_texture_and_invert_read_images_the_same_way(image_runs, cases):
    run, cwd = image_runs["texture image.webp"]
    assert run.returncode == 0, run.stderr
    with Image.open(cwd / "out.png") as im:
        assert im.size == (48, 32)
    run, cwd = image_runs["invert exif_rotated.jpg"]
    assert run.returncode == 0, run.stderr
    with Image.open(cwd / "out.png") as im:
        assert im.size == (32, 48)  # the rotation is honoured
    for cid, name, problem in (("texture bomb.png", "bomb.png", "image too large"),
                               ("invert truncated.jpg", "truncated.jpg", "truncated")):
        run, cwd = image_runs[cid]
        assert_one_line_error(run.returncode, run.stderr, f"{cases / name}: ", problem)
        assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("cid", list(TOO_SMALL))
def test_too_small_for_the_layers_names_the_minimum(image_runs, cid):
    run, cwd = image_runs[cid]
    assert_one_line_error(run.returncode, run.stderr, *TOO_SMALL[cid][1])
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("cid", list(AT_MINIMUM))
def test_the_minimum_size_itself_works(image_runs, cid):
    run, cwd = image_runs[cid]
    assert run.returncode == 0, run.stderr
    with Image.open(cwd / "out.png") as im:
        assert im.size == AT_MINIMUM[cid][1]


def test_image_cases_through_the_nst_script(env, cases, tmp_path):
    """The same answers from the installed ``nst`` script itself (not only from forks of cli.main)."""
    out = tmp_path / "out.png"
    r = nst(["stylize", cases / "exif_rotated.jpg", cases / "float.tif", "-o", out, *TINY], env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    with Image.open(out) as im:
        assert im.size == (32, 48)
    r = nst(["stylize", cases / "truncated.png", cases / "style.png", "-o", tmp_path / "bad.png", *TINY], env)
    assert_one_line_error(r.returncode, r.stderr, f"{cases / 'truncated.png'}: truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


# ---------------------------------------------------------------------------------------- 2. options

OPTION_ERRORS = {
    "content weight -1": (["--content-weight", "-1"], "content weight must be a finite number >= 0, got -1"),
    "content weight nan": (["--content-weight", "nan"], "content weight must be a finite number >= 0, got nan"),
    "content weight -inf": (["--content-weight", "-inf"], "content weight must be a finite number >= 0, got -inf"),
    "style weights -1": (["--style-weights", "-1,1,1,1"], "style weight must be a finite number >= 0, got -1"),
    "style weights nan": (["--style-weights", "1,nan,1,1"], "style weight must be a finite number >= 0, got nan"),
    "style weights inf": (["--style-weights", "1,1,inf,1"], "style weight must be a finite number >= 0, got inf"),
    "tv weight -0.5": (["--tv-weight", "-0.5"], "TV weight must be a finite number >= 0, got -0.5"),
    "tv weight nan": (["--tv-weight", "NaN"], "TV weight must be a finite number >= 0, got nan"),
    "tv weight inf": (["--tv-weight", "inf"], "TV weight must be a finite number >= 0, got inf"),
    "style scale -1": (["--style-scale", "-1"], "style scale must be a finite number >= 0, got -1"),
    "style scale nan": (["--style-scale", "nan"], "style scale must be a finite number >= 0, got nan"),
    "style scale inf": (["--style-scale", "inf"], "style scale must be a finite number >= 0, got inf"),
    "style x scale overflow": (["--style-weights", "1e300,1,1,1", "--style-scale", "1e10"], "overflows"),
    "size 0": (["--size", "0"], "size must be >= 1, got 0"),
    "size -3": (["--size", "-3"], "size must be >= 1, got -3"),
    "style size 0": (["--style-size", "0"], "style size must be >= 1, got 0"),
    "content layer 13": (["--content-layer", "13"], "content layer 13 does not exist"),
    "content layer -1": (["--content-layer", "-1"], "content layer -1 does not exist"),
    "content layer x": (["--content-layer", "x"], "--content-layer: not a whole number: 'x'"),
    "style layers 13": (["--style-layers", "1,13", "--style-weights", "1,1"], "style layer 13 does not exist"),
    "style layers -1": (["--style-layers", "-1,4", "--style-weights", "1,1"], "style layer -1 does not exist"),
    "style layers x": (["--style-layers", "1,x", "--style-weights", "1,1"], "--style-layers: not a whole number"),
    "2 weights 4 layers": (["--style-weights", "1,2"], "2 style weights for 4 style layers"),
    "3 weights 2 layers": (["--style-layers", "1,4", "--style-weights", "1,2,3"], "3 style weights for 2 style"),
    "layers without weights": (["--style-layers", "1,4"], "give one style weight per style layer"),
    "iterations 0": (["--iterations", "0"], "iterations must be >= 1, got 0"),
    "out .xyz": (["-o", "out.xyz"], "out.xyz: unknown image extension '.xyz'"),
    "out no extension": (["-o", "out"], "out: no file extension"),
    "out .xbm (RGB not writable)": (["-o", "out.xbm"], "out.xbm: Pillow cannot write RGB images as XBM"),
    "out .bufr (no writer)": (["-o", "out.bufr"], "out.bufr: Pillow cannot write RGB images as BUFR"),
    "out directory missing": (["-o", "nodir/out.png"], "nodir/out.png: directory"),
    "log directory missing": (["--log", "nodir/run.csv"], "nodir/run.csv: directory"),
    "lr nan": (["--optimizer", "adam", "--lr", "nan"], "learning rate must be a finite number > 0"),
    "save every -1": (["--save-every", "-1"], "--save-every must be >= 0"),
}
OTHER_COMMAND_OPTION_ERRORS = {
    "invert content weight -1": (["invert", "{rgb}", "--content-weight", "-1"], "content weight must be"),
    "invert size 0": (["invert", "{rgb}", "--size", "0"], "size must be >= 1"),
    "invert content layer 13": (["invert", "{rgb}", "--content-layer", "13"], "content layer 13 does not exist"),
    "texture style scale inf": (["texture", "{style}", "--style-scale", "inf"], "style scale must be a finite"),
    "texture weights count": (["texture", "{style}", "--style-weights", "1"], "1 style weights for 4 style"),
    "texture iterations 0": (["texture", "{style}", "--iterations", "0"], "iterations must be >= 1"),
    "texture out .xyz": (["texture", "{style}", "-o", "t.xyz"], "unknown image extension '.xyz'"),
    # a bad option wins over a missing image too: nothing is read before the options are checked
    "option before image": (["stylize", "missing.png", "{style}", "--size", "0"], "size must be >= 1"),
}


@pytest.fixture(scope="module")
def option_runs(cases, env, tmp_path_factory):
    """Every option error, with NST_HOME pointing to an EMPTY directory: the option error must win over the
    missing model, i.e. it is found before any model is looked for or loaded."""
    empty = tmp_path_factory.mktemp("empty_nst_home")
    no_model = dict(env, NST_HOME=str(empty))
    fill = {"rgb": str(cases / "rgb.png"), "style": str(cases / "style.png")}
    specs = {}
    for cid, (extra, _) in OPTION_ERRORS.items():
        out = [] if "-o" in extra else ["-o", "out.png"]
        specs[cid] = ["stylize", cases / "rgb.png", cases / "style.png", *out, "--device", "cpu", *extra]
    for cid, (args, _) in OTHER_COMMAND_OPTION_ERRORS.items():
        out = [] if "-o" in args else ["-o", "out.png"]
        specs[cid] = [a.format(**fill) for a in args] + out
    specs["control: valid options reach the model"] = ["stylize", cases / "rgb.png", cases / "style.png",
                                                       "-o", "out.png", *TINY]
    return run_batch(specs, no_model, tmp_path_factory.mktemp("option_runs")), empty


@pytest.mark.parametrize("cid", list(OPTION_ERRORS) + list(OTHER_COMMAND_OPTION_ERRORS))
def test_bad_options_are_one_line_exit_2_before_any_work(option_runs, cid):
    runs, _ = option_runs
    run = runs[cid]
    message = {**OPTION_ERRORS, **OTHER_COMMAND_OPTION_ERRORS}[cid][1]
    assert_one_line_error(run.returncode, run.stderr, message)
    assert "no model" not in run.stderr
    assert run.seconds < 3.0  # no network was built (a fork: no interpreter start-up in this figure)


def test_option_control_case_does_reach_the_missing_model(option_runs):
    runs, empty = option_runs
    run = runs["control: valid options reach the model"]
    assert_one_line_error(run.returncode, run.stderr, f"no model at {empty / 'features.onnx'}", "nst export")


def test_option_error_through_the_nst_script_is_fast(env, cases, tmp_path):
    no_model = dict(env, NST_HOME=str(tmp_path))
    start = time.perf_counter()
    r = nst(["stylize", cases / "rgb.png", cases / "style.png", "-o", tmp_path / "o.png", "--style-weights",
             "-1,1,1,1"], no_model)
    seconds = time.perf_counter() - start
    assert_one_line_error(r.returncode, r.stderr, "style weight must be a finite number >= 0, got -1")
    assert seconds < 10  # start-up and imports only (about 1.5 s here); generous for loaded CI machines
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------- 3. atomic outputs, inputs are safe


def test_output_never_overwrites_an_input(env, cases, tmp_path):
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    content.write_bytes((cases / "rgb.png").read_bytes())
    style.write_bytes((cases / "style.png").read_bytes())
    (tmp_path / "link.png").symlink_to(content)
    os.link(style, tmp_path / "hardlink.png")
    before = {p: p.read_bytes() for p in (content, style)}
    runs = [
        (["stylize", content, style, "-o", content], "would overwrite the input image"),
        (["stylize", content, style, "-o", style], "would overwrite the input image"),
        (["stylize", content, style, "-o", tmp_path / "link.png"], "would overwrite the input image"),
        (["stylize", content, style, "-o", tmp_path / "hardlink.png"], "would overwrite the input image"),
        (["stylize", content, style, "-o", tmp_path / "sub" / ".." / "content.png"], "would overwrite the input"),
        (["stylize", content, style, "-o", tmp_path / "o.png", "--log", style], "would overwrite the input"),
        (["texture", style, "-o", style], "would overwrite the input image"),
        (["invert", tmp_path / "link.png", "-o", content], "would overwrite the input image"),
    ]
    r = nst(runs[0][0] + TINY_INVERT, env, cwd=tmp_path)  # one through the nst script, all in the fork server
    assert_one_line_error(r.returncode, r.stderr, runs[0][1])
    work = tmp_path.parent / (tmp_path.name + "_runs")
    work.mkdir()
    results = run_batch({i: args + TINY_INVERT for i, (args, _) in enumerate(runs)}, env, work)
    for i, (args, message) in enumerate(runs):
        assert_one_line_error(results[i].returncode, results[i].stderr, message)
    assert {p: p.read_bytes() for p in (content, style)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["content.png", "hardlink.png", "link.png", "style.png"]


def test_intermediate_images_never_overwrite_an_input(env, cases, tmp_path):
    """--save-every names files OUT_0001.png ...: one of them may be an input. It is skipped with a warning."""
    content = tmp_path / "out_0001.png"
    content.write_bytes((cases / "rgb.png").read_bytes())
    before = content.read_bytes()
    r = nst(["stylize", content, cases / "style.png", "-o", tmp_path / "out.png", "--save-every", "1", *TINY], env)
    assert r.returncode == 0, r.stderr
    assert "would overwrite" in r.stderr or "refusing to overwrite" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
    assert content.read_bytes() == before
    assert (tmp_path / "out.png").is_file() and leftovers(tmp_path) == []


def test_a_failed_run_leaves_the_existing_output_untouched(env, cases, tmp_path):
    out = tmp_path / "out.png"
    halves(GREEN, GREEN).save(out)
    before = out.read_bytes()
    failures = [
        (["stylize", cases / "truncated.jpg", cases / "style.png"], 2),       # bad image
        (["stylize", cases / "rgb.png", cases / "style.png", "--size", "4"], 2),  # too small
        (["stylize", cases / "rgb.png", cases / "style.png", "--model", cases / "text.jpg"], 2),  # bad model
        (["stylize", cases / "rgb.png", cases / "style.png", "--tv-weight", "1e308"], 3),  # diverges at once
    ]
    for args, code in failures:
        r = nst(args[:3] + ["-o", out, "--size", "32", "--iterations", "2", "--device", "cpu"] + args[3:], env)
        assert r.returncode == code, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
        assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


# ------------------------------------------------------------------------------------- 4. Ctrl-C


def _wait_for(proc, predicate, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_ctrl_c_during_texture_replaces_out_with_the_best_image(env, cases, tmp_path):
    out = tmp_path / "out.png"
    halves(GREEN, GREEN).save(out)
    old = out.read_bytes()
    first = tmp_path / "out_000001.png"
    proc = subprocess.Popen(NST + ["texture", str(cases / "style.png"), "-o", str(out), "--size", "32",
                                   "--iterations", "100000", "--save-every", "1", "--seed", "0", "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(proc, first.exists, "the first intermediate image")
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1
    assert "saved the best image so far" in stderr and str(out) in stderr
    assert out.read_bytes() != old
    with Image.open(out) as im:
        im.load()
        assert im.size == (48, 32)
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the imports happen")
def test_ctrl_c_while_starting_up_is_one_line_exit_130(env, cases, tmp_path):
    """Ctrl-C while nst is still importing NumPy / SciPy (building its parser): no traceback, OUT untouched."""
    out = tmp_path / "out.png"
    halves(GREEN, GREEN).save(out)
    old = out.read_bytes()
    proc = subprocess.Popen(NST + ["stylize", str(cases / "rgb.png"), str(cases / "style.png"), "-o", str(out),
                                   "--size", "32", "--iterations", "100000", "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def importing_scipy():
        try:
            return "scipy" in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            return False
    try:
        _wait_for(proc, importing_scipy, "SciPy to be imported", timeout=60)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1 and "interrupted" in stderr, stderr
    if "saved the best image" not in stderr:  # normally: interrupted before the optimisation began
        assert out.read_bytes() == old
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------ 5. NaN / inf


def test_divergence_keeps_the_best_finite_image(env, cases, tmp_path):
    """Gradient descent with a huge step: evaluation 1 (the content image) is finite, evaluation 2 overflows. TV
    alone (content and style weights 0) runs in float64 NumPy, whose range a weight of 1e305 needs: inside the
    network's session TV's gradient is float32, and 1e305 overflows it at evaluation 1 already."""
    out = tmp_path / "out.png"
    r = nst(["stylize", cases / "rgb.png", cases / "style.png", "-o", out, "--optimizer", "gd", "--lr", "1e10",
             "--tv-weight", "1e305", "--content-weight", "0", "--style-weights", "0,0,0,0",
             "--size", "32", "--style-size", "32", "--iterations", "10",
             "--calibration-size", "32",  # the raw weight: at the default 192 it would be 36x, evaluation 1 inf
             "--device", "cpu", "--log", tmp_path / "run.csv"], env)
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith("nst: error: non-finite loss at evaluation 2; saved the best finite image "
                               "(evaluation 1,") and str(out) in r.stderr and len(r.stderr.splitlines()) == 1
    size, top, bottom = colours(out)
    assert size == (48, 32)
    assert np.abs(top - RED).max() <= 2 and np.abs(bottom - BLUE).max() <= 2  # the content, not black, not NaN
    rows = (tmp_path / "run.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[2].split(",")[2] == "inf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "run.csv"]


def test_nonfinite_gradient_at_the_first_evaluation_saves_nothing(env, cases, tmp_path):
    """The loss is finite (9e298) but its gradient overflows: there is no finite evaluated image to keep."""
    out = tmp_path / "out.png"
    halves(GREEN, GREEN).save(out)
    old = out.read_bytes()
    r = nst(["stylize", cases / "rgb.png", cases / "style.png", "-o", out, "--style-weights", "1e300,1,1,1",
             "--style-scale", "1", *TINY], env)
    assert r.returncode == 3, r.stderr
    assert r.stderr == ("nst: error: non-finite gradient at evaluation 1; no finite image to save "
                        "(try smaller weights)\n")
    assert out.read_bytes() == old and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------ 6. models


@pytest.fixture(scope="module")
def bad_models(features_model, tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper

    d = tmp_path_factory.mktemp("bad_models")
    data = Path(features_model).read_bytes()
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (d / "random.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "empty.onnx").write_bytes(b"")
    full = onnx.load(str(features_model))
    # cut at a top-level field boundary: still parses as ONNX (no opset_import, no metadata)
    cut = onnx.ModelProto()
    cut.CopyFrom(full)
    del cut.opset_import[:]
    del cut.metadata_props[:]
    assert data.startswith(cut.SerializeToString())
    (d / "cut_after_graph.onnx").write_bytes(cut.SerializeToString())
    # a damaged model: the first convolution's weights are gone
    damaged = onnx.ModelProto()
    damaged.CopyFrom(full)
    del damaged.graph.initializer[0]
    onnx.save(damaged, str(d / "no_weights.onnx"))
    # the real network with only the taps up to features.3
    stripped = onnx.ModelProto()
    stripped.CopyFrom(full)
    keep = [o for o in stripped.graph.output if int(o.name.split(".")[1]) <= 3]
    del stripped.graph.output[:]
    stripped.graph.output.extend(keep)
    onnx.save(stripped, str(d / "stripped.onnx"))
    # a tiny valid model: image -> features.0 only
    weight = helper.make_tensor("w", TensorProto.FLOAT, [64, 3, 3, 3], [0.01] * (64 * 27))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["features.0"], kernel_shape=[3, 3], strides=[2, 2])], "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("features.0", TensorProto.FLOAT, [1, 64, "h", "w"])], [weight])
    tiny = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(tiny)
    onnx.save(tiny, str(d / "tiny.onnx"))
    return d


MODEL_CASES = [
    ("missing.onnx", "no model at"),
    ("truncated.onnx", "not an ONNX model"),
    ("random.onnx", "not an ONNX model"),
    ("empty.onnx", "not"),
    ("cut_after_graph.onnx", "not a valid ONNX model"),
    ("no_weights.onnx", "not a valid ONNX model"),
    ("stripped.onnx", "lacks the tap features.4"),
    ("tiny.onnx", "lacks the tap features.1"),
]


@pytest.fixture(scope="module")
def model_runs(env, cases, bad_models, tmp_path_factory):
    specs = {name: ["stylize", cases / "rgb.png", cases / "style.png", "-o", "out.png", "--model", bad_models / name,
                    *TINY] for name, _ in MODEL_CASES}
    workdir = tmp_path_factory.mktemp("model_runs")
    return {cid: (run, workdir / f"case{i}") for i, (cid, run) in enumerate(run_batch(specs, env, workdir).items())}


@pytest.mark.parametrize("name, problem", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_models_say_how_to_make_a_correct_one(model_runs, bad_models, name, problem):
    run, cwd = model_runs[name]
    assert_one_line_error(run.returncode, run.stderr, str(bad_models / name), problem, "nst export")
    assert list(cwd.iterdir()) == []


def test_bad_models_in_the_other_commands(env, cases, bad_models, tmp_path):
    # the stripped model has layer 3: inversion (content layer 3) works with it
    r = nst(["invert", cases / "rgb.png", "-o", tmp_path / "inv.png", "--model", bad_models / "stripped.onnx",
             *TINY_INVERT], env)
    assert r.returncode == 0, r.stderr
    for args, problem in (
        (["texture", cases / "style.png", "-o", tmp_path / "t.png", *TINY, "--model", bad_models / "tiny.onnx"],
         "lacks the tap features.1"),
        (["info", "--model", bad_models / "cut_after_graph.onnx"], "not a valid ONNX model"),
        (["export-vjp", "--taps", "3", "--out", tmp_path / "v.onnx", "--model", bad_models / "truncated.onnx"],
         "not an ONNX model"),
    ):
        r = nst(args, env)
        assert_one_line_error(r.returncode, r.stderr, problem, "nst export")
    # no model anywhere: $NST_HOME is empty
    empty = tmp_path / "home"
    empty.mkdir()
    r = nst(["stylize", cases / "rgb.png", cases / "style.png", "-o", tmp_path / "o.png", *TINY],
            dict(env, NST_HOME=str(empty)))
    assert_one_line_error(r.returncode, r.stderr, f"no model at {empty / 'features.onnx'}", "nst export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "inv.png"]


def test_two_concurrent_exports_leave_a_valid_model(env, weights_path, tmp_path):
    pytest.importorskip("torch")
    import onnx

    from nst_core.network.model import load_model, tap_name

    out = tmp_path / "cache"
    out.mkdir()
    procs = [subprocess.Popen(NST + ["export", "--weights", str(weights_path), "--out", str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
        assert stdout.startswith(f"wrote {out / 'features.onnx'}")
    assert sorted(p.name for p in out.iterdir()) == ["features.onnx"]  # no temporary files left
    onnx.checker.check_model(str(out / "features.onnx"), full_check=True)
    load_model(out / "features.onnx", [tap_name(k) for k in range(13)])
    r = nst(["info"], dict(env, NST_HOME=str(out)))
    assert r.returncode == 0 and "features.12" in r.stdout, r.stderr
