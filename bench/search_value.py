"""Does a search pay for itself? At one released (ε, δ), three arms scored under the ladder protocol (10k
synthetic images, the DPDM CNN, oracle = real MNIST test split; docs/utility.md):

- `sweep`: what `dpsearch sweep --eps E` releases (K trials on the tuning slice, the selected configuration
  retrained on the final slice, the free choice of guidance on the DP validation counts, a 10k release);
- `default_free`, the fair arm: the same sweep with one trial, the space's reference (default) configuration, so
  the default gets the same free choices made the same way at the same cost (same slices, same counts, same
  released (ε, δ)). The sweep minus this arm is what the configuration search buys;
- `default`: the reference configuration fine-tuned once on all N records at E, sampled at the default guidance.

    python bench/search_value.py --task mnist-small --eps 10 --seeds 0 1 2   # N = 5,000 (≈ 25 min per seed here)
    python bench/search_value.py --eps 1 10 --seeds 0 --arms default_free    # add the fair arm to existing rows
    python bench/search_value.py report                                        # rewrite docs/results.md's block

Tasks: `mnist` (DPImageBench's 55,000 records, the shipped space) and `mnist-small` (5,000 records kept by the
slices' record-level rule; the shipped space with batches and epochs sized for 5,000 records, the reference
unchanged). δ = 1/(N ln N). For `mnist` without --retrain-default the default arm reuses the model bench/ceiling.py
fine-tuned (`--default-model EPS=DIR`) and only samples and scores it here. The default model is also sampled at
the sweep's chosen free setting: analysis, not an arm. Rows go to bench/results/search_value.json (merged by task,
ε, seed and objective) with the flat fields task, released_eps, delta, seed, sweep_oracle_accuracy,
default_oracle_accuracy, default_free_oracle_accuracy, transfer_spearman (bench/transfer.py), wall_time (seconds,
the sweep arm's) and wall_time_arms.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ceiling import LADDER, private_split  # noqa: E402
from dpsearch.config import SampleConfig  # noqa: E402
from dpsearch.data import ImageSet  # noqa: E402
from dpsearch.protocol import N_PRIVATE, benchmark_delta, score  # noqa: E402
from dpsearch.space import load_space  # noqa: E402

OUT = ROOT / "bench" / "results" / "search_value.json"
DEFAULT_MODELS = {1.0: ROOT / "runs" / "ceiling" / "dp-eps1-release-model",
                  10.0: ROOT / "runs" / "ceiling" / "dp-eps10-b4000-model"}


GENERATOR_SLICES = {"tuning": 0.1, "validation": 0.1, "final": 0.8}  # what the generator objective was measured with


@dataclasses.dataclass(frozen=True)
class Task:
    n: int  # private records
    params: dict = dataclasses.field(default_factory=dict)  # the search space's params that differ from the shipped ones


TASKS = {
    "mnist": Task(N_PRIVATE),
    # The shipped batches (2,000-8,000) are sized for 55,000 records: at N = 5,000 they are most of the data, and a
    # final slice of 4,250 records takes few steps. The search gets batches and epochs for that size; the reference
    # (default) configuration stays the shipped one (B 4,000, 5 epochs).
    "mnist-small": Task(5000, {"batch": {"choice": [500, 1000, 2000, 4000]}, "epochs": {"choice": [5, 10, 20]}}),
}


def task_data(task: str) -> tuple[ImageSet, int | None]:
    """The default arm's private records and the public N its plan uses: DPImageBench's 55,000 (N = its size), or
    a record-level share of them by the slices' hash rule with a fixed public salt (planned from n, never the
    share's exact count). A seeded subset of positions would not do: one added record moves many."""
    from dpsearch.privacy.slices import hash_share

    private = private_split()[0]
    n = TASKS[task].n
    if n == len(private):
        return private, None
    return hash_share(private, n / len(private), salt=f"search-value-{task}"), n


