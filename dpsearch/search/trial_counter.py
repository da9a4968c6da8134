"""Every trial attempt a sweep ever starts, recorded in its storage as it starts.

The released ε composes over all runs that touched the private data. Ray's experiment state is not
enough to count them: when it cannot be restored a fresh Tuner starts and forgets the earlier trials.
This driver-side callback appends the trial id to `dpsearch/trials_started.json` every time a trial starts,
before it runs, and privacy/report.py counts that list (restored or not, errored included).

Every start counts as one whole run, a restart included: an errored trial retried by `--retry-errored` draws
its failed epoch again with fresh noise after part of it was released (the epochs reported before it, and the
error itself), and even a trial merely interrupted may have written a newer checkpoint to storage (inside
`tune.report`, on the worker) that the driver never recorded, so its resume draws that epoch a second time
beside the first. Counting each start as a whole run is an upper bound that covers both.
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
        """One entry per counted run: a restarted trial's id appears once per start."""
        meta = Store(self.meta_uri)
        return json.loads(meta.read_text(STARTED)) if meta.exists(STARTED) else []

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        Store(self.meta_uri).write_text(STARTED, json.dumps([*self.started(), trial.trial_id]))
