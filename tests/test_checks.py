"""Issue 22, part B, at the command line: a wrong feature model, a broken bundle manifest and the error paths of
nst bundle / bundle --check / export-vjp / --log are one line, exit status 2 and nothing written; a FIFO or a
process substitution works as an input; the messages that misled name the option at fault.

Every case runs a real ``nst`` process (the table cases through test_robustness's fork server: one process imports
``cli`` once and forks a child per case that runs ``cli.main(args)`` with its own stdout, stderr and exit status).
The wrong models are the real exported model with its input edited with ``onnx``; the broken bundles a real bundle
with one manifest field changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_robustness import IDENTITY, NST, TINY, assert_one_line_error, halves, nst, run_batch

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def listing(directory: Path) -> list[str]:
    """Every path below ``directory`` (relative, sorted), with each file's size and SHA-256: to tell that a failed
    command wrote, removed or changed nothing."""
    out = []
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        out.append(rel if p.is_dir() else f"{rel} {p.stat().st_size} {hashlib.sha256(p.read_bytes()).hexdigest()}")
    return out


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    d = tmp_path_factory.mktemp("pictures")
    halves(RED, BLUE).save(d / "content.png")
    halves(GREEN, RED).save(d / "style.png")
    return d


# ------------------------------------------------------------------------------------------ the feature model


def _edited(full, path: Path, edit) -> Path:
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(full)
    edit(m.graph.input[0].type.tensor_type)
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="module")
def wrong_models(features_model, tmp_path_factory):
    """{case: (model path, what the message must say)}: the real model with a fixed 224x224 input, a 1-channel
    input, a float16 input, and a JPEG given as the model."""
    import onnx

    d = tmp_path_factory.mktemp("wrong_models")
    full = onnx.load(str(features_model))

    def fixed(t):
        t.shape.dim[2].dim_value = 224  # setting dim_value replaces the symbolic H / W
        t.shape.dim[3].dim_value = 224

    def one_channel(t):
        t.shape.dim[1].dim_value = 1

    def float16(t):
        t.elem_type = onnx.TensorProto.FLOAT16

    jpeg = d / "photo.jpg"
    halves(RED, BLUE).save(jpeg, quality=90)
    return {
        "fixed 224x224": (_edited(full, d / "fixed.onnx", fixed), "fixed size 224x224"),
        "1 channel": (_edited(full, d / "gray.onnx", one_channel), "1 channels, not 3"),
        "float16": (_edited(full, d / "half.onnx", float16), "float16, not float32"),
        "a JPEG": (jpeg, "not an ONNX model (it is a JPEG image)"),
    }


@pytest.fixture(scope="module")
def model_runs(env, pictures, wrong_models, tmp_path_factory):
    specs = {}
    for case, (path, _) in wrong_models.items():
        specs[("info", case)] = ["info", "--model", path]
        specs[("stylize", case)] = ["stylize", pictures / "content.png", pictures / "style.png", "-o", "out.png",
                                    "--model", path, *TINY]
    workdir = tmp_path_factory.mktemp("model_runs")
    return {cid: (run, workdir / f"case{i}") for i, (cid, run) in enumerate(run_batch(specs, env, workdir).items())}


@pytest.mark.parametrize("command", ["info", "stylize"])
@pytest.mark.parametrize("case", ["fixed 224x224", "1 channel", "float16", "a JPEG"])
def test_a_wrong_model_is_one_line(model_runs, wrong_models, command, case):
    run, cwd = model_runs[(command, case)]
    path, problem = wrong_models[case]
    assert_one_line_error(run.returncode, run.stderr, f"{path}: not", problem, "nst export")
    assert run.stdout == "" and list(cwd.iterdir()) == []
    if case == "a JPEG":  # nst export writes features.onnx: never suggest writing into the photos' folder
        assert f"--out {path.parent}" not in run.stderr and "--model takes the features.onnx" in run.stderr


def test_the_real_model_passes_the_same_checks(features_model):
    from nst_core.network.model import load_model, tap_name

    load_model(features_model, [tap_name(k) for k in range(13)])


# ------------------------------------------------------------------------------------------ streams as inputs


def test_a_fifo_and_a_process_substitution_work_as_inputs(env, pictures, tmp_path):
    """A named FIFO (written by a thread) as the content, <(cat style) as the style: read once, decoded, and
    hashed in the recipe; the picture equals the one made from the regular files (one evaluation of the content
    loss alone: the content image itself), even with --save-every reading the content again."""
    fifo = tmp_path / "content.fifo"
    os.mkfifo(fifo)
    data = (pictures / "content.png").read_bytes()

    def write():
        with open(fifo, "wb") as f:  # blocks until nst opens it for reading
            f.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    out, ref = tmp_path / "fifo.png", tmp_path / "file.png"
    cmd = " ".join(f"'{a}'" for a in NST) + f" stylize '{fifo}' <(cat '{pictures / 'style.png'}') -o '{out}' " + \
        " ".join(IDENTITY) + " --save-every 1 --original-colors luminance"
    r = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=120)
    writer.join(5)
    assert r.returncode == 0, r.stderr
    r2 = nst(["stylize", pictures / "content.png", pictures / "style.png", "-o", ref, *IDENTITY,
              "--original-colors", "luminance"], env)
    assert r2.returncode == 0, r2.stderr
    with Image.open(out) as a, Image.open(ref) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    info = nst(["info", out], env)
    assert f"content: {fifo} (SHA-256 {hashlib.sha256(data).hexdigest()})" in info.stdout, info.stdout
    style_sha = hashlib.sha256((pictures / "style.png").read_bytes()).hexdigest()
    assert f"(SHA-256 {style_sha})" in info.stdout and "style: /dev/fd/" in info.stdout


def test_an_empty_stream_says_so(env, pictures, tmp_path):
    r = subprocess.run(["bash", "-c", " ".join(f"'{a}'" for a in NST) + f" stylize <(true) '{pictures / 'style.png'}'"
                        f" -o '{tmp_path / 'o.png'}' " + " ".join(TINY)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert_one_line_error(r.returncode, r.stderr, "/dev/fd/", "empty stream")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ messages that misled


MISLEADING = {
    "--scales 100 --size 64": (["--scales", "100", "--size", "64"],
                               ["--scales 100 with --size 64", "first scale would be 1 px", "layer 7 needs",
                                "use --scales 3 or fewer"]),
    "--calibration-size 5": (["--calibration-size", "5", "--size", "300"],
                             ["--calibration-size 5", "use --calibration-size >= 9"]),
    "style size at the first scale": (["--scales", "3", "--size", "64", "--style-size", "12"],
                                      ["style size at the first scale", "--style-size"]),
    "empty style layers": (["--style-layers", "", "--style-weights", ""],
                           ["stylize needs at least one style layer", "--style-layers is empty",
                            "--style-weights 0,0,0,0"]),
}


@pytest.mark.parametrize("case", list(MISLEADING))
def test_messages_name_the_option(env, pictures, tmp_path, case):
    args, needles = MISLEADING[case]
    r = nst(["stylize", pictures / "content.png", pictures / "style.png", "-o", tmp_path / "o.png",
             "--iterations", "1", "--device", "cpu", *args], env)
    assert_one_line_error(r.returncode, r.stderr, *needles)
    assert list(tmp_path.iterdir()) == []


def test_scales_named_as_enough_work(env, pictures, tmp_path):
    """The --scales the message proposes runs."""
    r = nst(["stylize", pictures / "content.png", pictures / "style.png", "-o", tmp_path / "o.png", "--scales", "3",
             "--size", "64", "--iterations", "1", "--device", "cpu", "-q"], env)
    assert r.returncode == 0, r.stderr


def test_texture_with_empty_style_layers(env, pictures, tmp_path):
    r = nst(["texture", pictures / "style.png", "-o", tmp_path / "t.png", *TINY, "--style-layers", "",
             "--style-weights", ""], env)
    assert_one_line_error(r.returncode, r.stderr, "texture needs at least one style layer")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ error-path table


@pytest.fixture(scope="module")
def good_bundle(features_model, tmp_path_factory):
    from nst_core.hosts import bundle
    from nst_core.spec import make, resolve

    d = tmp_path_factory.mktemp("good_bundle") / "b"
    bundle.write_bundle(d, resolve(make("stylize", optimizer="lbfgs", size=64, style_size=64)),
                        model_path=features_model)
    return d


def _set(path, value):
    """An edit of the manifest: set (or, with KeyError, delete) the field at ``path`` (keys and indices)."""
    def edit(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


#: --check cases: (edit of the manifest (or None), edit of the directory (or None), what the message says)
CHECK_CASES = {
    "models is a string": (_set(["models"], "abc"), None, "field models is the string 'abc', expected an object"),
    "reference is a number": (_set(["reference"], 42), None, "field reference is the number 42"),
    "problem is null": (_set(["problem"], None), None, "field problem is null"),
    "pixel box is a string": (_set(["pixel_box"], "0 1"), None, "field pixel_box is the string"),
    "min_input_size -5": (_set(["min_input_size"], -5), None, "field min_input_size is -5, expected >= 1"),
    "calibration is a list": (_set(["calibration"], [192]), None, "field calibration is a list"),
    "weight NaN": (_set(["weights", 0, "value"], float("nan")), None, "field weights[0].value"),
    "model file outside": (_set(["models", "targets", "file"], "../x.onnx"), None, "field models.targets.file"),
    "no tolerance": (_set(["reference", "tolerance"], KeyError), None, "field reference.tolerance is missing"),
    "format version 2": (_set(["format_version"], 2), None, "format version 2"),
    "not JSON": (None, lambda d: (d / "manifest.json").write_text("{"), "not valid JSON"),
    "a list manifest": (None, lambda d: (d / "manifest.json").write_text("[]"), "not an nst bundle manifest"),
    "model changed": (None, lambda d: (d / "targets.onnx").open("ab").write(b"\0"), "SHA-256 differs"),
    "model missing": (None, lambda d: (d / "objective.onnx").unlink(), "objective.onnx: missing"),
    "reference of another size": (None, lambda d: Image.new("RGB", (30, 20)).save(d / "reference" / "image.png"),
                                  "reference.sha256.image"),
    "reference missing": (None, lambda d: (d / "reference" / "style.png").unlink(), "style.png: missing"),
    "reference not an image": (None, lambda d: (d / "reference" / "content.png").write_bytes(b"x"),
                               "reference.sha256.content_image"),
}


@pytest.fixture(scope="module")
def error_table(env, good_bundle, pictures, tmp_path_factory):
    """{case: (Run, the directory the case may not change, its listing before)} for every error path."""
    root = tmp_path_factory.mktemp("errors")
    specs, watched = {}, {}
    for case, (edit_manifest, edit_dir, _) in CHECK_CASES.items():
        d = root / f"check-{len(specs)}"
        shutil.copytree(good_bundle, d)
        if edit_manifest:
            m = json.loads((d / "manifest.json").read_text())
            edit_manifest(m)
            (d / "manifest.json").write_text(json.dumps(m))
        if edit_dir:
            edit_dir(d)
        specs[("check", case)] = ["bundle", "--check", d]
        watched[("check", case)] = d
    foreign = root / "photos"
    foreign.mkdir()
    (foreign / "keep.jpg").write_text("x")
    (root / "a-file").write_text("x")
    bundle_args = {
        "a directory that is not a bundle": ([foreign], "not an nst bundle; refusing"),
        "a file": ([root / "a-file"], "exists and is not a directory"),
        "parent missing": ([root / "no" / "b"], "does not exist"),
        "--size 4": ([root / "new", "--size", "4"], "too small"),
        "--calibration-size -1": ([root / "new", "--calibration-size", "-1"], "calibration size"),
        "empty style layers": ([root / "new", "--style-layers", "", "--style-weights", ""], "--style-layers is empty"),
        "a wrong model": ([root / "new", "--model", pictures / "content.png"], "not an ONNX model (it is a PNG"),
        "no weight": ([root / "new", "--content-weight", "0", "--style-weights", "0,0,0,0"],
                      "needs a content or style weight"),
        "--check without a bundle": (["--check", root / "missing"], "no such bundle directory"),
        "--check a foreign directory": (["--check", foreign], "no manifest.json"),
    }
    vjp_args = {
        "--taps 13": (["--taps", "13"], "tap 13 does not exist"),
        "--taps empty": (["--taps", ""], "--taps needs at least one layer"),
        "--height alone": (["--height", "64"], "give both --height and --width"),
        "--height 0": (["--height", "0", "--width", "64"], "--height must be >= 1"),
        "too small": (["--height", "8", "--width", "8"], "too small for tap"),
        "not .onnx": (["--out", root / "vjp.txt"], "must be an .onnx file"),
        "missing directory": (["--out", root / "no" / "v.onnx"], "does not exist"),
        "a wrong model": (["--model", pictures / "style.png"], "not an ONNX model"),
    }
    content, style = pictures / "content.png", pictures / "style.png"
    log_args = {
        "a directory": ([root], "is a directory; give a log file name"),
        "missing directory": ([root / "no" / "log.csv"], "does not exist"),
        "the output": ([root / "out.png"], "the log and the output image are the same file"),
        "an input": ([content], "the log would overwrite the input image"),
    }
    for case, (args, _) in bundle_args.items():
        specs[("bundle", case)] = ["bundle", *args]
    for case, (args, _) in vjp_args.items():
        default_out = [] if "--out" in args else ["--out", root / "vjp.onnx"]
        specs[("export-vjp", case)] = ["export-vjp", *args, *default_out]
    for case, (args, _) in log_args.items():
        specs[("--log", case)] = ["stylize", content, style, "-o", root / "out.png", *TINY, "--log", *args]
    before = {cid: listing(d) for cid, d in watched.items()}
    before_root = listing(root)
    runs = run_batch(specs, env, tmp_path_factory.mktemp("error_runs"))
    messages = {("check", c): m for c, (_, _, m) in CHECK_CASES.items()}
    messages.update({("bundle", c): m for c, (_, m) in bundle_args.items()})
    messages.update({("export-vjp", c): m for c, (_, m) in vjp_args.items()})
    messages.update({("--log", c): m for c, (_, m) in log_args.items()})
    return runs, messages, root, before_root, {cid: (d, before[cid]) for cid, d in watched.items()}


ERROR_CASES = ([("check", c) for c in CHECK_CASES]
               + [("bundle", c) for c in ("a directory that is not a bundle", "a file", "parent missing", "--size 4",
                                          "--calibration-size -1", "empty style layers", "a wrong model", "no weight",
                                          "--check without a bundle", "--check a foreign directory")]
               + [("export-vjp", c) for c in ("--taps 13", "--taps empty", "--height alone", "--height 0",
                                              "too small", "not .onnx", "missing directory", "a wrong model")]
               + [("--log", c) for c in ("a directory", "missing directory", "the output", "an input")])


@pytest.mark.parametrize("cid", ERROR_CASES, ids=[f"{a}: {b}" for a, b in ERROR_CASES])
def test_error_paths_are_one_line_and_write_nothing(error_table, cid):
    runs, messages, _, _, watched = error_table
    run = runs[cid]
    assert_one_line_error(run.returncode, run.stderr, messages[cid])
    assert run.stdout == ""
    if cid in watched:  # --check changed nothing in the bundle
        d, before = watched[cid]
        assert listing(d) == before


def test_the_error_table_wrote_nothing(error_table):
    """No failed command left a file behind (no bundle, no vjp.onnx, no log, no picture, no temporary file), and
    the foreign directory kept its file."""
    runs, _, root, before_root, _ = error_table
    assert listing(root) == before_root
    assert (root / "photos" / "keep.jpg").read_text() == "x"
