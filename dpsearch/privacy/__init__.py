"""Noise calibration and privacy accounting for one DP-SGD run."""

from dpsearch.config import EPS_MAX, check_eps_range
from dpsearch.privacy.accounting import (PrivacyRecord, calibrate_sigma, check_accountants,
                                         epsilon_for, pld_epsilon, poisson_plan)

__all__ = ["EPS_MAX", "PrivacyRecord", "calibrate_sigma", "check_accountants", "check_eps_range", "epsilon_for",
           "pld_epsilon", "poisson_plan"]
