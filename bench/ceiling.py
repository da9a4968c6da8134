"""The ceiling ladder: where the synthetic data's accuracy is lost, one rung at a time (docs/utility.md).

Every rung is scored by the same downstream protocol (dpsearch/protocol.py) on the real MNIST test split
(oracle metrics: they choose nothing). The private set is DPImageBench's: 55,000 MNIST training images
(`subset(55000, seed=0)`); the other 5,000 are the real validation split of the real-data rungs only.

    python bench/ceiling.py real-55k | real-2k | autoencoder          # no diffusion model
    python bench/ceiling.py public-only [--model DIR]                  # pretrained on public data only
    python bench/ceiling.py nonprivate-attention | nonprivate-unet      # fine-tunes, NOT DP
    python bench/ceiling.py dp --eps 10                                 # DP fine-tune, δ = 1/(N ln N)
    python bench/ceiling.py report                                      # table into docs/utility.md

`--n-synthetic 10000 --classifiers cnn` runs the cheaper ladder protocol (stated in every row).
Rows go to bench/results/ceiling/<rung>.json; `--tag` keeps variants (e.g. a different public model) apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dpsearch.config import FinetuneConfig, PretrainConfig, SampleConfig
from dpsearch.data import ImageSet, load_mnist
from dpsearch.models import load_ldm, save_ldm
from dpsearch.pipeline import run_pipeline
from dpsearch.pretrain import pretrain
from dpsearch.protocol import DPIMAGEBENCH, N_PRIVATE, Protocol, benchmark_delta, score, split_synthetic
from dpsearch.sample import sample, save_grid
from dpsearch.warmup import means_as_images

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # anchors.py
RESULTS = ROOT / "bench" / "results" / "ceiling"
DOC = ROOT / "docs" / "utility.md"
LADDER = Protocol(name="ladder", n_synthetic=10000, n_val=830, classifiers=(("cnn", 10),))  # 55:5 as in DPImageBench
RUNGS = ["real-55k", "real-2k", "autoencoder", "public-only", "nonprivate-attention", "nonprivate-unet", "dp"]


def private_split() -> tuple[ImageSet, ImageSet, ImageSet]:
    """(private 55k, real validation 5k, real test) — the same split for every rung."""
    train, test = load_mnist()
    private = train.subset(N_PRIVATE, seed=0)
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[torch.from_numpy(np.random.default_rng(0).permutation(len(train))[:N_PRIVATE])] = False  # = subset()'s draw
    return private, ImageSet(train.images[rest], train.labels[rest], 10, "mnist-val"), test


def score_real(train: ImageSet, val: ImageSet, test: ImageSet, protocol: Protocol) -> dict:
    """Real (or reconstructed) images through the protocol's classifiers, checkpoint on real validation."""
    from dpsearch.config import EvaluateConfig
    from dpsearch.evaluate import accuracy, train_classifier

    arch = ", ".join(f"{a} {e} epochs" for a, e in protocol.classifiers)
    out, accs = {"protocol": f"{protocol.name}: {len(train)} real train images, checkpoint on {len(val)} real "
                             f"validation images, classifiers {arch}; oracle = real test split"}, []
    for arch, epochs in protocol.classifiers:
        net, _ = train_classifier(train, EvaluateConfig(classifier_epochs=epochs), desc=arch, val=val, arch=arch)
        accs.append(accuracy(net, test))
        out[f"oracle/accuracy_{arch}"] = accs[-1]
    out.update({"oracle/accuracy": max(accs), "oracle/accuracy_mean": sum(accs) / len(accs), "n_train": len(train)})
    return out


@torch.no_grad()
def reconstruct(model, data: ImageSet) -> ImageSet:
    return ImageSet.from_float(torch.cat([model.decode(model.encode(data.as_float()[i:i + 1000]))
                                          for i in range(0, len(data), 1000)]), data.labels, 10, data.name + "-ae")


