"""The runs of a comparison: which optimizers with which settings (``plan_runs``), each run on the shared problem
exactly as ``stylize`` runs it (``optimise_run``), one after the other with their checkpoint images (``run_all``)."""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional

import numpy as np

from .. import optim
from ..errors import NSTError
from ..schedule import optimise
from ..schedule.problem import ADAM_CLAMP, ADAM_DECAY_FACTOR, adam_steps
from ..spec.spec import ADAM_LR

__all__ = ["KINDS", "DEFAULT_OPTIMIZERS", "GD_LR", "default_gd_lr", "plan_runs", "optimise_run", "marks", "run_all"]

#: The optimizer kinds ``optimizers`` may name ("adam-lr" stands for one plain-Adam run per rate of ``adam_lrs``).
KINDS = ("lbfgs", "lbfgsb", "adam", "adam-lr", "gd")
#: Optimizers compared unless ``optimizers`` is given ("adam-lr" is added when ``adam_lrs`` is not empty).
DEFAULT_OPTIMIZERS = ("lbfgs", "adam", "gd")
#: Gradient descent's step at style scale 1 (normalised pixel units per unit of gradient). Measured on starry_night
#: at 192 px, 300 evaluations from the content image: with steps 1e-3 / 2e-3 / 3e-3 / 5e-3 the loss went 56110 ->
#: 10942 / 9787 / 9260 / 8720, decreasing at every step for 1e-3 and 2e-3, rising at 19 and 100 of the steps for 3e-3
#: and 5e-3. 2e-3 is the largest of these that descends steadily.
GD_LR = 2e-3

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


def plan_runs(optimizers, adam_lrs, gd_lr, lbfgs_history: int, budget: int, style_scale: float) -> list:
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


def optimise_run(run: dict, problem, budget: int, callback) -> optim.Result:
    kind, s = run["kind"], run["settings"]
    x0 = problem.x0
    if kind in ("lbfgs", "lbfgsb", "adam", "gd"):  # exactly as stylize runs them
        job = dataclasses.replace(problem.job, optimizer=kind, iterations=budget, history=s.get("history"),
                                  lr=s.get("lr"))
        return optimise(dataclasses.replace(problem, job=job), callback)
    return optim.adam(problem.objective, x0, budget, lr=s["lr"], decay_at=None, clamp=problem.bounds,
                      clamp_until=None, callback=callback)


def marks(checkpoints, budget: int) -> list:
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


def run_all(runs: list, problem, budget: int, marks: list, say) -> tuple[list, Optional[str]]:
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

            result = optimise_run(run, problem, budget, callback)
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