def bench_space(path: Path, n_release: int, objective: str | None = None, margin: float | None = None,
                task: str = "mnist") -> Path:
    space = yaml.safe_load((ROOT / "search_spaces" / "mnist.yaml").read_text())
    t = TASKS[task]
    space.update(name="search-value", n_private=t.n, delta=benchmark_delta(t.n), release={"n": n_release})
    space["params"].update(t.params)
    if margin is not None:
        space["validation"]["reference_margin"] = margin
    if objective and objective != space["validation"].get("objective", "generator"):
        space["validation"]["objective"] = objective
        if objective == "generator":
            space["slices"] = GENERATOR_SLICES
    path.write_text(yaml.safe_dump(space))
    return path


def sample_and_score(model, smp: SampleConfig, test: ImageSet, seed: int) -> dict:
    from dpsearch.sample import sample

    return score(sample(model, smp, progress=False), test, LADDER, seed=seed)


def default_arm(eps: float, seed: int, test: ImageSet, retrain: bool, model_dir: Path | None, free: dict,
                earlier: dict | None = None, task: str = "mnist") -> dict:
    """The reference configuration once on all the task's records at E, default guidance. `earlier`: this
    task, ε and seed's default row from an earlier run on the same model: its default-guidance score is reused
    (same model, same sampling seed), only the sweep's free setting is sampled again."""
    from dpsearch.models import load_ldm
    from dpsearch.pipeline import run_pipeline
    from dpsearch.pretrain import pretrain
    from dpsearch.config import PretrainConfig

    t = time.time()
    if retrain or model_dir is None or not Path(model_dir).exists():
        private, n_public = task_data(task)
        ft = load_space("mnist").reference_config(eps, delta=benchmark_delta(TASKS[task].n), n_public=n_public)  # untuned
        out = run_pipeline(pretrain(PretrainConfig()), private, ft, progress=True)
        model, privacy, source = out.model, out.privacy, "fine-tuned in this run"
        retrain = True
    else:
        model = load_ldm(model_dir)
        privacy = json.loads((Path(model_dir) / "privacy.json").read_text()) if (Path(model_dir) / "privacy.json").exists() \
            else json.loads((Path(model_dir) / "row.json").read_text())["privacy"]
        source = f"fine-tuned earlier by bench/ceiling.py ({Path(model_dir).name}); sampled and scored in this run"
    n_per = LADDER.n_synthetic // 10
    default = SampleConfig(per_class=n_per, seed=seed)
    row = {"source": source, "guidance": default.guidance,
           "privacy": {k: privacy.get(k) for k in ("eps", "delta", "accountant", "sigma", "q", "steps")}}
    if earlier is not None and not retrain:
        row["oracle"] = earlier["oracle"]
        row["source"] += "; default-guidance score reused from an earlier run of this benchmark (same model and seed)"
    else:
        row["oracle"] = sample_and_score(model, default, test, seed)
    at_free = default.model_copy(update=free)
    if earlier is not None and not retrain and earlier["oracle_at_sweep_free_setting"]["free"] == free:
        row["oracle_at_sweep_free_setting"] = earlier["oracle_at_sweep_free_setting"]
    elif {k: getattr(default, k) for k in free} == free:
        row["oracle_at_sweep_free_setting"] = {"free": free, **row["oracle"]}
    else:
        row["oracle_at_sweep_free_setting"] = {"free": free, **sample_and_score(model, at_free, test, seed)}
    row["seconds"] = time.time() - t
    return row


