"""What the optimizers share: the per-evaluation record and the result, the evaluation wrapper that enforces the
budget, keeps the best point and turns Ctrl-C into status "interrupted", and the argument checks (the interface is
described in ``nst_core.optim``)."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import numpy as np

from ..process.threads import single_threaded_blas

#: The possible values of ``Result.status``.
STATUSES = ("budget", "converged", "interrupted", "nonfinite")

Objective = Callable[[np.ndarray], Tuple[float, np.ndarray, Mapping[str, float]]]
Callback = Callable[["Record", np.ndarray], Any]
BoundsLike = Optional[Tuple[Union[float, np.ndarray], Union[float, np.ndarray]]]



@dataclasses.dataclass(frozen=True)
class Record:
    """One objective evaluation.

    Attributes
    ----------
    evaluation : int
        1-based number of the evaluation.
    seconds : float
        Wall-clock seconds (``time.perf_counter``) from the start of the optimisation to the end of this evaluation.
    loss : float
        The total loss (may be NaN/inf for the evaluation that stopped a run with status "nonfinite").
    parts : dict[str, float]
        The loss components returned by the objective.
    """

    evaluation: int
    seconds: float
    loss: float
    parts: Mapping[str, float]

    def as_dict(self) -> dict:
        """The record as one flat dict: evaluation, seconds, loss, then one key per part."""
        out = {"evaluation": self.evaluation, "seconds": self.seconds, "loss": self.loss}
        out.update(self.parts)
        return out


@dataclasses.dataclass
class Result:
    """The outcome of an optimisation.

    Attributes
    ----------
    x : ndarray, float64, shape of x0
        The best evaluated point (lowest finite loss); ``x0`` (projected onto the bounds, for the optimizers that
        have them) when nothing was evaluated or no evaluation was finite.
    loss : float
        Loss at ``x`` (NaN when nothing finite was evaluated).
    parts : dict[str, float]
        Loss components at ``x``.
    n_evals : int
        Completed objective evaluations (== ``len(history)``).
    status : str
        "budget" (all evaluations spent), "converged" (zero gradient / no progress possible), "interrupted"
        (KeyboardInterrupt) or "nonfinite" (NaN/inf loss or gradient).
    message : str
        One human-readable line explaining the status.
    history : list[Record]
        One record per evaluation, in order.
    optimizer : str
        "lbfgs", "lbfgsb", "adam" or "gd".
    info : dict
        Optimizer-specific extras (L-BFGS-B: ``restarts`` and SciPy's ``scipy_messages``; lbfgs: counts of
        iterations, stored / skipped pairs, backtracks and memory resets; adam: ``decay_at``, the 1-based
        evaluation where the recipe's second learning rate starts).
    kept : str
        Which point ``x`` is: "best" (the lowest loss, the rule), or "latest" (the last evaluated point) for Adam's
        recipe stopped by the user before its decay (the loss is highest there by design, and the best is usually
        the start) and gradient descent stopped before any point beat the start.
    """

    x: np.ndarray = dataclasses.field(repr=False)
    loss: float
    parts: dict
    n_evals: int
    status: str
    message: str
    history: list = dataclasses.field(repr=False)
    optimizer: str = ""
    info: dict = dataclasses.field(default_factory=dict)
    kept: str = "best"

    @property
    def evaluation(self) -> Optional[int]:
        """1-based number of the evaluation that produced ``x``: ``best_evaluation``, or the last one when ``kept``
        is "latest"."""
        if self.kept == "latest":
            return self.history[-1].evaluation if self.history else None
        return self.best_evaluation

    @property
    def best_evaluation(self) -> Optional[int]:
        """1-based number of the evaluation that produced ``x`` (None if no finite evaluation)."""
        best = None
        # a "nonfinite" run ends with the evaluation that failed; its loss can be finite with a NaN/inf gradient,
        # and such a point is never kept as x
        records = self.history[:-1] if self.status == "nonfinite" else self.history
        for rec in records:
            if math.isfinite(rec.loss) and (best is None or rec.loss < best.loss):
                best = rec
        return None if best is None else best.evaluation

    def history_columns(self) -> dict:
        """The history as columns: ``{"evaluation": int64[n], "seconds": float64[n], "loss": float64[n],
        <part>: float64[n], ...}``; parts in order of first appearance, NaN where a record lacks a part."""
        names = []
        for rec in self.history:
            for k in rec.parts:
                if k not in names:
                    names.append(k)
        cols = {
            "evaluation": np.array([r.evaluation for r in self.history], dtype=np.int64),
            "seconds": np.array([r.seconds for r in self.history], dtype=np.float64),
            "loss": np.array([r.loss for r in self.history], dtype=np.float64),
        }
        for k in names:
            cols[k] = np.array([r.parts.get(k, np.nan) for r in self.history], dtype=np.float64)
        return cols

    def history_table(self) -> Tuple[list, np.ndarray]:
        """The history as ``(column_names, table)`` with ``table`` float64 [n_evals, n_columns] (e.g. for a CSV)."""
        cols = self.history_columns()
        names = list(cols)
        if not self.history:
            return names, np.zeros((0, len(names)))
        return names, np.column_stack([cols[k].astype(np.float64) for k in names])


# ---------------------------------------------------------------------------------------------------------------
# The shared evaluation wrapper
# ---------------------------------------------------------------------------------------------------------------

class _BudgetExhausted(Exception):
    """Raised by the wrapper when an optimizer asks for more evaluations than the budget allows."""


class _NonFinite(Exception):
    """Raised by the wrapper after an evaluation with a NaN/inf loss or gradient."""


class _Evaluator:
    """Wraps an objective for one optimisation: counts evaluations and enforces the budget, records the history,
    keeps the best finite point, calls the callback, and detects non-finite values.

    Call it with a point (any array with ``size`` elements); it returns ``(loss, grad)`` with ``grad`` float64 of the
    shape of ``x0``. It raises ``_BudgetExhausted`` instead of evaluating beyond the budget and ``_NonFinite`` after a
    non-finite evaluation (which is still recorded and reported to the callback).

    borrow: keep the best point as a reference to the optimizer's own float64 buffer instead of a copy (``x0`` and
    every point evaluated must then be float64 arrays the optimizer owns, and it must call ``release(buf)`` before
    it writes into a buffer it evaluated or passed as ``x0``; the copy is then made only if that buffer holds the
    best point). Our L-BFGS's best point is nearly always its current iterate, so this saves a full-size float64
    vector (24 bytes per pixel) for the whole run.

    keep_latest: also keep a view of the last point evaluated (no copy), for ``latest_result``.
    """

    def __init__(self, objective: Objective, x0: np.ndarray, budget: int, callback: Optional[Callback],
                 keep_grad: bool = False, borrow: bool = False, keep_latest: bool = False):
        if not callable(objective):
            raise TypeError("objective must be callable")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable or None")
        self.objective = objective
        self.fresh_grad = getattr(objective, "fresh_grad", False) is True
        self.callback = callback
        self.shape = x0.shape
        self.size = x0.size
        self.budget = budget
        self.keep_grad = keep_grad
        self.n_calls = 0
        self.history: list = []
        self.borrow = borrow
        self.best_x = x0 if borrow else x0.copy()   # borrowed: the optimizer's buffer (see release)
        self.best_loss = math.nan
        self.best_parts: dict = {}
        self.best_grad: Optional[np.ndarray] = None
        self.keep_latest = keep_latest
        self.latest: Optional[np.ndarray] = None  # keep_latest: a view of the last point evaluated (latest_result)
        self.t0 = time.perf_counter()

    @property
    def remaining(self) -> int:
        return self.budget - self.n_calls

    def __call__(self, x: np.ndarray) -> Tuple[float, np.ndarray]:
        if self.n_calls >= self.budget:
            raise _BudgetExhausted()
        self.n_calls += 1
        xv = np.asarray(x, dtype=np.float64).reshape(self.shape).view()
        xv.flags.writeable = False

        out = self.objective(xv)
        if not isinstance(out, tuple) or len(out) not in (2, 3):
            raise TypeError("objective must return (loss, grad, parts) or (loss, grad)")
        loss = float(out[0])
        # The objective may reuse its output buffers, unless it says it does not (``objective.fresh_grad``, as
        # nst_core.objective's objectives do): then its float64 gradient is taken as it is, not copied.
        grad = (np.asarray if self.fresh_grad else np.array)(out[1], dtype=np.float64)
        if grad.size != self.size:
            raise ValueError(f"objective returned a gradient of shape {grad.shape} for x of shape {self.shape}")
        grad = grad.reshape(self.shape)
        raw_parts = out[2] if len(out) == 3 and out[2] is not None else {}
        parts = {str(k): float(v) for k, v in raw_parts.items()}

        record = Record(len(self.history) + 1, time.perf_counter() - self.t0, loss, parts)
        self.history.append(record)
        if self.keep_latest:
            self.latest = xv

        finite = math.isfinite(loss) and bool(np.isfinite(grad).all())
        if finite and not (loss >= self.best_loss):  # also true while best_loss is NaN (nothing finite yet)
            self.best_x = np.asarray(x).reshape(self.shape) if self.borrow else np.array(xv, dtype=np.float64,
                                                                                            copy=True)
            self.best_loss = loss
            self.best_parts = parts
            if self.keep_grad:
                self.best_grad = grad.copy()

        if self.callback is not None:
            self.callback(record, xv)
        if not finite:
            what = "loss" if not math.isfinite(loss) else "gradient"
            raise _NonFinite(f"non-finite {what} at evaluation {record.evaluation}")
        return loss, grad

    def release(self, buf: np.ndarray) -> None:
        """Borrow mode: ``buf`` is about to be overwritten; copy the best point out of it if it is there."""
        if self.borrow and np.may_share_memory(self.best_x, buf):
            self.best_x = self.best_x.copy()

    def result(self, name: str, status: str, message: str, info: Optional[dict] = None) -> Result:
        return Result(x=self.best_x.copy(), loss=self.best_loss, parts=dict(self.best_parts),
                      n_evals=len(self.history), status=status, message=message, history=list(self.history),
                      optimizer=name, info=dict(info or {}))

    def latest_result(self, name: str, status: str, message: str, info: Optional[dict] = None) -> Result:
        """The Result with the last evaluated point as ``x`` (``kept`` "latest"). Only for an optimizer that leaves
        the buffer it evaluated untouched until its next evaluation (Adam's, which swaps two buffers)."""
        record = self.history[-1]
        return Result(x=np.array(self.latest, dtype=np.float64), loss=record.loss, parts=dict(record.parts),
                      n_evals=len(self.history), status=status, message=message, history=list(self.history),
                      optimizer=name, info=dict(info or {}), kept="latest")


def _run(name: str, objective: Objective, x0: np.ndarray, budget: int, callback: Optional[Callback],
         body: Callable[[_Evaluator, dict], Optional[Tuple[str, str]]], keep_grad: bool = False,
         borrow: bool = False, falls_after: Optional[int] = None) -> Result:
    """Run ``body(evaluator, info)`` and turn every way it can end into a ``Result``.

    ``body`` returns ``("converged", message)`` when it stops on its own before the budget is spent, or None when
    it has spent the budget. It may fill ``info`` with extras for ``Result.info``. ``borrow``: see ``_Evaluator``.
    ``falls_after``: the last evaluation of a phase whose loss may rise (Adam's recipe before its decay; the start
    of gradient descent); a run interrupted while its best point is no later than that keeps its latest point
    instead (``_Evaluator.latest_result``).
    """
    ev = _Evaluator(objective, x0, budget, callback, keep_grad=keep_grad, borrow=borrow,
                    keep_latest=falls_after is not None)
    info: dict = {}
    try:
        ended = body(ev, info)
    except _BudgetExhausted:
        ended = None
    except _NonFinite as exc:
        return ev.result(name, "nonfinite", f"stopped: {exc}; returning the best finite point", info)
    except KeyboardInterrupt:
        done = len(ev.history)
        best = next((r.evaluation for r in ev.history if r.loss == ev.best_loss), None)
        if falls_after is not None and ev.latest is not None and best is not None and best <= falls_after:
            return ev.latest_result(name, "interrupted", f"interrupted by the user after {done} evaluations, before "
                                    f"the loss fell below its best (evaluation {best}); returning the latest point",
                                    info)
        return ev.result(name, "interrupted", f"interrupted by the user after {done} evaluations; returning the best "
                         "point", info)
    if ended is None:
        return ev.result(name, "budget", f"evaluation budget of {budget} spent", info)
    status, message = ended
    return ev.result(name, status, message, info)


# ---------------------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------------------

def _as_x0(x0) -> np.ndarray:
    x = np.array(x0, dtype=np.float64, copy=True)
    if x.size == 0:
        raise ValueError("x0 is empty")
    if not np.isfinite(x).all():
        raise ValueError("x0 contains NaN or inf")
    return x


def _as_budget(budget) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise TypeError(f"budget must be an int (objective evaluations), got {budget!r}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    return int(budget)


def _as_bounds(bounds: BoundsLike, shape: Tuple[int, ...], what: str = "bounds"):
    """``(lo, hi)`` broadcast to float64 arrays of ``shape`` (None stays None). Infinite entries mean 'no bound'."""
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"{what} must be a pair (lo, hi) of scalars or arrays broadcastable to x")
    try:
        lo = np.broadcast_to(np.asarray(bounds[0], dtype=np.float64), shape)
        hi = np.broadcast_to(np.asarray(bounds[1], dtype=np.float64), shape)
    except ValueError as exc:
        raise ValueError(f"{what} are not broadcastable to x of shape {shape}") from exc
    if np.isnan(lo).any() or np.isnan(hi).any():
        raise ValueError(f"{what} contain NaN")
    if (lo > hi).any():
        raise ValueError(f"{what}: a lower bound is greater than its upper bound")
    return lo, hi


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _positive(value, name: str) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return value


def _one_blas_thread():
    return single_threaded_blas()
