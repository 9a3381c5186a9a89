"""nst_core.compare and `nst compare` on a small problem (64 px, 24 evaluations): the files and their consistency,
exact budgets, repeatability (in one process and across processes), no matplotlib, Ctrl-C, one-line errors."""
import dataclasses
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_core import compare as compare_module
from nst_core.compare import comparison
from nst_core.compare import runs as compare_runs
from nst_core.inputs.images import deprocess
from nst_core import api as transfer
from nst_core.compare import FILES, PLOTS_HINT, compare
from nst_core.errors import NSTError
from nst_core.spec import GD_LR

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(REPO / "cli.py")]
BUDGET = 24
LABELS = ["lbfgs", "adam", "gd", "adam-lr=0.1"]
# noise start with a seed: the case where repeatability is not trivial
PROBLEM = dict(size=64, style_size=64, init="noise", device="cpu")
SETTINGS = dict(iterations=BUDGET, seed=7, adam_lrs=(0.1,), checkpoints=(5, 10), **PROBLEM)
CLI_ARGS = ["--size", "64", "--style-size", "64", "--init", "noise", "--device", "cpu", "--iterations", str(BUDGET),
            "--seed", "7", "--adam-lr", "0.1", "--checkpoints", "5,10"]


@pytest.fixture(scope="module")
def paths(images_dir):
    return str(images_dir / "tubingen.jpg"), str(images_dir / "starry_night.jpg")


@pytest.fixture(scope="module")
def runs(features_model, paths, tmp_path_factory):
    """The same comparison twice in one process: (summary, out_dir) of each."""
    out = []
    for i in range(2):
        directory = tmp_path_factory.mktemp("compare") / f"run{i}"   # does not exist yet: compare creates it
        out.append((compare(*paths, directory, model=features_model, **SETTINGS), directory))
    return out