def sweep_arm(task: str, eps: float, seed: int, trials: int, test: ImageSet, workdir: Path, objective: str,
              margin: float, label: str) -> dict:
    """One sweep through the product (`run_sweep`), its release scored under the ladder. trials = 1 is the fair
    arm: the count objective's trial 1 is the reference, so the sweep releases the default configuration."""
    from dpsearch.search import SweepOptions, format_summary, run_sweep

    space = bench_space(workdir / f"space-{task}-{eps:g}-{seed}-{label}.yaml", LADDER.n_synthetic, objective, margin, task)
    t = time.time()
    res = run_sweep(SweepOptions(eps_total=eps, space=str(space), trials=trials, seed=seed, tracking="none",
                                 storage=str(workdir / "sweeps"), name=f"sv-{task}-{label}-eps{eps:g}-s{seed}",
                                 progress=False))
    sweep_s = time.time() - t
    print(format_summary(res), flush=True)
    final = res.extra["final"]
    synthetic = ImageSet.load(Path(final["release"]) / "synthetic.npz")
    return {"oracle": score(synthetic, test, LADDER, seed=seed), "released": {
                k: final["released"][k] for k in ("eps", "delta", "accountant")},
            "parts": final["released"]["parts"], "config": final["config"], "free": final["free"],
            "free_candidates": final["free_candidates"], "spearman_objective_oracle": res.spearman,
            "selection": res.extra.get("selection"),
            "trials": [{k: r.get(k) for k in ("layers", "batch", "lr", "epochs", "eps", "objective", "oracle_accuracy",
                                               "status")} for r in res.rows],
            "seconds": {"sweep_total": sweep_s}, "final_minutes": final.get("minutes"),
            "slices": res.extra["privacy"]["released"]["slices"]["planned"]}


ARMS = ("sweep", "default_free", "default")


def run_one(eps: float, seed: int, trials: int, test: ImageSet, retrain: bool, model_dir: Path | None,
            workdir: Path, objective: str, margin: float, earlier: dict | None = None, task: str = "mnist",
            arms: tuple[str, ...] = ARMS) -> dict:
    """One row: the arms asked for, the others kept from `earlier` (this task, ε, seed and objective's row)."""
    row = dict(earlier or {})
    row.update(task=task, eps=eps, seed=seed, objective=objective, margin=margin if objective == "count" else 0.0,
               trials=trials)
    if raised_validation(task):
        row["validation_records"] = raised_validation(task)
    if "sweep" in arms:
        row["sweep"] = sweep_arm(task, eps, seed, trials, test, workdir, objective, margin, "search")
    if "sweep" not in row:
        raise SystemExit(f"no sweep row for task {task}, ε = {eps:g}, seed {seed}: run the sweep arm first")
    if "default_free" in arms:
        row["default_free"] = sweep_arm(task, eps, seed, 1, test, workdir, objective, margin, "default")
    if "default" in arms or "default" not in row:
        row["default"] = default_arm(eps, seed, test, retrain, model_dir, row["sweep"]["free"],
                                     (earlier or {}).get("default"), task)
    row["gain"] = row["sweep"]["oracle"]["oracle/accuracy"] - row["default"]["oracle"]["oracle/accuracy"]
    print(f"{task}, ε = {eps:g}, seed {seed}: sweep {_pct(row['sweep']['oracle']['oracle/accuracy'])}, default + free "
          f"{_pct(_acc(row.get('default_free')))}, default {_pct(row['default']['oracle']['oracle/accuracy'])}", flush=True)
    return flat(row)


def reused_default(default: dict) -> dict:
    """Another arm's default run of this task, ε and seed (it reads neither the slices nor the margin); its score at
    that arm's free setting stays, labelled with that setting."""
    return {**default, "source": default["source"] + "; reused from another arm's row of this benchmark"}


def _at_free(default: dict, sweep: dict) -> float | None:
    """The default model's score at the sweep's free setting, where it was sampled at that setting."""
    at = default.get("oracle_at_sweep_free_setting") or {}
    return at.get("oracle/accuracy") if at.get("free") == sweep["free"] else None


def _acc(arm: dict | None) -> float | None:
    return None if arm is None else arm["oracle"]["oracle/accuracy"]


def transfer_rows() -> list[dict]:
    path = ROOT / "bench" / "results" / "transfer.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


