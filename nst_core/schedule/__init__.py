"""The problem and its schedule: a job's scales (``plan``), the weights and style size calibrated to each scale's
size (``calibration``), one scale's problem and its optimisation (``problem``), the coarse-to-fine run
(``runner``), and the memory a whole run holds (``memory_check``)."""
from .calibration import STYLE_SIZE_LIMIT, Calibration, base_style_size, calibration
from .plan import (ADAM_LATER, BUDGET_POWER, GD_POWER, MIN_BUDGET, MIN_PAIRS, MIN_STEP, PAIRS_DIVISOR, RATIO,
                   budgets, histories, learning_rates, plan, scale_jobs, scale_table, sides)
from .problem import Problem, adam_steps, optimise, prepare, rising_phase
from .memory_check import Footprint, check_memory, footprint
from .runner import ScaleRecord, ScheduleResult, run, upsample

__all__ = ["STYLE_SIZE_LIMIT", "Calibration", "base_style_size", "calibration", "ADAM_LATER", "BUDGET_POWER",
           "GD_POWER", "MIN_BUDGET", "MIN_PAIRS", "MIN_STEP", "PAIRS_DIVISOR", "RATIO", "budgets", "histories",
           "learning_rates", "plan", "scale_jobs", "scale_table", "sides", "Problem", "adam_steps", "rising_phase", "optimise", "prepare",
           "ScaleRecord", "ScheduleResult", "check_memory", "run", "upsample", "Footprint", "footprint"]