def read_csv(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def losses_by_optimizer(rows):
    out = {}
    for row in rows:
        out.setdefault(row[0], []).append(float(row[3]))
    return out


def leftovers(directory):
    return [p.name for p in Path(directory).iterdir() if p.name.startswith(".")]


def test_every_file_is_written_and_consistent(runs):
    summary, directory = runs[0]
    names = set(os.listdir(directory))
    assert set(FILES) | {f"final_{label}.png" for label in LABELS} == names
    assert summary["files"] == ["history.csv", "loss.png", "images.png"] + [f"final_{k}.png" for k in LABELS] + \
        ["summary.md", "summary.json"]
    assert leftovers(directory) == [] and summary["plots"] is True and summary["interrupted"] is None

    header, rows = read_csv(directory / "history.csv")
    assert header == ["optimizer", "evaluation", "seconds", "loss", "content", "style", "tv"]
    assert [r[0] for r in rows] == [k for k in LABELS for _ in range(BUDGET)]   # the budget exactly, in order
    for label in LABELS:
        mine = [r for r in rows if r[0] == label]
        assert [int(r[1]) for r in mine] == list(range(1, BUDGET + 1))
        seconds = [float(r[2]) for r in mine]
        assert all(b >= a for a, b in zip(seconds, seconds[1:]))
        for r in mine:  # loss = content + style + tv
            assert float(r[3]) == pytest.approx(float(r[4]) + float(r[5]) + float(r[6]), rel=1e-12)

    saved = json.loads((directory / "summary.json").read_text())
    assert list(saved["optimizers"]) == LABELS and saved["budget"] == BUDGET and saved["seed"] == 7
    losses = losses_by_optimizer(rows)
    for label, o in saved["optimizers"].items():
        assert o["final_loss"] == min(losses[label])                     # exactly: repr round-trips
        assert o["evaluations"] == BUDGET and o["status"] == "budget"
        assert losses[label][o["best_evaluation"] - 1] == o["final_loss"]
        assert summary["results"][label].n_evals == BUDGET
        assert [r.loss for r in summary["results"][label].history] == losses[label]
    finals = {k: o["final_loss"] for k, o in saved["optimizers"].items()}
    assert saved["best"]["loss"] == min(finals.values()) and finals[saved["best"]["optimizer"]] == min(finals.values())
    # "to reach" and "within 1%": the first evaluation at or below the target, and none before it
    def check(label, target, entry):
        hits = [i + 1 for i, v in enumerate(losses[label]) if v <= target]
        assert entry["evaluations"] == (hits[0] if hits else None)
        if hits:
            assert entry["seconds"] == float(rows[LABELS.index(label) * BUDGET + hits[0] - 1][2])
    for a in LABELS:
        assert set(saved["to_reach"][a]) == set(LABELS) - {a}
        for b in LABELS:
            if a != b:
                check(a, finals[b], saved["to_reach"][a][b])
        check(a, saved["best"]["within_1pct"], saved["within_1pct"][a])
    assert saved["best"]["within_1pct"] == pytest.approx(1.01 * saved["best"]["loss"])
    assert saved["to_reach"][saved["best"]["optimizer"]] and saved["within_1pct"][saved["best"]["optimizer"]][
        "evaluations"] is not None

    md = (directory / "summary.md").read_text()
    for label in LABELS:
        assert f"| {label} | {finals[label]:.6g} |" in md
    assert f"budget of {BUDGET} objective evaluations" in md and "machine:" in md and "seed 7" in md

    with Image.open(directory / "loss.png") as im:
        assert im.format == "PNG" and im.width > 600
    with Image.open(directory / "images.png") as im:
        assert im.format == "PNG" and im.height > im.width   # 4 rows of 3 images (checkpoints 5, 10, final)
    with Image.open(directory / "final_lbfgs.png") as im:
        assert im.size == (85, 64)
        best = summary["results"]["lbfgs"].x
        assert np.array_equal(np.asarray(im), deprocess(best))


def test_rerun_with_the_same_seed_reproduces_the_losses(runs):
    (first, d1), (second, d2) = runs
    _, rows1 = read_csv(d1 / "history.csv")
    _, rows2 = read_csv(d2 / "history.csv")
    assert [(r[0], r[1], r[3], r[4], r[5], r[6]) for r in rows1] == [(r[0], r[1], r[3], r[4], r[5], r[6])
                                                                      for r in rows2]
    for label in LABELS:
        assert first["optimizers"][label]["final_loss"] == second["optimizers"][label]["final_loss"]
        assert np.array_equal(first["results"][label].x, second["results"][label].x)
    for a, row in first["to_reach"].items():
        assert {b: v["evaluations"] for b, v in row.items()} == {b: v["evaluations"]
                                                                 for b, v in second["to_reach"][a].items()}


def test_the_budget_is_counted_exactly(features_model, paths, tmp_path, monkeypatch):
    """Every call of the objective is counted: one warm-up at x0 plus exactly the budget per optimizer."""
    calls = []
    real_prepare = comparison.prepare

    def counting_prepare(*args, **kwargs):
        problem = real_prepare(*args, **kwargs)

        def objective(x):
            calls.append(1)
            return problem.objective(x)
        return dataclasses.replace(problem, objective=objective)

    monkeypatch.setattr(comparison, "prepare", counting_prepare)
    summary = compare(*paths, tmp_path / "c", model=features_model, iterations=7, checkpoints=(), adam_lrs=(0.1, 1.0),
                      size=64, style_size=64, device="cpu")
    assert list(summary["optimizers"]) == ["lbfgs", "adam", "gd", "adam-lr=0.1", "adam-lr=1"]
    assert len(calls) == 1 + 5 * 7
    assert all(o["evaluations"] == 7 for o in summary["optimizers"].values())
    assert summary["seed"] is None  # content start: no seed needed, none drawn


def test_ctrl_c_writes_the_finished_optimizers(features_model, paths, tmp_path, monkeypatch):
    real = compare_runs.optimise_run

    def interrupt_gd(run, problem, budget, callback):
        if run["label"] != "gd":
            return real(run, problem, budget, callback)

        def cb(record, x):
            callback(record, x)
            if record.evaluation == 3:
                raise KeyboardInterrupt
        return real(run, problem, budget, cb)

    monkeypatch.setattr(compare_runs, "optimise_run", interrupt_gd)
    summary = compare(*paths, tmp_path / "c", model=features_model, iterations=6, size=64, style_size=64,
                      device="cpu")
    assert summary["interrupted"] == "gd" and list(summary["optimizers"]) == ["lbfgs", "adam"]
    _, rows = read_csv(tmp_path / "c" / "history.csv")
    assert [r[0] for r in rows] == ["lbfgs"] * 6 + ["adam"] * 6
    assert "interrupted during gd: gd left out" in (tmp_path / "c" / "summary.md").read_text()
    assert not (tmp_path / "c" / "final_gd.png").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(optimizers="lbfgs,sgd"), "unknown optimizer 'sgd'"),
    (dict(optimizers=("lbfgs", "lbfgs")), "optimizer 'lbfgs' is given twice"),
    (dict(optimizers=("adam-lr",)), "adam-lr needs at least one learning rate"),
    (dict(optimizers=("lbfgs",), adam_lrs=(0.1,)), "adam-lr is not among the optimizers"),
    (dict(adam_lrs=(0.1, 0.1)), "given twice"),
    (dict(adam_lrs=(-1.0,)), "Adam learning rate must be a finite number > 0"),
    (dict(gd_lr=math.nan), "gradient-descent step must be a finite number > 0"),
    (dict(checkpoints=(0,)), "checkpoint must be an evaluation number >= 1"),
    (dict(iterations=0), "iterations must be >= 1"),
    (dict(style_scale=-1.0), "style scale"),
    (dict(lr=0.1), "option 'lr' does not apply"),
    (dict(optimizer="adam"), "option 'optimizer' does not apply"),
    (dict(bogus=1), "unknown option 'bogus'"),
])
def test_bad_options_are_one_line_errors_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(NSTError) as info:
        compare("no-such-content.jpg", "no-such-style.jpg", tmp_path / "c", model=tmp_path / "none.onnx", **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "c").exists()


