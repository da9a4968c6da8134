"""Transfer: do trials on the tuning slice rank configurations as full-data runs at the released ε would?

    python bench/transfer.py --eps 1 --seed 1 --top 3                       # ≈ 16 min per configuration here
    python bench/transfer.py --task mnist-small --eps 10 --seed 0 --top 7   # every trial, ≈ 3 min each

Reads one sweep of bench/results/search_value.json (its trials' configurations, slice objectives and slice
oracle accuracies), fine-tunes the reference configuration and the `--top` best trials by objective on all the
task's private records (55,000 or 5,000) at the sweep's released ε (δ = 1/(N ln N)), samples each at the guidance
the sweep chose and scores it under the ladder. The reference's full-data model is the default arm's, already
scored at that guidance by search_value.py. A configuration transfer.json already holds a full-data run of (same
task, ε and free setting, from any seed's sweep) is reused, labelled so (--fresh trains it again). Prints Spearman(slice objective, full-data oracle) and writes
bench/results/transfer.json (merged by task, ε, seed and arm; search_value.py reads it as transfer_spearman).
Oracle figures: real test split, choose nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ceiling import LADDER, private_split  # noqa: E402
from bench.search_value import OUT as SEARCH_VALUE, TASKS, _objective, sample_and_score, task_data  # noqa: E402
from bench.search_value import write_report, write_rows  # noqa: E402
from dpsearch.config import SampleConfig  # noqa: E402
from dpsearch.protocol import benchmark_delta  # noqa: E402

OUT = ROOT / "bench" / "results" / "transfer.json"


@functools.cache
def _shipped_space():
    from dpsearch.space import load_space

    return load_space("mnist")


def _is_reference(t: dict) -> bool:
    """The shipped space's reference configuration (its layer range spans the embedded model's modules)."""
    from dpsearch.search.selection import is_reference

    space = _shipped_space()
    # clip is fixed in the shipped space, so search_value.json does not store it per trial
    return is_reference({"clip": space.reference.clip, **t}, space.reference, space.params.layers.high)


def earlier_runs(task: str, eps: float, free: dict) -> list[dict]:
    """transfer.json's full-data runs of this task and ε sampled at this free setting (a configuration's full-data
    oracle does not depend on the sweep that proposed it: same records, same ε, same training)."""
    if not OUT.exists():
        return []
    return [{**c, "seed": r["seed"]} for r in json.loads(OUT.read_text())["rows"]
            if (r.get("task", "mnist"), r["eps"], r["free"]) == (task, eps, free) for c in r["configs"]
            if not c["source"].startswith("reused")]


def same_config(a: dict, b: dict) -> bool:
    return (str(a["layers"]), a["batch"], a["epochs"]) == (str(b["layers"]), b["batch"], b["epochs"]) and \
        abs(a["lr"] - b["lr"]) <= 1e-9 * max(abs(a["lr"]), 1e-12)


def main(argv=None) -> int:
    from scipy.stats import spearmanr

    from dpsearch.pipeline import run_pipeline
    from dpsearch.pretrain import pretrain
    from dpsearch.config import PretrainConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="mnist")
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--arm", default="count, margin 0.03", help="the search_value.json arm (objective, margin)")
    p.add_argument("--top", type=int, default=3, help="trials beside the reference, best objective first")
    p.add_argument("--fresh", action="store_true",
                   help="fine-tune every configuration again, even where transfer.json holds a full-data run of it")
    a = p.parse_args(argv)
    rows = json.loads(SEARCH_VALUE.read_text())["rows"]
    key = (a.task, a.eps, a.seed, a.arm)
    row = next((r for r in rows if (r.get("task", "mnist"), r["eps"], r["seed"], _objective(r)) == key), None)
    if row is None:
        raise SystemExit(f"no search_value.json row for task {a.task}, ε = {a.eps:g}, seed {a.seed}, arm {a.arm!r}")
    trials = sorted([t for t in row["sweep"]["trials"] if t["status"] == "DONE"], key=lambda t: -t["objective"])
    picked = [t for t in trials if not _is_reference(t)][:a.top] + [t for t in trials if _is_reference(t)][:1]
    free = row["sweep"]["free"]
    _, _, test = private_split()
    private, n_public = task_data(a.task)
    space = _shipped_space()
    smp = SampleConfig(per_class=LADDER.n_synthetic // 10, seed=a.seed, **free)
    measured = [] if a.fresh else earlier_runs(a.task, a.eps, free)
    out = []
    for t in picked:
        started = time.time()
        hit = next((e for e in measured if same_config(e, t)), None)
        at_free = row["default"].get("oracle_at_sweep_free_setting") or {}
        if _is_reference(t) and at_free.get("free") == free:  # the default arm's model, at this guidance
            full = at_free
            source = "default arm's model (search_value.py)"
        elif hit is not None:  # a full-data DP run of the same configuration, sampled at the same free setting
            full = {"oracle/accuracy": hit["full_oracle"]}
            source = f"reused: {hit['source']} (transfer.json, seed {hit['seed']})"
        else:  # as the sweep's final run trains it (the space's clip, EMA, schedule), on all the records
            ft = space.finetune_config({"clip": space.reference.clip, **t}, a.eps, delta=benchmark_delta(TASKS[a.task].n),
                                      n_public=n_public)
            res = run_pipeline(pretrain(PretrainConfig()), private, ft, progress=True)
            full = sample_and_score(res.model, smp, test, a.seed)
            source = f"fine-tuned in this run, (ε = {res.privacy['eps']:.3f}, δ = {res.privacy['delta']:.3g})"
        entry = {**{k: t[k] for k in ("layers", "batch", "lr", "epochs", "objective", "oracle_accuracy")},
                 "full_oracle": full["oracle/accuracy"], "source": source, "seconds": time.time() - started}
        print(json.dumps(entry), flush=True)
        out.append(entry)
    rho_obj = spearmanr([e["objective"] for e in out], [e["full_oracle"] for e in out]).statistic
    rho_slice = spearmanr([e["oracle_accuracy"] for e in out], [e["full_oracle"] for e in out]).statistic
    result = {"task": a.task, "eps": a.eps, "seed": a.seed, "arm": a.arm, "free": free, "configs": out,
              "spearman_slice_objective_vs_full_oracle": float(rho_obj),
              "spearman_slice_oracle_vs_full_oracle": float(rho_slice), "protocol": LADDER.describe()}
    old = json.loads(OUT.read_text())["rows"] if OUT.exists() else []
    old = [r for r in old if (r.get("task", "mnist"), r["eps"], r["seed"], r["arm"]) != key] + [result]
    OUT.write_text(json.dumps({"rows": old}, indent=2))
    write_rows(rows)  # search_value.json's transfer_spearman, and the docs block
    write_report()
    print(f"ε = {a.eps:g}, seed {a.seed}: Spearman(slice objective, full-data oracle) = {rho_obj:.2f} over "
          f"{len(out)} configurations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
