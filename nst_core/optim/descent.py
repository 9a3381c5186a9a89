"""Projected gradient descent with a fixed step (``gradient_descent``; the interface: ``nst_core.optim``)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .core import BoundsLike, Callback, Objective, Result, _as_bounds, _as_budget, _as_x0, _Evaluator, _positive, _run

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
        gradient, or zero projected gradient at the bounds). Stopped by the user (Ctrl-C) before any point beat the
        start, it returns the LATEST evaluated point instead (``kept`` "latest"; from the content image the loss
        first rises at the default step), not the untouched start. Each step makes a new array, so the point
        evaluated last stays intact.
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

    return _run("gd", objective, x, budget, callback, body, falls_after=1)
