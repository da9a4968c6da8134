"""How a sweep ends: the released model, its free post-processing choices, its synthetic data set.

- The model: under disjoint slices, the selected configuration trained once more at the total ε on the
  final slice (its configuration is post-processing of DP outputs), from the pretrained model or, with
  --warm-start, from the selected trial's DP weights (post-processing as well); otherwise the selected trial's model.
- Free dimensions (guidance, solver steps): each candidate samples the sweep's usual number of images,
  trains the downstream classifier and is scored on the DP validation set; the best is used. Post-processing
  of DP outputs: no privacy cost. Oracle scores of each candidate are recorded, labelled, and choose nothing.
- The release (synthetic_release.py) with a data card whose guarantee is the sweep's released (ε, δ).
Everything goes to the sweep's storage under final/.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Optional

from dpsearch.data import ImageSet
from dpsearch.search.model_files import unpack_model
from dpsearch.space import SearchSpace
from dpsearch.storage import Store

log = logging.getLogger(__name__)

FINAL = "final"


def trial_config(best: dict) -> dict:
    """The selected trial's configuration as Tune sampled it (method and LoRA rank included); summaries written
    before rows carried it give the display columns, where a LoRA row's method reads "lora r4"."""
    if best.get("config"):
        return dict(best["config"])
    return {k: best[k] for k in ("layers", "clip", "batch", "lr", "epochs", "multiplicity") if k in best}


def final_model(model_files: dict, space: SearchSpace, best: dict, design, seed: int, device: str, store: Store,
                warm_start: bool = False):
    """(model, privacy record, seconds): retrained on the final slice (from the pretrained model, or from the
    selected trial's weights with warm_start), or the selected trial's own model.

    The retrained model is stored under final/ as soon as it exists, so a final stage that dies later (free
    choice, release) reuses it instead of training on the final slice again; a training run that died is counted
    (attempts.json) and the report composes the final part over its runs."""
    import time

    from dpsearch.models import load_ldm
    from dpsearch.pipeline import run_pipeline
    from dpsearch.sweep_store import record_attempt

    t = time.time()
    if design.retrains:
        if store.exists(f"{FINAL}/trained/privacy.json"):
            with tempfile.TemporaryDirectory() as d:
                local = store.download_dir(f"{FINAL}/trained", Path(d) / "trained")
                from dpsearch.checkpoints import verify_local

                verify_local(local)
                log.info("final stage: reusing the final model trained by an earlier run of this stage")
                return load_ldm(local / "model", device), json.loads((local / "privacy.json").read_text()), 0.0
        cfg = space.finetune_config(trial_config(best), design.final_eps, seed, delta=design.delta,
                                    n_public=design.n_public["final"])
        if warm_start:
            start, trial_privacy = selected_trial_model(best, device)
            check_start(trial_privacy, best, store)
        else:
            start = unpack_model(model_files)
        record_attempt(store, "final")
        out = run_pipeline(start, design.final_data, cfg, device=device, progress=False)
        # The DP record is the final run's own: (ε, δ) on the final slice for any fixed starting weights. Where those
        # came from is stated beside it; the report reads it (privacy/report.py).
        out.privacy = {**out.privacy, "start": START_TRIAL if warm_start else START_PRETRAINED}
        _store_trained(store, out)
        return out.model, out.privacy, time.time() - t
    model, privacy = selected_trial_model(best, device)
    return model, privacy, time.time() - t


START_PRETRAINED = "pretrained model"
START_TRIAL = "selected trial's DP weights (an output of the tuning part, covered by its ε)"


def check_start(trial: dict, best: dict, store: Store) -> None:
    """The warm start is covered by the tuning part only if its weights are that part's output: the stored model's
    record must be this sweep's, of the mechanism the selected row reports (σ, q, steps, which the report checks
    against the tuning grid), without a release the sweep does not compose (a class-mean warm-up)."""
    from dpsearch.config import ConfigError

    sweep = store.uri().rstrip("/").rsplit("/", 2)[-2]  # <storage>/<sweep>/dpsearch
    wrong = [k for k in ("sigma", "q", "steps") if best.get(k) is None or trial.get(k) is None or
             not math.isclose(float(trial[k]), float(best[k]), rel_tol=1e-9)]
    if (trial.get("sweep") or {}).get("name") != sweep:
        wrong.append(f"sweep {(trial.get('sweep') or {}).get('name')!r} (this is {sweep!r})")
    if trial.get("warmup_sigma"):
        wrong.append("a class-mean warm-up")
    if wrong:
        raise ConfigError(f"--warm-start: the selected trial's stored model ({best.get('checkpoint')}) does not record "
                          f"the selected trial's tuning-slice run ({', '.join(map(str, wrong))}), so the tuning part "
                          f"would not cover it. Nothing was trained; resume without --warm-start or report it as a bug")


