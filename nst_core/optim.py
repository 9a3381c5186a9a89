"""Optimizers on the pixels: L-BFGS in NumPy (two-loop recursion), L-BFGS-B (SciPy), Adam (the CS231n recipe) and
projected gradient descent.

All four share one interface and one result type::

    result = lbfgs(objective, x0, budget, bounds=(lo, hi))    # ours; torch's step rule + Armijo, projected box
    result = lbfgsb(objective, x0, budget, bounds=(lo, hi))   # SciPy's L-BFGS-B
    result = adam(objective, x0, budget)                      # CS231n: lr 3.0, fresh Adam at lr 0.1 from step 180
    result = gradient_descent(objective, x0, budget, lr=0.5)
    result = OPTIMIZERS["lbfgs"](objective, x0, budget)

Objective
    ``objective(x) -> (loss, grad, parts)`` where ``x`` is a float64 ndarray with the shape of ``x0`` (any shape,
    e.g. [1, 3, H, W] normalised pixels), ``loss`` a float, ``grad`` dloss/dx with the shape (or at least the size)
    of ``x``, and ``parts`` a ``dict[str, float]`` of loss components (e.g. ``{"content": .., "style": .., "tv": ..}``;
    may be empty). A 2-tuple ``(loss, grad)`` is accepted as ``parts = {}``. The ``x`` handed to the objective (and
    to the callback) is a READ-ONLY view of the optimizer's state: copy it to keep it.

Budget
    ``budget`` counts OBJECTIVE EVALUATIONS, not iterations (one L-BFGS-B iteration may take several evaluations
    in its line search). The objective is never called more than ``budget`` times, and every optimizer spends the
    whole budget unless it has truly converged (status ``"converged"``: gradient exactly zero, or no progress is
    possible), the loss or gradient becomes NaN/inf (``"nonfinite"``), or the user interrupts (``"interrupted"``).

Result
    ``x`` is the BEST evaluated point (lowest finite loss), not the last one; ``loss`` and ``parts`` are its values.
    ``history`` holds one ``Record`` per evaluation (evaluation number, seconds since the start, loss, parts);
    ``Result.history_columns()`` / ``Result.history_table()`` give it as arrays.

Callback
    ``callback(record, x)`` is called after every evaluation (also the one that produced a non-finite loss) with the
    evaluation's ``Record`` and the evaluated ``x`` (read-only view; copy it to keep it). Use it for progress bars
    and for saving intermediate images.

Ctrl-C
    A ``KeyboardInterrupt`` during an optimisation (in the objective, the callback or the optimizer itself) ends it:
    the function RETURNS a result with status ``"interrupted"`` and the best point so far. It is not swallowed
    silently: the caller sees the status and decides (save the image, exit 130, ...). Any other exception raised by
    the objective or the callback propagates unchanged.

SciPy notes (measured with SciPy 1.17.1, whose L-BFGS-B is the C translation introduced in 1.15)
    * ``ftol=0`` and ``gtol=0`` switch off the relative-reduction test (it can then only fire when ``f`` does not
      decrease at all) and the projected-gradient test (fires only for an exactly zero projected gradient);
      ``maxiter`` / ``maxfun`` are set out of reach. The budget is enforced by the evaluation wrapper, which raises a
      private exception when SciPy asks for evaluation ``budget + 1``, so the count is exact.
    * When a line search fails and the L-BFGS memory is not empty, SciPy itself drops the memory and retries
      (``task = RESTART``); it reports ``ABNORMAL`` only when a line search from an EMPTY memory fails.
    * Bounds are expensive to set up: SciPy converts them to a list of pairs and back and then runs a Python loop
      over all variables, ~6-9 us per variable (measured 6.5-7.5 s for a [1, 3, 512, 512] image on the 2-core
      development machine, vs 0.4 s without bounds), paid once per (re)start. Unbounded runs do not pay it.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import numpy as np
from scipy import optimize as _sp_optimize

__all__ = [
    "Record",
    "Result",
    "STATUSES",
    "lbfgs",
    "lbfgsb",
    "TWOLOOP_HISTORY",
    "TWOLOOP_STEPS",
    "TWOLOOP_DTYPES",
    "adam",
    "gradient_descent",
    "OPTIMIZERS",
]

#: The possible values of ``Result.status``.
STATUSES = ("budget", "converged", "interrupted", "nonfinite")

Objective = Callable[[np.ndarray], Tuple[float, np.ndarray, Mapping[str, float]]]
Callback = Callable[["Record", np.ndarray], Any]
BoundsLike = Optional[Tuple[Union[float, np.ndarray], Union[float, np.ndarray]]]

# "Out of reach" iteration / evaluation limits handed to SciPy; the real limit is the evaluation budget.
_UNLIMITED = 2**31 - 1


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
        iterations, stored / skipped pairs, backtracks and memory resets).
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
    """

    def __init__(self, objective: Objective, x0: np.ndarray, budget: int, callback: Optional[Callback],
                 keep_grad: bool = False):
        if not callable(objective):
            raise TypeError("objective must be callable")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable or None")
        self.objective = objective
        self.callback = callback
        self.shape = x0.shape
        self.size = x0.size
        self.budget = budget
        self.keep_grad = keep_grad
        self.n_calls = 0
        self.history: list = []
        self.best_x = x0.copy()
        self.best_loss = math.nan
        self.best_parts: dict = {}
        self.best_grad: Optional[np.ndarray] = None
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
        grad = np.array(out[1], dtype=np.float64, copy=True)   # the objective may reuse its output buffers
        if grad.size != self.size:
            raise ValueError(f"objective returned a gradient of shape {grad.shape} for x of shape {self.shape}")
        grad = grad.reshape(self.shape)
        raw_parts = out[2] if len(out) == 3 and out[2] is not None else {}
        parts = {str(k): float(v) for k, v in raw_parts.items()}

        record = Record(len(self.history) + 1, time.perf_counter() - self.t0, loss, parts)
        self.history.append(record)

        finite = math.isfinite(loss) and bool(np.isfinite(grad).all())
        if finite and not (loss >= self.best_loss):  # also true while best_loss is NaN (nothing finite yet)
            self.best_x = np.array(xv, dtype=np.float64, copy=True)
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

    def result(self, name: str, status: str, message: str, info: Optional[dict] = None) -> Result:
        return Result(x=self.best_x.copy(), loss=self.best_loss, parts=dict(self.best_parts),
                      n_evals=len(self.history), status=status, message=message, history=list(self.history),
                      optimizer=name, info=dict(info or {}))


