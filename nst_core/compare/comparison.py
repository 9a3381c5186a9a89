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
import io
import json
import math
import numbers
import os
import platform
import time
from typing import Callable, Optional, Sequence

import numpy as np
import scipy

from ..network import model as _model
from ..spec import blend
from ..process import interrupts
from .. import optim
from .. import api
from ..schedule import optimise, prepare, scale_jobs
from ..schedule.problem import ADAM_CLAMP, ADAM_DECAY_FACTOR, adam_steps
from ..spec.spec import ADAM_LR, LBFGS_HISTORY, Spec
from ..errors import NSTError
from ..inputs.images import deprocess
from ..outputs.files import save_image, write_bytes
from ..process.threads import single_threaded_blas

__all__ = ["compare", "table", "default_gd_lr", "KINDS", "DEFAULT_OPTIMIZERS", "DEFAULT_CHECKPOINTS", "GD_LR",
           "PLOTS_HINT", "FILES"]

#: The optimizer kinds ``optimizers`` may name ("adam-lr" stands for one plain-Adam run per rate of ``adam_lrs``).
KINDS = ("lbfgs", "lbfgsb", "adam", "adam-lr", "gd")
#: Optimizers compared unless ``optimizers`` is given ("adam-lr" is added when ``adam_lrs`` is not empty).
DEFAULT_OPTIMIZERS = ("lbfgs", "adam", "gd")
#: Evaluations at which images.png shows each optimizer's best image so far (besides its final one).
DEFAULT_CHECKPOINTS = (10, 50)
#: Gradient descent's step at style scale 1 (normalised pixel units per unit of gradient). Measured on starry_night
#: at 192 px, 300 evaluations from the content image: with steps 1e-3 / 2e-3 / 3e-3 / 5e-3 the loss went 56110 ->
#: 10942 / 9787 / 9260 / 8720, decreasing at every step for 1e-3 and 2e-3, rising at 19 and 100 of the steps for 3e-3
#: and 5e-3. 2e-3 is the largest of these that descends steadily.
GD_LR = 2e-3
#: Files a complete comparison writes (besides final_<label>.png).
FILES = ("history.csv", "loss.png", "images.png", "summary.md", "summary.json")
PLOTS_HINT = "pip install 'nst-onnx[plots]'"
_CSV_COLUMNS = ("optimizer", "evaluation", "seconds", "loss", "content", "style", "tv")
_PROBLEM_OPTIONS = ("preset", "size", "style_size", "content_layer", "content_weight", "style_layers",
                    "style_weights", "tv_weight", "init", "device", "model", "original_colors", "style_blend",
                    "pooling")


def default_gd_lr(style_scale: float) -> float:
    """Gradient descent's default step for a style scale (units: normalised pixels per unit of gradient).

    ``GD_LR`` (2e-3) up to style scale 1; above, ``GD_LR * style_scale ** -0.8``, the power law through the two
    measured points: 2e-3 at scale 1 and ``spec.GD_LR`` = 5e-5 at scale 100 (a larger style weight makes the
    gradient larger, so the step must shrink). Give ``gd_lr`` to choose another step."""
    return GD_LR * max(float(style_scale), 1.0) ** -0.8


def _label_lr(lr: float) -> str:
    return f"adam-lr={lr:g}"


