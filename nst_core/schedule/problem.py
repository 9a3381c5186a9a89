"""One scale's problem: a single-scale job and its images -> targets, objective, start image; and its optimisation.

    problem = prepare(job, content, styles)      # job: a resolved single-scale Spec (``plan.scale_jobs``)
    result = optimise(problem, callback)         # the job's optimizer, budget, pairs and learning rate
    picture = problem.finish(result.x)           # uint8 [h, w, 3]

    shared = share(job, first, styles)           # what problems of one size share: network, style targets, colour
    problem = prepare(job, frame, styles, shared=shared)   # match (a video's frames: nst_core.video)
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from .. import optim
from ..inputs import colour
from ..inputs.images import deprocess, pixel_bounds, preprocess
from ..network import cache
from ..network import model as _model
from ..objective import active_layers, blended_grams, make_objective, targets
from ..process.threads import single_threaded_blas
from ..spec.blend import blend_weights
from ..spec.spec import LBFGS_HISTORY, Spec
from ..errors import NSTError
from .calibration import Calibration, calibration

__all__ = ["Problem", "Shared", "share", "prepare", "optimise", "adam_steps", "ADAM_DECAY", "ADAM_CLAMP_UNTIL",
           "ADAM_DECAY_FACTOR", "ADAM_CLAMP"]

#: CS231n's Adam recipe, as fractions of the budget: a fresh Adam at lr / ADAM_DECAY_FACTOR from ADAM_DECAY of the
#: evaluations on (step 180 of 200), x clamped to ADAM_CLAMP until ADAM_CLAMP_UNTIL (step 190 of 200).
ADAM_DECAY = 0.9
ADAM_CLAMP_UNTIL = 0.95
ADAM_DECAY_FACTOR = 30.0
ADAM_CLAMP = (-1.5, 1.5)


def adam_steps(budget: int) -> tuple[int, int]:
    """(decay_at, clamp_until) evaluations of the Adam recipe for a budget (``nst compare`` reports these)."""
    return round(ADAM_DECAY * budget), round(ADAM_CLAMP_UNTIL * budget)


def rising_phase(job: Spec) -> Optional[int]:
    """The last evaluation (1-based, of one scale's run) of the phase in which the job's optimizer lets the loss
    rise: Adam's recipe until just after its decay, gradient descent's first step; None for L-BFGS / L-BFGS-B. An
    interrupted run whose best point is no later keeps its latest point (``optim``'s ``falls_after``), and so do
    the intermediate pictures of ``--save-every``."""
    if job.optimizer == "adam":
        return adam_steps(job.iterations)[0] + 1
    return 1 if job.optimizer == "gd" else None


@dataclasses.dataclass(frozen=True)
class Problem:
    """One prepared optimisation problem: everything an optimizer needs, built once, optimisable many times.

    objective : ``objective(x) -> (loss, grad, parts)``: x float64 [1, 3, h, w] (ImageNet-normalised pixels), loss a
        float, grad float64 [1, 3, h, w], parts ``{"content", "style", "tv"}`` (floats, unitless loss terms).
    x0 : float64 [1, 3, h, w], read-only: the start image, normalised, NOT yet clipped to ``bounds``. At a later
        scale of ``schedule.run`` an array-like with ``shape`` that makes the upsampled start only when an
        optimizer copies it (``np.array(x0)``).
    bounds : (lo, hi), read-only broadcast float64 views of [1, 3, h, w]: the normalised [0, 1] pixel range.
    job : the single-scale Spec it was made from (its optimizer, budget, pairs and learning rate).
    calibration : the size-dependent weights and style size used (``schedule.calibration``).
    finish : ``finish(x) -> uint8 [h, w, 3]``: ``deprocess``, or with ``original_colors="luminance"`` the
        luminance joined with the content's chroma (``colour.recombine``).
    """

    objective: Callable
    x0: np.ndarray
    bounds: tuple
    job: Spec
    calibration: Optional[Calibration] = None
    finish: Callable = deprocess


def box(shape) -> tuple[np.ndarray, np.ndarray]:
    """``pixel_bounds`` as two read-only float64 views of ``shape`` [1, 3, h, w] over 3 values each."""
    lo, hi = pixel_bounds((1, 3, 1, 1))
    return np.broadcast_to(lo.reshape(1, 3, 1, 1), shape), np.broadcast_to(hi.reshape(1, 3, 1, 1), shape)


def _resized(image, width: int, height: int):
    """A PIL image or a float [H, W, 3] array resized (bilinear) to exactly width x height."""
    if isinstance(image, Image.Image):
        return image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32))
                                .resize((width, height), Image.Resampling.BILINEAR)) for c in range(3)], axis=2)


def _check_size(side: int, minimum: int, option: str, layers) -> None:
    if side < minimum:
        what = f"--size {side}" if option == "--size" else f"the style size {side} px"
        raise NSTError(f"{what} is too small for layer {max(layers)}: the network needs at least "
                       f"{minimum} px there; use {option} >= {minimum}")


def _start(job: Spec, base_x: np.ndarray, has_content: bool, style_imgs, weights) -> np.ndarray:
    """The start image x0, float64 [1, 3, h, w] of ``base_x``'s shape, for ``job.init``."""
    if job.init == "content" or (job.init == "style" and not has_content):
        return base_x.astype(np.float64)
    if job.init == "noise":
        x0 = np.random.default_rng(job.seed).uniform(0.0, 1.0, size=base_x.shape)
        return colour.grey_normalised(x0) if job.original_colors == "luminance" else x0
    h, w = base_x.shape[2:]  # the (most heavily weighted) style image resized to the output's exact shape
    return preprocess(_resized(style_imgs[int(np.argmax(weights))], w, h), None).astype(np.float64)


def _network_for(job: Spec, cal: Calibration, layers):
    """The cached network of the job's active layers, after the sizes are checked against what they need."""
    model_path = _model.find_model(job.model)
    minimum = cache.min_size(model_path, layers)  # graph arithmetic only, before any session is built
    _check_size(job.size, minimum, "--size", layers)
    if any(job.effective_style_weights):  # the style image goes through every active layer too
        _check_size(cal.style_size, minimum, "--style-size", layers)
    return cache.network(model_path, layers, job.device, job.pooling)


@dataclasses.dataclass(frozen=True)
class Shared:
    """What every problem of one job and one content size shares (a video's frames: ``nst_core.video``): the
    calibration, the network of the active layers, the blended style Gram matrices {layer: float32 [C, C]}, the
    style images as the network sees them (``colour.network_images``: matched to the first content once) and the
    blend's weights."""

    calibration: Calibration
    network: object
    grams: dict
    style_imgs: list
    weights: tuple


def share(job: Spec, content: Optional[Image.Image] = None, styles: Sequence[Image.Image] = ()) -> Shared:
    """The part of ``prepare`` that does not depend on the content's pixels, only on its size (and, for
    ``original_colors`` "match" / "luminance", on its colours, taken from ``content`` once)."""
    styles = list(styles)
    weights = tuple(blend_weights(job.style_blend, len(styles))) if styles else ()
    smallest = min(styles, key=lambda im: min(im.size)) if styles else None  # it caps the style size
    cal = calibration(job, content if content is not None else smallest, smallest)
    _, style_imgs = colour.network_images(job.original_colors or "off", content, styles)
    content_layer, _ = job.content_terms
    style_weights = job.effective_style_weights
    layers = active_layers(content_layer, cal.content_weight, job.style_layers or (), style_weights)
    network = _network_for(job, cal, layers) if layers else None
    grams = {}
    if network is not None and style_imgs and any(style_weights):  # each style at the style size; weight 0 skipped
        style_xs = [preprocess(s, cal.style_size) if w else None for s, w in zip(style_imgs, weights)]
        with single_threaded_blas():
            grams = blended_grams(network, style_xs, weights, [k for k, w in zip(job.style_layers, style_weights) if w])
    return Shared(calibration=cal, network=network, grams=grams, style_imgs=style_imgs, weights=weights)


def prepare(job: Spec, content: Optional[Image.Image] = None, styles: Sequence[Image.Image] = (),
            shared: Optional[Shared] = None) -> Problem:
    """The problem of a resolved single-scale ``job`` with its decoded images (PIL; ``content`` None for texture,
    ``styles`` empty for invert): targets, objective and start image at ``job.size``. ``shared``: the ``share`` of
    an earlier content of the same size (its styles are then not looked at again)."""
    shared = shared if shared is not None else share(job, content, styles)
    cal, network, style_imgs = shared.calibration, shared.network, shared.style_imgs
    content_img, _ = colour.network_images(job.original_colors or "off", content, [])
    content_layer, _ = job.content_terms
    base_x = preprocess(content_img if content is not None else style_imgs[0], job.size)
    content_x = base_x if content is not None and cal.content_weight else None
    content_target = None
    if network is not None and content_x is not None:
        with single_threaded_blas():
            content_target, _ = targets(network, content_x, None, content_layer, ())
    x0 = _start(job, base_x, content is not None, style_imgs, shared.weights)
    objective = make_objective(network, content_target=content_target, content_layer=content_layer,
                               content_weight=cal.content_weight, style_targets=shared.grams,
                               style_layers=job.style_layers or (), style_weights=job.effective_style_weights,
                               tv_weight=cal.tv_weight)
    x0.flags.writeable = False
    finish = colour.finisher(job.original_colors or "off", content)
    return Problem(objective=objective, x0=x0, bounds=box(x0.shape), job=job, calibration=cal, finish=finish)


def _run_optimizer(objective, x0, job: Spec, callback) -> optim.Result:
    budget, name = job.iterations, job.optimizer
    if name in ("lbfgs", "lbfgsb"):
        return optim.OPTIMIZERS[name](objective, x0, budget, bounds=box(x0.shape), history=job.history or LBFGS_HISTORY,
                                      callback=callback)
    if name == "adam":
        decay_at, clamp_until = adam_steps(budget)
        return optim.adam(objective, x0, budget, lr=job.lr, decay_at=decay_at, decayed_lr=job.lr / ADAM_DECAY_FACTOR,
                          clamp=ADAM_CLAMP, clamp_until=clamp_until, callback=callback)
    return optim.gradient_descent(objective, x0, budget, lr=job.lr, bounds=box(x0.shape), callback=callback)


def optimise(problem: Problem, callback=None) -> optim.Result:
    """Run the job's optimizer on ``problem`` (its budget, pairs, learning rate; ``callback(record, x)`` after every
    evaluation): one BLAS thread, no NumPy overflow warnings (non-finite values end the run, status "nonfinite")."""
    with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _run_optimizer(problem.objective, problem.x0, problem.job, callback)