def _run(name: str, objective: Objective, x0: np.ndarray, budget: int, callback: Optional[Callback],
         body: Callable[[_Evaluator, dict], Optional[Tuple[str, str]]], keep_grad: bool = False) -> Result:
    """Run ``body(evaluator, info)`` and turn every way it can end into a ``Result``.

    ``body`` returns ``("converged", message)`` when it stops on its own before the budget is spent, or None when
    it has spent the budget. It may fill ``info`` with extras for ``Result.info``.
    """
    ev = _Evaluator(objective, x0, budget, callback, keep_grad=keep_grad)
    info: dict = {}
    try:
        ended = body(ev, info)
    except _BudgetExhausted:
        ended = None
    except _NonFinite as exc:
        return ev.result(name, "nonfinite", f"stopped: {exc}; returning the best finite point", info)
    except KeyboardInterrupt:
        return ev.result(name, "interrupted",
                         f"interrupted by the user after {len(ev.history)} evaluations; returning the best point",
                         info)
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


# ---------------------------------------------------------------------------------------------------------------
# L-BFGS-B
# ---------------------------------------------------------------------------------------------------------------

def lbfgsb(objective: Objective, x0, budget: int, *, bounds: BoundsLike = None, history: int = 10,
          maxls: int = 20, callback: Optional[Callback] = None) -> Result:
    """Minimise ``objective`` with SciPy's L-BFGS-B in float64, spending ``budget`` objective evaluations.

    Parameters
    ----------
    objective : callable
        ``objective(x) -> (loss, grad, parts)``; ``x`` float64 with the shape of ``x0``.
    x0 : array_like, any shape (e.g. [1, 3, H, W])
        Starting point; projected onto ``bounds`` first.
    budget : int
        Maximum number of objective evaluations (not iterations). All of it is used unless L-BFGS-B converges.
    bounds : (lo, hi), optional
        Box constraints, scalars or arrays broadcastable to ``x0`` (e.g. the normalised [0, 1] pixel range);
        ``-inf`` / ``inf`` entries mean unbounded. Every evaluated point lies inside the box.
    history : int
        Number of L-BFGS correction pairs kept (SciPy's ``maxcor``).
    maxls : int
        Maximum number of line-search steps per iteration (SciPy's ``maxls``).
    callback : callable, optional
        ``callback(record, x)`` after every evaluation.

    Returns
    -------
    Result
        The best evaluated point. ``info["restarts"]`` counts restarts, ``info["scipy_messages"]`` lists the message
        SciPy ended each run with.

    Notes
    -----
    Early stops are switched off: ``ftol = gtol = 0``, ``maxiter`` and ``maxfun`` out of reach. A SciPy run ends
    only when (a) the budget is spent (the wrapper raises a private exception at evaluation ``budget + 1``), (b) the
    projected gradient is exactly zero -> status "converged", or (c) SciPy gives up: "ABNORMAL" (a line search from
    an empty memory failed; SciPy already drops its memory by itself after a failed line search with a non-empty
    one) or a relative reduction of exactly zero. In case (c), while budget remains, we RESTART from the best point
    evaluated so far with a fresh memory. The best point can be better than SciPy's iterate (a line-search trial
    that lowered the loss but failed the Wolfe curvature test), and the fresh memory starts with a new scaled
    steepest-descent step. The restart reuses the cached loss and gradient of that point, so it costs no evaluation.
    If a run (the first one included: restarting it would repeat it exactly) ends in (c) without lowering the loss
    below the one it started from, no progress is possible and we stop with status "converged".
    """
    x0 = _as_x0(x0)
    budget = _as_budget(budget)
    history = _positive_int(history, "history")
    maxls = _positive_int(maxls, "maxls")
    box = _as_bounds(bounds, x0.shape)
    if box is not None:
        np.clip(x0, box[0], box[1], out=x0)
        box = tuple(np.broadcast_to(b, x0.shape).ravel().astype(np.float64) for b in box)  # flat, like x
    options = {"maxcor": int(history), "ftol": 0.0, "gtol": 0.0, "maxiter": _UNLIMITED, "maxfun": _UNLIMITED,
               "maxls": int(maxls)}

    def body(ev: _Evaluator, info: dict):
        info["restarts"] = 0
        info["scipy_messages"] = []
        start = x0.ravel()
        cached = None           # (loss, grad) at `start`, when it was evaluated already (restarts)
        start_loss = None       # loss at the start of this run (None: not known before its first evaluation)
        while True:
            pending = [cached]

            def fun(x):
                if pending[0] is not None and np.array_equal(x, start):
                    f, g = pending[0]
                    pending[0] = None
                    return f, g.ravel()
                f, g = ev(x)
                return f, g.ravel()

            first_eval = len(ev.history)
            res = _lbfgsb_run(fun, start, box, options)
            message = str(res.message)
            info["scipy_messages"].append(message)
            if start_loss is None:
                start_loss = ev.history[first_eval].loss if len(ev.history) > first_eval else math.nan
            if res.status == 0 and "GRADIENT" in message.upper():
                return "converged", f"converged: projected gradient is exactly zero ({message})"
            if ev.remaining <= 0:
                return None
            if not (ev.best_loss < start_loss):
                return ("converged",
                        f"no progress possible: L-BFGS-B stopped ({message}) without lowering the loss "
                        f"from {start_loss:.9g} with a fresh memory")
            info["restarts"] += 1
            start = ev.best_x.ravel().copy()
            cached = (ev.best_loss, ev.best_grad)
            start_loss = ev.best_loss

    return _run("lbfgsb", objective, x0, budget, callback, body, keep_grad=True)


