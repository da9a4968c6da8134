"""Does `--warm-start` pay? The final run started from the selected trial's DP weights against the same final run
started from the pretrained model: paired arms of one sweep, at one released (ε, δ).

    python bench/warm_start.py --task mnist-small --eps 10 --seeds 0 1 2 --margin 0   # N = 5,000
    python bench/warm_start.py --smoke            # the smoke space on the shipped model: the machinery only, no score

Per seed, one sweep runs its trials and selection (`--no-release`); its storage is then copied twice and each copy
is resumed to its final stage, one cold (from the pretrained model, as the sweep ships) and one warm (from the
selected trial's weights). Both arms share the trials, the selected configuration, the slices and the released
(ε, δ): each copy's own accounting holds one final run and one round of free counts. Only the final run's starting
point differs, and its DP noise, which is fresh in each arm. The benchmark sets `release` and `warm_start` in each
copy's sweep.json before resuming it (a user's resumed sweep keeps the options it started with). Each release is
scored under the ladder protocol (10k synthetic images, the DPDM CNN, oracle = real MNIST test split: not DP,
chose nothing). Rows go to bench/results/warm_start.json with the fields task, released_eps, delta, seed,
selected_config, cold_oracle_accuracy, warm_oracle_accuracy, gain, wall_time_cold, wall_time_warm.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ceiling import LADDER, private_split  # noqa: E402
from bench.search_value import TASKS, bench_space  # noqa: E402
from dpsearch.data import ImageSet  # noqa: E402
from dpsearch.protocol import score  # noqa: E402

OUT = ROOT / "bench" / "results" / "warm_start.json"
ARMS = (("cold", False), ("warm", True))


def _final_arm(base: Path, root: Path, name: str, warm: bool) -> tuple[dict, float]:
    """A copy of the sweep after its trials, resumed to its final stage with warm_start set."""
    from dpsearch.search import SweepOptions, run_sweep

    shutil.copytree(base / name, root / name)
    record = root / name / "dpsearch" / "sweep.json"
    raw = json.loads(record.read_text())
    raw["options"].update(release=True, warm_start=warm)
    record.write_text(json.dumps(raw, indent=2))
    t = time.time()
    res = run_sweep(SweepOptions(storage=str(root), tracking="none", progress=False), resume=name)
    return res.extra["final"], time.time() - t


def run_seed(space: Path, eps: float, seed: int, trials: int, work: Path, test) -> dict:
    from dpsearch.search import SweepOptions, run_sweep

    name = f"ws-eps{eps:g}-s{seed}"
    t = time.time()
    trials_res = run_sweep(SweepOptions(eps_total=eps, space=str(space), trials=trials, seed=seed, tracking="none",
                                        storage=str(work / "base"), name=name, progress=False, release=False))
    row = {"released_eps": None, "seed": seed, "eps": eps, "trials_seconds": time.time() - t,
           "selected_config": {k: trials_res.best.get(k) for k in ("layers", "batch", "lr", "epochs")}}
    for arm, warm in ARMS:
        final, seconds = _final_arm(work / "base", work / arm, name, warm)
        released = final["released"]
        row.update(released_eps=released["eps"], delta=released["delta"])
        row[arm] = {"start": final["privacy"].get("start"), "free": final["free"], "released_eps": released["eps"],
                    "final_run_eps": final["privacy"]["eps"], "n_release": final["n_release"]}
        row[f"wall_time_{arm}"] = seconds
        if test is not None:
            synthetic = ImageSet.load(Path(final["release"]) / "synthetic.npz")
            row[arm]["oracle"] = score(synthetic, test, LADDER, seed=seed)
            row[f"{arm}_oracle_accuracy"] = row[arm]["oracle"]["oracle/accuracy"]
        print(f"seed {seed}, {arm}: start {row[arm]['start']!r}, free {final['free']}, released ε "
              f"{released['eps']:.3f}, δ {released['delta']:g}, oracle "
              f"{row.get(f'{arm}_oracle_accuracy', float('nan')):.4f}, {seconds:.0f} s", flush=True)
    if test is not None:
        row["gain"] = row["warm_oracle_accuracy"] - row["cold_oracle_accuracy"]
    return row


def summarize(rows: list[dict]) -> list[dict]:
    """Per task, ε and margin: the mean, least and largest gain (warm − cold) over its seeds."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["eps"], r.get("margin")), []).append(r["gain"])
    return [{"task": t, "eps": e, "margin": m, "seeds": len(g), "mean_gain": statistics.mean(g), "min_gain": min(g),
             "max_gain": max(g)} for (t, e, m), g in sorted(groups.items(), key=str)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="mnist-small")
    p.add_argument("--eps", type=float, default=10.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--margin", type=float, default=None, help="reference_margin (default: the shipped space's)")
    p.add_argument("--smoke", action="store_true", help="the smoke space, 2 trials, no scoring, nothing written")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="warm-start-") as d:
        work = Path(d)
        if a.smoke:
            row = run_seed(ROOT / "search_spaces" / "smoke.yaml", 5.0, 0, 2, work, None)
            assert row["cold"]["released_eps"] == row["warm"]["released_eps"], row
            print(json.dumps(row, indent=2, default=str))
            return 0
        _, _, test = private_split()
        old = json.loads(OUT.read_text())["rows"] if OUT.exists() else []
        for seed in a.seeds:
            space = bench_space(work / f"space-{seed}.yaml", LADDER.n_synthetic, "count", a.margin, a.task)
            row = {"task": a.task, "margin": a.margin, **run_seed(space, a.eps, seed, a.trials, work / f"s{seed}", test)}
            old = [r for r in old if (r["task"], r["eps"], r["seed"], r.get("margin")) !=
                   (a.task, a.eps, seed, a.margin)] + [row]
            OUT.write_text(json.dumps({"protocol": LADDER.describe(), "rows": old, "summary": summarize(old)},
                                      indent=2, default=str))
            print(f"{a.task}, ε = {a.eps:g}, seed {seed}: cold {row['cold_oracle_accuracy']:.4f}, warm "
                  f"{row['warm_oracle_accuracy']:.4f}, gain {row['gain']:+.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
