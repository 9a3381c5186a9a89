"""The job description (nst_core.spec) and the recipe every picture carries (nst_core.outputs.recipe): validation,
defaults, the JSON round trip, --spec reruns that are pixel-identical, overrides, changed inputs, nst info."""
import hashlib
import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_core import optim
from nst_core.errors import NSTError
from nst_core.inputs.colour import ORIGINAL_COLORS
from nst_core.network.pooling import POOLINGS
from nst_core.outputs import recipe
from nst_core.spec import spec as spec_module
from nst_core.spec.spec import (defaults, from_dict, from_json, make, override, resolve, to_dict, to_json)

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(REPO / "cli.py")]
SMALL = ["--size", "128", "--iterations", "20", "--seed", "0", "--device", "cpu"]


def nst(args, env, cwd=None):
    return subprocess.run(CLI + [str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ------------------------------------------------------------------------------------------------ the Spec


def test_choices_are_the_stages_own():
    """The Spec's choices are exactly what the stages below it implement."""
    assert spec_module.OPTIMIZERS == tuple(optim.OPTIMIZERS)
    assert spec_module.ORIGINAL_COLORS == ORIGINAL_COLORS
    assert spec_module.POOLINGS == POOLINGS


@pytest.mark.parametrize("task", ["stylize", "invert", "texture"])
def test_resolved_specs_round_trip_and_are_fixed_points(task):
    job = resolve(make(task, size=100, seed=3))
    assert from_json(to_json(job)) == job
    assert resolve(job) == job
    assert json.loads(to_json(job))["version"] == spec_module.FORMAT_VERSION


def test_resolve_fills_the_defaults_of_preset_and_optimizer():
    job = resolve(make("stylize", preset="scream", optimizer="adam"))
    assert (job.content_weight, job.style_weights, job.tv_weight) == (3e-2, (200000.0, 800.0, 12.0, 1.0), 2e-2)
    assert (job.style_scale, job.lr, job.iterations, job.scales) == (1.0, 3.0, 200, "auto")
    assert job.style_size is None and job.history is None  # the size rules decide per scale
    noise = resolve(make("texture"))
    assert noise.init == "noise" and isinstance(noise.seed, int)  # a drawn seed, recorded so it can be rerun


def test_override_lets_defaults_follow_and_keeps_what_was_set():
    job = resolve(make("stylize", tv_weight=0.5))
    scream = override(job, preset="scream")
    assert scream.content_weight == 3e-2 and scream.style_weights == (200000.0, 800.0, 12.0, 1.0)
    assert scream.tv_weight == 0.5  # set by hand: kept
    adam = override(job, optimizer="adam")
    assert (adam.style_scale, adam.lr) == (1.0, 3.0)
    assert override(job, size=256).size == 256 and override(job).size == 192
    assert defaults(job)["style_scale"] == 100.0


@pytest.mark.parametrize("data, message", [
    ({"task": "stylize", "bogus": 1}, "unknown key 'bogus'"),
    ({"task": "stylize", "size": "128"}, "size must be a whole number >= 1, got '128'"),
    ({"task": "stylize", "size": 128.0}, "size must be a whole number"),
    ({"task": "stylize", "size": 0}, "size must be >= 1"),
    ({"task": "stylize", "content_weight": -1}, "content weight must be a finite number >= 0"),
    ({"task": "stylize", "style_layers": [1, 99], "style_weights": [1, 1]}, "style layer 99 does not exist"),
    ({"task": "stylize", "optimizer": "sgd"}, "unknown optimizer 'sgd'"),
    ({"task": "paint"}, "unknown task 'paint'"),
    ({"task": "invert", "styles": ["a.jpg"]}, "invert: unknown option 'styles'"),
    ({"format": "nst-spec", "version": 2}, "version 2 is newer"),
    ({"format": "other"}, "format 'other'"),
    ([1, 2], "not a JSON object"),
])
def test_bad_json_specs_are_one_line_errors(data, message):
    with pytest.raises(NSTError) as info:
        from_dict(data, where="x.json")
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith("x.json: ")


def test_unknown_keyword_is_an_nst_error():
    with pytest.raises(NSTError, match="stylize: unknown option 'bogus'"):
        make("stylize", bogus=1)
    assert to_dict(make("stylize"))["task"] == "stylize"


# ------------------------------------------------------------------------------------------------ the recipe


@pytest.mark.parametrize("task, inputs, extra", [
    ("stylize", ["tubingen.jpg", "starry_night.jpg"], []),
    ("invert", ["tubingen.jpg"], []),
    ("texture", ["starry_night.jpg"], []),
])
def test_spec_rerun_is_pixel_identical(env, images_dir, tmp_path, task, inputs, extra):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    run = nst([task, *[images_dir / n for n in inputs], *SMALL, *extra, "-o", a], env)
    assert run.returncode == 0, run.stderr
    again = nst([task, "--spec", a, "-o", b], env)
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""  # same inputs: no warning
    assert np.array_equal(pixels(a), pixels(b))
    job_a, prov_a = recipe.read_recipe(a)
    job_b, _ = recipe.read_recipe(b)
    assert job_a == job_b and job_a.task == task and job_a.size == 128 and job_a.iterations == 20
    assert from_json(to_json(job_a)) == job_a  # a Spec written by nst round-trips
    assert [e["path"] for e in prov_a["inputs"]] == [str(images_dir / n) for n in inputs]
    for entry in prov_a["inputs"]:
        assert entry["sha256"] == hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()
    assert len(prov_a["weights_sha256"]) == 64


def test_spec_file_options_override_and_changed_inputs_warn(env, images_dir, tmp_path):
    content = tmp_path / "photo.jpg"
    shutil.copy(images_dir / "tubingen.jpg", content)
    a = tmp_path / "a.png"
    assert nst(["stylize", content, images_dir / "starry_night.jpg", *SMALL, "-o", a], env).returncode == 0
    with Image.open(content) as im:  # the photo is edited after the picture was made
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(content)
    b = tmp_path / "b.png"
    run = nst(["stylize", "--spec", a, "--size", "96", "-o", b], env)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not the one the recipe recorded" in lines[0] and "photo.jpg" in lines[0]
    job = recipe.read_recipe(b)[0]
    assert job.size == 96 and job.iterations == 20 and pixels(b).shape[0] == 96


def test_hand_edited_json_spec_errors_exit_2(env, tmp_path, images_dir):
    good = resolve(make("stylize", content=str(images_dir / "tubingen.jpg"),
                        styles=(str(images_dir / "starry_night.jpg"),), size=64, iterations=2))
    for edit, message in [({"colour": "red"}, "unknown key 'colour'"), ({"size": "big"}, "size must be a whole"),
                          ({"tv_weight": -2}, "TV weight must be a finite number >= 0")]:
        path = tmp_path / "job.json"
        path.write_text(json.dumps(dict(to_dict(good), **edit)))
        run = nst(["stylize", "--spec", path, "-o", tmp_path / "x.png"], env)
        assert run.returncode == 2 and run.stderr.count("\n") == 1 and message in run.stderr, run.stderr
        assert not (tmp_path / "x.png").exists()
    path.write_text("{not json")
    run = nst(["stylize", "--spec", path, "-o", tmp_path / "x.png"], env)
    assert run.returncode == 2 and "not valid JSON" in run.stderr and run.stderr.count("\n") == 1
    run = nst(["invert", "--spec", tmp_path / "missing.png"], env)
    assert run.returncode == 2 and "no such file" in run.stderr


def test_a_json_spec_runs_and_info_prints_the_recipe(env, tmp_path, images_dir):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"task": "texture", "styles": [str(images_dir / "starry_night.jpg")], "size": 64,
                                "iterations": 3, "seed": 1}))
    out = tmp_path / "t.png"
    run = nst(["texture", "--spec", path, "-o", out], env)
    assert run.returncode == 0, run.stderr
    info = nst(["info", out], env)
    assert info.returncode == 0
    assert '"task": "texture"' in info.stdout and "weights SHA-256" in info.stdout and "starry_night" in info.stdout
    wrong = nst(["stylize", "--spec", out], env)
    assert wrong.returncode == 2 and "texture job" in wrong.stderr