def _lbfgsb_run(fun, x0: np.ndarray, box, options: dict):
    """One L-BFGS-B run: SciPy's own driver loop around its `setulb` routine (SciPy >= 1.15), with the bounds
    prepared in NumPy. scipy.optimize.minimize prepares them in a Python loop over every variable, which took ~7 s
    per start for a 512x512 image; that is the only difference. Falls back to minimize() on other SciPy versions."""
    try:
        from scipy.optimize import _lbfgsb
        from scipy.optimize._lbfgsb_py import status_messages, task_messages
    except ImportError:  # pragma: no cover - older/newer SciPy layouts
        _lbfgsb = None
    sp_bounds = None if box is None else _sp_optimize.Bounds(box[0], box[1])
    if _lbfgsb is None or not hasattr(_lbfgsb, "setulb") or not _SETULB_OK:
        return _sp_optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=sp_bounds, options=options)
    n, m = x0.size, options["maxcor"]
    x = np.array(x0, dtype=np.float64).ravel()
    lo = np.full(n, -np.inf) if box is None else box[0]
    hi = np.full(n, np.inf) if box is None else box[1]
    has_lo, has_hi = np.isfinite(lo), np.isfinite(hi)
    nbd = np.where(has_lo & has_hi, 2, np.where(has_lo, 1, np.where(has_hi, 3, 0))).astype(np.int32)
    lo, hi = np.where(has_lo, lo, 0.0), np.where(has_hi, hi, 0.0)
    f = np.array(0.0)
    g = np.zeros(n)
    wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m)
    iwa = np.zeros(3 * n, np.int32)
    task, ln_task = np.zeros(2, np.int32), np.zeros(2, np.int32)
    lsave, isave, dsave = np.zeros(4, np.int32), np.zeros(44, np.int32), np.zeros(29)
    factr, pgtol = options["ftol"] / np.finfo(float).eps, options["gtol"]
    # One BLAS thread: setulb's vector operations on n ~ 1e5..1e6 pixels ran 4-5x slower with OpenBLAS's two
    # threads on 2 cores (17 vs 84 ms per evaluation at 192x256 px, history 5), its spinning workers fighting
    # the objective's ONNX Runtime threads.
    with _one_blas_thread():
        while True:
            _lbfgsb.setulb(m, x, lo, hi, nbd, f, g, factr, pgtol, wa, iwa, task, lsave, isave, dsave,
                           options["maxls"], ln_task)
            if task[0] == 3:  # evaluate f and g at x
                fx, gx = fun(x.copy())
                f = np.array(float(fx))
                g = np.asarray(gx, dtype=np.float64).ravel().copy()
            elif task[0] != 1:  # 1: a new iteration; anything else ends the run
                break
    message = status_messages[task[0]] + ": " + task_messages[task[1]]
    return _sp_optimize.OptimizeResult(x=x, fun=float(f), status=0 if task[0] == 4 else 2, message=message)


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _probe_setulb() -> bool:
    """True when SciPy's setulb has the signature _lbfgsb_run drives (SciPy >= 1.15's C version)."""
    try:
        from scipy.optimize import _lbfgsb
        from scipy.optimize._lbfgsb_py import status_messages, task_messages  # noqa: F401
        x = np.array([1.0])
        wa = np.zeros(2 * 1 + 5 + 11 + 8)
        task = np.zeros(2, np.int32)
        _lbfgsb.setulb(1, x, np.zeros(1), np.zeros(1), np.zeros(1, np.int32), np.array(0.0), np.zeros(1), 0.0, 0.0,
                       wa, np.zeros(3, np.int32), task, np.zeros(4, np.int32), np.zeros(44, np.int32),
                       np.zeros(29), 20, np.zeros(2, np.int32))
        return int(task[0]) == 3
    except Exception:
        return False


