"""nst_core: the runtime of optimization-based neural style transfer on ONNX Runtime, NumPy and SciPy.

Never imports torch. Laid out by the stages of the data flow, each a sub-package that imports only those above it
in this list (tests/test_layout.py checks it)::

    errors      NSTError, the one exception a user sees
    process     the running process: stop signals, memory and huge pages, BLAS threads
    inputs      images decoded, preprocessed and hashed; the colour transforms of original_colors
    spec        the job description: Spec, its validation, defaults and JSON; CS231n's presets; blend weights
    network     the feature model's ONNX Runtime sessions, the VJP builder, the loss graph, pooling, sizes, cache
    losses      content, Gram-style and TV losses with their gradients (NumPy reference)
    objective   targets (content features, blended Grams) and the one-call objective x -> (loss, grad, parts)
    optim       the optimizers: our L-BFGS, SciPy's L-BFGS-B, Adam, gradient descent
    schedule    a job's scales, weights calibrated to the size, one scale's problem, the coarse-to-fine run
    outputs     files written atomically; the recipe a picture carries
    api         stylize / invert / texture / run(Spec): the Python API the CLI is a layer over
    compare     several optimizers on one problem, with plots and summaries
    hosts       the host bundle for other languages and the browser host's server
    video       a clip painted frame by frame without flicker (the ``video`` extra: PyAV, OpenCV)

The public names below load their stage on first use (PEP 562), so that ``import nst_core.errors`` stays light and
``nst`` can re-execute itself for huge pages before NumPy, SciPy and ONNX are imported::

    from nst_core import stylize, invert, texture, run, Spec
    image, result = stylize("tubingen.jpg", "starry_night.jpg", preset="starry_night")
"""
import importlib

from .errors import NSTError

__all__ = ["NSTError", "stylize_video", "stylize", "invert", "texture", "run", "prepare", "Spec", "resolve", "compare"]

_LAZY = {"stylize_video": "video", "stylize": "api", "invert": "api", "texture": "api", "run": "api",
         "prepare": "api",
         "Spec": "spec.spec", "resolve": "spec.spec", "compare": "compare"}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return module if name == "compare" else getattr(module, name)
    raise AttributeError(f"module 'nst_core' has no attribute {name!r}")
