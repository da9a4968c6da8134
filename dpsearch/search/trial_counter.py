"""Every trial a sweep ever starts, recorded in its storage as it starts.

The released ε composes over all trials that touched the private data. Ray's experiment state is not
enough to count them: when it cannot be restored a fresh Tuner starts and forgets the earlier trials.
This driver-side callback appends each trial id to `dpsearch/trials_started.json` before the trial
runs, and privacy/report.py counts that list (restored or not, errored included).
"""

from __future__ import annotations

import json

from ray.tune import Callback

from dpsearch.sweep_store import STARTED
from dpsearch.storage import Store


class TrialCounter(Callback):
    def __init__(self, meta_uri: str):
        self.meta_uri = meta_uri  # a URI, not a Store: Ray pickles callbacks into its experiment state

    def started(self) -> list[str]:
        meta = Store(self.meta_uri)
        return json.loads(meta.read_text(STARTED)) if meta.exists(STARTED) else []

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        ids = self.started()
        if trial.trial_id not in ids:
            Store(self.meta_uri).write_text(STARTED, json.dumps([*ids, trial.trial_id]))
