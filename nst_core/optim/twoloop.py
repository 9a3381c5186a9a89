"""L-BFGS in NumPy: the two-loop recursion, torch.optim.LBFGS's step rule plus Armijo backtracking, projected onto a
box (``lbfgs``; the shared interface is described in ``nst_core.optim``)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .core import (BoundsLike, Callback, Objective, Result, _as_bounds, _as_budget, _as_x0, _Evaluator,
                   _one_blas_thread, _positive, _positive_int, _run)

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


def _checked(step, history, lr, curvature_eps, c1, max_backtracks, memory_dtype):
    """lbfgs's settings checked: (history, lr, curvature_eps, c1, max_backtracks, memory dtype); ValueError else."""
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
    return history, lr, curvature_eps, c1, max_backtracks, mdt


def _two_loop(dm: np.ndarray, S: np.ndarray, Y: np.ndarray, rho: np.ndarray, alpha: np.ndarray, order: list,
              gamma: float) -> np.ndarray:
    """H q by the two-loop recursion, in place in ``dm`` (q on entry, [n]), returned: the pairs ``S[i], Y[i]``
    ([slots, n] ring buffers, ``rho[i] = 1 / s_i'y_i``) in ``order`` (newest first), H0 = ``gamma`` I (only when
    there is a pair: with none, H = I). ``alpha`` [slots] is scratch."""
    for i in order:
        alpha[i] = rho[i] * float(np.dot(S[i], dm))
        dm = _axpy(-alpha[i], Y[i], dm)
    if order:
        dm *= gamma
    for i in reversed(order):
        beta = rho[i] * float(np.dot(Y[i], dm))
        dm = _axpy(alpha[i] - beta, S[i], dm)
    return dm


def _backtracked(t: float, dec: float, f: float, ft: float) -> float:
    """The next trial step length after step ``t`` was rejected: the minimiser of the quadratic through the loss
    ``f`` at 0 with slope ``dec / t`` (``dec`` = g's predicted change over the step) and ``ft`` at t, kept within
    [0.1 t, 0.5 t]; half the step when that quadratic has no minimum ahead."""
    slope = dec / t
    curv = ft - f - slope * t
    t_new = -slope * t * t / (2.0 * curv) if (slope < 0.0 and curv > 0.0) else 0.5 * t
    return min(max(t_new, 0.1 * t), 0.5 * t)


