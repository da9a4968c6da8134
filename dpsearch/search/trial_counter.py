"""Every trial attempt a sweep ever starts, recorded in its storage as it starts.

The released ε composes over all runs that touched the private data. Ray's experiment state is not
enough to count them: when it cannot be restored a fresh Tuner starts and forgets the earlier trials.
This driver-side callback appends each trial id to `dpsearch/trials_started.json` before the trial
runs, and privacy/report.py counts that list (restored or not, errored included).

A trial that errored and is started again (`--retry-errored`) is appended once more: its failed epoch ran
with noise whose outcome was partly released (the error, the epochs reported before it), and the retry draws
that epoch again with fresh noise, so it is counted as one more whole run (an upper bound). A trial that was
merely interrupted (the sweep stopped) and continues from its last checkpoint is not: nothing of its
unfinished epoch left the trial, and the continuation is the same single run of the mechanism.
"""

from __future__ import annotations

import json

from ray.tune import Callback

from dpsearch.sweep_store import STARTED
from dpsearch.storage import Store

ERRORED = "trials_errored.json"  # ids of trials that errored and have not been started again


class TrialCounter(Callback):
    def __init__(self, meta_uri: str):
        self.meta_uri = meta_uri  # a URI, not a Store: Ray pickles callbacks into its experiment state

    def _read(self, name: str) -> list[str]:
        meta = Store(self.meta_uri)
        return json.loads(meta.read_text(name)) if meta.exists(name) else []

    def started(self) -> list[str]:
        """One entry per counted run: a retried trial's id appears once per attempt."""
        return self._read(STARTED)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        ids, errored = self.started(), self._read(ERRORED)
        meta = Store(self.meta_uri)
        if trial.trial_id not in ids or trial.trial_id in errored:
            meta.write_text(STARTED, json.dumps([*ids, trial.trial_id]))
        if trial.trial_id in errored:
            meta.write_text(ERRORED, json.dumps([t for t in errored if t != trial.trial_id]))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        errored = self._read(ERRORED)
        if trial.trial_id not in errored:
            Store(self.meta_uri).write_text(ERRORED, json.dumps([*errored, trial.trial_id]))
