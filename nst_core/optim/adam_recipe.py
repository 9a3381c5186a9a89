"""Adam as the CS231n exercise runs it (``adam``; the shared interface is described in ``nst_core.optim``)."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .core import BoundsLike, Callback, Objective, Result, _as_bounds, _as_budget, _as_x0, _Evaluator, _positive, _run

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
        and the first moment are both exactly zero (x can then never move again). Stopped by the user (Ctrl-C)
        while its best point is from before ``decay_at``, it returns the LATEST evaluated point instead (``kept``
        "latest"): at the first rate the loss is highest by design, and the best point is then usually the start.
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
        cur = x                    # the iterate; each update goes into the other buffer, so the point evaluated
        if decay_at is not None:   # last stays intact until the next evaluation (ev.latest, on Ctrl-C)
            info["decay_at"] = decay_at + 1
        for t in range(budget):
            if box is not None and (clamp_until is None or t < clamp_until):
                np.clip(cur, box[0], box[1], out=cur)
            _, g = ev(cur)
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
            np.add(cur, tmp, out=tmp)
            cur, tmp = tmp, cur
        return None

    return _run("adam", objective, x, budget, callback, body,
                falls_after=None if decay_at is None else decay_at + 1)
