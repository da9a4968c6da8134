"""One trial outside a sweep (`dpsearch run`): the pipeline, written to a directory atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

from dpsearch.config import EvaluateConfig, FinetuneConfig, SampleConfig
from dpsearch.data import ImageSet
from dpsearch.outputs import atomic_dir, check_output
from dpsearch.pipeline import run_pipeline, write_outputs
from dpsearch.privacy.dpsgd import plan_privacy


def run_trial(pretrained: str | Path, private: ImageSet, oracle_test: ImageSet | None, ft: FinetuneConfig,
              smp: SampleConfig, ev: EvaluateConfig, out: Path, overwrite: bool = False, device: str = "cpu",
              progress: bool = True) -> dict:
    """Writes out/{model/, privacy.json, history.json, synthetic.npz, samples.png, result.json}."""
    check_output(out, overwrite)
    ft = ft.for_data(len(private))  # the batch B the run uses, also in the summary's finetune_config
    if ft.non_private:
        ft.check_against_data(len(private))
    else:
        plan_privacy(ft, len(private))  # bad ε/δ/batch fail here, before any training
    o = run_pipeline(pretrained, private, ft, smp, ev, oracle=oracle_test, device=device, progress=progress)
    # one total in whole minutes, not per phase: the fine-tune's own time tracks its Poisson batch sizes, and next
    # to a total the other phases would give it back by subtraction (docs/privacy.md, "Timing")
    summary = {"privacy": o.privacy, "metrics": o.scores, "minutes": math.ceil(sum(o.seconds.values()) / 60),
               "pretrained": str(pretrained),
               "finetune_config": json.loads(ft.model_dump_json()), "sample_config": json.loads(smp.model_dump_json())}
    with atomic_dir(out, overwrite) as tmp:
        write_outputs(tmp, o, summary, synthetic_npz=True)
    return summary


def read_privacy(trial_dir: Path) -> dict:
    """The trial's own privacy record (privacy.json)."""
    try:
        return json.loads((Path(trial_dir) / "privacy.json").read_text())
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{trial_dir} is not a finished trial (privacy.json unreadable: {e}); "
                                f"pass the directory `dpsearch run` wrote") from e


def release_privacy(run: dict) -> dict:
    """The (ε, δ) a release of this model must state, and what it covers. A sweep trial's own ε is not it: the
    trial was one of a search on the same private data, so the sweep's released figure is (sweep_coverage)."""
    if not run.get("dp", True):
        return run
    if "covers" in run:  # a sweep's final/, which states its own coverage; a selected trial's id would bound K
        return _without_trial_id(run)
    if "sweep" in run:
        return sweep_coverage(run)
    return {**run, "covers": ("this one DP fine-tune. If the model was selected from a sweep, the guarantee of the "
                              "release is the sweep's released (ε, δ) (`dpsearch report SWEEP`), not this trial's")}


def _without_trial_id(p: dict) -> dict:
    def strip(d):
        return {k: v for k, v in d.items() if k != "trial"} if isinstance(d, dict) else d

    out = {**p, "sweep": strip(p["sweep"])} if "sweep" in p else dict(p)
    if isinstance(p.get("run"), dict) and "sweep" in p["run"]:
        out["run"] = {**p["run"], "sweep": strip(p["run"]["sweep"])}
    return out


def sweep_coverage(run: dict) -> dict:
    """The card's privacy for a trial of sweep run["sweep"]: the sweep's released (ε, δ). Under private selection
    that figure (repeat-and-select) covers the selected trial only, and only while K stays hidden, so its card
    names no trial id (an id's index bounds K); any other trial, or any trial before the sweep has selected, is
    covered by the tracking store's composition of every trial. The trial's own record stays under "run"."""
    s = run["sweep"]
    rep, selected = _stored_sweep(s)
    name, trial = s["name"], s.get("trial") or "?"
    store = rep.get("tracking_store")
    hidden = bool(store) and selected is not None and selected == s.get("trial")
    if store and not hidden:
        g, figure = store, "tracking_store"
        why = "not the sweep's selected trial" if selected else "the sweep has selected no trial yet"
        covers = (f"sweep {name}'s tracking store: every trial composed with the validation generator (private "
                  f"selection; this model is trial {trial}, {why}, so the repeat-and-select figure, which covers the "
                  f"selected trial alone, does not cover it); `dpsearch privacy report {name}`")
    else:
        g, figure = rep["released"], "released"
        if rep.get("design") == "slices":
            what = f"the whole search (disjoint slices: every trial, the final model and its release); this model is trial {trial}"
        elif hidden:
            what = "its selected trial, this model (private selection, repeat-and-select: K and trial ids stay hidden)"
        else:
            what = f"all {g.get('trials') or '?'} trials of its search and the validation generator, composed; this model is trial {trial}"
        covers = f"sweep {name}: {what}; `dpsearch privacy report {name}`"
    sweep = {"name": name, "storage": s.get("storage"), "figure": figure, "design": rep.get("design"),
             **({"selected": True} if hidden else {"trial": s.get("trial")})}
    p = {"dp": True, "eps": g["eps"], "delta": g["delta"], "accountant": g["accountant"], "covers": covers,
         "sweep": sweep, "warnings": [rep["over_total"]] if rep.get("over_total") else [], "run": run}
    return _without_trial_id(p) if hidden else p