_SETULB_OK = _probe_setulb()


# ---------------------------------------------------------------------------------------------------------------
# L-BFGS in NumPy (two-loop recursion)
# ---------------------------------------------------------------------------------------------------------------

#: Default memory (correction pairs) of ``lbfgs``; the measurement behind it is in its docstring.
TWOLOOP_HISTORY = 20

#: The step rules of ``lbfgs``.
TWOLOOP_STEPS = ("fixed", "armijo")


def _axpy(alpha: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y += alpha * x`` for flat contiguous arrays of one dtype (float32 or float64), in place and in one pass
    (BLAS saxpy / daxpy); returns y."""
    return _BLAS_AXPY[y.dtype.char](x, y, a=alpha)


def _numpy_axpy(x, y, a=1.0):
    y += a * x
    return y


try:  # SciPy's BLAS: one pass over memory, no temporary (``y -= a * x`` in NumPy makes two passes and a temporary)
    from scipy.linalg.blas import daxpy as _blas_daxpy, saxpy as _blas_saxpy
    _BLAS_AXPY = {"d": _blas_daxpy, "f": _blas_saxpy}
except ImportError:  # pragma: no cover - SciPy always has them
    _BLAS_AXPY = {"d": _numpy_axpy, "f": _numpy_axpy}

#: The dtypes ``lbfgs`` can keep its correction pairs in.
TWOLOOP_DTYPES = ("float32", "float64")


def lbfgs(objective: Objective, x0, budget: int, *, bounds: BoundsLike = None,
                  history: int = TWOLOOP_HISTORY, step: str = "armijo", lr: float = 1.0, curvature_eps: float = 0.0,
                  c1: float = 1e-4, max_backtracks: int = 10, memory_dtype: str = "float32",
                  callback: Optional[Callback] = None) -> Result:
    """Minimise ``objective`` with L-BFGS written in NumPy (the two-loop recursion), spending ``budget`` evaluations.

    The algorithm of ``torch.optim.LBFGS`` without a line search, plus an optional backtracking step rule and an
    optional box. With ``x_k`` the iterate, ``g_k`` its gradient (both flattened, float64 [n]):

    * direction ``d = -H g_k`` by the two-loop recursion over the last ``history`` pairs ``s_i = x_{i+1} - x_i``,
      ``y_i = g_{i+1} - g_i``, with ``H0 = gamma I``, ``gamma = s'y / y'y`` of the newest stored pair; a pair is
      stored only if ``s'y > curvature_eps`` and ``s'y > eps * y'y`` (eps of ``memory_dtype``), otherwise skipped
      (``info["pairs_skipped"]``);
    * trial point ``clip(x_k + t d, lo, hi)``: ``t = lr * min(1, 1/sum|g|)`` for the first step from an empty
      memory, ``t = lr`` afterwards;
    * ``step="fixed"``: the trial point is always accepted (torch's ``line_search_fn=None``; one evaluation per
      iteration). ``step="armijo"``: accepted if ``f(trial) <= f(x_k) + c1 * g_k'(trial - x_k)``, else ``t`` shrinks
      (minimum of the quadratic through f(x_k), the slope and f(trial), kept within [0.1 t, 0.5 t]) and the
      rejected trial's evaluation counts against the budget; after ``max_backtracks`` rejections the memory is
      dropped and the iteration is retried with the scaled steepest-descent step.

    Parameters
    ----------
    objective : callable
        ``objective(x) -> (loss, grad, parts)``; ``x`` float64 with the shape of ``x0``.
    x0 : array_like, any shape (e.g. [1, 3, H, W] normalised pixels)
        Starting point; projected onto ``bounds`` first.
    budget : int
        Maximum number of objective evaluations (not iterations). All of it is used unless the run converges.
    bounds : (lo, hi), optional
        Box constraints, scalars or arrays broadcastable to ``x0``; ``-inf`` / ``inf`` mean unbounded. Projected
        variant: variables at a bound whose gradient points out of the box are held (their gradient entries are
        zeroed before the two-loop and their direction entries after it, so ``d_F = -H_FF g_F`` is a descent
        direction on the free ones), every trial point is clipped onto the box (every evaluated point lies inside
        it), the stored ``s`` is the step actually taken, and pairs without positive curvature are skipped. Without
        the holding, plain clipping did not reach the minimiser of a box-constrained quadratic in 300 evaluations.
    history : int
        Number of correction pairs kept (memory ``2 * (history + 1) * n`` values of ``memory_dtype``, committed as
        needed).
    step : "fixed" or "armijo"
        Step rule, see above.
    lr : float
        Step length along the L-BFGS direction (1 = the quasi-Newton step; units of the direction).
    curvature_eps : float
        A pair is stored only if ``s'y`` exceeds this (absolute, units of x times gradient). torch uses 1e-10;
        the default 0 keeps only the scale-free test ``s'y > eps * y'y``: an absolute threshold skips every pair
        once ``f - f*`` is about that small, and the run stalls there (seen on a convex quadratic: x only to 4e-6
        with 1e-10, to 1e-11 with 0). On the style-transfer problem no pair was skipped with either.
    c1 : float
        Sufficient-decrease constant of the Armijo rule, in (0, 1).
    max_backtracks : int
        Rejected trials per iteration before the memory is dropped ("armijo" only).
    memory_dtype : "float32" or "float64"
        Precision of the stored pairs and of the two-loop recursion. The iterate, the gradient, the step rule and
        ``s'y`` stay float64 either way; with float32 a pair is rounded once when stored. float32 (default) halves
        the two-loop's memory traffic (it is memory-bandwidth bound, see Notes) and its memory, at the precision
        torch.optim.LBFGS works in; float64 takes exactly the iterates of a float64 reference.
    callback : callable, optional
        ``callback(record, x)`` after every evaluation.

    Returns
    -------
    Result
        The best evaluated point, ``optimizer="lbfgs"``. ``info``: ``iterations`` (accepted steps),
        ``pairs_stored``, ``pairs_skipped``, ``backtracks`` (rejected trials), ``resets`` (memory drops),
        ``history``, ``step``, ``memory_dtype``. Status "converged" when the gradient is exactly zero, or when no
        step is possible from an empty memory (the projected steepest-descent step is zero, or "armijo" rejected all
        its trials).

    Notes
    -----
    Per iteration the vector work is ``4 * pairs + O(1)`` passes over n values (``np.dot`` and BLAS
    ``daxpy`` on flat contiguous arrays, no temporaries, no n x n matrix), against the much larger bookkeeping of
    L-BFGS-B's Cauchy-point and subspace steps. It is memory-bandwidth bound: with a full memory of 20 pairs and
    bounds, 8.2 ms per iteration at n = 3*192*256 and 66 ms at n = 3*512*683 with float32 pairs (13.8 / 121 ms
    with float64 pairs), against SciPy L-BFGS-B's 27 / 183 ms unbounded and 58 / 417 ms with bounds in an earlier
    run (bench/bench_lbfgs.py's overhead section, 2-core development machine, cheap quadratic objective). The run
    (objective included) uses one BLAS thread: OpenBLAS's two threads made the two-loop 4-30x slower there
    between ORT calls. The direction is not computed after the last evaluation.

    Defaults, measured with bench/bench_lbfgs.py on CS231n's starry_night objective from the content image;
    evaluations to reach the loss torch.optim.LBFGS (history 100, lr 1, no line search) reaches in 200:

    * ``history=20``: 192 px: 224 / 209 / 205 / 197 / 196 evaluations with history 5 / 10 / 20 / 50 / 100;
      512 px: 279 / 202 / 201 / 202 with 10 / 20 / 50 / 100. Optimizer time per iteration grows linearly with the
      memory (at 512 px: 51 / 88 / 182 / 332 ms for 10 / 20 / 50 / 100 pairs against ~300 ms per evaluation), so
      20 gives the shortest wall time at 512 px and is within a few percent of 10 at 192 px. (Those were float64
      pairs and no bounds; with the pixel bounds, 20 pairs reach it at evaluation 206 (float32) / 207 (float64)
      at 192 px and 201 / 203 at 512 px, in 8.2 / 9.9 s and 72 / 86 s.)
    * ``memory_dtype="float32"``: see above; it changes no evaluation count by more than a few.
    * ``step="armijo"``: the same evaluation counts as "fixed" on that problem (0-2 rejected trials in 300
      evaluations, from the content image or from noise) but the loss of the iterates never goes up; fixed unit
      steps took a 200-dimensional Rosenbrock from 2e4 to 8e12 before recovering (an overflow would end the run
      with status "nonfinite"). Use ``step="fixed", curvature_eps=1e-10`` for torch.optim.LBFGS's exact rule.
    """
    x = _as_x0(x0)
    budget = _as_budget(budget)
    history = _positive_int(history, "history")
    if step not in TWOLOOP_STEPS:
        raise ValueError(f"step must be one of {TWOLOOP_STEPS}, got {step!r}")
    lr = _positive(lr, "lr")
    curvature_eps = float(curvature_eps)
    if not (curvature_eps >= 0 and math.isfinite(curvature_eps)):
        raise ValueError(f"curvature_eps must be a finite number >= 0, got {curvature_eps}")
    c1 = float(c1)
    if not 0.0 < c1 < 1.0:
        raise ValueError(f"c1 must be in (0, 1), got {c1}")
    max_backtracks = _positive_int(max_backtracks, "max_backtracks")
    try:
        mdt = None if memory_dtype is None else np.dtype(memory_dtype)   # np.dtype(None) would be float64
    except TypeError:
        mdt = None
    if mdt is None or mdt.name not in TWOLOOP_DTYPES:
        raise ValueError(f"memory_dtype must be one of {TWOLOOP_DTYPES}, got {memory_dtype!r}")
    exact = mdt == np.float64                         # the pairs are the float64 vectors themselves
    eps = float(np.finfo(mdt).eps)
    box = _as_bounds(bounds, x.shape)
    if box is not None:
        np.clip(x, box[0], box[1], out=x)
    shape, n = x.shape, x.size
    armijo = step == "armijo"
    tries = max_backtracks + 1 if armijo else 1

    def body(ev: _Evaluator, info: dict):
        info.update(iterations=0, pairs_stored=0, pairs_skipped=0, backtracks=0, resets=0, history=int(history),
                    step=step, memory_dtype=mdt.name)
        m = max(1, min(int(history), budget - 1))     # never more pairs than evaluations - 1
        slots = m + 1                                 # m pairs + the slot the next pair is written to
        S = np.empty((slots, n), mdt)                 # ring buffers of s_i, y_i (pages committed when written)
        Y = np.empty((slots, n), mdt)
        rho = np.empty(slots)                         # 1 / s_i'y_i
        alpha = np.empty(slots)
        head = 0                                      # the spare slot: the next pair is written there; a skipped
        count = 0                                     # pair leaves the stored ones intact. Pairs stored (<= m)
        gamma = 1.0                                   # H0 = gamma * I
        fresh = True                                  # memory empty since the start or a reset: scaled first step
        xc = x.ravel()                                # current iterate (a copy of x0: _as_x0 copied it)
        xt = np.empty(n)                              # trial point
        dm = np.empty(n, mdt)                         # search direction, in the two-loop's dtype
        d = dm if exact else np.empty(n)              # ... and in float64
        if not exact:                                 # the newest step and gradient change in float64
            s64, y64 = np.empty(n), np.empty(n)
        xc_s, xt_s = xc.reshape(shape), xt.reshape(shape)

        if box is not None:
            free = np.empty(n, mdt)                   # 1.0 for the free variables, 0.0 for the held ones
            free_b = np.empty(n, dtype=bool)
            free_bs = free_b.reshape(shape)
        f, g = ev(xc_s)
        g = g.ravel()
        while True:
            g_s = g.reshape(shape)
            if ev.remaining <= 0:
                return None
            if not g.any():
                return "converged", f"converged: gradient exactly zero at evaluation {len(ev.history)}"
            # d = -H g, two-loop recursion, newest pair first; with bounds on the free variables only
            if box is not None:
                # free = not (at a bound with the gradient pushing outward); as 0/1, xc_s [shape]
                np.logical_not(((xc_s <= box[0]) & (g_s > 0.0)) | ((xc_s >= box[1]) & (g_s < 0.0)), out=free_bs)
                np.copyto(free, free_b)
                np.multiply(g, free, out=dm)
                if not dm.any():
                    return "converged", (f"converged: projected gradient exactly zero at evaluation "
                                         f"{len(ev.history)}")
                np.negative(dm, out=dm)
            else:
                np.negative(g, out=dm)
            order = [(head - 1 - j) % slots for j in range(count)]
            for i in order:
                alpha[i] = rho[i] * float(np.dot(S[i], dm))
                dm = _axpy(-alpha[i], Y[i], dm)
            if count:
                dm *= gamma
            for i in reversed(order):
                beta = rho[i] * float(np.dot(Y[i], dm))
                dm = _axpy(alpha[i] - beta, S[i], dm)
            if box is not None and count:
                dm *= free                            # d_F = -(H_FF) g_F: a descent direction, d = 0 elsewhere
            if not exact:                             # (exact: d is dm, updated in place)
                np.copyto(d, dm)
            gtd = float(np.dot(g, d))
            if not gtd < 0.0:                         # not a descent direction (rounding): drop the memory
                if count == 0:
                    return "converged", f"no progress possible: -grad is not a descent direction (g'd = {gtd:.3g})"
                count, gamma, fresh = 0, 1.0, True
                info["resets"] += 1
                continue

            t = lr * min(1.0, 1.0 / float(np.abs(g).sum())) if fresh else lr
            accepted = zero_step = False
            s = S[head] if exact else s64
            for _ in range(tries):
                np.multiply(d, t, out=xt)
                xt += xc
                if box is not None:
                    np.clip(xt_s, box[0], box[1], out=xt_s)
                np.subtract(xt, xc, out=s)            # the step actually taken (projected)
                if not s.any():
                    zero_step = True
                    break
                ft, gt = ev(xt_s)
                gt = gt.ravel()
                if not armijo:
                    accepted = True
                    break
                dec = float(np.dot(g, s))             # predicted change, <= 0 unless the projection bent the step
                if ft <= f + c1 * min(dec, 0.0):
                    accepted = True
                    break
                info["backtracks"] += 1
                if ev.remaining <= 0:
                    return None
                slope = dec / t
                curv = ft - f - slope * t
                t_new = -slope * t * t / (2.0 * curv) if (slope < 0.0 and curv > 0.0) else 0.5 * t
                t = min(max(t_new, 0.1 * t), 0.5 * t)

            if not accepted:
                if fresh:
                    why = ("the projected steepest-descent step is zero" if zero_step
                           else f"{tries} trials along steepest descent did not decrease the loss")
                    return "converged", f"no progress possible: {why} (evaluation {len(ev.history)})"
                count, gamma, fresh = 0, 1.0, True
                info["resets"] += 1
                continue

            y = Y[head] if exact else y64
            np.subtract(gt, g, out=y)
            ys = float(np.dot(s, y))
            yy = float(np.dot(y, y))
            if ys > curvature_eps and ys > eps * yy:
                if not exact:
                    np.copyto(S[head], s, casting="same_kind")
                    np.copyto(Y[head], y, casting="same_kind")
                rho[head] = 1.0 / ys
                gamma = ys / yy
                head = (head + 1) % slots                 # when full, the oldest pair's slot becomes the spare
                count = min(count + 1, m)
                info["pairs_stored"] += 1
            else:
                info["pairs_skipped"] += 1
            xc, xt = xt, xc                           # swap buffers: the trial point becomes the iterate
            xc_s, xt_s = xt_s, xc_s
            f, g = ft, gt
            fresh = False
            info["iterations"] += 1

    with _one_blas_thread():
        return _run("lbfgs", objective, x, budget, callback, body)


# ---------------------------------------------------------------------------------------------------------------
# Adam (the CS231n recipe)
# ---------------------------------------------------------------------------------------------------------------

def adam(objective: Objective, x0, budget: int, *, lr: float = 3.0, decay_at: Optional[int] = 180,
         decayed_lr: float = 0.1, clamp: BoundsLike = (-1.5, 1.5), clamp_until: Optional[int] = 190,
         betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         callback: Optional[Callback] = None) -> Result:
    """Adam on the pixels, reproducing the CS231n StyleTransfer-PyTorch loop exactly (in NumPy, float64).

    One step per evaluation, for ``t = 0 .. budget-1`` (0-based step number):

    1. if ``clamp`` is given and ``t < clamp_until`` (always, if ``clamp_until`` is None): clip x to ``clamp``;
    2. ``loss, grad = objective(x)``;
    3. if ``t == decay_at``: a NEW Adam optimizer replaces the old one, with ``lr = decayed_lr`` and its moments and
       step count reset to zero (what ``optimizer = torch.optim.Adam([img], lr=decayed_lr)`` does in CS231n);
    4. the update of ``torch.optim.Adam`` (bias-corrected, ``amsgrad=False``, no weight decay), in torch's order of
       operations: ``m += (1-b1)(g-m)``; ``v = b2 v + (1-b2) g g``; ``x -= lr/(1-b1^k) * m / (sqrt(v)/sqrt(1-b2^k)
       + eps)``, ``k`` the 1-based step count of the current optimizer.

    With the defaults and ``budget=200`` this is CS231n: lr 3.0 for steps 0..179, a fresh Adam at lr 0.1 from step
    180, and clamping to [-1.5, 1.5] before each evaluation while ``t < 190``. ``decay_at=None`` and ``clamp=None``
    give plain Adam at a fixed ``lr``.

    Parameters
    ----------
    objective : callable
        ``objective(x) -> (loss, grad, parts)``; ``x`` float64 with the shape of ``x0``.
    x0 : array_like, any shape (e.g. [1, 3, H, W])
        Starting point.
    budget : int
        Number of evaluations (= steps).
    lr, decayed_lr : float
        Learning rates before / from step ``decay_at`` (units of x per step, at most, roughly).
    decay_at : int or None
        0-based step at which the fresh Adam with ``decayed_lr`` takes over; None: never.
    clamp : (lo, hi) or None
        Clip range (scalars or arrays broadcastable to x) applied before the evaluations of steps ``t <
        clamp_until``; None: never clip.
    clamp_until : int or None
        First step that is no longer clipped; None: clip before every evaluation.
    betas, eps : Adam's coefficients (torch defaults).
    callback : callable, optional
        ``callback(record, x)`` after every evaluation.

    Returns
    -------
    Result
        DIFFERENCE FROM CS231n: the exercise returns the LAST image (after the final update, which is never
        evaluated); we return the BEST evaluated one. Therefore the final update (after the last evaluation) is
        skipped: it could not change the result. The run stops early with status "converged" only if the gradient
        and the first moment are both exactly zero (x can then never move again).
    """
    x = _as_x0(x0)
    budget = _as_budget(budget)
    lr = _positive(lr, "lr")
    decayed_lr = _positive(decayed_lr, "decayed_lr")
    eps = _positive(eps, "eps")
    beta1, beta2 = (float(b) for b in betas)
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must be in [0, 1), got {betas}")
    box = _as_bounds(clamp, x.shape, "clamp")
    decay_at = None if decay_at is None else int(decay_at)
    clamp_until = None if clamp_until is None else int(clamp_until)

    def body(ev: _Evaluator, info: dict):
        m = np.zeros_like(x)
        v = np.zeros_like(x)
        k = 0                      # step count of the current torch.optim.Adam instance
        cur_lr = lr
        tmp = np.empty_like(x)
        for t in range(budget):
            if box is not None and (clamp_until is None or t < clamp_until):
                np.clip(x, box[0], box[1], out=x)
            _, g = ev(x)
            if decay_at is not None and t == decay_at:
                m.fill(0.0)
                v.fill(0.0)
                k = 0
                cur_lr = decayed_lr
            if t == budget - 1:
                break              # the update after the last evaluation is never evaluated: skip it
            if not m.any() and not g.any():
                return "converged", f"converged: gradient exactly zero at evaluation {t + 1} (x cannot move)"
            k += 1
            # exp_avg.lerp_(grad, 1 - beta1)
            np.subtract(g, m, out=tmp)
            tmp *= 1.0 - beta1
            m += tmp
            # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            v *= beta2
            np.multiply(g, 1.0 - beta2, out=tmp)
            tmp *= g
            v += tmp
            bias_correction1 = 1 - beta1 ** k
            bias_correction2 = 1 - beta2 ** k
            step_size = cur_lr / bias_correction1
            bias_correction2_sqrt = bias_correction2 ** 0.5
            # denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            np.sqrt(v, out=tmp)
            tmp /= bias_correction2_sqrt
            tmp += eps
            # param.addcdiv_(exp_avg, denom, value=-step_size)
            np.divide(m * -step_size, tmp, out=tmp)
            np.add(x, tmp, out=x)
        return None

    return _run("adam", objective, x, budget, callback, body)


# ---------------------------------------------------------------------------------------------------------------
# Projected gradient descent
# ---------------------------------------------------------------------------------------------------------------

def gradient_descent(objective: Objective, x0, budget: int, *, lr: float, bounds: BoundsLike = None,
                     callback: Optional[Callback] = None) -> Result:
    """Plain (projected) gradient descent: ``x <- clip(x - lr * grad, lo, hi)``, one step per evaluation.

    Parameters
    ----------
    objective : callable
        ``objective(x) -> (loss, grad, parts)``; ``x`` float64 with the shape of ``x0``.
    x0 : array_like, any shape
        Starting point; projected onto ``bounds`` first.
    budget : int
        Number of evaluations (= steps).
    lr : float
        Step size (units of x per unit of gradient).
    bounds : (lo, hi), optional
        Box to project onto after each step (scalars or arrays broadcastable to x).
    callback : callable, optional
        ``callback(record, x)`` after every evaluation.

    Returns
    -------
    Result
        The best evaluated point. Stops early ("converged") only when a step would not change x at all (zero
        gradient, or zero projected gradient at the bounds).
    """
    x = _as_x0(x0)
    budget = _as_budget(budget)
    lr = _positive(lr, "lr")
    box = _as_bounds(bounds, x.shape)
    if box is not None:
        np.clip(x, box[0], box[1], out=x)

    def body(ev: _Evaluator, info: dict):
        cur = x
        for t in range(budget):
            _, g = ev(cur)
            if t == budget - 1:
                break
            nxt = cur - lr * g
            if box is not None:
                np.clip(nxt, box[0], box[1], out=nxt)
            if np.array_equal(nxt, cur):
                return "converged", f"converged: the (projected) step is zero at evaluation {t + 1}"
            cur = nxt
        return None

    return _run("gd", objective, x, budget, callback, body)


#: Name -> optimizer, all with the signature ``f(objective, x0, budget, *, ..., callback=None) -> Result``.
OPTIMIZERS = {"lbfgs": lbfgs, "lbfgsb": lbfgsb, "adam": adam, "gd": gradient_descent}
