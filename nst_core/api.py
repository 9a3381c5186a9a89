"""The Python API: style transfer, feature inversion and texture synthesis (the CLI is a thin layer over it).

    image, result = stylize("tubingen.jpg", "starry_night.jpg")              # Starry Night on Tübingen
    image, result = stylize(content, style, preset="scream", optimizer="adam")   # the CS231n exercise exactly
    image, result = invert("tubingen.jpg")                                    # reconstruct from layer-3 features
    image, result = texture("starry_night.jpg", size=256)                     # a texture of the painting

    image, result = run(Spec(task="stylize", content="tubingen.jpg", styles=("starry_night.jpg",)))

``callback(record, x)`` is called after every evaluation (``optim`` semantics; x is read-only). ``image`` is uint8 [h, w, 3] (RGB, the best evaluated point, clipped to the valid range); ``result`` is the
optimizer's ``nst_core.optim.Result`` (``result.x`` normalised float64 [1, 3, h, w], ``result.history`` one record
per objective evaluation with the loss and its parts "content", "style", "tv", ``result.status`` one of budget,
converged, interrupted (Ctrl-C: the best image so far is still returned), nonfinite).

Options (keyword arguments; None means "the preset's value" / the default shown)
    preset          CS231n parameter set for ``stylize``: composition_vii, scream, starry_night (default starry_night)
    size            smaller edge of the output image in pixels (content image, or the style image for ``texture``)
    style_size      smaller edge of the style image when its Gram matrices are computed (pixels); default: the
                    preset's, scaled with ``size`` (``preset style_size * size / calibration_size``, never beyond
                    the style file's smaller edge when that enlarges it; exactly the preset's at its own size)
    calibration_size  the size (smaller edge, px) at which the weights mean what they say (default: the preset's
                    image size, 192); at another size the content and TV weights are multiplied by
                    ``losses.size_factor`` (pixels at calibration_size / pixels at size); 0: no rescaling
    scales          "auto" or N >= 1: the coarse-to-fine schedule (``nst_core.schedule``): auto is one scale up to
                    1.5 x calibration_size and more above; 1 is a single scale at ``size``
    whole_weight    stylize and texture with several scales: weight of the first scale's style term on the picture
                    downsampled to the first scale, kept at every later scale (``nst_core.pyramid``; default
                    ``WHOLE_WEIGHT``, 1: as much as at the first scale; 0: off)
    content_layer   SqueezeNet ``features`` index 0..12 of the content loss
    content_weight  weight of the content loss (>= 0)
    style_layers    sequence of ``features`` indices 0..12 of the style loss
    style_weights   one weight (>= 0) per style layer, in CS231n units
    style_scale     multiplies every style weight; default ``presets.DEFAULT_STYLE_SCALE[optimizer]`` (lbfgs and
                    lbfgsb 100, gd 100, adam 1)
    tv_weight       weight of the total-variation loss (>= 0)
    init            start image: "content", "noise" (uniform(0, 1) in normalised space, CS231n's init_random) or
                    "style" (the style image resized to the output's shape; of several, the most heavily weighted)
    optimizer       "lbfgs" (our NumPy L-BFGS, projected onto the pixel range; ``optim.lbfgs``), "lbfgsb" (SciPy's
                    L-BFGS-B with the pixel bounds), "adam" (CS231n's recipe) or "gd"
    iterations      objective evaluations (the budget), >= 1; with several scales, the first scale's (the later
                    ones get fewer: ``schedule.budgets``)
    lr              adam: initial learning rate (default 3.0; the recipe switches to lr/30 at 90% of the
                    evaluations and clamps to [-1.5, 1.5] until 95%, i.e. steps 180 and 190 of 200);
                    gd: step size (default ``GD_LR``); ignored by lbfgs and lbfgsb; with several scales, the
                    first scale's (the later ones: ``schedule.learning_rates``)
    history         L-BFGS memory (correction pairs) of lbfgs and lbfgsb, default ``LBFGS_HISTORY`` (the later scales
                    of a schedule keep fewer unless it is given: ``schedule.histories``)
    seed            seed of the noise initialisation (None: fresh randomness)
    device          "auto", "cpu" or "cuda" (ONNX Runtime execution provider)
    model           path of features.onnx (default: $NST_HOME or the cache directory, see ``nst_core.model``)
    original_colors stylize: "off" (default), "luminance" (transfer on luminance, the content's chroma kept) or
                    "match" (the style's colours matched to the content's first); ``nst_core.colour``
    style_blend     stylize: one weight >= 0 per style image when ``style`` is a list (normalised to sum 1;
                    default equal); each layer's target Gram matrix is the blend of the styles'; ``nst_core.blend``
    pooling         "max" (default, SqueezeNet's) or "avg": the network's max pools become average pools
                    (``nst_core.pooling``)

The options are the fields of ``nst_core.spec.Spec``: every call builds one, validated before any image is decoded
or any model loaded (problems raise ``NSTError`` with a one-line message), and ``run(job)`` runs a Spec itself
(``nst stylize --spec``). Images given as paths go into the Spec (a picture's recipe records them); PIL images are
passed beside it. Networks are cached per process (``network.cache``).
"""
from __future__ import annotations
from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image