def test_png_text_reader_is_bounded(tmp_path):
    """A recipe chunk is read without decoding the image, and a text that inflates beyond MAX_TEXT is refused."""
    bomb = zlib.compress(b"x" * (recipe.MAX_TEXT + 10))
    chunk = b"nst-spec\0\x01\x00\0\0" + bomb
    path = tmp_path / "bomb.png"
    Image.new("RGB", (2, 2)).save(path)
    data = path.read_bytes()
    body = b"iTXt" + chunk
    crc = zlib.crc32(body).to_bytes(4, "big")
    path.write_bytes(data[:33] + len(chunk).to_bytes(4, "big") + body + crc + data[33:])
    with pytest.raises(NSTError, match="cannot read its recipe"):
        recipe.read_recipe(path)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (2, 2)).save(plain)
    with pytest.raises(NSTError, match="has no nst recipe"):
        recipe.read_recipe(plain)


def test_the_recipe_records_what_the_size_rules_decided(env, images_dir, tmp_path):
    """Tübingen (1024x768) in Starry Night (1280x1014) at --size 300: two scales, 192 and 300 px. By hand: the
    style image at 192 and round(192 * 300 / 192) = 300 px; the content and TV weights times
    k = (192 * 256) / (300 * 400) = 0.4096 at the second scale; the later budget max(min(8, 20), round(8 * 192 /
    300)) = 8; 20 pairs, then max(5, 8 // 4) = 5."""
    out = tmp_path / "a.png"
    run = nst(["stylize", images_dir / "tubingen.jpg", images_dir / "starry_night.jpg", "--size", "300",
               "--iterations", "8", "--device", "cpu", "-o", out], env)
    assert run.returncode == 0, run.stderr
    scales = recipe.read_recipe(out)[1]["scales"]
    assert [(s["side"], s["evaluations"], s["pairs"], s["style_size"]) for s in scales] == [(192, 8, 20, 192),
                                                                                           (300, 8, 5, 300)]
    assert scales[0]["content_weight"] == 6e-2 and scales[1]["content_weight"] == pytest.approx(6e-2 * 0.4096)
    assert scales[1]["tv_weight"] == pytest.approx(2e-2 * 0.4096)
    info = nst(["info", out], env)
    assert "scale 2: side 300, evaluations 8, pairs 5, style_size 300" in info.stdout