def run(a) -> dict:
    protocol = Protocol(name="dpimagebench" if a.n_synthetic == 60000 and a.classifiers == "cnn,resnet" else "ladder",
                        n_synthetic=a.n_synthetic, n_val=a.n_synthetic // 120 * 10,  # 55:5, whole per class
                        classifiers=tuple((c, dict(DPIMAGEBENCH.classifiers)[c]) for c in a.classifiers.split(",")))
    private, real_val, test = private_split()
    t0 = time.time()
    row: dict = {"rung": a.rung, "tag": a.tag}
    if a.rung == "real-55k":
        row.update(score_real(private, real_val, test, protocol))
    elif a.rung == "real-2k":
        row.update(score_real(private.subset(2000, seed=1), real_val, test, protocol))
    else:
        model_dir = Path(a.model) if a.model else pretrain(PretrainConfig(**json.loads(a.pretrain or "{}")))
        row["model"] = str(model_dir)
        model = load_ldm(model_dir)
        if a.rung == "autoencoder":
            row.update(score_real(reconstruct(model, private), reconstruct(model, real_val), test, protocol))
        else:
            if a.finetuned:  # a model an earlier run of this rung fine-tuned: sample and score it again
                prev = json.loads(Path(a.finetuned, "row.json").read_text())
                model = load_ldm(a.finetuned)
                row.update({k: prev[k] for k in ("finetune_config", "privacy", "finetune_seconds")})
                row["finetuned"] = a.finetuned
            elif a.rung != "public-only":
                ft = FinetuneConfig(
                    non_private=a.rung != "dp", eps=a.eps if a.rung == "dp" else None,
                    delta=(a.delta or benchmark_delta()) if a.rung == "dp" else None, layers=a.layers,
                    scope="unet" if a.rung == "nonprivate-unet" else a.scope,
                    epochs=a.epochs, batch=a.batch, clip=a.clip, lr=a.lr, lr_schedule=a.lr_schedule, multiplicity=a.multiplicity, ema=a.ema,
                    warmup=a.warmup if a.rung == "dp" else None, warmup_steps=a.warmup_steps)
                last: dict = {}  # with EMA: the last noisy iterate too, scored beside the average (same fine-tune)
                out = run_pipeline(model, private, ft, progress=True,
                                   on_epoch=lambda rec, state: last.update(state.trainable) if a.ema else None)
                model = out.model
                if out.warmup_means is not None:  # the DP class means the warm-up released (a DP output)
                    save_grid(means_as_images(out.warmup_means), RESULTS / f"{_name(a)}-warmup-means.png")
                row.update({"finetune_config": json.loads(ft.model_dump_json()), "privacy": out.privacy,
                            "finetune_seconds": out.seconds["finetune"]})
                keep = ROOT / "runs" / "ceiling" / f"{_name(a)}-model"  # for --finetuned; not in git
                save_ldm(model.to("cpu"), keep, extra={"privacy": out.privacy})
                (keep / "row.json").write_text(json.dumps(row, indent=2))
            smp = SampleConfig(per_class=a.n_synthetic // 10, guidance=a.guidance, steps=a.steps, seed=a.seed)
            t = time.time()
            synthetic = sample(model, smp)
            row.update({"sample_config": json.loads(smp.model_dump_json()), "sample_seconds": time.time() - t})
            save_grid(synthetic, RESULTS / f"{_name(a)}.png")  # named like the row: ε and tag
            row.update(score(synthetic, test, protocol, seed=a.seed))
            if a.ema and not a.finetuned and a.rung != "public-only" and protocol.n_synthetic <= LADDER.n_synthetic:
                # the last-iterate control is a ladder rung's; a headline seed would pay a second 60k sample for it
                row["last_iterate"] = score_last_iterate(model, last, smp, test, protocol, a.seed)
            if protocol.n_synthetic > LADDER.n_synthetic:  # the same set under the ladder's protocol, comparable
                _, sub = split_synthetic(synthetic, LADDER.n_synthetic, seed=a.seed)
                row["ladder"] = score(sub, test, LADDER, seed=a.seed)
            if a.release:
                row["release"] = str(release(a, model, synthetic, row).relative_to(ROOT))
    row["seconds"] = time.time() - t0
    return row


def score_last_iterate(model, last: dict, smp: SampleConfig, test: ImageSet, protocol: Protocol, seed: int) -> dict:
    """The EMA rung's control from the same fine-tune: the model with its last noisy iterate instead of the
    average (both are DP outputs of one run), sampled and scored the same way. Leaves `model` on the iterate."""
    params = {f"{prefix}.{n}": p for prefix, m in (("unet", model.unet), ("embedder", model.embedder))
              for n, p in m.named_parameters()}
    with torch.no_grad():
        for k, v in last.items():
            params[k].copy_(v)
    return score(sample(model, smp), test, protocol, seed=seed)


def release(a, model, synthetic: ImageSet, row: dict) -> Path:
    """The released data set (runs/releases/NAME, not in git: 60k PNGs) with its model; the grid and data card
    are copied to bench/results/releases/NAME for the record."""
    import shutil

    from dpsearch.synthetic_release import write_release

    name = a.release
    p = dict(row.get("privacy") or {"dp": True, "eps": 0.0, "delta": 0.0, "accountant": "none",
                                     "covers": "a model trained on public data only"})
    p.setdefault("covers", "the one DP fine-tune that produced the model (no search, no other use of the private set)")
    config = {k: row[k] for k in ("model", "finetune_config", "sample_config") if k in row}
    config["private_data"] = f"MNIST training split, {N_PRIVATE} images (subset seed 0)"
    oracle = {k: v for k, v in row.items() if k.startswith("oracle/")}
    oracle["protocol"] = row["protocol"]
    out = write_release(synthetic, ROOT / "runs" / "releases" / name, name=name, privacy=p, configuration=config,
                        oracle=oracle, overwrite=True)
    save_ldm(model.to("cpu"), out.parent / f"{name}-model", extra={"privacy": p})
    keep = RESULTS.parent / "releases" / name
    keep.mkdir(parents=True, exist_ok=True)
    for f in ("grid.png", "DATA_CARD.md", "card.json"):
        shutil.copy(out / f, keep / f)
    return out


def _wall(r: dict) -> float:
    """A rescored model's wall time includes the fine-tune it reused."""
    return r["seconds"] + (r.get("finetune_seconds", 0.0) if r.get("finetuned") else 0.0)


def recipe(r: dict) -> str:
    """The fine-tune and sampling levers of a row, in words (docs/utility.md's rungs)."""
    ft, smp = r.get("finetune_config", {}), r.get("sample_config", {})
    parts = [f"{ft.get('scope', 'attention')} {ft.get('layers', 'all')}", f"{ft.get('epochs')} epochs",
             f"B {ft.get('batch')}", f"lr {ft.get('lr', 0):g}" + (" cosine" if ft.get("lr_schedule") == "cosine" else ""), f"k {ft.get('multiplicity', 1)}",
             f"EMA {ft['ema']:g}" if ft.get("ema") else "no EMA",
             *([f"class-mean warm-up share {ft['warmup']:g}, {ft['warmup_steps']} steps"] if ft.get("warmup") else []),
             f"guidance {smp.get('guidance', 0):g}", f"{smp.get('scheduler', 'dpm++')} {smp.get('steps')} steps"]
    return ", ".join(parts)


def write_utility_json() -> None:
    """bench/results/utility.json: the headline rows, DP runs scored under the full protocol."""
    rows = []
    for path in sorted(RESULTS.glob("dp-*.json")):
        r = json.loads(path.read_text())
        if not r["protocol"].startswith("dpimagebench"):
            continue
        rows.append({"released_eps": r["privacy"]["eps"], "delta": r["privacy"]["delta"],
                     "oracle_accuracy": r["oracle/accuracy"], "oracle_accuracy_mean": r["oracle/accuracy_mean"],
                     "n_synthetic": r["n_synthetic"], "protocol": r["protocol"], "release": r.get("release"),
                     "seed": r.get("sample_config", {}).get("seed"), "recipe": recipe(r),
                     "what": "one DP fine-tune (no search): its (ε, δ) is the released one",
                     "finetune_config": r["finetune_config"], "wall_seconds": _wall(r), "row": path.name,
                     "wall_note": "fine-tune + sampling + scoring + writing the release on 2 CPU cores; public "
                                  "pretraining (cached, ≈ 14 min once) not included"})
    (RESULTS.parent / "utility.json").write_text(json.dumps(rows, indent=2))


def _public_data(r: dict) -> str:
    try:
        return json.loads((Path(r["model"]) / "dpsearch_model.json").read_text())["pretraining"]["public_data"]
    except (KeyError, OSError, ValueError):
        return "–"


def report() -> str:
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    rows.sort(key=lambda r: (RUNGS.index(r["rung"]), -r.get("privacy", {}).get("eps", 0), r.get("tag", "")))
    lines = ["| rung | public data | fine-tune | released (ε, δ) | ladder acc. (10k, CNN) | DPImageBench protocol: best "
             "(CNN, ResNet) | mean | wall |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.get("privacy")
        eps = "–" if p is None else ("NOT DP" if not p.get("dp", True) else f"({p['eps']:.2f}, {p['delta']:.3g})")
        ft = r.get("finetune_config", {})
        what = f"{ft['scope']} {ft['layers']}, {ft['epochs']} ep, B={ft['batch']}, lr={ft['lr']:g}" if ft else "–"
        what += f", k={ft['multiplicity']}" if ft.get("multiplicity", 1) > 1 else ""
        what += f", EMA {ft['ema']:g}" if ft.get("ema") else ""
        what += f", warm-up {ft['warmup']:g}" if ft.get("warmup") else ""
        if "sample_config" in r:
            what = (what + ", " if ft else "") + f"g={r['sample_config']['guidance']:g}"
        ladder = r.get("ladder", r if r["protocol"].startswith("ladder") else None)
        lad = f"{100 * ladder['oracle/accuracy']:.2f}%" if ladder else "–"
        full = r["protocol"].startswith("dpimagebench")
        best = (f"{100 * r['oracle/accuracy']:.2f}% ({100 * r['oracle/accuracy_cnn']:.2f}, "
                f"{100 * r['oracle/accuracy_resnet']:.2f})" if full else "–")
        mean = f"{100 * r['oracle/accuracy_mean']:.2f}%" if full else "–"
        data = _public_data(r) if "model" in r else "–"
        lines.append(f"| {r['rung']}{' ' + r['tag'] if r.get('tag') else ''} | {data} | {what} | {eps} | {lad} | {best} | "
                     f"{mean} | {_wall(r) / 60:.0f} min |")
        if r.get("last_iterate"):  # the EMA rung's control: the same fine-tune's last noisy iterate
            last = f"{100 * r['last_iterate']['oracle/accuracy']:.2f}%"
            no_ema = what.replace(f", EMA {ft['ema']:g}", ", no EMA")
            lines.append(f"| {r['rung']} {r.get('tag', '')} last iterate | {data} | {no_ema} (the same fine-tune) | {eps} | "
                         f"{last} | – | – | (same run) |")
    return "\n".join(lines)


def _name(a) -> str:
    return a.rung + (f"-eps{a.eps:g}" if a.rung == "dp" else "") + (f"-{a.tag}" if a.tag else "")


def _headline_rows() -> list[dict]:
    return [r for r in (json.loads(p.read_text()) for p in sorted(RESULTS.glob("dp-*.json")))
            if r["protocol"].startswith("dpimagebench")]


def seed_groups() -> dict[tuple, list[dict]]:
    """Headline runs of one recipe at one released (ε, δ): the seeds of one row of the summary."""
    groups: dict[tuple, list[dict]] = {}
    for r in _headline_rows():
        groups.setdefault((recipe(r), round(r["privacy"]["eps"], 1), f"{r['privacy']['delta']:.3g}"), []).append(r)
    return groups


def spread(values: list[float]) -> str:
    """Mean over seeds with its sample sd and range, in points; one seed says so instead."""
    v = [100 * x for x in values]
    if len(v) == 1:
        return f"{v[0]:.2f}% (1 seed)"
    return f"{statistics.mean(v):.2f}% ± {statistics.stdev(v):.2f} ({min(v):.2f}–{max(v):.2f}, {len(v)} seeds)"


def headline() -> str:
    """docs/utility.md's headline tables: over seeds per recipe and released (ε, δ), then every run."""
    lines = ["<!-- headline -->", "Over seeds (mean ± sample sd, range; each seed is its own DP fine-tune with fresh "
             "noise, its own sampling and classifier seeds):", "",
             "| released (ε, δ) | recipe | best classifier | mean of classifiers | ladder (10k subset, CNN) | "
             "wall per seed |", "|---|---|---|---|---|---|"]
    for (rec, eps, delta), rs in sorted(seed_groups().items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        lines.append(f"| ({eps:g}, {delta}) | {rec} | **{spread([r['oracle/accuracy'] for r in rs])}** | "
                     f"{spread([r['oracle/accuracy_mean'] for r in rs])} | "
                     f"{spread([r['ladder']['oracle/accuracy'] for r in rs])} | "
                     f"{statistics.mean(_wall(r) for r in rs) / 60:.0f} min |")
    lines += ["", "Every run:", "",
              "| released (ε, δ) | recipe | seed | best classifier | CNN | ResNet | mean | ladder (10k subset, CNN) "
              "| wall (2 cores) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(_headline_rows(), key=lambda r: (-round(r["privacy"]["eps"]), recipe(r), r["sample_config"]["seed"])):
        ft = r.get("finetune_seconds", 0.0)
        smp = r.get("sample_seconds", 0.0)
        lines.append(f"| ({r['privacy']['eps']:.3f}, {r['privacy']['delta']:.3g}) | {recipe(r)} | "
                     f"{r['sample_config']['seed']} | **{100 * r['oracle/accuracy']:.2f}%** | "
                     f"{100 * r['oracle/accuracy_cnn']:.2f}% | {100 * r['oracle/accuracy_resnet']:.2f}% | "
                     f"{100 * r['oracle/accuracy_mean']:.2f}% | {100 * r['ladder']['oracle/accuracy']:.2f}% | "
                     f"{_wall(r) / 60:.0f} min: fine-tune {ft / 60:.0f}, sampling {smp / 60:.0f}, scoring and release "
                     f"{(_wall(r) - ft - smp) / 60:.0f} |")
    return "\n".join(lines + ["<!-- /headline -->"])


def results_section() -> str:
    """docs/results.md's DPImageBench-protocol section: the released models beside the field's anchors."""
    from anchors import ANCHOR_SOURCE, ANCHORS

    by_recipe: dict[str, dict] = {}  # one line per recipe, each ε in its column (the default δ only)
    for (rec, eps, delta), rs in seed_groups().items():
        if delta == f"{benchmark_delta():.3g}":
            by_recipe.setdefault(rec, {})[round(eps)] = rs

    def cell(full: dict, e: int) -> str:
        if e not in full:
            return "not run"
        best = [100 * r["oracle/accuracy"] for r in full[e]]
        mean = [100 * r["oracle/accuracy_mean"] for r in full[e]]
        sd = f" ± {statistics.stdev(best):.1f}" if len(best) > 1 else ""
        return (f"**{statistics.mean(best):.1f}**{sd} (mean of classifiers {statistics.mean(mean):.1f}; "
                f"ε = {max(r['privacy']['eps'] for r in full[e]):.2f}; {len(best)} seed{'s' * (len(best) > 1)})")

    lines = ["<!-- protocol -->", "## Under DPImageBench's protocol (the numbers to compare with the field)", "",
             "Written by `python bench/ceiling.py report` (docs/utility.md has the ladder and the commands). "
             "dpsearch: one DP fine-tune of the default pretrained model on 55,000 MNIST images at released ε, "
             "δ = 1/(N ln N) = 1.67e-6; 60,000 synthetic images; oracle accuracy of the best of a CNN and a small "
             "ResNet (the mean beside it), the closest classifiers a 2-core CPU trains. The anchors are published "
             "figures (GPU-scale models and classifiers), not run here.", "",
             "| method | ε = 1 | ε = 10 |", "|---|---|---|",
             *(f"| **dpsearch** (this machine, 2 CPU cores; {rec}) | {cell(full, 1)} | {cell(full, 10)} |"
               for rec, full in by_recipe.items())]
    lines += [f"| {name} | {a1} | {a10} |" for name, a1, a10 in ANCHORS]
    lines += ["", f"Anchors: {ANCHOR_SOURCE}.", "", "<!-- /protocol -->"]
    return "\n".join(lines)


def _replace_block(path: Path, start: str, end: str, block: str, at_top_after_title: bool = False) -> None:
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    elif at_top_after_title and text.startswith("# "):
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{block}\n{rest}"
    else:
        text = block + "\n" + text
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rung", choices=RUNGS + ["report"])
    p.add_argument("--model", default=None, help="pretrained model dir (default: the embedded pretraining, cached)")
    p.add_argument("--pretrain", default=None, help='PretrainConfig fields as JSON, e.g. \'{"public": "printed-digits-elastic"}\'')
    p.add_argument("--tag", default="")
    p.add_argument("--n-synthetic", type=int, default=60000)
    p.add_argument("--classifiers", default="cnn,resnet")
    p.add_argument("--eps", type=float, default=10.0)
    p.add_argument("--delta", type=float, default=None,
                   help="δ of the dp rung (default 1/(N ln N), the product's rule; 1e-5 is DPImageBench's MNIST δ)")
    p.add_argument("--layers", default="all")
    p.add_argument("--scope", choices=["attention", "unet"], default="attention", help="what the dp rung trains")
    p.add_argument("--epochs", type=int, default=FinetuneConfig.model_fields["epochs"].default)
    p.add_argument("--batch", type=int, default=4000)  # the recorded figures used B = 4000 (q·N since the default became q = 1/15)
    p.add_argument("--clip", type=float, default=FinetuneConfig.model_fields["clip"].default)
    p.add_argument("--lr", type=float, default=FinetuneConfig.model_fields["lr"].default)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=FinetuneConfig.model_fields["lr_schedule"].default)
    p.add_argument("--multiplicity", type=int, default=FinetuneConfig.model_fields["multiplicity"].default,
                   help="noise draws per image per step, averaged before clipping")
    p.add_argument("--ema", type=float, default=FinetuneConfig.model_fields["ema"].default,
                   help="EMA decay of the weights (also scores the last iterate of the same run)")
    p.add_argument("--warmup", type=float, default=None, metavar="SHARE",
                   help="DP class-mean warm-up with this share of the budget (dp rung only)")
    p.add_argument("--warmup-steps", type=int, default=FinetuneConfig.model_fields["warmup_steps"].default)
    p.add_argument("--guidance", type=float, default=SampleConfig.model_fields["guidance"].default)
    p.add_argument("--steps", type=int, default=SampleConfig.model_fields["steps"].default)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finetuned", default=None, metavar="DIR",
                   help="skip the fine-tune: sample and score runs/ceiling/NAME-model from an earlier run of the rung")
    p.add_argument("--release", default=None, metavar="NAME", help="also write the released data set runs/releases/NAME")
    a = p.parse_args(argv)
    if a.rung == "report":
        write_utility_json()
        table = report()
        _replace_block(DOC, "<!-- ladder -->", "<!-- /ladder -->", f"<!-- ladder -->\n{table}\n<!-- /ladder -->")
        _replace_block(DOC, "<!-- headline -->", "<!-- /headline -->", headline())
        _replace_block(ROOT / "docs" / "results.md", "<!-- protocol -->", "<!-- /protocol -->", results_section(),
                       at_top_after_title=True)
        print(table)
        return 0
    row = run(a)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{_name(a)}.json").write_text(json.dumps(row, indent=2))
    print(json.dumps({k: v for k, v in row.items() if k.startswith("oracle") or k in ("seconds", "protocol")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