def selected_trial_model(best: dict, device: str):
    """(model, privacy record) of the selected trial's stored checkpoint, verified against its manifest."""
    from dpsearch.checkpoints import verify_local
    from dpsearch.models import load_ldm

    with tempfile.TemporaryDirectory() as d:
        parent, leaf = best["checkpoint"].rstrip("/").rsplit("/", 1)
        local = Store(parent).download_dir(leaf, Path(d) / "trial")
        verify_local(local)
        return load_ldm(local / "model", device), json.loads((local / "privacy.json").read_text())


def _store_trained(store: Store, out) -> None:
    """final/trained/: the final run's model and privacy record with a manifest, written before anything else
    reads the model."""
    from dpsearch.checkpoints import write_manifest
    from dpsearch.models import save_ldm

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        device = out.model.device
        save_ldm(out.model.to("cpu"), d / "model", extra={"privacy": out.privacy})
        out.model.to(device)
        (d / "privacy.json").write_text(json.dumps(out.privacy, indent=2))
        write_manifest(d)
        for f in sorted(p for p in d.rglob("*") if p.is_file()):
            store.write_bytes(f"{FINAL}/trained/{f.relative_to(d)}", f.read_bytes())


def choose_free(model, space: SearchSpace, validation: Optional[ImageSet], oracle: Optional[ImageSet], seed: int,
                count=None) -> tuple[dict, list[dict], ImageSet]:
    """The post-processing setting with the best objective: accuracy on the DP validation set, or one noisy
    count each on the validation slice (planned in the design's composition). Also returns the chosen setting's
    sample, which the release reuses (a sample of the same model at the same setting)."""
    from dpsearch.evaluate import evaluate
    from dpsearch.sample import sample

    rows, best, kept = [], None, None
    for combo in space.free.combinations():
        smp = space.sample.model_copy(update={**combo, "seed": seed + 31})
        synthetic = sample(model, smp, progress=False)
        scores = evaluate(synthetic, oracle, space.evaluate, progress=False, validation=validation, count=count)
        rows.append({**combo, "objective": scores["objective"], "oracle_accuracy": scores.get("oracle/accuracy")})
        if best is None or rows[-1]["objective"] > best["objective"]:  # the first of equals, as max() picks
            best, kept = rows[-1], synthetic  # only the best so far is held: a large model's samples are large
        log.info("free setting %s: objective %.4f", combo, scores["objective"])
    return {k: best[k] for k in ("guidance", "steps")}, rows, kept


def run_final(model_files: dict, space_json: str, best: dict, design, validation: Optional[ImageSet],
              oracle: Optional[ImageSet], sweep_uri: str, name: str, seed: int, threads: int,
              warm_start: bool = False) -> dict:
    """The Ray task, in three steps: final run → free choice → release, all written to the sweep's
    dpsearch/final/."""
    import time

    import torch

    from dpsearch.device import pick_device
    from dpsearch.sweep_store import record_attempt, sweep_report

    torch.set_num_threads(threads)
    space = SearchSpace.model_validate_json(space_json)
    store = Store(sweep_uri).child("dpsearch")
    # 1. the final run (or the selected trial's model)
    model, privacy, ft_s = final_model(model_files, space, best, design, seed, str(pick_device("auto")), store,
                                       warm_start)
    privacy = _without_trial_id(privacy)
    if design.counts:
        record_attempt(store, "free")  # the free candidates' counts, composed over every run of this stage
    # The released guarantee from the stored record of every part, the final run's own and every attempt included.
    rep = sweep_report(sweep_uri, final_privacy=privacy if design.retrains else None)
    released = {**rep["released"], "name": name, "design": design.describe(), "covers": rep["statement"],
                "over_total": rep.get("over_total")}
    # 2. the free choice
    t_free = time.time()
    chosen, free_rows, chosen_sample = choose_free(model, space, validation, oracle, seed, design.count)
    # 3. the release
    config = trial_config(best)
    n_release = release(model, privacy, released, space, config, chosen, seed, store, reuse=chosen_sample)
    result = {"config": config, "privacy": privacy, "released": released, "free": chosen,
              "free_candidates": free_rows, "n_release": n_release,
              # one total in whole minutes: the final fine-tune's own time tracks its Poisson batch sizes
              "minutes": math.ceil((ft_s + time.time() - t_free) / 60),
              "model": store.uri(FINAL, "model"), "release": store.uri(FINAL, "release")}
    store.write_text(f"{FINAL}/result.json", json.dumps(result, indent=2))
    return result


