"""What a checkpoint holds to continue a DP fine-tune exactly where it stopped, and the plan a resume continues."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch

from dpsearch.config import ConfigError, FinetuneConfig
from dpsearch.privacy import check_accountants, epsilon_for
from dpsearch.privacy.sigma_memo import valid as valid_sigma

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("epoch", "eps_spent", "delta", "steps")  # per epoch; all from the privacy plan


@dataclass
class FinetuneState:
    """What a checkpoint must hold to continue a DP fine-tune exactly where it stopped.

    The privacy plan (q, total steps) is recomputed from the config and the σ the first steps ran at is carried
    (resumed_plan); so are the progress (epochs and DP steps done), the trainable weights and the optimizer state.
    """

    epoch: int
    steps: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    history: list[dict]
    ema: dict | None = None  # the EMA's state (cfg.ema), post-processing of the iterates above
    warmup_sigma: float | None = None  # σ_w of the class-mean release these weights already hold (cfg.warmup)
    lr: dict | None = None  # {"lr", "lr_schedule"}: a resume must continue the same step-size curve
    sigma: float | None = None  # the noise multiplier of the steps taken: a resume continues with it

    def save(self, path) -> None:
        history = json.loads(json.dumps(self.history, default=float))  # plain floats: numpy scalars need unpickling
        torch.save({"epoch": self.epoch, "steps": self.steps, "trainable": self.trainable,
                    "optimizer": self.optimizer, "history": history, "ema": self.ema,
                    "warmup_sigma": self.warmup_sigma, "lr": self.lr, "sigma": self.sigma}, path)

    @classmethod
    def load(cls, path) -> "FinetuneState":
        import numpy as np

        # weights_only stays on (a checkpoint from storage is untrusted input); states written before the
        # history was saved as plain floats hold numpy float64 scalars, allowed here by name.
        allowed = [np._core.multiarray.scalar, np.dtype, type(np.dtype(np.float64))]
        try:
            with torch.serialization.safe_globals(allowed):
                d = torch.load(path, weights_only=True)
            # States written before the release boundary also held the private training loss: it is dropped.
            history = [{k: v for k, v in h.items() if k in HISTORY_FIELDS} for h in d["history"]]
            sigma = d.get("sigma")
            if sigma is not None and not valid_sigma(sigma):
                raise ValueError(f"σ = {sigma!r} is no noise level a calibration gives")
            return cls(int(d["epoch"]), int(d["steps"]), d["trainable"], d["optimizer"], history, d.get("ema"),
                       d.get("warmup_sigma"), d.get("lr"), None if sigma is None else float(sigma))
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
            raise ConfigError(f"checkpoint {path} is corrupt or not a dpsearch fine-tune state ({e}); "
                              f"delete it to restart the trial from scratch") from e


def resumed_plan(plan, sigma: float, cfg: FinetuneConfig):
    """The plan with the σ its first steps ran at. Calibration can answer a little differently between a run's start
    and its resume (a σ remembered on one node and not on another, privacy/sigma_memo.py, or another accountant
    version); the accountant's history must be the run's own, so the run continues at its σ, once the requested
    accountant accepts it for the whole plan and PLD confirms it."""
    if epsilon_for(sigma, plan.q, plan.steps, plan.delta, cfg.accountant, plan.warmup_sigma) > cfg.eps:
        raise ConfigError(f"checkpoint was written by a run with σ = {sigma:.4f}, which the {cfg.accountant.upper()} "
                          f"accountant does not accept for ε = {cfg.eps:g} (this config plans σ = {plan.sigma:.4f}); "
                          f"resume with the config it was started with, or delete it to restart the trial")
    pld = check_accountants(sigma, plan.q, plan.steps, plan.delta, cfg.accountant, plan.warmup_sigma)
    log.info("resuming at the σ = %.4f the run started with (calibration now gives %.4f)", sigma, plan.sigma)
    return plan._replace(sigma=sigma, eps_pld_check=pld)
