"""The DP validation generator: one DP fine-tune with the space's reference configuration, then a
labelled synthetic sample V that scores every trial (post-processing of DP outputs)."""

from __future__ import annotations

import json
import logging

from dpsearch.data import ImageSet
from dpsearch.search.model_files import unpack_model
from dpsearch.space import SearchSpace
from dpsearch.storage import Store, load_npz, npz_bytes

log = logging.getLogger(__name__)


def make_validation_set(model_files: dict[str, bytes], private: ImageSet, space_json: str, eps: float, seed: int,
                        threads: int, batch_scale: float = 1.0, delta: float | None = None,
                        n_public: int | None = None) -> tuple[ImageSet, dict]:
    """One DP fine-tune with the space's reference config under its own ε, then a labelled sample V.

    Not a candidate: trials with the same configuration are separate DP runs with their own noise.
    """
    import torch

    from dpsearch.device import pick_device
    from dpsearch.pipeline import run_pipeline

    torch.set_num_threads(threads)
    space = SearchSpace.model_validate_json(space_json)
    smp = space.sample.model_copy(update={"per_class": space.validation.per_class, "seed": seed + 104729})
    out = run_pipeline(unpack_model(model_files), private, space.reference_config(eps, seed, batch_scale, delta, n_public), smp,
                       device=str(pick_device("auto")), progress=False)
    v = out.synthetic
    return ImageSet(v.images, v.labels, v.num_classes, "dp-synthetic-validation"), out.privacy


def count_privacy(design) -> dict:
    """The counting objective's privacy record (the validation slice's part), as planned: every trial and
    free candidate one count. The report recomputes it from the number of trials that actually started."""
    from dpsearch.privacy.noisy_count import count_epsilon

    c = design.slices["count"]
    return {"objective": "count", "eps": count_epsilon(c["sigma"], c["queries"], design.delta), "delta": design.delta,
            "accountant": "pld", "sigma": c["sigma"], "queries": c["queries"], "n": design.count.n_public}


def load_or_make_validation(meta: Store, model_files, design, space: SearchSpace, seed: int,
                             resources: dict) -> tuple[ImageSet | None, dict]:
    """V is made once per sweep and stored with it, so a resumed sweep scores against the same V. It trains on
    the design's validation data (its own slice under disjoint slices) at the design's validation ε. Under
    the counting objective there is no V: (None, the counts' privacy record)."""
    import ray

    if design.counts:
        priv = count_privacy(design)
        meta.write_text("validation_privacy.json", json.dumps(priv, indent=2))
        return None, priv
    if meta.exists("validation.npz") and meta.exists("validation_privacy.json"):
        return load_npz(meta.read_bytes("validation.npz"), ImageSet.load), json.loads(meta.read_text("validation_privacy.json"))
    from dpsearch.sweep_store import record_attempt

    log.info("making the DP synthetic validation set (reference config %s, ε = %g)", space.reference.model_dump(),
             design.val_eps)
    # Counted before it runs: a sweep that dies between making V and saving it makes V again on resume, a
    # second run of the generator on the same records, which the report composes (sweep_store.py).
    record_attempt(meta, "validation")
    # It runs alone, before any trial: on CPUs it gets a whole node, not one trial's share.
    task = ray.remote(make_validation_set).options(num_cpus=resources["val_cpu"], num_gpus=resources["gpu"])
    v, priv = ray.get(task.remote(model_files, design.validation_data, space.model_dump_json(), design.val_eps, seed,
                                  resources["val_cpu"], design.val_batch_scale, design.delta,
                                  design.n_public["validation"]))
    meta.write_bytes("validation.npz", npz_bytes(v.save))
    meta.write_text("validation_privacy.json", json.dumps(priv, indent=2))
    return v, priv