def _positive_rate(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise NSTError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def _plan(optimizers, adam_lrs, gd_lr, lbfgs_history: int, budget: int, style_scale: float) -> list:
    """The runs, in order: ``[{"label", "kind", "settings"}]`` (settings: JSON-able, what the run uses)."""
    adam_lrs = tuple(_positive_rate(v, "Adam learning rate") for v in (adam_lrs or ()))
    if len(set(adam_lrs)) != len(adam_lrs):
        raise NSTError(f"an Adam learning rate is given twice: {', '.join(f'{v:g}' for v in adam_lrs)}")
    if optimizers is None:
        optimizers = DEFAULT_OPTIMIZERS + (("adam-lr",) if adam_lrs else ())
    elif isinstance(optimizers, str):
        optimizers = tuple(t.strip() for t in optimizers.split(",") if t.strip())
    optimizers = tuple(optimizers)
    if not optimizers:
        raise NSTError("no optimizer to compare: name at least one of " + ", ".join(KINDS))
    for name in optimizers:
        if name not in KINDS:
            raise NSTError(f"unknown optimizer {name!r} (choose from {', '.join(KINDS)})")
        if optimizers.count(name) > 1:
            raise NSTError(f"optimizer {name!r} is given twice")
    if "adam-lr" in optimizers and not adam_lrs:
        raise NSTError("optimizer adam-lr needs at least one learning rate (--adam-lr LR)")
    if adam_lrs and "adam-lr" not in optimizers:
        raise NSTError("Adam learning rates are given but adam-lr is not among the optimizers")
    gd_given = gd_lr is not None
    gd_lr = default_gd_lr(style_scale) if gd_lr is None else _positive_rate(gd_lr, "gradient-descent step")

    pixels = "pixel range [0, 1] (normalised bounds)"
    runs = []
    for name in optimizers:
        if name == "lbfgs":
            runs.append({"label": "lbfgs", "kind": "lbfgs", "settings": {
                "method": "L-BFGS (NumPy two-loop, Armijo backtracking, projected, float32 pairs)",
                "history": lbfgs_history,
                "bounds": pixels}})
        elif name == "lbfgsb":
            runs.append({"label": "lbfgsb", "kind": "lbfgsb", "settings": {
                "method": "SciPy L-BFGS-B", "history": lbfgs_history, "maxls": 20, "bounds": pixels}})
        elif name == "adam":
            runs.append({"label": "adam", "kind": "adam", "settings": {
                "method": "Adam, CS231n recipe", "lr": ADAM_LR, "decay_at": adam_steps(budget)[0],
                "decayed_lr": ADAM_LR / ADAM_DECAY_FACTOR, "clamp": list(ADAM_CLAMP),
                "clamp_until": adam_steps(budget)[1],
                "betas": [0.9, 0.999], "eps": 1e-8}})
        elif name == "adam-lr":
            for lr in adam_lrs:
                runs.append({"label": _label_lr(lr), "kind": "adam-lr", "settings": {
                    "method": "Adam, fixed rate, projected", "lr": lr, "betas": [0.9, 0.999], "eps": 1e-8,
                    "bounds": pixels}})
        else:
            runs.append({"label": "gd", "kind": "gd", "settings": {
                "method": "projected gradient descent", "lr": gd_lr,
                "lr_source": "given" if gd_given else f"default for style scale {style_scale:g}", "bounds": pixels}})
    return runs


def _optimise(run: dict, problem, budget: int, callback) -> optim.Result:
    kind, s = run["kind"], run["settings"]
    x0 = problem.x0
    if kind in ("lbfgs", "lbfgsb", "adam", "gd"):  # exactly as stylize runs them
        job = dataclasses.replace(problem.job, optimizer=kind, iterations=budget, history=s.get("history"),
                                  lr=s.get("lr"))
        return optimise(dataclasses.replace(problem, job=job), callback)
    return optim.adam(problem.objective, x0, budget, lr=s["lr"], decay_at=None, clamp=problem.bounds,
                      clamp_until=None, callback=callback)


# ---------------------------------------------------------------------------------------------------------------
# Files


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


def _same_file(a: str, b) -> bool:
    try:
        b = os.fspath(b)
    except TypeError:
        return False
    try:
        return os.path.realpath(a) == os.path.realpath(b) or os.path.samefile(a, b)
    except OSError:
        return False


def _csv(done: list) -> bytes:
    lines = [",".join(_CSV_COLUMNS)]
    for run in done:
        for rec in run["result"].history:
            row = [run["label"], str(rec.evaluation), repr(float(rec.seconds)), repr(float(rec.loss))]
            row += [repr(float(rec.parts.get(k, math.nan))) for k in _CSV_COLUMNS[4:]]
            lines.append(",".join(row))
    return ("\n".join(lines) + "\n").encode()


def _json_safe(value):
    """Non-finite floats -> None (JSON has no NaN / inf); tuples -> lists; recursively."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _matplotlib():
    """``(Figure, FigureCanvasAgg)`` or None when matplotlib is not installed (never touches pyplot's state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def _png(fig, canvas_type) -> bytes:
    canvas_type(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _loss_png(done: list, budget: int, best: Optional[float], mpl) -> bytes:
    Figure, Canvas = mpl
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    lowest, first = math.inf, 0.0
    for i, run in enumerate(done):
        cols = run["result"].history_columns()
        loss = cols["loss"]
        if loss.size == 0:
            continue
        finite = np.where(np.isfinite(loss), loss, np.nan)
        so_far = np.fmin.accumulate(finite)
        if np.isfinite(so_far).any():
            lowest = min(lowest, float(np.nanmin(so_far)))
            first = max(first, float(so_far[np.isfinite(so_far)][0]))
        colour = f"C{i}"
        for ax, x in ((axes[0], cols["evaluation"]), (axes[1], cols["seconds"])):
            ax.plot(x, finite, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(x, so_far, color=colour, linewidth=1.8, label=f"{run['label']} ({run['result'].loss:.5g})")
    for ax, xlabel in ((axes[0], "objective evaluations"), (axes[1], "seconds")):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("total loss")
        ax.grid(True, which="both", alpha=0.3)
        if best is not None:
            ax.axhline(1.01 * best, color="grey", linestyle=":", linewidth=1)
        if 0 < lowest < first:  # the first best-so-far values up to the best: line-search / Adam spikes are cut
            ax.set_ylim(0.8 * lowest, 5.0 * first)
    axes[0].set_xlim(0, budget)
    axes[0].legend(title="best loss so far (final)", fontsize="small")
    fig.suptitle(f"Loss per evaluation (faint) and best so far (solid); dotted: 1% above the best final loss; "
                 f"budget {budget} evaluations", fontsize="medium")
    return _png(fig, Canvas)


def _images_png(done: list, checkpoints: Sequence[int], mpl) -> bytes:
    Figure, Canvas = mpl
    columns = [(k, f"best by evaluation {k}") for k in checkpoints] + [(None, "final (best)")]
    h, w = done[0]["final"].shape[:2]
    cell = 2.8
    fig = Figure(figsize=(cell * len(columns), cell * h / w * len(done) + 0.5 * len(done) + 0.3),
                 layout="constrained")
    axes = np.asarray(fig.subplots(len(done), len(columns), squeeze=False))
    for r, run in enumerate(done):
        for c, (k, title) in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if k is None:
                image, loss, at = run["final"], run["result"].loss, run["result"].best_evaluation
                text = f"{title}: {loss:.5g}\n(evaluation {at} of {run['result'].n_evals})"
            elif k in run["checkpoints"]:
                image, loss = run["checkpoints"][k]
                text = f"{title}: {loss:.5g}"
            else:
                image, text = None, f"{title}: not reached"
            if image is not None:
                ax.imshow(image)
            ax.set_title(text, fontsize="small")
            if c == 0:
                ax.set_ylabel(run["label"], fontsize="large")
    return _png(fig, Canvas)


def _fmt_reach(entry) -> str:
    if entry is None:
        return "—"
    if entry["evaluations"] is None:
        return "never"
    seconds = entry["seconds"]
    return f"{entry['evaluations']} ({seconds:.2f} s)" if seconds < 10 else f"{entry['evaluations']} ({seconds:.1f} s)"


def table(summary: dict) -> list:
    """The main table of a ``compare`` summary as Markdown lines: per optimizer its final (best) loss and parts,
    the evaluation that reached it, evaluations spent, seconds, status, and evaluations (seconds) to come within
    1 % of the best final loss of all."""
    lines = ["| optimizer | final (best) loss | content | style | tv | best at evaluation | evaluations "
             "| seconds | status | to within 1% of the best |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, o in summary["optimizers"].items():
        parts = [f"{o['parts'][k]:.4g}" if o["parts"].get(k) is not None else "—" for k in ("content", "style", "tv")]
        loss = "—" if o["final_loss"] is None or not math.isfinite(o["final_loss"]) else f"{o['final_loss']:.6g}"
        lines.append(f"| {label} | {loss} | {' | '.join(parts)} | {o['best_evaluation'] or '—'} | "
                     f"{o['evaluations']} | {o['seconds']:.1f} | {o['status']} | "
                     f"{_fmt_reach(summary['within_1pct'].get(label))} |")
    return lines


def _artist(p: dict) -> str:
    """The artist controls of the problem, for the settings line ("" when all are at their defaults)."""
    parts = []
    if p.get("original_colors", "off") != "off":
        parts.append(f"original colors {p['original_colors']}")
    if isinstance(p.get("style"), list):
        blend_ = p.get("style_blend")
        parts.append("style blend " + (",".join(f"{w:g}" for w in blend_) if blend_ else "equal"))
    if p.get("pooling", "max") != "max":
        parts.append(f"pooling {p['pooling']}")
    return "".join(f"; {t}" for t in parts)


def _summary_md(summary: dict) -> str:
    p, opts = summary["problem"], summary["optimizers"]
    labels = list(opts)
    best = summary["best"]
    lines = ["# Optimizer comparison", ""]
    style = " + ".join(os.path.basename(s) for s in blend.as_list(p["style"]))
    lines.append(f"`nst compare`: {os.path.basename(p['content'])} in the style of {style}, "
                 f"{p['height']}x{p['width']} px, preset {p['preset'] or 'none'}, style scale {p['style_scale']:g}, "
                 f"init {p['init']}. Every optimizer minimises the same objective from the same start image "
                 f"(loss {p['start_loss']:.6g}) with the same budget of {summary['budget']} objective evaluations "
                 f"(forward + backward passes; an L-BFGS iteration can take several).")
    lines.append("")
    if best["loss"] is not None:
        lines.append(f"Best final loss: {best['loss']:.6g} ({best['optimizer']}); within 1% means a loss <= "
                     f"{best['within_1pct']:.6g}.")
        lines.append("")
    lines += table(summary)
    lines += ["", "## Evaluations (seconds) to reach another optimizer's final loss", "",
              "Row: the optimizer that runs; column: whose final loss it must reach; \"never\": not within the "
              "budget.", ""]
    header = [f"{b} ({opts[b]['final_loss']:.5g})" if opts[b]["final_loss"] is not None else b for b in labels]
    lines.append("| reaches → | " + " | ".join(header) + " |")
    lines.append("|---|" + "---|" * len(labels))
    for a in labels:
        cells = [_fmt_reach(summary["to_reach"][a].get(b)) if a != b else "—" for b in labels]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", "## Settings", ""]
    weights = ",".join(f"{w:g}" for w in p["style_weights"])
    lines.append(f"- problem: content {p['content']}, style {p['style']}; preset {p['preset'] or 'none'}; size "
                 f"{p['size']} (output {p['height']}x{p['width']}), style size {p['style_size']}; content layer "
                 f"{p['content_layer']} weight {p['content_weight']:g}; style layers "
                 f"{','.join(map(str, p['style_layers']))} weights {weights} x style scale {p['style_scale']:g}; "
                 f"TV weight {p['tv_weight']:g}; init {p['init']}; device {p['device']}; model {p['model']}"
                 + _artist(p))
    if p["init"] == "noise":
        seed = f"seed {summary['seed']}" + (" (drawn, not given)" if summary.get("seed_drawn") else "")
    else:
        seed = f"no seed needed (init {p['init']})" if summary["seed"] is None else \
            f"seed {summary['seed']} (not used by init {p['init']})"
    lines.append(f"- budget: {summary['budget']} objective evaluations per optimizer; {seed}")
    lines.append(f"- checkpoints (images.png): {', '.join(map(str, summary['checkpoints'])) or 'none'} and the "
                 f"final image")
    for label in labels:
        s = opts[label]["settings"]
        text = "; ".join(f"{k} {v}" for k, v in s.items())
        lines.append(f"- {label}: {text}")
    m = summary["machine"]
    lines.append(f"- machine: {m['cpu']}, {m['cpus']} CPUs, load average {m['load_average']} at the start; "
                 f"{m['platform']}; Python {m['python']}, numpy {m['numpy']}, scipy {m['scipy']}, onnxruntime "
                 f"{m['onnxruntime']} ({', '.join(m['providers'])})")
    lines.append(f"- started {summary['started']}, {summary['total_seconds']:.1f} s in all")
    lines.append(f"- files: {', '.join(summary['files'])}")
    if summary["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Summary numbers


def _first_reach(result: optim.Result, target: float):
    """``{"evaluations", "seconds"}`` of the first evaluation of ``result`` with loss <= target (None: never).
    The failing last evaluation of a "nonfinite" run does not count (its point is never kept, see ``Result``)."""
    history = result.history[:-1] if result.status == "nonfinite" else result.history
    for rec in history:
        if math.isfinite(rec.loss) and rec.loss <= target:
            return {"evaluations": rec.evaluation, "seconds": rec.seconds}
    return {"evaluations": None, "seconds": None}


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        load = None
    ort_version = _model.ort_version()
    return {"cpu": cpu, "cpus": os.cpu_count(), "load_average": load, "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "onnxruntime": ort_version}


def _summarise(done: list, problem, job: Spec, content, style, budget: int, seed, seed_drawn: bool,
               checkpoints, start_loss: float) -> dict:
    optimizers = {}
    for run in done:
        res = run["result"]
        optimizers[run["label"]] = {
            "kind": run["kind"], "settings": run["settings"], "final_loss": res.loss,
            "parts": dict(res.parts), "best_evaluation": res.best_evaluation, "evaluations": res.n_evals,
            "seconds": res.history[-1].seconds if res.history else 0.0, "status": res.status,
            "message": res.message}
    finite = {k: v["final_loss"] for k, v in optimizers.items() if math.isfinite(v["final_loss"])}
    best_label = min(finite, key=finite.get) if finite else None
    best_loss = finite[best_label] if finite else None
    to_reach = {}
    for run in done:
        row = {}
        for other in done:
            if other is run:
                continue
            target = other["result"].loss
            row[other["label"]] = (_first_reach(run["result"], target) if math.isfinite(target)
                                   else {"evaluations": None, "seconds": None})
        to_reach[run["label"]] = row
    within = {}
    if best_loss is not None:
        within = {run["label"]: _first_reach(run["result"], best_loss + 0.01 * abs(best_loss))
                  for run in done}
    h, w = problem.x0.shape[2:]
    problem_info = {k: getattr(job, k) for k in _PROBLEM_OPTIONS if getattr(job, k) is not None}
    name = lambda s: os.fspath(s) if isinstance(s, (str, os.PathLike)) else "<image>"  # noqa: E731
    styles = blend.as_list(style)
    problem_info.update(preset=job.preset, content=name(content),
                        style=name(styles[0]) if len(styles) == 1 else [name(s) for s in styles],
                        height=int(h), width=int(w), style_scale=job.style_scale, start_loss=start_loss,
                        model=os.fspath(_model.find_model(job.model)))
    return {"budget": budget, "seed": seed, "seed_drawn": seed_drawn, "checkpoints": list(checkpoints),
            "problem": problem_info, "optimizers": optimizers,
            "best": {"optimizer": best_label, "loss": best_loss,
                     "within_1pct": None if best_loss is None else best_loss + 0.01 * abs(best_loss)},
            "to_reach": to_reach, "within_1pct": within}


# ---------------------------------------------------------------------------------------------------------------
# The entry point


def _marks(checkpoints, budget: int) -> list:
    """The checkpoint evaluations images.png shows, sorted and below the budget (the final image is always shown);
    NSTError for anything but evaluation numbers >= 1."""
    if isinstance(checkpoints, (str, bytes)) or not hasattr(checkpoints, "__iter__"):
        raise NSTError(f"checkpoints must be a sequence of evaluation numbers, got {checkpoints!r}")
    marks = []
    for k in checkpoints:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise NSTError(f"a checkpoint must be an evaluation number >= 1, got {k!r}")
        if k < budget and int(k) not in marks:
            marks.append(int(k))
    marks.sort()
    return marks


def _run_all(runs: list, problem, budget: int, marks: list, say) -> tuple[list, Optional[str]]:
    """Run each planned optimizer on ``problem`` in turn (one BLAS thread is the caller's). Returns (done: the runs
    that finished, each with its result, checkpoint images and final image; interrupted: the label of the run a stop
    signal ended, or None). A stopped run is left out: a partial run would not be comparable."""
    done, interrupted = [], None
    for i, run in enumerate(runs):
        try:
            state = {"best": math.inf, "x": None, "checkpoints": {}}

            def callback(record, x, state=state):
                if math.isfinite(record.loss) and record.loss < state["best"]:
                    state["best"] = record.loss
                    state["x"] = np.array(x, copy=True)
                if record.evaluation in marks and state["x"] is not None:
                    state["checkpoints"][record.evaluation] = (problem.finish(state["x"]), state["best"])

            result = _optimise(run, problem, budget, callback)
            if result.status == "interrupted":
                interrupted = run["label"]
                say(f"[{i + 1}/{len(runs)}] {run['label']}: interrupted after {result.n_evals} evaluations; "
                    f"left out")
                break
            run = dict(run, result=result, checkpoints=state["checkpoints"],
                       final=problem.finish(result.x) if result.best_evaluation is not None else None)
            done.append(run)
            say(f"[{i + 1}/{len(runs)}] {run['label']}: loss {result.loss:.6g} (best at evaluation "
                f"{result.best_evaluation} of {result.n_evals}), {result.history[-1].seconds:.1f} s"
                + ("" if result.status == "budget" else f", {result.status}: {result.message}"))
        except KeyboardInterrupt:  # a stop signal between two optimizers, outside their own handling
            interrupted = runs[min(len(done), len(runs) - 1)]["label"]
            break
    return done, interrupted


def _write_files(directory: str, done: list, summary: dict, marks: list, budget: int, inputs: list, notes: list,
                 t_start: float) -> None:
    """Write history.csv, the plots (with matplotlib), the final images and summary.md / .json into ``directory``,
    each file atomically; fills summary's ``plots``, ``files``, ``notes`` and ``total_seconds``."""
    os.makedirs(directory, exist_ok=True)
    files = []

    def write(name: str, data: bytes) -> None:
        write_bytes(os.path.join(directory, name), data)
        files.append(name)

    write("history.csv", _csv(done))
    mpl = _matplotlib()
    summary["plots"] = mpl is not None
    if mpl is None:
        notes.append(f"matplotlib is not installed, so loss.png and images.png were not written; install it with: "
                     f"{PLOTS_HINT}")
    else:
        write("loss.png", _loss_png(done, budget, summary["best"]["loss"], mpl))
        if any(r["final"] is not None for r in done):
            shown = [r for r in done if r["final"] is not None]
            write("images.png", _images_png(shown, marks, mpl))
    for run in done:
        if run["final"] is not None:
            name = f"final_{run['label']}.png"
            save_image(os.path.join(directory, name), run["final"], forbid=inputs)
            files.append(name)
    for run in done:
        if run["result"].status == "nonfinite":
            notes.append(f"{run['label']} diverged ({run['result'].message}); its rows end at the non-finite "
                         f"evaluation")
    summary.update(files=files + ["summary.md", "summary.json"], notes=notes,
                   total_seconds=time.perf_counter() - t_start)
    write("summary.md", _summary_md(summary).encode())
    write("summary.json", (json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n").encode())


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
    for key in ("optimizer", "lr", "history", "callback"):
        if problem_options.get(key) is not None:
            hint = {"optimizer": "optimizers", "lr": "adam_lrs / gd_lr", "history": "lbfgs_history",
                    "callback": "progress"}[key]
            raise NSTError(f"compare: option {key!r} does not apply; use {hint}")
    unknown = sorted(k for k, v in problem_options.items() if k not in _PROBLEM_OPTIONS and v is not None)
    if unknown:
        raise NSTError(f"compare: unknown option {unknown[0]!r}")
    options = {k: v for k, v in problem_options.items() if v is not None}
    job, images = api.job_of("stylize", content, style, optimizer="lbfgs", iterations=iterations, seed=seed,
                             history=lbfgs_history, style_scale=style_scale, scales=1, **options)
    budget = job.iterations
    marks = _marks(checkpoints, budget)
    runs = _plan(optimizers, adam_lrs, gd_lr, job.history, budget, job.style_scale)
    directory = _check_out_dir(out_dir)
    names = list(FILES) + [f"final_{r['label']}.png" for r in runs]
    inputs = [p for p in [content] + blend.as_list(style) if isinstance(p, (str, bytes, os.PathLike))]
    for name in names:
        for inp in inputs:
            if _same_file(os.path.join(directory, name), inp):
                raise NSTError(f"{os.path.join(directory, name)}: the comparison would overwrite the input image")

    seed, seed_drawn = job.seed, job.init == "noise" and seed is None  # a drawn seed is recorded, to repeat the run
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    machine = dict(_machine(), providers=_model.providers(job.device))
    t_start = time.perf_counter()
    _model.find_model(job.model)
    content_img, style_imgs = api.open_inputs(job, images.get("content"), images.get("styles"))
    problem = prepare(scale_jobs(job)[0], content_img, style_imgs)
    with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        start_loss = float(problem.objective(problem.x0)[0])  # warm-up: not counted, not timed
        h, w = problem.x0.shape[2:]
        say(f"{h}x{w} px, start loss {start_loss:.6g}, {len(runs)} optimizers x {budget} evaluations: "
            + ", ".join(r["label"] for r in runs))
        done, interrupted = _run_all(runs, problem, budget, marks, say)

    notes = []
    if interrupted is not None:
        left = [r["label"] for r in runs[len(done):]]
        notes.append(f"{interrupts.stopped_by()} during {interrupted}: {', '.join(left)} left out of this comparison")
    summary = _summarise(done, problem, job, content, style, budget, seed, seed_drawn, marks, start_loss)
    summary.update(started=started, machine=machine, interrupted=interrupted, out_dir=directory)
    if not done:
        summary.update(files=[], notes=notes + ["nothing finished, nothing written"], results={}, plots=False,
                       total_seconds=time.perf_counter() - t_start)
        return summary

    _write_files(directory, done, summary, marks, budget, inputs, notes, t_start)
    summary["results"] = {run["label"]: run["result"] for run in done}
    return summary
