"""The job description: the typed ``Spec`` (``spec``), CS231n's parameter sets (``presets``) and the style blend's
weights (``blend``)."""
from .presets import DEFAULT_PRESET, PRESETS
from .spec import (ADAM_LR, DEFAULT_ITERATIONS, GD_LR, LBFGS_HISTORY, NUM_LAYERS, WHOLE_WEIGHT, Spec, check_layer,
                   from_dict, from_json, make, override, resolve, to_dict, to_json)

__all__ = ["Spec", "make", "resolve", "override", "to_dict", "from_dict", "to_json", "from_json", "check_layer",
           "PRESETS", "DEFAULT_PRESET", "ADAM_LR", "GD_LR", "LBFGS_HISTORY", "DEFAULT_ITERATIONS", "WHOLE_WEIGHT",
           "NUM_LAYERS"]
