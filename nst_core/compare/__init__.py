"""Several optimizers on one problem: the same objective, start image and budget for each (``comparison``), the
runs (``runs``), the summaries (``report``) and the plots (``plots``)."""
from .comparison import DEFAULT_CHECKPOINTS, FILES, PLOTS_HINT, compare
from .report import table
from .runs import DEFAULT_OPTIMIZERS, GD_LR, KINDS, default_gd_lr

__all__ = ["compare", "table", "default_gd_lr", "KINDS", "DEFAULT_OPTIMIZERS", "DEFAULT_CHECKPOINTS", "GD_LR",
           "PLOTS_HINT", "FILES"]