def _stored_sweep(s: dict) -> tuple[dict, str | None]:
    """(the sweep's privacy report, the id of its selected trial or None) from the sweep's storage. Unreadable
    storage is an error: falling back to the trial's own ε would understate what the release costs."""
    from dpsearch.config import ConfigError
    from dpsearch.storage import Store
    from dpsearch.sweep_store import sweep_report

    where = f"{s.get('storage')}/{s.get('name')}"
    try:
        root = Store(s["storage"])
        meta = root.child(s["name"], "dpsearch")
        if not meta.exists("sweep.json"):  # fast: no retries against an absent server
            raise FileNotFoundError(f"no {meta.uri('sweep.json')}")
        rep = sweep_report(root.uri(s["name"]))
        best = json.loads(meta.read_text("summary.json")).get("best") if meta.exists("summary.json") else None
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"this model is trial {s.get('trial') or '?'} of sweep {s.get('name')!r}: its release is covered by the "
            f"sweep's released (ε, δ), read from the sweep's storage {where}, which cannot be read "
            f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}). Make it reachable and run again: the "
            f"embedded S3 with `dpsearch services up`, another S3 with AWS_ENDPOINT_URL and its credentials, a local "
            f"sweep at that path. The trial's own ε is not used instead: it was one of a search.") from None
    return rep, (best or {}).get("trial")


def release_trial(trial_dir: Path, out: Path, smp: SampleConfig, oracle_test: ImageSet | None = None,
                  protocol: str = "dpimagebench", overwrite: bool = False, device: str = "cpu",
                  progress: bool = True, pngs: bool = False) -> dict:
    """Samples the released data set from a finished trial's model (post-processing: no privacy cost), scores
    it under the protocol when a real test split is given (oracle), and writes it with its data card, which states
    the (ε, δ) that covers it (release_privacy: for a sweep trial, its sweep's, not its own). pngs: also one PNG
    file per image (write_release)."""
    from dpsearch.models import load_ldm
    from dpsearch.protocol import DPIMAGEBENCH, score
    from dpsearch.sample import sample
    from dpsearch.synthetic_release import write_release

    trial_dir = Path(trial_dir)
    check_output(out, overwrite)
    privacy = release_privacy(read_privacy(trial_dir))  # before sampling: an unreadable sweep fails fast
    model = load_ldm(trial_dir, device)
    synthetic = sample(model, smp, progress=progress)
    oracle = {}
    if oracle_test is not None and protocol == "dpimagebench" and len(synthetic) == DPIMAGEBENCH.n_synthetic:
        oracle = {k: v for k, v in score(synthetic, oracle_test, DPIMAGEBENCH, seed=smp.seed, progress=progress).items()
                  if k.startswith("oracle/") or k == "protocol"}
    sweep = privacy.get("sweep") or {}  # under private selection the path would name the trial (and bound K)
    where = f"the selected trial of sweep {sweep['name']}" if sweep.get("selected") else str(trial_dir)
    config = {"trial": where, "sample_config": json.loads(smp.model_dump_json())}
    result = trial_dir / "result.json"
    if result.exists():
        config["finetune_config"] = json.loads(result.read_text()).get("finetune_config")
    write_release(synthetic, out, name=Path(out).name, privacy=privacy, configuration=config, oracle=oracle,
                  overwrite=overwrite, progress=progress, pngs=pngs)
    return {"release": str(out), "privacy": privacy, "oracle": oracle, "n_images": len(synthetic)}
