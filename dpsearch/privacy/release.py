"""The release boundary: the one place that decides what may leave a trial.

A trial may release its DP model, its privacy record, its synthetic samples and whatever is computed
only from those and public data, and oracle metrics on the real test split (labelled `oracle/`, never
used to choose anything). Every field that reaches Ray's results, MLflow, a checkpoint, a report or
`dpsearch pull` is listed here with the reason it may leave; anything unlisted is refused, so a new
metric cannot leak by being added to a dict somewhere. Nothing unnoised computed from the private
training data (a loss, a count, a norm) is on the list.
"""

from __future__ import annotations

# key (or prefix ending in "/") → why it may leave a trial
RELEASED_FIELDS: dict[str, str] = {
    "epoch": "public: position in the step plan",
    "steps": "public: the step plan",
    "done": "public: whether the trial finished",
    "eps_spent": "privacy accounting of the plan (a function of σ, q, steps, δ only)",
    "delta": "public: chosen before training",
    "val_loss": "DP post-processing: diffusion loss of the DP model on the DP synthetic validation set",
    "objective": "DP post-processing: accuracy on the DP synthetic validation set",
    "n_synthetic": "public: number of synthetic images asked for",
    "fid_extractor": "public: a setting",
    "layers": "public: the trial's configuration",
    "synthetic/": "DP post-processing: computed from the trial's synthetic images and the DP validation set",
    "oracle/accuracy": "oracle metric on the real test split: not DP, labelled, never used for selection",
    "oracle/fid": "oracle metric on the real test split: not DP, labelled, never used for selection",
    "oracle/note": "the label saying the oracle metrics are not DP",
    "oracle/n": "public: a setting (the oracle metrics used the first n records of the test split)",
    "privacy/": "the privacy record: σ, q, steps, ε, δ, accountant, trainable parameter counts (public or accounted)",
    # Per-phase seconds (`time/finetune_s`, ...) are not on the list: a fine-tune's time tracks the sum of its Poisson
    # batch sizes, an unnoised count of private records (docs/privacy.md, "What leaves a trial").
    "time/total_min": "the trial's whole wall time rounded up to whole minutes: what planning a sweep needs, no "
                      "per-phase or per-epoch resolution (not DP: a coarser view of the timing side channel)",
    "node": "public: which Ray node ran the trial",
    "device": "public: cpu or cuda",
}

# Ray Tune's clock fields time each report, so per epoch they track the Poisson batch sizes like `time/finetune_s`
# did. Ray writes them to its own result.json / progress.csv in the sweep's storage (the same side channel as the
# time each report appears there: not covered); dpsearch forwards none of them (tracking.py logs an allowlist).
RAY_CLOCK: frozenset[str] = frozenset({"timestamp", "date", "time_this_iter_s", "time_total_s", "time_since_restore"})

# What Ray Tune adds to every reported result (and writes to its result.json / progress.csv in the sweep's
# storage): bookkeeping about the process and the clock.
RAY_BOOKKEEPING: frozenset[str] = RAY_CLOCK | frozenset({
    "checkpoint_dir_name", "should_checkpoint", "training_iteration", "trial_id", "pid", "hostname", "node_ip",
    "iterations_since_restore", "config", "experiment_tag", "done"})

# Files in a trial's checkpoint directory (and so in `dpsearch pull`).
RELEASED_FILES: dict[str, str] = {
    "model/": "the DP model (diffusers format) with its privacy record",
    "privacy.json": "the privacy record (a sweep trial's also names its sweep and trial id: public bookkeeping that "
                    "says whose released (ε, δ) covers it)",
    "history.json": "per epoch: ε spent, δ, steps (from the plan)",
    "samples.png": "DP synthetic samples",
    "synthetic.npz": "DP synthetic images (written by `dpsearch run`, not by sweep trials)",
    "result.json": "the trial's released fields (this allowlist)",
    "state.pt": "the DP fine-tune's noisy trainable weights and Adam state (post-processing of noisy gradients), "
                "the epoch and the step count, for resume",
    "manifest.json": "sizes and SHA-256 of the files above",
}


def allowed(key: str, table: dict[str, str] = RELEASED_FIELDS) -> bool:
    return key in table or any(p.endswith("/") and key.startswith(p) for p in table)


def release(fields: dict) -> dict:
    """The fields that may leave the trial; an unlisted key is a programming error, never silently logged."""
    unknown = [k for k in fields if not allowed(k)]
    if unknown:
        raise ValueError(f"not on the release allowlist (dpsearch/privacy/release.py): {sorted(unknown)}; "
                         f"add it there with the reason it is DP, public or an oracle metric, or do not report it")
    return dict(fields)


__all__ = ["RAY_BOOKKEEPING", "RAY_CLOCK", "RELEASED_FIELDS", "RELEASED_FILES", "allowed", "release"]
