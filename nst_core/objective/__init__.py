"""Targets and objective: the content features and Gram targets (``targets``), the one-call objective
x -> (loss, grad, parts) (``objective``) and the whole-picture term of later scales (``pyramid``)."""
from .objective import make_objective
from .targets import active_layers, blended_grams, targets

__all__ = ["make_objective", "targets", "active_layers", "blended_grams"]