def transfer_spearman(transfers: list[dict], task: str, eps: float, seed: int, arm: str) -> float | None:
    """bench/transfer.py's Spearman(slice objective, full-data oracle) for this sweep, where measured."""
    hit = next((r for r in transfers if (r.get("task", "mnist"), r["eps"], r["seed"], r["arm"]) == (task, eps, seed, arm)),
               None)
    return None if hit is None else hit["spearman_slice_objective_vs_full_oracle"]


def flat(row: dict, transfers: list[dict] | None = None) -> dict:
    """The fields scripts read (the issue's names), beside the nested arms."""
    sw = row["sweep"]
    return {**row, "task": row.get("task", "mnist"), "released_eps": sw["released"]["eps"], "delta": sw["released"]["delta"],
            "sweep_oracle_accuracy": _acc(sw), "default_oracle_accuracy": _acc(row["default"]),
            "default_free_oracle_accuracy": _acc(row.get("default_free")),
            "gain_over_default_free": (None if row.get("default_free") is None
                                       else _acc(sw) - _acc(row["default_free"])),
            "transfer_spearman": transfer_spearman(transfer_rows() if transfers is None else transfers,
                                                  row.get("task", "mnist"), row["eps"], row["seed"], _objective(row)),
            "wall_time": sw["seconds"]["sweep_total"],
            "wall_time_arms": {"sweep": sw["seconds"]["sweep_total"],
                               "default_free": (row.get("default_free") or {}).get("seconds", {}).get("sweep_total"),
                               "default": row["default"].get("seconds")}}


def _objective(r: dict) -> str:
    """The arm: objective, under counts the reference margin (rows from before it selected by best objective), and
    the validation slice's planned records where the space's min_validation raised its share (rows from before it
    had none)."""
    obj = r.get("objective", "generator")  # rows from before the counting objective
    if r.get("margin") or (r.get("objective") == "count" and r.get("validation_records")):
        obj = f"{obj}, margin {r.get('margin') or 0:g}"
    return f"{obj}, validation {r['validation_records']:,}" if r.get("validation_records") else obj


def raised_validation(task: str) -> int | None:
    """The validation slice's planned records where the shipped space's min_validation raises its share for this
    task's N (None where the plain share already holds them)."""
    from dpsearch.privacy.slices import planned_sizes, share_of
    from dpsearch.search.design import new_rule

    with tempfile.TemporaryDirectory() as d:
        space = load_space(str(bench_space(Path(d) / "space.yaml", LADDER.n_synthetic, task=task)))
    keep = share_of(space.n_private, space.n_public)
    rule = new_rule(space, space.n_public, keep)  # what a new sweep of this task's space cuts
    return None if rule.validation == space.slices.validation else planned_sizes(space.n_public, rule, keep)["validation"]


def summarize(rows: list[dict]) -> dict:
    """Per task, arm and ε: the gain over the default run, and over the fair arm where it ran."""
    out = {}
    for task, obj, eps in sorted({(r.get("task", "mnist"), _objective(r), r["eps"]) for r in rows}):
        mine = [r for r in rows if (r.get("task", "mnist"), _objective(r), r["eps"]) == (task, obj, eps)]
        gains = [r["gain"] for r in mine]
        fair = [r["gain_over_default_free"] for r in mine if r.get("gain_over_default_free") is not None]
        out[f"{task} {obj} eps={eps:g}"] = {
            "task": task, "objective": obj, "eps": eps, "seeds": len(gains), "mean_gain": statistics.mean(gains),
            "min_gain": min(gains), "max_gain": max(gains), "sd_gain": statistics.stdev(gains) if len(gains) > 1 else None,
            "seeds_with_fair_arm": len(fair), "mean_gain_over_default_free": statistics.mean(fair) if fair else None,
            "min_gain_over_default_free": min(fair) if fair else None,
            "max_gain_over_default_free": max(fair) if fair else None}
    return out


RESULTS_MD = ROOT / "docs" / "results.md"
BEGIN, END = "<!-- search-value -->", "<!-- /search-value -->"


