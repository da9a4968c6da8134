"""The sweep: Ray Tune + Optuna over the layer range, C, B, lr and epochs, every trial under one fixed ε.

It orchestrates the pipeline functions (finetune, sample, evaluate); each module here owns one thing about
many trials: options, resources, the validation generator, the trainable, the sweep and its stages, the summary.
"""

from dpsearch.search.options import SweepOptions
from dpsearch.search.sweep import run_sweep
from dpsearch.search.summary import SweepResult, format_summary

__all__ = ["SweepOptions", "SweepResult", "format_summary", "run_sweep"]
