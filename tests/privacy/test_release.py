"""The release boundary: nothing computed from the private data leaves a trial unless it is DP output,
accounted for, public, or an oracle metric labelled as one."""

import json

import pytest

from dpsearch.privacy.release import RAY_BOOKKEEPING, RAY_CLOCK, RELEASED_FILES, allowed, release

HISTORY_FIELDS = {"epoch", "eps_spent", "delta", "steps"}
CONFIG_PARAMS = {"layers", "method", "rank", "clip", "batch", "lr", "epochs", "multiplicity", "layer_a", "layer_b"}  # the trial's configuration: public


def test_an_unlisted_field_is_refused_not_logged():
    assert release({"objective": 0.5, "oracle/accuracy": 0.9, "privacy/eps": 1.0}) == {
        "objective": 0.5, "oracle/accuracy": 0.9, "privacy/eps": 1.0}
    with pytest.raises(ValueError, match="not on the release allowlist"):
        release({"objective": 0.5, "train_loss": 0.1})
    with pytest.raises(ValueError, match="not on the release allowlist"):
        release({"grad_norm": 3.0})
    assert not allowed("oracle") and allowed("oracle/accuracy") and not allowed("oracle/train_loss")


@pytest.mark.parametrize("key", ["time/finetune_s", "time/sample_s", "time/evaluate_s", "time/epoch_s"])
def test_per_phase_wall_times_are_refused_only_the_trials_whole_minutes_leave(key):
    """A fine-tune's wall time tracks the sum of its Poisson batch sizes: an unnoised count of private records."""
    with pytest.raises(ValueError, match="not on the release allowlist"):
        release({"objective": 0.5, "time/total_min": 3, key: 412.7})
    assert release({"objective": 0.5, "time/total_min": 3}) == {"objective": 0.5, "time/total_min": 3}
    assert RAY_CLOCK <= RAY_BOOKKEEPING and not any(allowed(k) for k in RAY_CLOCK)  # Ray's clock is not ours to release


def _storage_files(root: str) -> dict[str, bytes | None]:
    """Every file under an s3:// sweep, with the contents of the small JSON ones."""
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(root)
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type == pafs.FileType.File:
            rel = info.path[len(base) + 1:]
            small = rel.endswith((".json", ".csv")) and info.size < 5_000_000
            out[rel] = fs.open_input_file(info.path).read() if small else None
    return out


@pytest.mark.e2e
def test_nothing_private_crosses_the_boundary_of_a_real_tracked_sweep(tracked, tmp_path):
    from mlflow import MlflowClient

    from dpsearch import services

    client = MlflowClient(services.load().mlflow_uri)
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("dpsearch.kind") == "trial"]
    assert len(trials) == 3
    for r in trials:
        assert [k for k in r.data.metrics if not allowed(k)] == []
        assert [k for k in r.data.params if k not in CONFIG_PARAMS and not allowed(k)] == []
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["samples.png"]

    files = _storage_files(tracked.path)
    checkpoints = {k: v for k, v in files.items() if "/checkpoint_" in k}
    assert checkpoints
    for path, blob in checkpoints.items():
        inner = path.split("/checkpoint_", 1)[1].split("/", 1)[1]
        assert inner in RELEASED_FILES or inner.split("/")[0] + "/" in RELEASED_FILES, path
        if inner == "result.json":
            assert [k for k in json.loads(blob) if not allowed(k)] == []
        if inner == "history.json":
            assert all(set(e) <= HISTORY_FIELDS for e in json.loads(blob)["epochs"])
    # Ray's own per-trial result log holds only released fields and its bookkeeping
    ray_results = [v for k, v in files.items() if k.endswith("/result.json") and "/checkpoint_" not in k
                   and "/dpsearch/" not in "/" + k]
    # the sweep's own release: the final model and what it generated, the privacy record, the choices made
    final = {("/" + k).split("/dpsearch/final/", 1)[1] for k in files if "/dpsearch/final/" in "/" + k}
    # (trained/: the final run's model and record, stored as soon as trained; manifest.json: what `pull` checks)
    assert final and all(f.startswith(("model/", "trained/model/", "release/data/train-")) or f in {
        "privacy.json", "result.json", "manifest.json", "release/synthetic.npz", "release/grid.png", "release/card.json",
        "release/DATA_CARD.md", "trained/privacy.json", "trained/manifest.json"} for f in final), final
    assert ray_results
    for blob in ray_results:
        for line in blob.decode().splitlines():
            keys = json.loads(line)
            assert [k for k in keys if not allowed(k) and k not in RAY_BOOKKEEPING] == []
    # nothing anywhere is named after a training loss
    assert not [k for k in files if "train_loss" in k]
    assert not [k for k, v in files.items() if v and b"train_loss" in v]