from . import optim
from .errors import NSTError
from .inputs.images import open_image, upright_size
from .network import model as _model
from .process import memory
from .schedule import check_memory, optimise, prepare as prepare_scale, run as run_schedule, scale_jobs
from .schedule.problem import Problem
from .spec.blend import as_list, blend_weights
from .spec.spec import Spec, make, resolve

__all__ = ["stylize", "invert", "texture", "run", "prepare", "job_of", "open_inputs"]


def _is_path(source) -> bool:
    return isinstance(source, (str, bytes, os.PathLike))


def _open(source, what: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if _is_path(source):
        return open_image(source)
    raise TypeError(f"{what} must be a path or a PIL image, got {type(source).__name__}")


def job_of(task: str, content=None, style=None, **options) -> tuple[Spec, dict]:
    """The resolved Spec of an API call, and the images given as PIL images (``{"content": im, "styles": [...]}``;
    paths go into the Spec). ``options``: Spec fields."""
    styles = as_list(style)
    images = {}
    if content is not None and not _is_path(content):
        images["content"], content = content, None
    if styles and not all(_is_path(s) for s in styles):
        images["styles"], styles = styles, []
    job = resolve(make(task, content=None if content is None else os.fspath(content),
                       styles=tuple(os.fspath(s) for s in styles), **options))
    if "styles" in images:  # the count of a blend, before any image is decoded
        blend_weights(job.style_blend, len(images["styles"]))
    return job, images


def open_inputs(job: Spec, content=None, styles=None) -> tuple:
    """The job's images decoded: ``(content PIL or None, [style PIL, ...])``; ``content`` / ``styles`` (PIL images
    or paths) replace the job's paths. NSTError when the task's image is missing or an image cannot be read."""
    content = content if content is not None else job.content
    styles = as_list(styles) if styles else list(job.styles)
    if job.task != "texture" and content is None:
        raise NSTError(f"{job.task} needs a content image")
    if job.task != "invert" and not styles:
        raise NSTError(f"{job.task} needs a style image")
    if job.task == "texture" and len(styles) > 1:
        raise NSTError("texture takes one style image")
    content_img = _open(content, "content") if job.task != "texture" else None
    style_imgs = [_open(s, "style") for s in styles] if job.task != "invert" else []
    return content_img, style_imgs


def run(job: Spec, content=None, styles=None, callback=None) -> tuple[np.ndarray, optim.Result]:
    """Run a job (resolved here if it is not): its model and device are checked, its images decoded (``content`` /
    ``styles``: PIL images or paths replacing the job's), its memory estimated, then one scale is optimised or the
    coarse-to-fine schedule run. Returns the picture (uint8 [h, w, 3]) and the ``optim.Result``."""
    job = resolve(job)
    _model.find_model(job.model)  # NSTError (how to make one) before decoding any image
    _model.providers(job.device)  # cuda without onnxruntime-gpu
    sizes = _header_sizes(job, content, styles)
    if sizes is not None:  # before decoding: a run that cannot fit never decodes its (maybe huge) images
        check_memory(job, *sizes, decoded=False)
    content_img, style_imgs = open_inputs(job, content, styles)
    fp = check_memory(job, content_img, style_imgs)  # before any work, with what the decoded images hold
    try:
        jobs = scale_jobs(job)
        if len(jobs) > 1:
            return run_schedule(job, content_img, style_imgs, callback)
        problem = prepare_scale(jobs[0], content_img, style_imgs)
        result = optimise(problem, callback)
        return problem.finish(result.x), result
    except Exception as exc:  # an allocation that failed in spite of the estimate: one line naming the option
        if memory.is_allocation_failure(exc):
            raise NSTError(f"out of memory: {fp.what} needs about {fp.peak_mb / 1024:.1f} GB by the estimate, and "
                           f"an allocation failed; use a smaller {fp.option}") from None
        raise


def _header_sizes(job: Spec, content, styles):
    """((width, height) of the content or None, [(width, height) of each style]) from the files' headers or the
    PIL images given, without decoding; None when one is unknown (not a regular file, unreadable: decoding
    reports it)."""
    content = content if content is not None else job.content
    styles = as_list(styles) if styles else list(job.styles)
    sources = ([content] if job.task != "texture" else []) + (styles if job.task != "invert" else [])
    sizes = [s.size if isinstance(s, Image.Image) else upright_size(s) if _is_path(s) else None for s in sources]
    if not sources or any(size is None for size in sizes):
        return None
    return (sizes[0] if job.task != "texture" else None), (sizes[1:] if job.task != "texture" else sizes)


def prepare(task: str, content=None, style=None, **options) -> Problem:
    """The single-scale problem of ``task`` at ``size`` (the schedule's ``scales`` ignored) without optimising it:
    a ``schedule.Problem`` whose objective and start image several optimizers can share (``nst compare`` does).
    ``content`` / ``style``: paths or PIL images (``style`` one or a list). Raises ``NSTError`` like ``stylize``."""
    job, images = job_of(task, content, style, **options)
    _model.find_model(job.model)
    content_img, style_imgs = open_inputs(job, images.get("content"), images.get("styles"))
    single = dataclasses.replace(job, scales=1)
    check_memory(single, content_img, style_imgs)  # the problem and one optimizer's run (compare keeps more)
    return prepare_scale(scale_jobs(single)[0], content_img, style_imgs)


def stylize(content, style, callback=None, **options) -> tuple[np.ndarray, optim.Result]:
    """Paint ``content`` in the style of ``style`` (paths or PIL images; ``style`` may be a list of them, blended
    by ``style_blend``); see the module docstring for options.

    Defaults: preset starry_night's sizes, layers and weights, init "content", L-BFGS with 200 evaluations and
    style scale 100 (Adam: 1, i.e. CS231n exactly). Returns ``(image uint8 [h, w, 3], Result)``; h, w: the
    content image with its smaller edge resized to ``size``.
    """
    job, images = job_of("stylize", content, style, **options)
    return run(job, images.get("content"), images.get("styles"), callback)


def invert(content, callback=None, **options) -> tuple[np.ndarray, optim.Result]:
    """Feature inversion: reconstruct ``content`` from its features at ``content_layer`` (style weights 0).

    Defaults (CS231n): size 192, content layer 3, content weight 6e-2, TV weight 2e-2, init "noise",
    L-BFGS with 200 evaluations. Returns ``(image uint8 [h, w, 3], Result)``.
    """
    job, images = job_of("invert", content, None, **options)
    return run(job, images.get("content"), None, callback)


def texture(style, callback=None, **options) -> tuple[np.ndarray, optim.Result]:
    """Texture synthesis: an image with the Gram statistics of ``style`` (content weight 0), from noise.

    ``size`` is the smaller edge of the output, which has the style image's aspect ratio; ``style_size``
    (default: ``size``) the style image's when its Gram matrices are computed. Defaults: Starry Night's style
    layers and weights (CS231n), TV weight 2e-2, style scale per optimizer, L-BFGS with 200 evaluations.
    Returns ``(image uint8 [h, w, 3], Result)``.
    """
    job, images = job_of("texture", None, style, **options)
    return run(job, None, images.get("styles"), callback)
