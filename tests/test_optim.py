"""Tests of nst_core.optim: the shared evaluation wrapper, L-BFGS-B, L-BFGS in NumPy (two-loop), Adam (CS231n
recipe) and gradient descent.

References: torch.optim.Adam driven by the CS231n loop, torch.optim.LBFGS, and problems with known minima.
"""
import math
import subprocess
import sys

import numpy as np
import pytest

from nst_core.optim import OPTIMIZERS, Record, Result, adam, gradient_descent, lbfgs, lbfgsb

torch = pytest.importorskip("torch")

SHAPE = (1, 3, 4, 5)

ALL_OPTIMIZERS = OPTIMIZERS  # every registered optimizer runs the shared-convention tests


# ------------------------------------------------------------------------------------------------ test problems

def make_smooth_nonconvex(seed=0, shape=SHAPE):
    """f(x) = 1/2 x'Ax + b'x + sum(c * sin(w * x)) on a [1,3,4,5] array: smooth, nonconvex, bounded below
    inside the clamp box. Returns a NumPy objective (analytic gradient) and the same loss in torch."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    q = rng.standard_normal((n, n)) / math.sqrt(n)
    a = q @ q.T + 0.1 * np.eye(n)
    b = rng.standard_normal(n)
    c = 0.5 + rng.random(n)
    w = 1.0 + 2.0 * rng.random(n)

    def objective(x):
        z = x.reshape(-1)
        quad = 0.5 * z @ a @ z + b @ z
        wave = float(np.sum(c * np.sin(w * z)))
        grad = a @ z + b + c * w * np.cos(w * z)
        return quad + wave, grad.reshape(x.shape), {"quad": quad, "wave": wave}

    ta, tb, tc, tw = (torch.from_numpy(v) for v in (a, b, c, w))

    def torch_loss(xt):
        z = xt.reshape(-1)
        return 0.5 * z @ ta @ z + tb @ z + torch.sum(tc * torch.sin(tw * z))

    return objective, torch_loss


def rosenbrock(x):
    """Chained Rosenbrock: sum 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2 over the flattened x; minimum 0 at all ones."""
    z = x.reshape(-1)
    d = z[1:] - z[:-1] ** 2
    e = 1.0 - z[:-1]
    f = float(np.sum(100.0 * d * d) + np.sum(e * e))
    g = np.zeros_like(z)
    g[:-1] = -400.0 * z[:-1] * d - 2.0 * e
    g[1:] += 200.0 * d
    return f, g.reshape(x.shape), {"valley": float(np.sum(100.0 * d * d)), "slope": float(np.sum(e * e))}


def rosenbrock_start(n):
    return np.tile([-1.2, 1.0], n // 2).astype(np.float64)


def bounded_quadratic(seed=1, n=24):
    """A non-separable convex quadratic whose box-constrained minimiser x* is known by construction (KKT):
    a third of the coordinates at the lower bound, a third at the upper bound, the rest free."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n))
    a = q @ q.T / n + 0.5 * np.eye(n)
    lo = -1.0 - rng.random(n)
    hi = 1.0 + rng.random(n)
    x_star = rng.uniform(-0.5, 0.5, n)
    g_star = np.zeros(n)
    at_lo = np.arange(n) % 3 == 0
    at_hi = np.arange(n) % 3 == 1
    x_star[at_lo] = lo[at_lo]
    x_star[at_hi] = hi[at_hi]
    g_star[at_lo] = 0.5 + rng.random(at_lo.sum())       # gradient pushes outward at an active lower bound
    g_star[at_hi] = -0.5 - rng.random(at_hi.sum())      # ... and at an active upper bound
    c = x_star - np.linalg.solve(a, g_star)             # so that grad(x*) = A (x* - c) = g*

    def objective(x):
        r = x.reshape(-1) - c
        f = 0.5 * r @ a @ r
        return f, (a @ r).reshape(x.shape), {"q": f}

    f_star = objective(x_star)[0]
    return objective, lo, hi, x_star, f_star


class Counting:
    """Wraps an objective: counts calls, keeps a copy of every evaluated x, and can misbehave at a given call."""

    def __init__(self, objective, nan_at=None, interrupt_at=None):
        self.objective = objective
        self.nan_at = nan_at
        self.interrupt_at = interrupt_at
        self.calls = 0
        self.xs = []
        self.losses = []

    def __call__(self, x):
        self.calls += 1
        assert x.dtype == np.float64
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.xs.append(np.array(x, copy=True))
        f, g, parts = self.objective(x)
        if self.nan_at is not None and self.calls == self.nan_at:
            f = float("nan")
        self.losses.append(f)
        return f, g, parts


def run(name, objective, x0, budget, **kw):
    if name == "gd":
        kw.setdefault("lr", 1e-3)
    if name == "adam":
        kw.setdefault("lr", 0.01)
        kw.setdefault("decay_at", None)
        kw.setdefault("clamp", None)
    return ALL_OPTIMIZERS[name](objective, x0, budget, **kw)


# ------------------------------------------------------------------------------------------------ Adam vs torch

def torch_cs231n_adam(torch_loss, x0, budget, lr=3.0, decay_at=180, decayed_lr=0.1, clamp=(-1.5, 1.5),
                      clamp_until=190):
    """The CS231n StyleTransfer-PyTorch optimisation loop, verbatim in structure, in float64 with autograd.
    Returns the loss and the (evaluated) image of every step."""
    img = torch.tensor(x0, dtype=torch.float64).requires_grad_()
    optimizer = torch.optim.Adam([img], lr=lr)
    losses, images = [], []
    for t in range(budget):
        if clamp is not None and t < clamp_until:
            img.data.clamp_(clamp[0], clamp[1])
        optimizer.zero_grad()
        loss = torch_loss(img)
        loss.backward()
        losses.append(loss.item())
        images.append(img.detach().numpy().copy())
        if decay_at is not None and t == decay_at:
            optimizer = torch.optim.Adam([img], lr=decayed_lr)
        optimizer.step()
    return np.array(losses), images


