"""Sampling speed and the fastest sampler setting whose oracle accuracy stays within 0.5 points of the default's.

    python bench/sampling.py --model runs/DIR/model [--per-class 200] [--settings ddim:25,ddim:10,dpm++:10,...]

For every setting (scheduler:steps) it samples the class-balanced synthetic set a trial samples, times it
(images/s), trains the downstream CNN on it and scores it on the real MNIST test split. Those scores are
ORACLE metrics (private test data): this benchmark picks a library default once, never a trial's model.
The default setting runs with several seeds (sampling and CNN), so the table shows how much the
accuracy moves by chance alone. Prints a table and writes bench/results/sampling.json; run it on an idle
machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _setting(spec: str) -> tuple[str, int]:
    name, _, steps = spec.partition(":")
    if name not in ("ddim", "dpm++") or not steps.isdigit():
        raise SystemExit(f"a setting is SCHEDULER:STEPS with SCHEDULER ddim or dpm++, got {spec!r}")
    return name, int(steps)


def measure(model, test, scheduler: str, steps: int, per_class: int, batch: int, seed: int) -> dict:
    from dpsearch.config import EvaluateConfig, SampleConfig
    from dpsearch.evaluate import evaluate
    from dpsearch.sample import sample

    cfg = SampleConfig(per_class=per_class, steps=steps, scheduler=scheduler, batch=batch, seed=seed)
    t = time.perf_counter()
    synthetic = sample(model, cfg, progress=False)
    sec = time.perf_counter() - t
    m = evaluate(synthetic, test, EvaluateConfig(seed=seed), progress=False)
    return {"scheduler": scheduler, "steps": steps, "seed": seed, "images": len(synthetic), "seconds": sec,
            "images_per_s": len(synthetic) / sec, "oracle_accuracy": m["oracle/accuracy"],
            "oracle_fid": m["oracle/fid"], "fid_extractor": m["fid_extractor"]}


def main(argv=None) -> None:
    from dpsearch.config import PretrainConfig, SampleConfig
    from dpsearch.data import load_mnist
    from dpsearch.models import load_ldm
    from dpsearch.pretrain import default_model_dir

    d = SampleConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir, e.g. a `dpsearch run` output's model/ "
                                                  "(default: the cached pretrained model)")
    ap.add_argument("--per-class", type=int, default=200, help="images per class (a sweep trial samples 200)")
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--default", default=f"{d.scheduler}:{d.steps}")
    ap.add_argument("--settings", default="ddim:15,ddim:10,ddim:5,dpm++:15,dpm++:10,dpm++:5")
    ap.add_argument("--default-seeds", type=int, default=3, help="seeds for the default setting (chance spread)")
    ap.add_argument("--tolerance", type=float, default=0.5, help="accuracy points the fastest setting may lose")
    ap.add_argument("--tag", default="")
    a = ap.parse_args(argv)
    model_dir = a.model or str(default_model_dir(PretrainConfig()))
    model = load_ldm(model_dir, "cpu")
    _, test = load_mnist()
    default = _setting(a.default)
    rows = []
    print(f"{'setting':>10} {'seed':>4} {'images/s':>9} {'seconds':>8} {'oracle acc.':>12} {'oracle FID':>10}")
    plan = [(default, s) for s in range(a.default_seeds)] + [(_setting(x), 0) for x in a.settings.split(",") if x]
    for (name, steps), seed in plan:
        r = measure(model, test, name, steps, a.per_class, a.batch, seed)
        rows.append(r)
        print(f"{name + ':' + str(steps):>10} {seed:>4} {r['images_per_s']:9.1f} {r['seconds']:8.1f} "
              f"{100 * r['oracle_accuracy']:11.2f}% {r['oracle_fid']:10.1f}", flush=True)
    base = [r for r in rows if (r["scheduler"], r["steps"]) == default]
    base_acc = statistics.mean(r["oracle_accuracy"] for r in base)
    spread = (max(r["oracle_accuracy"] for r in base) - min(r["oracle_accuracy"] for r in base)) if len(base) > 1 else None
    ok = [r for r in rows if r["oracle_accuracy"] >= base_acc - a.tolerance / 100]
    fastest = max(ok, key=lambda r: r["images_per_s"])
    print(f"default {a.default}: mean oracle accuracy {100 * base_acc:.2f}% over {len(base)} seeds"
          + (f" (spread {100 * spread:.2f} points by chance alone)" if spread is not None else "")
          + f", {statistics.mean(r['images_per_s'] for r in base):.1f} images/s")
    print(f"fastest within {a.tolerance} points: {fastest['scheduler']}:{fastest['steps']} "
          f"({fastest['images_per_s']:.1f} images/s, oracle {100 * fastest['oracle_accuracy']:.2f}%)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"sampling{('-' + a.tag) if a.tag else ''}.json"
    out.write_text(json.dumps({"args": vars(a), "model": model_dir, "machine": platform.platform(),
                               "threads": torch.get_num_threads(), "default_mean_oracle_accuracy": base_acc,
                               "default_spread": spread, "fastest_within_tolerance": fastest, "rows": rows,
                               "note": "oracle metrics: real MNIST test split, not DP, used only to pick a default"},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
