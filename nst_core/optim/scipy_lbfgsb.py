"""SciPy's L-BFGS-B behind the shared interface (``nst_core.optim``).

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

import math
from typing import Optional

import numpy as np
from scipy import optimize as _sp_optimize

try:  # SciPy >= 1.15's private driver pieces (see _lbfgsb_run); other layouts use minimize()
    from scipy.optimize import _lbfgsb
    from scipy.optimize._lbfgsb_py import status_messages, task_messages
except ImportError:  # pragma: no cover - older/newer SciPy layouts
    _lbfgsb = status_messages = task_messages = None

from .core import (BoundsLike, Callback, Objective, Result, _as_bounds, _as_budget, _as_x0, _Evaluator,
                   _one_blas_thread, _positive_int, _run)

# "Out of reach" iteration / evaluation limits handed to SciPy; the real limit is the evaluation budget.
_UNLIMITED = 2**31 - 1


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


def _probe_setulb() -> bool:
    """True when SciPy's setulb has the signature _lbfgsb_run drives (SciPy >= 1.15's C version)."""
    try:
        if _lbfgsb is None:
            return False
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