def test_adam_matches_torch_cs231n_loop():
    objective, torch_loss = make_smooth_nonconvex(seed=0)
    x0 = np.random.default_rng(3).uniform(-1.0, 1.0, SHAPE)
    ref_losses, ref_images = torch_cs231n_adam(torch_loss, x0, 200)

    res = adam(objective, x0, 200)          # CS231n defaults: lr 3.0, decay at 180 to 0.1, clamp while t < 190
    ours = res.history_columns()["loss"]
    assert res.n_evals == 200 and res.status == "budget"
    scale = np.maximum(1.0, np.abs(ref_losses))
    assert np.max(np.abs(ours - ref_losses) / scale) < 1e-10
    # the clamps happened: every image evaluated before step 190 is inside [-1.5, 1.5]
    assert all(np.abs(im).max() <= 1.5 for im in ref_images[:190])
    # the decay mattered: steps after 180 are small (lr 0.1), steps before are big (lr 3.0)
    steps = [np.abs(b - a).max() for a, b in zip(ref_images, ref_images[1:])]
    assert max(steps[:179]) > 1.0 and max(steps[180:]) < 0.3
    # result = best evaluated point, not the last (documented difference from CS231n)
    k = int(np.argmin(ref_losses))
    assert res.loss == pytest.approx(ref_losses[k], rel=1e-10)
    np.testing.assert_allclose(res.x, ref_images[k], rtol=0, atol=1e-9)


def test_adam_recreated_optimizer_matters():
    """A run without the re-creation at decay_at (just an lr change) differs: the reset of moments is reproduced."""
    objective, torch_loss = make_smooth_nonconvex(seed=4)
    x0 = np.random.default_rng(5).uniform(-1.0, 1.0, SHAPE)
    ref, _ = torch_cs231n_adam(torch_loss, x0, 30, lr=0.5, decay_at=10, decayed_lr=0.05, clamp_until=20)
    ours = adam(objective, x0, 30, lr=0.5, decay_at=10, decayed_lr=0.05, clamp_until=20).history_columns()["loss"]
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10)

    img = torch.tensor(x0, dtype=torch.float64).requires_grad_()
    opt = torch.optim.Adam([img], lr=0.5)
    no_reset = []
    for t in range(30):
        if t < 20:
            img.data.clamp_(-1.5, 1.5)
        opt.zero_grad()
        loss = torch_loss(img)
        loss.backward()
        no_reset.append(loss.item())
        if t == 10:
            for group in opt.param_groups:
                group["lr"] = 0.05
        opt.step()
    assert np.max(np.abs(np.array(no_reset) - ref)) > 1e-3


def test_plain_adam_matches_torch():
    objective, torch_loss = make_smooth_nonconvex(seed=2)
    x0 = np.random.default_rng(7).uniform(-0.5, 0.5, SHAPE)
    x0[0, 0, 0, :] = 2.5                    # outside CS231n's clamp box: must not be clipped
    first = []
    ref, images = torch_cs231n_adam(torch_loss, x0, 120, lr=0.05, decay_at=None, clamp=None)
    res = adam(objective, x0, 120, lr=0.05, decay_at=None, clamp=None,
               callback=lambda r, x: first.append(np.array(x)) if r.evaluation == 1 else None)
    np.testing.assert_allclose(res.history_columns()["loss"], ref, rtol=1e-10, atol=1e-10)
    assert res.loss == pytest.approx(ref.min(), rel=1e-10)
    np.testing.assert_array_equal(first[0], x0)
    assert res.status == "budget"


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_x_shape_read_only_and_x0_untouched(name):
    objective, _ = make_smooth_nonconvex()
    x0 = np.full(SHAPE, 2.0)
    seen = []

    def obj(x):
        seen.append((x.shape, x.dtype, x.flags.writeable))
        return objective(x)

    kw = {"bounds": (-1.0, 1.0)} if name != "adam" else {"clamp": (-1.0, 1.0), "clamp_until": None}
    res = run(name, obj, x0, 5, **kw)
    assert seen == [(SHAPE, np.float64, False)] * 5
    assert np.all(x0 == 2.0)                # x0 is never modified
    assert res.x.shape == SHAPE and np.abs(res.x).max() <= 1.0


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_objective_may_reuse_its_gradient_buffer(name):
    """An objective that returns the same output buffer every time (as an inference session may) gives the same
    run as one that returns fresh arrays."""
    buf = np.empty(SHAPE)

    def reusing(x):
        f, g, p = rosenbrock(x)
        buf[...] = g
        return f, buf, p

    x0 = rosenbrock_start(60).reshape(SHAPE)
    a = run(name, rosenbrock, x0, 30)
    b = run(name, reusing, x0, 30)
    np.testing.assert_array_equal(a.history_columns()["loss"], b.history_columns()["loss"])


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_fresh_grad_objective_runs_the_same_and_its_gradient_is_not_copied(name):
    """An objective that promises a new gradient array on every call (``fresh_grad = True``, as make_objective's)
    gives the same run as one without the promise; the evaluator hands on the objective's own array, and still
    copies one that carries no promise."""
    from nst_core.optim.core import _Evaluator
    returned = []

    def fresh(x):
        out = rosenbrock(x)
        returned.append(out[1])
        return out

    fresh.fresh_grad = True
    x0 = rosenbrock_start(60).reshape(SHAPE)
    a = run(name, rosenbrock, x0, 30)
    b = run(name, fresh, x0, 30)
    np.testing.assert_array_equal(a.history_columns()["loss"], b.history_columns()["loss"])
    returned.clear()
    _, grad = _Evaluator(fresh, x0, 1, None)(x0)
    assert np.shares_memory(grad, returned[0])
    own = rosenbrock(x0)[1]
    _, copied = _Evaluator(lambda x: (1.0, own, {}), x0, 1, None)(x0)
    assert not np.shares_memory(copied, own)