def test_output_directory_rules(tmp_path, paths):
    with pytest.raises(NSTError, match="parent directory .* does not exist"):
        compare(*paths, tmp_path / "a" / "b", model=tmp_path / "none.onnx")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NSTError, match="exists and is not a directory"):
        compare(*paths, tmp_path / "file", model=tmp_path / "none.onnx")


def test_default_gd_step():
    assert compare_module.default_gd_lr(1.0) == compare_module.GD_LR == 2e-3
    assert compare_module.default_gd_lr(0.1) == 2e-3
    assert compare_module.default_gd_lr(100.0) == pytest.approx(GD_LR, rel=0.01)


# ------------------------------------------------------------------------------------------------------ CLI


def nst(args, env, timeout=300, code=None):
    cmd = [sys.executable, "-c", code] if code else CLI
    return subprocess.run(cmd + [str(a) for a in args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_compare_matches_the_api_run_in_another_process(env, paths, runs, tmp_path):
    out = tmp_path / "cmp"
    r = nst(["compare", *paths, "-o", out, *CLI_ARGS], env)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 + len(LABELS) and all(line.startswith("nst compare: ") for line in lines)
    for i, label in enumerate(LABELS):
        assert lines[i + 1].startswith(f"nst compare: [{i + 1}/{len(LABELS)}] {label}: loss ")
    assert r.stdout.startswith("wrote history.csv, loss.png, images.png, ") and "| optimizer |" in r.stdout
    # another process, new ONNX Runtime sessions: the same losses bit for bit
    _, rows_cli = read_csv(out / "history.csv")
    _, rows_api = read_csv(runs[0][1] / "history.csv")
    assert [r[:2] + r[3:] for r in rows_cli] == [r[:2] + r[3:] for r in rows_api]
    assert leftovers(out) == []

    r = nst(["compare", *paths, "-o", tmp_path / "quiet", "--quiet", "--optimizers", "gd", *CLI_ARGS[:-4]], env)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr


def test_cli_without_matplotlib_writes_csv_and_summary_and_says_how_to_install(env, paths, tmp_path):
    out = tmp_path / "cmp"
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import cli\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
    r = nst(["compare", *paths, "-o", out, "--quiet", "--optimizers", "lbfgsb,adam", "--size", "64", "--style-size",
             "64", "--iterations", "5", "--device", "cpu"], env, code=code)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f"nst compare: note: matplotlib is not installed, so loss.png and images.png were not written; install it "
        f"with: {PLOTS_HINT}"]
    assert sorted(os.listdir(out)) == ["final_adam.png", "final_lbfgsb.png", "history.csv", "summary.json",
                                       "summary.md"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["plots"] is False and "loss.png" not in saved["files"]
    assert PLOTS_HINT in (out / "summary.md").read_text()
    _, rows = read_csv(out / "history.csv")
    assert len(rows) == 10


@pytest.mark.parametrize("args, message", [
    (["--optimizers", "lbfgs,newton"], "unknown optimizer 'newton'"),
    (["--adam-lr", "0"], "Adam learning rate must be a finite number > 0"),
    (["-o", "{tmp}/no/such/dir"], "does not exist"),
    (["--size", "0"], "size must be >= 1"),
    (["--style-size", "5"], "at least 9 px"),
])
def test_cli_errors_are_one_line_exit_2(env, paths, tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "cmp")]
    r = nst(["compare", *paths, *args, "--iterations", "2", "--device", "cpu"], env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nst: error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "cmp").exists()


def test_cli_sigterm_writes_the_finished_optimizers_and_exits_143(env, paths, tmp_path):
    """SIGTERM (a scheduler's timeout) during the second optimizer: the first one's files are written, the signal
    is named, exit status 143."""
    import signal

    out = tmp_path / "c"
    proc = subprocess.Popen(CLI + ["compare", *paths, "-o", str(out), "--optimizers", "adam,gd", "--size", "32",
                                   "--style-size", "32", "--device", "cpu", "--iterations", "3000"],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:  # progress: "nst compare: [1/2] adam: ..." once adam has finished
            lines.append(line)
            if "[1/2]" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(lines) + rest
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "nst: terminated (SIGTERM) during gd; wrote the finished optimizers (adam)"\
        in stderr, stderr
    assert json.loads((out / "summary.json").read_text())["interrupted"] == "gd"
    assert "terminated (SIGTERM) during gd: gd left out" in (out / "summary.md").read_text()
    assert leftovers(out) == []


@pytest.mark.parametrize("label", ["lbfgs", "adam", "gd"])
def test_final_pictures_carry_a_recipe_that_stylize_reproduces(runs, label):
    """Each final picture records the compared problem with its optimizer; run as a stylize job, that recipe gives
    the same picture, pixel for pixel (compare's runs are stylize's single-scale runs). Plain Adam says so."""
    from nst_core.outputs.recipe import read_recipe

    summary, directory = runs[0]
    job, provenance = read_recipe(directory / f"final_{label}.png")
    assert job.optimizer == label and job.scales == 1 and job.iterations == BUDGET and job.seed == 7
    assert job.style_scale == 1.0 and provenance["note"] == f"nst compare: the {label} run"
    image, _ = transfer.run(job)
    with Image.open(directory / f"final_{label}.png") as im:
        assert np.array_equal(np.asarray(im), image)
    plain, note = read_recipe(directory / "final_adam-lr=0.1.png")
    assert plain.optimizer == "lbfgs" and "plain Adam at lr 0.1" in note["note"]
