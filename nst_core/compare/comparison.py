"""Compare optimizers on one style-transfer problem: the same objective, start image and budget for each.

    summary = compare("tubingen.jpg", "starry_night.jpg", "out/compare", preset="starry_night", iterations=300)
    summary["optimizers"]["lbfgs"]["final_loss"], summary["to_reach"]["adam"]["lbfgs"]["evaluations"], ...
    summary["results"]["lbfgs"].history                    # optim.Result of each run, one Record per evaluation

Fairness
    The problem (images, network, targets, loss weights) is prepared ONCE (``api.prepare``'s single-scale problem) and every optimizer
    minimises that same objective from the same start image ``x0`` with the same budget, counted in OBJECTIVE
    EVALUATIONS (forward + backward passes), not iterations: an L-BFGS iteration can take several evaluations in
    its line search, an Adam or gradient-descent step exactly one. Every optimizer spends the whole budget (the
    budget counts are exact) unless it truly converges or diverges (then its status says so).

    One objective means one style scale. The default is 1: the preset's weights exactly as CS231n states them, the
    objective the exercise's Adam recipe was tuned for, so "L-BFGS vs the exercise's Adam" compares them on the
    exercise's own terms. (``stylize`` uses style scale 100 with L-BFGS and gradient descent, because minimising
    the scale-1 objective well gives a barely stylised picture; pass ``style_scale=100`` to compare on that one.)

    One objective also means one scale: at any ``size`` the problem is the single-scale one (calibrated weights),
    not ``stylize``'s coarse-to-fine schedule (``nst_core.schedule``), whose scales each optimizer would start from
    a different picture.

    Before the timed runs the objective is evaluated once at ``x0`` (not counted, not timed): ONNX Runtime's first
    run allocates and plans, which would otherwise be charged to whichever optimizer runs first. Seconds are
    wall-clock from each optimizer's start (``Record.seconds``); other load on the machine distorts them, evaluation
    counts are immune to it.

Optimizers (``optimizers`` entries; each result is labelled)
    "lbfgs"    Our L-BFGS in NumPy (``optim.lbfgs``: two-loop recursion, unit steps with Armijo backtracking),
               projected onto the pixel range [0, 1] (normalised bounds), ``lbfgs_history`` correction pairs;
               exactly what ``stylize(optimizer="lbfgs")`` runs.
    "lbfgsb"   SciPy's L-BFGS-B within the same bounds and with the same memory, as ``stylize(optimizer="lbfgsb")``.
    "adam"     The CS231n recipe, as ``stylize(optimizer="adam")`` runs it: lr 3.0, a fresh Adam at lr 0.1 from
               90 % of the budget on, x clamped to [-1.5, 1.5] before each evaluation until 95 % of the budget (the
               steps 180 and 190 of the exercise's 200 scale with the budget). The clamp box lies inside the pixel
               range, but the last 5 % of the evaluations are not clamped at all.
    "adam-lr"  Plain Adam (torch's update, no schedule) at each rate of ``adam_lrs``, labelled "adam-lr=<lr>".
               It is PROJECTED onto the pixel range before every evaluation (like L-BFGS and gradient descent), so
               it evaluates only images L-BFGS could evaluate too: the losses compare like with like.
    "gd"       Projected gradient descent ``x <- clip(x - gd_lr * grad)`` onto the pixel range, fixed step. The
               default step is ``default_gd_lr(style_scale)``.
    The reported loss of each is its BEST evaluated loss (``Result.loss``), and its image the best evaluated one.

Files written into ``out_dir`` (created if missing; its parent must exist), each atomically (temporary file in the
same directory + rename, so a file is either the old one or the complete new one)
    history.csv     optimizer,evaluation,seconds,loss,content,style,tv: one row per evaluation per optimizer
    loss.png        best loss so far (and each evaluation's loss, faint) against evaluations and against seconds,
                    log scale, one line per optimizer (y from 0.8 x the lowest loss to 5 x the highest first
                    loss: line-search trials and Adam's thrashing above that are cut off)
    images.png      per optimizer, the best image so far at each checkpoint evaluation and the final (best) one
    summary.md      the tables: final loss of each, evaluations/seconds each needs to reach the others' final losses
                    and to come within 1 % of the best of all, and the settings (problem, budget, seed, optimizers,
                    machine)
    summary.json    the same numbers ("never" is null)
    final_<label>.png  the final (best) image of each optimizer
The plots need matplotlib (``pip install 'nst-onnx[plots]'``); without it the CSV, summaries and final images are
still written and ``summary["notes"]`` says how to install it. Files of an earlier comparison in the same directory
that this one does not write (e.g. another optimizer's final image) are left alone.

Repeatability
    With the content or style image as start, or with noise and a ``seed``, two runs give the same evaluation
    counts and the same losses bit for bit: ONNX Runtime on the CPU returns identical results for identical inputs
    (the thread count being equal), the losses run in NumPy with one BLAS thread, and the budgets are exact. Without
    a seed a noise start draws one, and ``summary["seed"]`` records it so that the run can be repeated.

Ctrl-C, SIGTERM, SIGHUP
    An interrupted optimizer is left out (its partial run would not be comparable); the optimizers finished before it
    are written as usual and ``summary["interrupted"]`` names it. The CLI then exits with status 128 + the signal's
    number (130 for Ctrl-C, 143 for SIGTERM).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from .. import api
from ..errors import NSTError
from ..network import model as _model
from ..outputs import recipe
from ..outputs.files import same_file, save_image, write_bytes
from ..process import interrupts
from ..process.threads import single_threaded_blas
from ..schedule import check_memory, prepare, scale_jobs
from ..spec.blend import as_list
from ..spec.spec import LBFGS_HISTORY, Spec
from .plots import images_png, loss_png, matplotlib_or_none
from .report import PROBLEM_OPTIONS, history_csv, json_safe, machine, summarise, summary_md
from .runs import marks, plan_runs, run_all

__all__ = ["compare", "DEFAULT_CHECKPOINTS", "PLOTS_HINT", "FILES"]

#: Evaluations at which images.png shows each optimizer's best image so far (besides its final one).
DEFAULT_CHECKPOINTS = (10, 50)
#: Files a complete comparison writes (besides final_<label>.png).
FILES = ("history.csv", "loss.png", "images.png", "summary.md", "summary.json")
PLOTS_HINT = "pip install 'nst-onnx[plots]'"


def _check_out_dir(out_dir) -> str:
    """``out_dir`` as a str after checking it can be used (NSTError otherwise); nothing is created yet."""
    name = os.fspath(out_dir)
    if name == "":
        raise NSTError("the output directory is empty; give e.g. -o out/compare")
    if os.path.exists(name):
        if not os.path.isdir(name):
            raise NSTError(f"{name}: exists and is not a directory")
        if not os.access(name, os.W_OK | os.X_OK):
            raise NSTError(f"{name}: directory is not writable")
        return name
    parent = os.path.dirname(os.path.abspath(name))
    if not os.path.isdir(parent):
        raise NSTError(f"{name}: parent directory {parent} does not exist (only the last directory is created)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NSTError(f"{name}: cannot create it, {parent} is not writable")
    return name


def _recipe(job: Spec, run: dict, weights) -> dict:
    """The recipe of a run's final picture: the compared problem with the run's optimizer (plain Adam, which
    ``stylize`` does not have, keeps the problem's Spec and says so in the note)."""
    kind, settings = run["kind"], run["settings"]
    if kind == "adam-lr":
        return recipe.recipe(job, weights, note=f"nst compare: plain Adam at lr {settings['lr']:g}, projected onto "
                                                 f"the pixel range; the spec is the compared problem's")
    job = dataclasses.replace(job, optimizer=kind, lr=settings.get("lr"), history=settings.get("history"))
    return recipe.recipe(job, weights, note=f"nst compare: the {kind} run")


def _write_files(directory: str, done: list, summary: dict, marks: list, budget: int, inputs: list, notes: list,
                 t_start: float, job: Spec) -> None:
    """Write history.csv, the plots (with matplotlib), the final images and summary.md / .json into ``directory``,
    each file atomically; fills summary's ``plots``, ``files``, ``notes`` and ``total_seconds``."""
    os.makedirs(directory, exist_ok=True)
    files = []

    def write(name: str, data: bytes) -> None:
        write_bytes(os.path.join(directory, name), data)
        files.append(name)

    write("history.csv", history_csv(done))
    weights = recipe.weights_sha256(job)
    mpl = matplotlib_or_none()
    summary["plots"] = mpl is not None
    if mpl is None:
        notes.append(f"matplotlib is not installed, so loss.png and images.png were not written; install it with: "
                     f"{PLOTS_HINT}")
    else:
        write("loss.png", loss_png(done, budget, summary["best"]["loss"], mpl))
        if any(r["final"] is not None for r in done):
            shown = [r for r in done if r["final"] is not None]
            write("images.png", images_png(shown, marks, mpl))
    for run in done:
        if run["final"] is not None:
            name = f"final_{run['label']}.png"
            save_image(os.path.join(directory, name), run["final"], forbid=inputs,
                       text=_recipe(job, run, weights))
            files.append(name)
    for run in done:
        if run["result"].status == "nonfinite":
            notes.append(f"{run['label']} diverged ({run['result'].message}); its rows end at the non-finite "
                         f"evaluation")
    summary.update(files=files + ["summary.md", "summary.json"], notes=notes,
                   total_seconds=time.perf_counter() - t_start)
    write("summary.md", summary_md(summary).encode())
    write("summary.json", (json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n").encode())


def kept_pixel_bytes(n_runs: int, n_marks: int) -> float:
    """Bytes per output pixel a comparison keeps beside the optimisation under way: every run's best point
    (float64 RGB, 24 B), its checkpoint and final images (uint8 RGB, 3 B each) and their copies in images.png, plus
    the running one's copy of its best point (24 B)."""
    return n_runs * (24 + 2 * 3 * (n_marks + 1)) + 24


def compare(content, style, out_dir, *, optimizers: Optional[Sequence[str]] = None, iterations: int = 200,
            seed: Optional[int] = None, lbfgs_history: int = LBFGS_HISTORY,
            adam_lrs: Sequence[float] = (), gd_lr: Optional[float] = None,
            checkpoints: Sequence[int] = DEFAULT_CHECKPOINTS, style_scale: float = 1.0,
            progress: Optional[Callable[[str], None]] = None, **problem_options) -> dict:
    """Run several optimizers on one style-transfer problem and write the comparison into ``out_dir``.

    Parameters
    ----------
    content, style : path or PIL image
        The content photo and the style painting (``style`` may be a list of them, blended by ``style_blend``).
    out_dir : path
        Directory for the files (see the module docstring); created if missing, its parent must exist.
    optimizers : sequence of str or comma-separated str, optional
        Entries of ``KINDS``, in the order to run them; default ``DEFAULT_OPTIMIZERS`` plus "adam-lr" when
        ``adam_lrs`` is given.
    iterations : int
        The budget of every optimizer, in objective evaluations (>= 1).
    seed : int, optional
        Seed of the noise start (``init="noise"``); drawn and recorded when None.
    lbfgs_history : int
        L-BFGS memory (correction pairs).
    adam_lrs : sequence of float
        Learning rates of the plain, projected Adam runs ("adam-lr"), normalised pixel units per step.
    gd_lr : float, optional
        Gradient descent's step (normalised pixel units per unit of gradient); default ``default_gd_lr(style_scale)``.
    checkpoints : sequence of int
        Evaluations at which images.png shows the best image so far (those >= the budget are dropped: the final
        image is always shown).
    style_scale : float
        Multiplies the preset's style weights, the same for every optimizer (default 1: CS231n's exact objective).
    progress : callable, optional
        ``progress(line)`` receives one line of text as each optimizer starts and ends (e.g. print to stderr).
    **problem_options
        ``preset``, ``size``, ``style_size``, ``content_layer``, ``content_weight``, ``style_layers``,
        ``style_weights``, ``tv_weight``, ``init``, ``device``, ``model``, ``original_colors``, ``style_blend``,
        ``pooling``: as for ``api.stylize``.

    Returns
    -------
    dict
        What summary.json holds: ``budget``, ``seed``, ``problem`` (the options, output height/width, start loss),
        ``optimizers`` ({label: kind, settings, final_loss, parts, best_evaluation, evaluations, seconds, status,
        message}), ``best`` (optimizer, loss, within_1pct threshold), ``to_reach`` ({a: {b: {evaluations, seconds}}}:
        what a needs to reach b's final loss, None = never), ``within_1pct`` ({a: {evaluations, seconds}}),
        ``machine``, ``files`` (written, in order), ``plots`` (False without matplotlib), ``notes``,
        ``interrupted`` (label or None), ``out_dir``; plus ``results``
        ({label: optim.Result}, each with its full history), which summary.json leaves out. Losses are in the
        objective's units (unitless weighted sums); seconds are wall-clock.

    Raises
    ------
    NSTError
        A bad option, image, model or output directory (one line; nothing is written).
    """
    say = progress or (lambda line: None)
    job, images = _job(content, style, iterations, seed, lbfgs_history, style_scale, problem_options)
    budget = job.iterations
    checks = marks(checkpoints, budget)
    runs = plan_runs(optimizers, adam_lrs, gd_lr, job.history, budget, job.style_scale)
    directory = _check_out_dir(out_dir)
    inputs = [p for p in [content] + as_list(style) if isinstance(p, (str, bytes, os.PathLike))]
    _check_not_inputs(directory, runs, inputs)

    seed_drawn = job.init == "noise" and seed is None  # a drawn seed is recorded, so the run can be repeated
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    host = dict(machine(), providers=_model.providers(job.device))
    t_start = time.perf_counter()
    content_img, style_imgs = api.open_inputs(job, images.get("content"), images.get("styles"))
    check_memory(job, content_img, style_imgs, kept_pixel_bytes=kept_pixel_bytes(len(runs), len(checks)))
    problem = prepare(scale_jobs(job)[0], content_img, style_imgs)
    with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        start_loss = float(problem.objective(problem.x0)[0])  # warm-up: not counted, not timed
        h, w = problem.x0.shape[2:]
        say(f"{h}x{w} px, start loss {start_loss:.6g}, {len(runs)} optimizers x {budget} evaluations: "
            + ", ".join(r["label"] for r in runs))
        done, interrupted = run_all(runs, problem, budget, checks, say)

    notes = []
    if interrupted is not None:
        left = [r["label"] for r in runs[len(done):]]
        notes.append(f"{interrupts.stopped_by()} during {interrupted}: {', '.join(left)} left out of this comparison")
    summary = summarise(done, problem, job, content, style, budget, job.seed, seed_drawn, checks, start_loss)
    summary.update(started=started, machine=host, interrupted=interrupted, out_dir=directory)
    if not done:
        summary.update(files=[], notes=notes + ["nothing finished, nothing written"], results={}, plots=False,
                       total_seconds=time.perf_counter() - t_start)
        return summary
    _write_files(directory, done, summary, checks, budget, inputs, notes, t_start, job)
    summary["results"] = {run["label"]: run["result"] for run in done}
    return summary


def _job(content, style, iterations, seed, lbfgs_history, style_scale, problem_options: dict):
    """The compared problem as a resolved single-scale Spec (its optimizer lbfgs), and the images given as PIL;
    NSTError for an option that does not apply or is unknown."""
    for key in ("optimizer", "lr", "history", "callback"):
        if problem_options.get(key) is not None:
            hint = {"optimizer": "optimizers", "lr": "adam_lrs / gd_lr", "history": "lbfgs_history",
                    "callback": "progress"}[key]
            raise NSTError(f"compare: option {key!r} does not apply; use {hint}")
    unknown = sorted(k for k, v in problem_options.items() if k not in PROBLEM_OPTIONS and v is not None)
    if unknown:
        raise NSTError(f"compare: unknown option {unknown[0]!r}")
    options = {k: v for k, v in problem_options.items() if v is not None}
    return api.job_of("stylize", content, style, optimizer="lbfgs", iterations=iterations, seed=seed,
                      history=lbfgs_history, style_scale=style_scale, scales=1, **options)


def _check_not_inputs(directory: str, runs: list, inputs: list) -> None:
    for name in list(FILES) + [f"final_{r['label']}.png" for r in runs]:
        for inp in inputs:
            if same_file(os.path.join(directory, name), inp):
                raise NSTError(f"{os.path.join(directory, name)}: the comparison would overwrite the input image")