# ------------------------------------------------------------------------------------------------ L-BFGS-B

def test_lbfgsb_bounded_quadratic_reaches_known_minimum_inside_bounds():
    objective, lo, hi, x_star, f_star = bounded_quadratic()
    shape = (1, 2, 3, 4)
    x0 = np.random.default_rng(0).uniform(-3, 3, shape)       # partly outside the box: projected first
    outside = []

    def cb(record, x):
        outside.append(bool(np.any(x.reshape(-1) < lo) or np.any(x.reshape(-1) > hi)))

    counted = Counting(objective)
    res = lbfgsb(counted, x0, 300, bounds=(lo.reshape(shape), hi.reshape(shape)), callback=cb)
    assert res.x.shape == shape and res.x.dtype == np.float64
    np.testing.assert_allclose(res.x.reshape(-1), x_star, atol=1e-7)
    assert res.loss == pytest.approx(f_star, rel=1e-9, abs=1e-12)
    # every evaluated point respected the bounds
    assert len(outside) == res.n_evals and not any(outside)
    for x in counted.xs:
        assert np.all(x.reshape(-1) >= lo) and np.all(x.reshape(-1) <= hi)
    # the active bounds are hit exactly
    at_bound = (np.arange(24) % 3) != 2
    assert np.array_equal(res.x.reshape(-1)[at_bound], x_star[at_bound])
    assert res.status in ("converged", "budget")


def test_lbfgsb_scalar_bounds_broadcast():
    objective, _ = make_smooth_nonconvex(seed=8)
    counted = Counting(objective)
    res = lbfgsb(counted, np.full(SHAPE, 5.0), 60, bounds=(-0.25, 0.25))
    assert all(np.abs(x).max() <= 0.25 for x in counted.xs)
    assert np.abs(res.x).max() <= 0.25


@pytest.mark.parametrize("budget", [0, 1, 2, 3, 7, 50])
def test_lbfgsb_uses_exactly_the_budget_on_hard_rosenbrock(budget):
    counted = Counting(rosenbrock)
    x0 = rosenbrock_start(200).reshape(1, 2, 10, 10)
    res = lbfgsb(counted, x0, budget)
    assert counted.calls == budget == res.n_evals == len(res.history)
    assert res.status == "budget"
    if budget == 0:
        assert np.array_equal(res.x, x0) and math.isnan(res.loss) and res.parts == {}
    else:
        assert res.loss == min(counted.losses)


def test_lbfgsb_budget_with_bounds_never_exceeded():
    for budget in (5, 13, 40):
        counted = Counting(rosenbrock)
        res = lbfgsb(counted, rosenbrock_start(60), budget, bounds=(-2.0, 0.9), history=5)
        assert counted.calls == res.n_evals <= budget


def test_lbfgsb_converges_on_unbounded_rosenbrock_and_stops_when_no_progress():
    counted = Counting(rosenbrock)
    res = lbfgsb(counted, rosenbrock_start(20), 5000)
    assert res.status == "converged"
    assert res.loss < 1e-20
    np.testing.assert_allclose(res.x, 1.0, atol=1e-10)
    assert counted.calls == res.n_evals < 5000


def test_lbfgsb_restart_from_best_point_makes_progress(monkeypatch):
    """On a nonsmooth objective L-BFGS-B ends with ABNORMAL; a restart from the best point with a fresh memory
    continues (and here reaches the exact minimum, where the subgradient np.sign(0) is exactly zero)."""
    def l1(x):
        r = x - 0.3
        return float(np.abs(r).sum()), np.sign(r), {"l1": float(np.abs(r).sum())}

    starts = []
    from nst_core.optim import scipy_lbfgsb as lbfgsb_module

    real_run = lbfgsb_module._lbfgsb_run

    def spy(fun, x0, *args, **kwargs):
        starts.append(np.array(x0, copy=True))
        return real_run(fun, x0, *args, **kwargs)

    monkeypatch.setattr(lbfgsb_module, "_lbfgsb_run", spy)
    x0 = rosenbrock_start(100).reshape(1, 4, 5, 5)
    counted = Counting(l1)
    res = lbfgsb(counted, x0, 2000)
    assert res.info["restarts"] >= 1 and len(starts) == res.info["restarts"] + 1
    assert res.info["scipy_messages"][0].startswith("ABNORMAL")
    assert res.status == "converged" and res.loss == 0.0
    np.testing.assert_array_equal(res.x, 0.3)
    # the restart starts from the best point of the first run and reuses its cached loss and gradient:
    # that point was evaluated once only
    n1 = next(i for i, x in enumerate(counted.xs) if np.array_equal(x.reshape(-1), starts[1]))
    assert counted.losses[n1] == min(counted.losses[:n1 + 1])
    assert sum(np.array_equal(x.reshape(-1), starts[1]) for x in counted.xs) == 1