def _kept(sweep: dict) -> str:
    sel = sweep.get("selection") or {}
    if not sel.get("kept_reference"):
        return ""
    return " (reference: best objective)" if sel["best_trial"] == sel["reference_trial"] else \
        f" (reference kept; best trial led by {100 * sel['lead']:.1f})"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def report() -> str:
    """The docs/results.md block from bench/results/search_value.json."""
    data = json.loads(OUT.read_text())
    lines = [BEGIN, "## Does a search pay for itself? (`bench/search_value.py`)", "",
             "At one released (ε, δ), δ = 1/(N ln N): the model `dpsearch sweep --eps E` releases (8 TPE trials on the "
             "10% tuning slice, the selected configuration retrained on the final slice, guidance chosen on the sweep's "
             "objective) against the **fair arm** `default + free` (the same sweep with one trial, the reference "
             "configuration: the default gets the same free choice, made the same way, on the same slices, at the same "
             "released (ε, δ)) and against one run of the default configuration on all N records at E, sampled at "
             "SampleConfig's default guidance (3.0 when the mnist rows were measured, 1.0 since). Tasks: `mnist`, N = 55,000 (the shipped space); `mnist-small`, N = 5,000 (batches 500-4,000 "
             "and epochs 5-20 searched; the default unchanged). Objective `generator`: trials and guidance scored on a DP "
             "synthetic validation set from a generator trained on a 10% slice (final slice 80%); `count`: scored by "
             "Gaussian counts of correct predictions on a 5% slice of real records, the reference configuration as "
             "trial 1 (final slice 85%); `count, margin 0.03`: the same, and the reference is released unless a trial "
             f"beats it by 3 points on the counts (search/selection.py); `count, margin 0, validation 500`: the counts on a "
             "validation slice the space's `min_validation` raised to 500 records (10% / 10% / 80% at N = 5,000, the "
             "most the reference's batch of 4,000 leaves), the best objective released. Scored under the {data['protocol']}. "
             "Oracle accuracies: real test split, not DP, chose nothing. `default @ sweep's free setting` re-samples the "
             "default model at the guidance the sweep chose: analysis, not an arm. Transfer: bench/transfer.py.", "",
             "| task | objective | released ε | seed | sweep: released (ε, δ) | sweep: selected config | free choice | sweep oracle | "
             "default + free (fair arm) | gain over fair arm | default oracle | gain over default | default @ sweep's free "
             "setting | default guidance | Spearman(objective, oracle), trials | transfer Spearman | sweep wall |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(data["rows"], key=lambda r: (r.get("task", "mnist"), _objective(r), r["eps"], r["seed"])):
        sw, de, fa = r["sweep"], r["default"], r.get("default_free")
        c = sw["config"]
        rho, tr = sw["spearman_objective_oracle"], r.get("transfer_spearman")
        fair = "–" if fa is None else f"{_pct(_acc(fa))} (guidance {fa['free']['guidance']:g})"
        over = "–" if fa is None else f"**{100 * r['gain_over_default_free']:+.2f}**"
        lines.append(
            f"| {r.get('task', 'mnist')} | {_objective(r)} | {r['eps']:g} | {r['seed']} | ({sw['released']['eps']:.3f}, "
            f"{sw['released']['delta']:.3g}) | layers {c['layers']}, B {c['batch']}, lr {c['lr']:.2g}, {c['epochs']} epochs"
            f"{_kept(sw)} | guidance {sw['free']['guidance']:g} | {_pct(_acc(sw))} | {fair} | {over} | {_pct(_acc(de))} | "
            f"{100 * r['gain']:+.2f} | {_pct(_at_free(de, sw))} | {de.get('guidance', 3.0):g} | "
            f"{'–' if rho is None else f'{rho:.2f}'} | {'–' if tr is None else f'{tr:.2f}'} | "
            f"{sw['seconds']['sweep_total'] / 60:.0f} min |")
    lines.append("")
    for s in summarize(data["rows"]).values():
        fair = "" if not s["seeds_with_fair_arm"] else (
            f"; over the fair arm {100 * s['mean_gain_over_default_free']:+.2f} over {s['seeds_with_fair_arm']} seed(s) "
            f"(range {100 * s['min_gain_over_default_free']:+.2f} to {100 * s['max_gain_over_default_free']:+.2f})")
        lines.append(f"- {s['task']}, objective {s['objective']}, released ε = {s['eps']:g}: mean gain over the default run "
                     f"{100 * s['mean_gain']:+.2f} points over {s['seeds']} seed(s) (range {100 * s['min_gain']:+.2f} to "
                     f"{100 * s['max_gain']:+.2f}){fair}.")
    lines += ["", END]
    return "\n".join(lines)


def write_report() -> None:
    text = RESULTS_MD.read_text()
    block = report()
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        marker = "<!-- /protocol -->"
        text = text.replace(marker, marker + "\n\n" + block, 1)
    RESULTS_MD.write_text(text)


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["report"]:
        write_report()
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="mnist")
    p.add_argument("--eps", type=float, nargs="+", default=[1.0, 10.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                   help="arms to run; the others are kept from an earlier row (the sweep's is needed)")
    p.add_argument("--trials", type=int, default=8, help="the sweep's default")
    p.add_argument("--retrain-default", action="store_true", help="fine-tune the default arm in this run too")
    p.add_argument("--objective", choices=["count", "generator"], default=None,
                   help="the sweep's objective (default: the shipped space's)")
    p.add_argument("--margin", type=float, default=None,
                   help="objective count: keep the reference unless beaten by this much (default: the shipped space's)")
    p.add_argument("--default-model", action="append", default=[], metavar="EPS=DIR")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="keep the sweeps (trial models, for bench/objective_noise.py) under DIR instead of a temporary "
                        "directory")
    a = p.parse_args(argv)
    models = {**DEFAULT_MODELS, **{float(k): Path(v) for k, v in (s.split("=", 1) for s in a.default_model)}} \
        if a.task == "mnist" else {}
    _, _, test = private_split()
    old = json.loads(OUT.read_text())["rows"] if OUT.exists() else []
    shipped = load_space("mnist").validation
    objective = a.objective or shipped.objective
    objective = "count" if objective == "auto" else objective  # what auto is under --eps (search/design.py)
    margin = a.margin if a.margin is not None else shipped.reference_margin
    arm = _objective({"objective": objective, "margin": margin if objective == "count" else 0.0,
                      "validation_records": raised_validation(a.task)})
    key = lambda r: (r.get("task", "mnist"), r["eps"], r["seed"], _objective(r))  # noqa: E731
    if a.keep:
        a.keep.mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(str(a.keep)) if a.keep else tempfile.TemporaryDirectory(prefix="search-value-")) as d:
        for eps in a.eps:
            for seed in a.seeds:
                earlier = next((r for r in old if key(r) == (a.task, eps, seed, arm)), None)
                if earlier is None and "default" not in a.arms:  # the default arm does not depend on the search's arm
                    other = next((r for r in old if key(r)[:3] == (a.task, eps, seed)), None)
                    earlier = None if other is None else {"default": reused_default(other["default"])}
                row = run_one(eps, seed, a.trials, test, a.retrain_default, models.get(eps), Path(d), objective, margin,
                              earlier, a.task, tuple(a.arms))
                old = [r for r in old if key(r) != (a.task, eps, seed, arm)] + [row]
                write_rows(old)
    print(json.dumps(summarize(old), indent=2))
    write_report()
    return 0


def write_rows(rows: list[dict]) -> None:
    """search_value.json, every row with the flat fields (transfer_spearman refreshed from transfer.json)."""
    transfers = transfer_rows()
    rows = [flat(r, transfers) for r in rows]
    OUT.write_text(json.dumps({"protocol": LADDER.describe(), "rows": rows, "summary": summarize(rows)},
                              indent=2, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