def _store_pair(S: np.ndarray, Y: np.ndarray, rho: np.ndarray, head: int, s: np.ndarray, y: np.ndarray,
                exact: bool, curvature_eps: float, eps: float):
    """Keep the pair (s, y) (float64 [n] each) in ring slot ``head`` when its curvature s'y exceeds both
    ``curvature_eps`` and ``eps * y'y``; returns the new H0 scale gamma = s'y / y'y, or None when skipped.
    ``exact``: s and y already are S[head] and Y[head] (float64 memory); else they are rounded into them."""
    ys = float(np.dot(s, y))
    yy = float(np.dot(y, y))
    if not (ys > curvature_eps and ys > eps * yy):
        return None
    if not exact:
        np.copyto(S[head], s, casting="same_kind")
        np.copyto(Y[head], y, casting="same_kind")
    rho[head] = 1.0 / ys
    return ys / yy


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
        Number of correction pairs kept (memory ``2 * history * n`` values of ``memory_dtype``, committed as
        needed; float64 pairs: ``2 * (history + 1) * n``, a spare slot for the candidate pair).
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
    history, lr, curvature_eps, c1, max_backtracks, mdt = _checked(step, history, lr, curvature_eps, c1,
                                                                    max_backtracks, memory_dtype)
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
        # exact: m pairs + a spare slot that the candidate s, y are computed in (a skipped pair leaves the stored
        # ones intact); float32: the candidate is a float64 temporary, rounded into the ring only when stored
        slots = m + 1 if exact else m
        S = np.empty((slots, n), mdt)                 # ring buffers of s_i, y_i (pages committed when written)
        Y = np.empty((slots, n), mdt)
        rho = np.empty(slots)                         # 1 / s_i'y_i
        alpha = np.empty(slots)
        head = 0                                      # the slot the next stored pair is written to
        count = 0                                     # pairs stored (<= m)
        gamma = 1.0                                   # H0 = gamma * I
        fresh = True                                  # memory empty since the start or a reset: scaled first step
        xc = x.ravel()                                # current iterate (a copy of x0: _as_x0 copied it)
        xt = np.empty(n)                              # trial point
        dm = np.empty(n, mdt)                         # search direction, in the two-loop's dtype (float32: used
        xc_s, xt_s = xc.reshape(shape), xt.reshape(shape)   # in float64 arithmetic, where it is exact)
        # Alive while the objective runs: xc, xt, g, dm, the pairs, the mask (and the evaluator's best point, a
        # reference to xc or xt: _Evaluator's borrow mode). The step s and gradient change y (float32 memory) are
        # float64 temporaries made after the evaluation and dropped before the next one.

        if box is not None:
            free_b = np.empty(n, dtype=bool)          # True for the free variables, False for the held ones
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
                np.multiply(g, free_b, out=dm)
                if not dm.any():
                    return "converged", (f"converged: projected gradient exactly zero at evaluation "
                                         f"{len(ev.history)}")
                np.negative(dm, out=dm)
            else:
                np.negative(g, out=dm)
            dm = _two_loop(dm, S, Y, rho, alpha, [(head - 1 - j) % slots for j in range(count)], gamma)
            if box is not None and count:
                dm *= free_b                          # d_F = -(H_FF) g_F: a descent direction, d = 0 elsewhere
            gtd = float(np.dot(g, dm))                # (float32 dm: np.dot converts it to float64 first)
            if not gtd < 0.0:                         # not a descent direction (rounding): drop the memory
                if count == 0:
                    return "converged", f"no progress possible: -grad is not a descent direction (g'd = {gtd:.3g})"
                count, gamma, fresh = 0, 1.0, True
                info["resets"] += 1
                continue

            t = lr * min(1.0, 1.0 / float(np.abs(g).sum())) if fresh else lr
            accepted = zero_step = False
            for _ in range(tries):
                ev.release(xt)                        # it may hold the best point so far
                np.multiply(dm, t, out=xt, dtype=np.float64)
                xt += xc
                if box is not None:
                    np.clip(xt_s, box[0], box[1], out=xt_s)
                s = np.subtract(xt, xc, out=S[head] if exact else None)  # the step actually taken (projected)
                if not s.any():
                    zero_step = True
                    break
                if not exact:
                    s = None                          # not kept through the evaluation: made again after it
                gt = None                             # (a rejected trial's gradient)
                ft, gt = ev(xt_s)
                gt = gt.ravel()
                if not exact:
                    s = np.subtract(xt, xc)           # the same values as before the evaluation
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
                t = _backtracked(t, dec, f, ft)

            if not accepted:
                if fresh:
                    why = ("the projected steepest-descent step is zero" if zero_step
                           else f"{tries} trials along steepest descent did not decrease the loss")
                    return "converged", f"no progress possible: {why} (evaluation {len(ev.history)})"
                count, gamma, fresh = 0, 1.0, True
                info["resets"] += 1
                continue

            y = np.subtract(gt, g, out=Y[head] if exact else None)
            new_gamma = _store_pair(S, Y, rho, head, s, y, exact, curvature_eps, eps)
            if new_gamma is not None:
                gamma = new_gamma
                head = (head + 1) % slots             # when full: the oldest pair's slot (or the spare)
                count = min(count + 1, m)
                info["pairs_stored"] += 1
            else:
                info["pairs_skipped"] += 1
            s = y = None
            xc, xt = xt, xc                           # swap buffers: the trial point becomes the iterate
            xc_s, xt_s = xt_s, xc_s
            f, g = ft, gt
            fresh = False
            info["iterations"] += 1

    with _one_blas_thread():
        return _run("lbfgs", objective, x, budget, callback, body, borrow=True)