def test_lbfgsb_wrong_gradient_stops_without_progress():
    """A gradient of the wrong sign on a convex quadratic: the loss rises along every search direction, so no line
    search finds a lower loss; 'no progress possible' is reported and the budget is not wasted.

    Which message SciPy stops with depends on the BLAS kernel's rounding (ABNORMAL_TERMINATION_IN_LNSRCH with
    OpenBLAS's Haswell kernels, CONVERGENCE: REL_REDUCTION_OF_F with its SkylakeX ones), so only the behaviour is
    asserted: one SciPy run, no restart, the start point and its loss returned."""
    center = np.linspace(-1, 1, 12)

    def wrong(x):
        r = x - center
        return float(r @ r), -2.0 * r, {}

    x0 = np.zeros(12)
    res = lbfgsb(wrong, x0, 500)
    assert res.status == "converged" and "no progress" in res.message
    assert len(res.info["scipy_messages"]) == 1
    assert res.n_evals < 500 and res.info["restarts"] == 0
    assert res.loss == wrong(x0)[0]
    np.testing.assert_array_equal(res.x, x0)


def test_lbfgsb_zero_gradient_at_start_converges_immediately():
    res = lbfgsb(lambda x: (1.0, np.zeros_like(x), {}), np.ones(SHAPE), 10)
    assert res.status == "converged" and res.n_evals == 1


def torch_lbfgs_losses(x0, budget, history_size=100, line_search_fn=None):
    """torch.optim.LBFGS with every early stop disabled: tolerance_grad = tolerance_change = -1 (its tests are
    `<=` / `<` against them, and `gtd > -tolerance_change` only for an ascent direction), max_iter = budget and
    max_eval = budget (the default max_eval is max_iter * 5 // 4). One .step() then evaluates the closure exactly
    `budget` times without a line search (1 + one per iteration but the last)."""
    p = torch.tensor(x0, dtype=torch.float64).requires_grad_()
    opt = torch.optim.LBFGS([p], lr=1, max_iter=budget, max_eval=budget, tolerance_grad=-1, tolerance_change=-1,
                            history_size=history_size, line_search_fn=line_search_fn)
    losses = []

    def closure():
        opt.zero_grad()
        f, g, _ = rosenbrock(p.detach().numpy())
        p.grad = torch.from_numpy(np.array(g, copy=True))
        losses.append(f)
        return torch.tensor(f, dtype=torch.float64)

    opt.step(closure)
    return np.array(losses)


@pytest.mark.parametrize("n, budget", [(20, 100), (20, 300), (100, 300)])
def test_lbfgsb_at_least_as_good_as_torch_lbfgs_on_rosenbrock(n, budget):
    x0 = rosenbrock_start(n)
    ref = torch_lbfgs_losses(x0, budget)
    ref10 = torch_lbfgs_losses(x0, budget, history_size=10)
    assert len(ref) == budget and len(ref10) == budget          # torch really used the whole budget
    torch_best = np.nanmin(np.where(np.isfinite(ref), ref, np.nan))
    torch_best10 = np.nanmin(np.where(np.isfinite(ref10), ref10, np.nan))
    ours = lbfgsb(rosenbrock, x0, budget, history=100)
    ours10 = lbfgsb(rosenbrock, x0, budget)                       # default memory (10)
    print(f"\nRosenbrock n={n} budget={budget}: torch LBFGS (no line search) best {torch_best:.6g} / "
          f"{torch_best10:.6g} with history 100 / 10; ours history 100: {ours.loss:.6g} ({ours.n_evals} evals, "
          f"{ours.status}); ours history 10: {ours10.loss:.6g} ({ours10.n_evals} evals, {ours10.status})")
    assert ours.n_evals <= budget and ours10.n_evals <= budget
    # like for like: the same memory on both sides (history 10 against torch's 100 lost on one machine at n=100:
    # 48.63 against 46.18, while it beats torch's own history 10, 48.93)
    assert ours.loss <= torch_best * 1.0 + 1e-12
    assert ours10.loss <= torch_best10 * 1.0 + 1e-12


# ------------------------------------------------------------------------------------------------ L-BFGS two-loop

