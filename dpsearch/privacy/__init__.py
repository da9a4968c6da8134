"""Noise calibration and privacy accounting for one DP-SGD run."""

from dpsearch.privacy.accounting import (PrivacyRecord, calibrate_sigma, epsilon_for, pld_epsilon,
                                         poisson_plan)

__all__ = ["PrivacyRecord", "calibrate_sigma", "epsilon_for", "pld_epsilon", "poisson_plan"]
