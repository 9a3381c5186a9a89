"""Several optimizers on one problem: the same objective, start image and budget for each, with the loss curves,
the pictures and the summaries written side by side (``comparison``)."""
from .comparison import (DEFAULT_CHECKPOINTS, DEFAULT_OPTIMIZERS, FILES, GD_LR, KINDS, PLOTS_HINT, compare,
                         default_gd_lr, table)

__all__ = ["compare", "table", "default_gd_lr", "KINDS", "DEFAULT_OPTIMIZERS", "DEFAULT_CHECKPOINTS", "GD_LR",
           "PLOTS_HINT", "FILES"]