def spd_quadratic(seed=0, n=30, cond=1e3):
    """f(x) = 1/2 x'Ax - b'x with A SPD of condition number `cond`; the minimiser solves A x = b."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * np.geomspace(1.0, cond, n)) @ q.T
    b = rng.standard_normal(n)

    def objective(x):
        z = x.reshape(-1)
        az = a @ z
        return float(0.5 * z @ az - b @ z), (az - b).reshape(x.shape), {}

    x_star = np.linalg.solve(a, b)
    return objective, x_star, objective(x_star)[0]


@pytest.mark.parametrize("step", ["fixed", "armijo"])
def test_lbfgs_quadratic_reaches_known_minimiser(step):
    objective, x_star, f_star = spd_quadratic()
    res = lbfgs(objective, np.zeros((1, 3, 2, 5)), 400, step=step, history=10)
    # Where L-BFGS stops improving x depends on rounding: its curvature pairs are differences of gradients, which
    # lose their digits as the steps shrink (fixed steps stalled at 1e-8 to 2e-8 of max|x*| with OpenBLAS's Haswell
    # and SkylakeX kernels), and Armijo's test compares losses, which stop resolving progress once f - f* is near
    # f's rounding (it then stops: "no progress possible"). 1e-6 of max|x*| is six orders below the start's error
    # and two above any such stall: it asserts convergence, not one BLAS kernel's last digits.
    np.testing.assert_allclose(res.x.reshape(-1), x_star, rtol=0, atol=1e-6 * np.abs(x_star).max())
    assert res.loss == pytest.approx(f_star, rel=1e-12)
    assert res.status == ("budget" if step == "fixed" else "converged")
    assert res.x.shape == (1, 3, 2, 5) and res.optimizer == "lbfgs"


@pytest.mark.parametrize("step", ["fixed", "armijo"])
@pytest.mark.parametrize("n", [2, 4, 10])
def test_lbfgs_rosenbrock_reaches_minimum(step, n):
    x0 = rosenbrock_start(n)
    res = lbfgs(rosenbrock, x0, 1000, step=step)
    assert res.loss < 1e-16
    np.testing.assert_allclose(res.x, 1.0, atol=1e-7)
    if step == "armijo":                     # accepted iterates only ever go down
        assert res.info["iterations"] > 10
        losses = res.history_columns()["loss"]
        assert losses[-1] <= losses[0]


def torch_fixed_step_iterates(objective, x0, budget, history_size, lr=1.0):
    """The points torch.optim.LBFGS (no line search, every early stop disabled) evaluates, in float64."""
    p = torch.tensor(x0, dtype=torch.float64).requires_grad_()
    opt = torch.optim.LBFGS([p], lr=lr, max_iter=budget, max_eval=budget, tolerance_grad=-1, tolerance_change=-1,
                            history_size=history_size, line_search_fn=None)
    xs = []

    def closure():
        opt.zero_grad()
        x = p.detach().numpy().copy()
        xs.append(x)
        f, g, _ = objective(x)
        p.grad = torch.from_numpy(np.array(g, dtype=np.float64))
        return torch.tensor(f, dtype=torch.float64)

    opt.step(closure)
    return xs


@pytest.mark.parametrize("memory_dtype, atol", [("float64", 1e-10), ("float32", 1e-3)])
@pytest.mark.parametrize("history, seed, lr, skips", [(3, 12, 0.7, 0), (100, 12, 0.7, 0), (2, 13, 1.0, 2)])
def test_lbfgs_fixed_step_takes_torch_lbfgs_iterates(history, seed, lr, skips, memory_dtype, atol):
    """Same rule as torch.optim.LBFGS(line_search_fn=None): first step min(1, 1/|g|_1) lr, then lr; H0 = s'y/y'y;
    pairs kept only if s'y > 1e-10 (a skipped pair leaves the stored ones intact, also with a full memory); the
    oldest pair dropped when the memory is full (histories 2 and 3 exercise it). With float64 pairs the iterates
    are torch's (float64) to rounding; float32 pairs (the default) round each pair once: 1e-9 apart after one step,
    growing to 2e-4 over 15 fixed steps on this nonconvex problem (a wrong pair or order would be O(0.1) off)."""
    objective, _ = make_smooth_nonconvex(seed=seed)
    x0 = np.random.default_rng(13).uniform(-1.0, 1.0, SHAPE)
    budget = 15                               # fixed steps on a nonconvex problem amplify rounding differences
    ref = torch_fixed_step_iterates(objective, x0, budget, history, lr=lr)
    seen = []
    res = lbfgs(objective, x0, budget, history=history, lr=lr, step="fixed", curvature_eps=1e-10,
                memory_dtype=memory_dtype, callback=lambda r, x: seen.append(np.array(x, copy=True)))
    assert len(ref) == len(seen) == budget == res.n_evals
    assert res.info["pairs_skipped"] == skips and res.info["memory_dtype"] == memory_dtype
    assert res.info["pairs_stored"] + res.info["pairs_skipped"] == budget - 1
    moved = [np.abs(b - a).max() for a, b in zip(ref, ref[1:])]
    assert min(moved) > 1e-6                  # the iterates really move
    for k, (a, b) in enumerate(zip(seen, ref)):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=f"evaluation {k + 1}")
    if memory_dtype == "float32":             # ... but not exactly them: the float32 path really is taken
        assert max(np.abs(a - b).max() for a, b in zip(seen, ref)) > 1e-10


@pytest.mark.parametrize("step", ["fixed", "armijo"])
@pytest.mark.parametrize("budget", [0, 1, 2, 3, 7, 50])
def test_lbfgs_uses_exactly_the_budget(step, budget):
    counted = Counting(rosenbrock)
    x0 = rosenbrock_start(200).reshape(1, 2, 10, 10)
    res = lbfgs(counted, x0, budget, step=step, history=5)
    assert counted.calls == budget == res.n_evals == len(res.history)
    assert res.status == "budget"
    if budget == 0:
        assert np.array_equal(res.x, x0) and math.isnan(res.loss)
    else:
        assert res.loss == min(counted.losses)


@pytest.mark.parametrize("step", ["fixed", "armijo"])
def test_lbfgs_bounded_quadratic_reaches_known_minimum_inside_bounds(step):
    objective, lo, hi, x_star, f_star = bounded_quadratic()
    shape = (1, 2, 3, 4)
    x0 = np.random.default_rng(0).uniform(-3, 3, shape)       # partly outside the box: projected first
    counted = Counting(objective)
    res = lbfgs(counted, x0, 300, bounds=(lo.reshape(shape), hi.reshape(shape)), step=step)
    assert counted.calls == res.n_evals
    for x in counted.xs:                                       # every evaluated point is inside the box
        assert np.all(x.reshape(-1) >= lo) and np.all(x.reshape(-1) <= hi)
    np.testing.assert_allclose(res.x.reshape(-1), x_star, atol=1e-7)
    assert res.loss == pytest.approx(f_star, rel=1e-9, abs=1e-12)
    at_bound = (np.arange(24) % 3) != 2
    assert np.array_equal(res.x.reshape(-1)[at_bound], x_star[at_bound])   # active bounds hit exactly


@pytest.mark.parametrize("step", ["fixed", "armijo"])
def test_lbfgs_scalar_bounds_on_nonconvex(step):
    objective, _ = make_smooth_nonconvex(seed=8)
    counted = Counting(objective)
    res = lbfgs(counted, np.full(SHAPE, 5.0), 60, bounds=(-0.25, 0.25), step=step)
    assert counted.calls == res.n_evals
    assert all(np.abs(x).max() <= 0.25 for x in counted.xs)
    assert res.loss < objective(np.full(SHAPE, 0.25))[0]


def test_lbfgs_projected_gradient_zero_converges():
    """Gradient pointing out of the box at the bound everywhere: x cannot move, stop after one evaluation."""
    res = lbfgs(lambda x: (float(np.sum(x)), np.ones_like(x), {}), np.full(6, 0.5), 50, bounds=(0.5, 1.0))
    assert res.status == "converged" and res.n_evals == 1 and "projected gradient" in res.message


def test_lbfgs_zero_gradient_at_start_converges():
    res = lbfgs(lambda x: (1.0, np.zeros_like(x), {}), np.ones(SHAPE), 10)
    assert res.status == "converged" and res.n_evals == 1


def test_lbfgs_armijo_wrong_gradient_stops_without_progress():
    center = np.linspace(-1, 1, 12)

    def wrong(x):
        r = x - center
        return float(r @ r), -2.0 * r, {}

    x0 = np.zeros(12)
    res = lbfgs(wrong, x0, 500, step="armijo", max_backtracks=5)
    assert res.status == "converged" and "no progress" in res.message
    assert res.n_evals == 1 + 6 and res.info["iterations"] == 0
    assert res.loss == wrong(x0)[0]
    np.testing.assert_array_equal(res.x, x0)


@pytest.mark.parametrize("memory_dtype, pairs_bytes", [("float32", 4 * 2 * 3), ("float64", 8 * 2 * 4)])
def test_lbfgs_memory_alive_during_an_evaluation(memory_dtype, pairs_bytes):
    """What lbfgs holds while the objective runs (NumPy's buffers, traced by tracemalloc), per variable: the
    iterate, the trial point and the gradient (float64, 3 x 8 bytes), the direction (4 or 8), the free-variable
    mask (1) and the pairs (history 3: 2 x 3 float32 values; float64 pairs keep a spare slot: 2 x 4); no copy of
    x0 or of the step / gradient change, and no copy of the best point while it is the iterate or the trial.
    One float64 copy of the best point is allowed: it is made when a rejected trial was the best so far and its
    buffer is reused (this objective has such backtracks), and kept until a better point. Counted at every
    evaluation from the 8th on, when all the pairs are stored; 2 % slack for NumPy's and Python's small objects."""
    import tracemalloc
    n = 200_000
    rng = np.random.default_rng(3)
    target = rng.uniform(-2.0, 2.0, n)   # about half the minimiser lies outside the box: the mask is used
    curvature = rng.uniform(0.2, 5.0, n)
    seen = []

    def objective(x):
        seen.append(tracemalloc.get_traced_memory()[0])
        r = x.ravel() - target
        return float(np.sum(curvature * r * r)), (2.0 * curvature * r).reshape(x.shape), {}

    x0 = np.zeros((1, n))
    lbfgs(lambda x: (float(x @ x), 2.0 * x, {}), np.ones(3), 3)  # imports done (threadpoolctl's, ~0.3 MB)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        res = lbfgs(objective, x0, 20, bounds=(-1.0, 1.0), history=3, memory_dtype=memory_dtype)
    finally:
        tracemalloc.stop()
    assert res.status == "budget" and res.info["pairs_stored"] >= 7
    direction = 4 if memory_dtype == "float32" else 8
    expected = (3 * 8 + direction + 1 + pairs_bytes) * n
    alive = np.array(seen[7:]) - base
    print(f"\n{memory_dtype}: {alive.min() / n:.2f} .. {alive.max() / n:.2f} bytes per variable alive during "
          f"an evaluation ({expected / n:.0f}, + 8 with a copy of the best point)")
    assert alive.max() <= 1.02 * (expected + 8 * n)
    assert alive.min() >= 0.98 * expected  # the accounting is complete (a changed layout must update this test)


def test_lbfgs_fixed_step_keeps_the_best_point_not_the_last():
    """A fixed step that overshoots (lr 2.5 on sum(x^2): after the first pair H is exact and every step maps x to
    -1.5 x): the loss goes up after evaluation 2; the result is the lowest evaluated point, not the last."""
    counted = Counting(lambda x: (float(np.sum(x * x)), 2.0 * x, {}))
    res = lbfgs(counted, np.full(4, 3.0), 6, lr=2.5, step="fixed")
    losses = np.array(counted.losses)
    assert losses[-1] > losses.min()
    k = int(np.argmin(losses))
    assert res.loss == losses[k] and res.best_evaluation == k + 1
    np.testing.assert_array_equal(res.x, counted.xs[k])


def test_lbfgs_armijo_backtracks_where_the_fixed_step_overshoots():
    """lr 2.5 on sum(x^2) from 3: the scaled first step is accepted (x = 2.375), then H is exact and the trial
    x - 2.5 x is rejected; the quadratic interpolation of the backtrack lands on t = 1, the exact minimiser."""
    counted = Counting(lambda x: (float(np.sum(x * x)), 2.0 * x, {}))
    res = lbfgs(counted, np.full(4, 3.0), 50, lr=2.5, step="armijo")
    assert res.status == "converged" and res.n_evals == 4 and res.loss == 0.0
    assert res.info["backtracks"] == 1 and res.info["iterations"] == 2
    np.testing.assert_allclose(counted.xs[1], 2.375, rtol=1e-15)
    np.testing.assert_allclose(counted.xs[2], -1.5 * 2.375, rtol=1e-15)     # the rejected trial
    np.testing.assert_array_equal(res.x, 0.0)


@pytest.mark.parametrize("step", ["fixed", "armijo"])
def test_lbfgs_nonfinite_and_interrupt(step):
    counted = Counting(rosenbrock, nan_at=4)
    res = lbfgs(counted, rosenbrock_start(10), 50, step=step)
    assert res.status == "nonfinite" and res.n_evals == 4
    assert res.loss == min(counted.losses[:3])
    counted = Counting(rosenbrock, interrupt_at=5)
    res = lbfgs(counted, rosenbrock_start(10), 50, step=step)
    assert res.status == "interrupted" and res.n_evals == 4
    np.testing.assert_array_equal(res.x, counted.xs[int(np.argmin(counted.losses))])


def test_lbfgs_argument_errors():
    for kw in ({"history": 0}, {"history": 2.0}, {"step": "wolfe"}, {"lr": 0.0}, {"c1": 1.0},
               {"max_backtracks": 0}, {"curvature_eps": -1.0}, {"bounds": (1.0, 0.0)}, {"memory_dtype": "float16"},
               {"memory_dtype": None}):
        with pytest.raises(ValueError):
            lbfgs(rosenbrock, np.zeros(4), 5, **kw)
    with pytest.raises(TypeError):
        lbfgs(rosenbrock, np.zeros(4), 2.5)


# ------------------------------------------------------------------------------------------------ gradient descent

def test_gd_descends_and_converges_to_bounded_minimum():
    objective, lo, hi, x_star, f_star = bounded_quadratic(seed=3, n=12)
    counted = Counting(objective)
    res = gradient_descent(counted, np.zeros(12), 3000, lr=0.3, bounds=(lo, hi))
    losses = res.history_columns()["loss"]
    assert np.all(np.diff(losses) <= 1e-12 * np.abs(losses[1:]))  # monotone descent at a safe step size
    for x in counted.xs:
        assert np.all(x >= lo) and np.all(x <= hi)
    np.testing.assert_allclose(res.x, x_star, atol=1e-8)


def test_gd_unbounded_step_is_x_minus_lr_grad():
    objective, _ = make_smooth_nonconvex(seed=6)
    counted = Counting(objective)
    x0 = np.random.default_rng(1).standard_normal(SHAPE)
    gradient_descent(counted, x0, 3, lr=0.01)
    g0 = objective(x0)[1]
    np.testing.assert_array_equal(counted.xs[1], x0 - 0.01 * g0)


def test_gd_zero_step_is_convergence():
    res = gradient_descent(lambda x: (float(np.sum(x)), np.ones_like(x), {}), np.zeros(5), 50, lr=0.1,
                           bounds=(0.0, 1.0))
    assert res.status == "converged" and res.n_evals == 1


# ------------------------------------------------------------------------------------------------ shared wrapper

@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_history_records_and_best_point(name):
    objective, _ = make_smooth_nonconvex(seed=9)
    counted = Counting(objective)
    x0 = np.random.default_rng(2).uniform(-1, 1, SHAPE)
    res = run(name, counted, x0, 40)
    assert isinstance(res, Result) and res.optimizer == name
    assert res.status == "budget" and res.n_evals == 40 == len(res.history) == counted.calls
    assert [r.evaluation for r in res.history] == list(range(1, 41))
    secs = [r.seconds for r in res.history]
    assert secs[0] >= 0 and all(b >= a for a, b in zip(secs, secs[1:]))
    assert all(isinstance(r, Record) and set(r.parts) == {"quad", "wave"} for r in res.history)
    # the result is the best evaluated point, with its own loss and parts
    k = int(np.argmin(counted.losses))
    assert res.loss == min(r.loss for r in res.history) == counted.losses[k]
    np.testing.assert_array_equal(res.x, counted.xs[k])
    f, _, parts = objective(res.x)
    assert f == res.loss and parts == res.parts
    assert res.best_evaluation == k + 1
    # columns / table
    cols = res.history_columns()
    assert list(cols) == ["evaluation", "seconds", "loss", "quad", "wave"]
    assert all(len(v) == 40 for v in cols.values())
    np.testing.assert_allclose(cols["quad"] + cols["wave"], cols["loss"], rtol=1e-12, atol=1e-12)
    names, table = res.history_table()
    assert names == list(cols) and table.shape == (40, 5)
    assert res.history[3].as_dict()["evaluation"] == 4


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_nonfinite_loss_stops_with_best_finite_point(name):
    counted = Counting(rosenbrock, nan_at=5)
    x0 = rosenbrock_start(12).reshape(2, 6)
    res = run(name, counted, x0, 50)
    assert res.status == "nonfinite" and "evaluation 5" in res.message
    assert res.n_evals == 5 == counted.calls
    assert math.isnan(res.history[-1].loss)
    k = int(np.argmin(counted.losses[:4]))
    assert res.loss == counted.losses[k] and math.isfinite(res.loss)
    np.testing.assert_array_equal(res.x, counted.xs[k])


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_nonfinite_gradient_stops(name):
    def obj(x):
        f, g, p = rosenbrock(x)
        if obj.calls == 2:
            g = g.copy()
            g.flat[3] = np.inf
        obj.calls += 1
        return f, g, p

    obj.calls = 0
    res = run(name, obj, rosenbrock_start(8), 50)
    assert res.status == "nonfinite" and res.n_evals == 3 and "gradient" in res.message


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_keyboard_interrupt_returns_best_so_far(name):
    counted = Counting(rosenbrock, interrupt_at=7)
    x0 = rosenbrock_start(12).reshape(1, 3, 2, 2)
    res = run(name, counted, x0, 50)
    assert res.status == "interrupted"
    assert res.n_evals == 6 == len(counted.xs)
    k = int(np.argmin(counted.losses))
    assert res.loss == counted.losses[k]
    np.testing.assert_array_equal(res.x, counted.xs[k])


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_keyboard_interrupt_in_callback(name):
    def cb(record, x):
        if record.evaluation == 3:
            raise KeyboardInterrupt

    res = run(name, rosenbrock, rosenbrock_start(6), 50, callback=cb)
    assert res.status == "interrupted" and res.n_evals == 3


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_interrupt_at_first_evaluation_returns_x0(name):
    counted = Counting(rosenbrock, interrupt_at=1)
    x0 = rosenbrock_start(6)
    res = run(name, counted, x0, 10)
    assert res.status == "interrupted" and res.n_evals == 0
    np.testing.assert_array_equal(res.x, x0)
    assert math.isnan(res.loss)


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_callback_once_per_evaluation_with_record(name):
    calls = []

    def cb(record, x):
        calls.append((record, np.array(x, copy=True), x.flags.writeable))

    counted = Counting(rosenbrock)
    x0 = rosenbrock_start(10).reshape(2, 5)
    res = run(name, counted, x0, 25, callback=cb)
    assert len(calls) == res.n_evals == counted.calls == 25
    assert [c[0] for c in calls] == res.history            # the very records of the history
    for (record, x, writeable), xe in zip(calls, counted.xs):
        assert x.shape == x0.shape and not writeable
        np.testing.assert_array_equal(x, xe)               # x is the evaluated point
        assert record.loss == rosenbrock(xe)[0]


@pytest.mark.parametrize("name", list(ALL_OPTIMIZERS))
def test_zero_budget(name):
    x0 = rosenbrock_start(4)
    res = run(name, rosenbrock, x0, 0)
    assert res.status == "budget" and res.n_evals == 0 and res.history == []
    np.testing.assert_array_equal(res.x, x0)
    assert res.history_table()[1].shape == (0, 3)


def test_argument_errors():
    with pytest.raises(ValueError):
        lbfgsb(rosenbrock, np.zeros(4), -1)
    with pytest.raises(TypeError):
        lbfgsb(rosenbrock, np.zeros(4), 2.5)
    with pytest.raises(ValueError):
        lbfgsb(rosenbrock, np.zeros(4), 5, bounds=(1.0, 0.0))
    with pytest.raises(ValueError):
        lbfgsb(rosenbrock, np.zeros(4), 5, bounds=(np.zeros(3), 1.0))
    with pytest.raises(ValueError):
        gradient_descent(rosenbrock, np.zeros(4), 5, lr=0.0)
    with pytest.raises(ValueError):
        adam(rosenbrock, np.array([np.nan, 0.0]), 5)
    with pytest.raises(ValueError):
        lbfgsb(lambda x: (0.0, np.zeros(3), {}), np.zeros(4), 5)     # gradient of the wrong size


def test_optim_does_not_import_torch():
    code = "import sys, nst_core.optim; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_direct_setulb_driver_matches_scipy_minimize(monkeypatch):
    """_lbfgsb_run drives SciPy's setulb itself (bounds prepared in NumPy, not a Python loop); it must take exactly
    the same steps as scipy.optimize.minimize(method='L-BFGS-B') on a bounded problem."""
    from nst_core.optim import scipy_lbfgsb as lbfgsb_module

    rng = np.random.default_rng(11)
    a = rng.standard_normal((30, 30))
    q = a @ a.T + np.eye(30)
    c = rng.standard_normal(30) * 3

    def objective(x):
        r = x.ravel()
        return float(0.5 * r @ q @ r - c @ r), (q @ r - c).reshape(x.shape), {}

    bounds = (np.full((5, 6), -0.5), np.full((5, 6), 0.5))
    runs = []
    for direct in (True, False):
        monkeypatch.setattr(lbfgsb_module, "_SETULB_OK", direct)
        res = lbfgsb_module.lbfgsb(objective, np.zeros((5, 6)), 40, bounds=bounds, history=5)
        runs.append([r.loss for r in res.history])
    assert lbfgsb_module._probe_setulb()
    assert runs[0] == runs[1]


def test_backtracked_step_by_hand():
    from nst_core.optim.twoloop import _backtracked
    # f(0) = 1, slope -1, f(1) = 1.5: the quadratic 1 - t + 1.5 t^2 has its minimum at t = 1/3
    assert _backtracked(1.0, -1.0, 1.0, 1.5) == pytest.approx(1 / 3)
    # a very curved model: clamped to 0.1 t; no minimum ahead (concave): half the step
    assert _backtracked(2.0, -2.0, 1.0, 1e6) == pytest.approx(0.2)
    assert _backtracked(2.0, -2.0, 1.0, -5.0) == 1.0
    assert _backtracked(1.0, 0.5, 1.0, 2.0) == 0.5  # the projection bent the step uphill: half
