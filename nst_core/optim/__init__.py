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
    to the callback) is a READ-ONLY view of the optimizer's state: copy it to keep it. The optimizers copy ``grad``
    (an objective may reuse its buffer) unless the objective has the attribute ``fresh_grad = True``, a promise that
    every call returns a new array.

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

One module per optimizer: ``twoloop`` (``lbfgs``, ours), ``scipy_lbfgsb`` (``lbfgsb``), ``adam_recipe`` (``adam``),
``descent`` (``gradient_descent``); ``core`` holds the shared evaluation wrapper, the result types and the argument
checks.
"""
from __future__ import annotations

from .adam_recipe import adam
from .core import STATUSES, Record, Result
from .descent import gradient_descent
from .scipy_lbfgsb import lbfgsb
from .twoloop import TWOLOOP_DTYPES, TWOLOOP_HISTORY, TWOLOOP_STEPS, lbfgs

__all__ = ["Record", "Result", "STATUSES", "lbfgs", "lbfgsb", "TWOLOOP_HISTORY", "TWOLOOP_STEPS", "TWOLOOP_DTYPES",
           "adam", "gradient_descent", "OPTIMIZERS"]

#: Name -> optimizer, all with the signature ``f(objective, x0, budget, *, ..., callback=None) -> Result``.
OPTIMIZERS = {"lbfgs": lbfgs, "lbfgsb": lbfgsb, "adam": adam, "gd": gradient_descent}