def release(model, privacy: dict, released: dict, space: SearchSpace, config: dict, chosen: dict, seed: int,
            store: Store, reuse: Optional[ImageSet] = None) -> int:
    """The released model and synthetic data set with its card, and a manifest over both, under final/.
    reuse: the free choice's sample at the chosen setting (same model): its images are part of the release and only
    the rest is sampled, with another seed. Returns the number of images."""
    from dpsearch.checkpoints import write_manifest
    from dpsearch.models import save_ldm
    from dpsearch.sample import sample
    from dpsearch.synthetic_release import write_release

    k = model.meta["num_classes"]
    per_class = -(-space.release.n // k)
    reused = min(reuse.class_counts()) if reuse is not None and len(reuse) else 0
    reused = min(reused, per_class)
    smp = space.sample.model_copy(update={**chosen, "per_class": per_class - reused, "seed": seed + 97})
    synthetic = sample(model, smp, progress=False) if smp.per_class > 0 else None
    if reused:
        synthetic = _with_reused(reuse, reused, synthetic)
    card_privacy = {"dp": True, "eps": released["eps"], "delta": released["delta"],
                    "accountant": released["accountant"], "covers": released["covers"]}
    configuration = {"finetune": config, "free": chosen, "sample": json.loads(smp.model_dump_json()),
                     "design": released["design"]}
    if privacy.get("start"):  # what the final run started from (--warm-start)
        configuration["final_run_start"] = privacy["start"]
    if reused:  # the first `reused` images of each class: the free choice's sample (seed + 31), same setting
        configuration["sample_reused_from_free_choice"] = {"per_class": reused, "seed": seed + 31}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        save_ldm(model.to("cpu"), d / "model", extra={"privacy": privacy})
        # what `dpsearch release <sweep>/dpsearch/final --n 60000` puts on a larger release's card: the sweep's figure
        (d / "privacy.json").write_text(json.dumps({**privacy, **card_privacy, "run": privacy}, indent=2))
        write_release(synthetic, d / "release", name=released["name"], privacy=card_privacy, configuration=configuration,
                      progress=False)
        write_manifest(d)  # `dpsearch pull SWEEP` checks the release file by file against it
        for f in sorted(p for p in d.rglob("*") if p.is_file()):
            store.write_bytes(f"{FINAL}/{f.relative_to(d)}", f.read_bytes())
    return len(synthetic)


def _with_reused(reuse: ImageSet, per_class: int, rest: Optional[ImageSet]) -> ImageSet:
    """`per_class` images of each class from `reuse`, then `rest`, grouped by class as sample() orders them."""
    import torch

    keep = torch.cat([(reuse.labels == c).nonzero().flatten()[:per_class] for c in range(reuse.num_classes)])
    images, labels = reuse.images[keep], reuse.labels[keep]
    if rest is not None:
        images, labels = torch.cat([images, rest.images]), torch.cat([labels, rest.labels])
    order = torch.sort(labels, stable=True).indices
    return ImageSet(images[order], labels[order], reuse.num_classes, "synthetic", reuse.class_names)


def _without_trial_id(privacy: dict) -> dict:
    """The selected trial's record without its Ray trial id: under private selection an id's index bounds K,
    which must stay hidden (docs/privacy.md); the sweep's name and storage stay."""
    if isinstance(privacy.get("sweep"), dict):
        privacy = {**privacy, "sweep": {k: v for k, v in privacy["sweep"].items() if k != "trial"}}
    return privacy


def finish(sweep_store: Store, sweep_uri: str, model_files: dict, space: SearchSpace, best: dict, design,
           validation: Optional[ImageSet], oracle: Optional[ImageSet], seed: int, resources: dict,
           release_name: Optional[str] = None, warm_start: bool = False) -> dict:
    """Runs the final stage once per sweep (a resumed sweep reuses a finished one, and a trained final model) on
    a whole node (warm_start: search/sweep.py --warm-start). release_name: the data card's title (default: the sweep's name, which carries its start time;
    under private selection that time, against the release's, would hint at K)."""
    import ray

    if sweep_store.exists(f"{FINAL}/result.json"):
        return json.loads(sweep_store.read_text(f"{FINAL}/result.json"))
    log.info("final stage: %s", "training the selected configuration on the final slice" if design.retrains
             else "the selected trial's model")
    task = ray.remote(run_final).options(num_cpus=resources["val_cpu"], num_gpus=resources["gpu"])
    return ray.get(task.remote(model_files, space.model_dump_json(), best, design, validation, oracle, sweep_uri,
                               release_name or sweep_uri.rstrip("/").rsplit("/", 1)[-1], seed, resources["val_cpu"],
                               warm_start))
