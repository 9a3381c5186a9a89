"""The `nst` command line, run in subprocesses: outputs, logs, intermediates, help texts, one-line errors with exit
status 2, divergence (exit 3), Ctrl-C (exit 130 with the best image saved), export-vjp / info / export, and that
the runtime never imports torch."""
import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_core.outputs.recipe import read_recipe

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(REPO / "cli.py")]
FAST = ["--size", "64", "--iterations", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def images(images_dir):
    return str(images_dir / "tubingen.jpg"), str(images_dir / "starry_night.jpg")


def nst(args, env, cwd=None, timeout=300):
    return subprocess.run(CLI + [str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def leftovers(directory):
    return [p.name for p in Path(directory).iterdir() if p.name.startswith(".")]


def test_stylize_png_log_and_intermediates(env, images, tmp_path):
    out, log = tmp_path / "out.png", tmp_path / "run.csv"
    r = nst(["stylize", *images, "-o", out, "--size", "64", "--iterations", "5", "--device", "cpu",
             "--log", log, "--save-every", "2"], env)
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (85, 64) and im.mode == "RGB"
    rows = list(csv.reader(log.open()))
    assert rows[0] == ["evaluation", "seconds", "loss", "content", "style", "tv", "scale"]
    assert len(rows) == 6 and [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4, 5]
    assert all(np.isfinite([float(v) for v in row]).all() for row in rows[1:])
    assert {row[-1] for row in rows[1:]} == {"64"}  # one scale, at --size
    assert sorted(p.name for p in tmp_path.glob("out_*.png")) == ["out_0002.png", "out_0004.png"]
    with Image.open(tmp_path / "out_0004.png") as im:
        assert im.size == (85, 64)
    assert read_recipe(tmp_path / "out_0004.png")[0] == read_recipe(out)[0]  # intermediates carry the recipe
    assert r.stdout.startswith(f"wrote {out} (85x64): loss ") and "5 evaluations (lbfgs)" in r.stdout
    assert r.stderr == ""  # no progress bar when stderr is not a terminal
    assert leftovers(tmp_path) == []


def test_stylize_defaults_and_quiet(env, tmp_path):
    if not (REPO.parent / "shared" / "images" / "tubingen.jpg").exists():
        pytest.skip("no ../shared/images")
    r = nst(["stylize", "-o", "out.jpg", "--quiet", *FAST], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.format == "JPEG" and im.size == (85, 64)


@pytest.mark.parametrize("command, size", [("invert", (85, 64)), ("texture", (80, 64))])
def test_invert_and_texture(env, images, tmp_path, command, size):
    image = images[0] if command == "invert" else images[1]
    out = tmp_path / f"{command}.png"
    r = nst([command, image, "-o", out, "--seed", "0", *FAST], env)
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.size == size


def test_help_mentions_every_option_and_default(env):
    import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        r = nst([name, "--help"], env)
        assert r.returncode == 0
        text = " ".join(r.stdout.split())
        for action in p._actions:
            if not action.option_strings or action.dest == "help":
                continue
            for option in action.option_strings:
                assert option in text, (name, option)
            assert "(default:" in action.help, (name, action.option_strings)


ERRORS = [
    (["stylize", "{tmp}/missing.jpg", "{style}"], "missing.jpg"),
    (["stylize", "{content}", "{style}", "--content-layer", "13"], "content layer 13 does not exist"),
    (["stylize", "{content}", "{style}", "--style-layers", "1,4,20", "--style-weights", "1,2,3"],
     "style layer 20 does not exist"),
    (["stylize", "{content}", "{style}", "--style-weights", "1,2"], "2 style weights for 4 style layers"),
    (["stylize", "{content}", "{style}", "--content-weight", "-1"], "content weight must be a finite number >= 0"),
    (["stylize", "{content}", "{style}", "--tv-weight", "nan"], "TV weight must be a finite number >= 0, got nan"),
    (["stylize", "{content}", "{style}", "--style-weights", "1,inf,1,1"], "style weight must be a finite number"),
    (["stylize", "{content}", "{style}", "--size", "0"], "size must be >= 1"),
    (["stylize", "{content}", "{style}", "--size", "5"], "at least 9 px"),
    (["stylize", "{content}", "{style}", "--iterations", "0"], "iterations must be >= 1"),
    (["stylize", "{content}", "{style}", "-o", "{tmp}/out.xyz"], "unknown image extension '.xyz'"),
    (["stylize", "{content}", "{style}", "-o", "{tmp}/nodir/out.png"], "does not exist"),
    (["stylize", "{content}", "{style}", "-o", "{content}"], "would overwrite the input image"),
    (["stylize", "{content}", "{style}", "--model", "{tmp}/none.onnx"], "no model at"),
    (["stylize", "{content}", "{style}", "--model", "{tmp}/notonnx.onnx"], "not an ONNX model"),
    (["stylize", "{content}", "{style}", "--log", "{tmp}/nodir/run.csv"], "does not exist"),
    (["stylize", "{content}", "{style}", "--size", "abc"], "not a whole number: 'abc'"),
    (["stylize", "{content}", "{style}", "--optimizer", "sgd"], "invalid choice: 'sgd'"),
    (["stylize", "{tmp}/notimage.jpg", "{style}"], "not an image file"),
    (["invert", "{content}", "--content-weight", "0"], "invert needs a content weight > 0"),
    (["texture", "{style}", "--style-weights", "0,0,0,0"], "texture needs a style weight > 0"),
    (["export-vjp", "--taps", "1,13", "--out", "{tmp}/v.onnx"], "tap 13 does not exist"),
    (["export-vjp", "--height", "64", "--out", "{tmp}/v.onnx"], "give both --height and --width"),
    (["export-vjp", "--height", "4", "--width", "4", "--out", "{tmp}/v.onnx"], "at least 9 px"),
    (["info", "--model", "{tmp}/none.onnx"], "no model at"),
]


@pytest.mark.parametrize("args, message", ERRORS, ids=[" ".join(a[3:] or a[:2]) for a, _ in ERRORS])
def test_errors_are_one_line_exit_2(env, images, tmp_path, args, message):
    (tmp_path / "notonnx.onnx").write_text("hello")
    (tmp_path / "notimage.jpg").write_text("not a jpeg")
    fill = {"tmp": tmp_path, "content": images[0], "style": images[1]}
    args = [a.format(**fill) for a in args]
    if "-o" not in args and args[0] != "export-vjp" and args[0] != "info":
        args += ["-o", str(tmp_path / "out.png")]
    r = nst(args + (["--iterations", "1"] if "--iterations" not in args and args[0] != "export-vjp"
                    and args[0] != "info" else []), env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out.png").exists()
    assert leftovers(tmp_path) == []


def test_options_are_checked_before_the_model(env, images, tmp_path):
    """A bad option is reported even when the model is missing too (no heavy work before the checks)."""
    r = nst(["stylize", *images, "-o", tmp_path / "o.png", "--model", tmp_path / "none.onnx", "--size", "0"], env)
    assert r.returncode == 2 and "size must be >= 1" in r.stderr


def test_divergence_exits_3_and_writes_nothing(env, images, tmp_path):
    out = tmp_path / "out.png"
    r = nst(["stylize", *images, "-o", out, "--tv-weight", "1e308", *FAST], env)
    assert r.returncode == 3, r.stderr
    assert r.stderr == "nst: error: non-finite loss at evaluation 1; no finite image to save (try smaller weights)\n"
    assert not out.exists() and leftovers(tmp_path) == []


def test_runtime_never_imports_torch(env, images, tmp_path):
    code = ("import sys, cli\n"
            f"rc = cli.main(['stylize', {images[0]!r}, {images[1]!r}, '-o', {str(tmp_path / 'o.png')!r}, "
            "'--size', '64', '--iterations', '2', '--quiet'])\n"
            "rc2 = cli.main(['info'])\n"
            f"rc3 = cli.main(['export-vjp', '--taps', '3', '--out', {str(tmp_path / 'v.onnx')!r}])\n"
            "print(rc, rc2, rc3, 'torch' in sys.modules, 'export.onnx_export' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "0 0 0 False False"


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_stop_signal_saves_the_best_image_and_exits_128_plus_signal(env, images, tmp_path, signum, status):
    """Ctrl-C, a scheduler's SIGTERM and a closed terminal's SIGHUP all stop the run the same way: the best image so
    far at the output path, written atomically, the signal named, exit status 128 + its number."""
    out = tmp_path / "out.png"
    first = tmp_path / "out_000001.png"  # --save-every 1 with 100000 evaluations: 6-digit numbers
    proc = subprocess.Popen(CLI + ["stylize", *images, "-o", str(out), "--size", "64", "--iterations", "100000",
                                   "--save-every", "1", "--device", "cpu", "--log", str(tmp_path / "run.csv")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not first.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no intermediate image within 120 s"
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr and "saved the best image so far" in stderr and str(out) in stderr
    word = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)", signal.SIGHUP: "hung up (SIGHUP)"}
    assert stderr.startswith(f"nst: {word[signum]} after "), stderr
    with Image.open(out) as im:
        im.load()
        assert im.size == (85, 64)
    job, _ = read_recipe(out)  # the picture saved on the signal carries its recipe too
    assert job.task == "stylize" and job.size == 64 and job.iterations == 100000
    rows = list(csv.reader((tmp_path / "run.csv").open()))
    assert len(rows) >= 2 and rows[0][0] == "evaluation"
    assert leftovers(tmp_path) == []


def test_background_job_killed_with_sigterm_leaves_a_picture_and_exits_143(env, images, tmp_path):
    """`nst stylize ... &` from a non-interactive shell, then `kill -TERM`: such a job starts with SIGINT ignored,
    SIGTERM is what stops it. The shell reports nst's own exit status, 143, and the picture is complete."""
    out = tmp_path / "out.png"
    first = tmp_path / "out_00001.png"
    cmd = " ".join(CLI + ["stylize", *images, "-o", str(out), "--size", "64", "--iterations", "10000",
                          "--save-every", "1", "--device", "cpu"])
    script = (f"{cmd} 2> {tmp_path / 'err.txt'} &\npid=$!\n"
              f"for i in $(seq 1200); do [ -e {first} ] && break; sleep 0.1; done\nsleep 0.3\n"
              "kill -TERM $pid\nwait $pid\necho status=$?\n")
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    stderr = (tmp_path / "err.txt").read_text()
    assert r.stdout.strip().endswith("status=143"), (r.stdout, r.stderr, stderr)
    assert "Traceback" not in stderr and stderr.startswith("nst: terminated (SIGTERM) after "), stderr
    with Image.open(out) as im:
        im.load()
        assert im.size == (85, 64)
    assert leftovers(tmp_path) == []


def test_export_vjp_fixed_size_runs_and_matches_the_network(env, features_model, tmp_path):
    import onnx
    import onnxruntime as ort

    from nst_core.network.model import Network, tap_name

    out = tmp_path / "vjp.onnx"
    r = nst(["export-vjp", "--taps", "1,3", "--height", "64", "--width", "80", "--out", out], env)
    assert r.returncode == 0, r.stderr
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["image"] == [1, 3, 64, 80]
    assert dims["grad_features.1"] == [1, 64, 31, 39] and dims["grad_features.3"] == [1, 128, 15, 19]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 64, 80)).astype(np.float32)
    cot = {k: rng.standard_normal(dims["grad_" + k]).astype(np.float32) for k in ("features.1", "features.3")}
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(["grad_image"], {"image": x, **{"grad_" + k: v for k, v in cot.items()}})[0]
    net = Network(onnx.load(features_model), [tap_name(1), tap_name(3)], device="cpu")
    net.forward(x)
    ref = net.backward(cot)
    assert np.linalg.norm(got - ref) <= 1e-5 * np.linalg.norm(ref)

    dynamic = tmp_path / "dyn.onnx"
    r = nst(["export-vjp", "--taps", "7", "--out", dynamic], env)
    assert r.returncode == 0, r.stderr
    sess = ort.InferenceSession(str(dynamic), providers=["CPUExecutionProvider"])
    net7 = Network(onnx.load(features_model), [tap_name(7)], device="cpu")
    for h, w in ((64, 80), (33, 47)):
        image = np.zeros((1, 3, h, w), np.float32)
        shape = net7.forward(image)[tap_name(7)].shape
        grad = sess.run(["grad_image"], {"image": image, "grad_features.7": np.ones(shape, np.float32)})[0]
        assert grad.shape == (1, 3, h, w)
    assert leftovers(tmp_path) == []


def test_info(env, features_model):
    r = nst(["info"], env)
    assert r.returncode == 0, r.stderr
    assert f"model: {features_model}" in r.stdout
    assert "taps: features.0, features.1" in r.stdout and "features.12" in r.stdout


def test_export(env, weights_path, tmp_path):
    pytest.importorskip("torch")
    r = nst(["export", "--weights", weights_path, "--out", tmp_path], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"wrote {tmp_path / 'features.onnx'}"
    assert "taps: features.0" in r.stdout
    r = nst(["info", "--model", tmp_path / "features.onnx"], env)
    assert r.returncode == 0 and "weights_sha256" in r.stdout


def test_export_without_torch_says_how_to_install(env, tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "import cli\n"
            f"sys.exit(cli.main(['export', '--out', {str(tmp_path)!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "nst: error: nst export needs torch: pip install 'nst-onnx[export]'"


def _record(evaluation, loss, scale=1):
    from nst_core.schedule import ScaleRecord
    return ScaleRecord(evaluation, 0.0, loss, {}, scale=scale, side=8)


def test_intermediates_show_the_latest_point_during_a_rising_phase(tmp_path):
    """Hand-made run of two scales, x_k filled with k: Adam-like on scale 1 (rising phase up to evaluation 3), the
    loss rises from its start, so evaluations 2 and 3 save their own points (the best is still the start, the
    photo); evaluation 4 beats the start and is saved as the best; evaluation 5 is worse than 4 but past the rising
    phase: it saves 4. Scale 2 (no rising phase, L-BFGS-like) saves its best."""
    from nst_core.outputs.runfiles import Progress

    saved = {}
    progress = Progress(str(tmp_path / "out.png"), [(8, 5), (16, 3)], save_every=1, rising=[3, None],
                        picture=lambda x: np.full((2, 2, 3), int(x.flat[0]), np.uint8))
    progress._save = lambda evaluation, x: saved.__setitem__(evaluation, int(x.flat[0]))
    losses = [(1, 1.0, 1), (2, 2.0, 1), (3, 3.0, 1), (4, 0.5, 1), (5, 0.7, 1), (6, 9.0, 2), (7, 10.0, 2),
              (8, 8.0, 2)]
    for evaluation, loss, scale in losses:
        progress(_record(evaluation, loss, scale), np.full((1, 3, 2, 2), float(evaluation)))
    assert saved == {1: 1, 2: 2, 3: 3, 4: 4, 5: 4, 6: 6, 7: 6, 8: 8}


def test_rising_phase_matches_the_optimizers_rule():
    """The intermediates' rule and the interrupted run's rule (optim's ``falls_after``) name the same evaluation:
    Adam's recipe falls after its decay evaluation + 1 (decay at round(0.75 * 200) = 150 by CS231n's recipe, see
    schedule.problem.ADAM_DECAY), gradient descent after its first, L-BFGS has none."""
    from nst_core.schedule import adam_steps, rising_phase
    from nst_core.spec.spec import Spec, resolve

    job = lambda optimizer: resolve(Spec(task="stylize", content="c.jpg", styles=("s.jpg",), optimizer=optimizer,
                                         iterations=200))  # noqa: E731
    assert rising_phase(job("adam")) == adam_steps(200)[0] + 1
    assert rising_phase(job("gd")) == 1 and rising_phase(job("lbfgs")) is None and rising_phase(job("lbfgsb")) is None


def test_adam_intermediates_are_not_the_photo(env, images, tmp_path):
    """`--optimizer adam --save-every 1`: the recipe's loss rises first (the log shows it), and the intermediate
    pictures follow the latest point, so evaluation 3's differs from evaluation 1's (the start, the photo); they
    were all the photo before."""
    out = tmp_path / "out.png"
    log = tmp_path / "run.csv"
    r = nst(["stylize", *images, "-o", str(out), "--size", "64", "--optimizer", "adam", "--iterations", "6",
             "--save-every", "1", "--device", "cpu", "--log", str(log)], env)
    assert r.returncode == 0, r.stderr
    losses = [float(row[2]) for row in list(csv.reader(log.open()))[1:4]]
    assert losses[2] > losses[0], f"the premise: Adam's loss rises first, got {losses}"
    first, third = (np.asarray(Image.open(tmp_path / f"out_000{k}.png").convert("RGB"), np.int16) for k in (1, 3))
    assert np.abs(first - third).max() > 0
