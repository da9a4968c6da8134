"""How well does the counting objective rank trials, and what would rank them better? An analysis, not an arm.

    python bench/objective_noise.py SWEEP_DIR [SWEEP_DIR ...] --eps 10 --n-private 5000

For every finished trial of the given sweeps (their directories with Tune's trial folders, e.g. those
`bench/search_value.py --keep DIR` leaves under DIR/sweeps), the trial's model samples its synthetic set as the
trial did (the space's sample settings), the downstream CNN trains on it, and the CNN is scored on the real test split (the trials' oracle:
10,000 records) and, per record, on a pool of real records (the 5,000 MNIST training images outside DPImageBench's
55,000; a sweep on a record-level share of MNIST may have some of them in its slices: about 1 in 12 at N = 5,000). Then, over many random validation slices of n records from that pool, the objective a sweep would see
(the count of correct predictions plus the count's Gaussian noise at the sweep's σ, or a "soft" count, the sum of
the CNN's probability of the true label: also sensitivity 1, so the same σ) is rank-correlated with the oracle
across the sweep's trials. Printed per n: mean Spearman(objective, oracle) over the draws, hard and soft.
Nothing here is DP or chooses anything: it reads real records to measure an estimator, like an oracle metric. Writes bench/results/objective_noise.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "results" / "objective_noise.json"


def last_checkpoint(trial: Path) -> Path | None:
    done = sorted(p for p in trial.glob("checkpoint_*") if (p / "model").exists() and (p / "result.json").exists())
    return done[-1] if done else None


def per_record(trial: Path, space, pool, test, seed: int) -> dict:
    """The trial model's CNN: oracle accuracy on the test split; correct and p(true label) per pool record."""
    import torch

    from dpsearch.evaluate import accuracy, train_classifier
    from dpsearch.models import load_ldm
    from dpsearch.sample import sample

    ckpt = last_checkpoint(trial)
    model = load_ldm(ckpt / "model")
    synthetic = sample(model, space.sample.model_copy(update={"seed": seed}), progress=False)
    net, _ = train_classifier(synthetic, space.evaluate, progress=False)
    net.eval()
    with torch.no_grad():
        logits = net(pool.images.float().div(255.0))
    p = torch.softmax(logits, 1)
    params = json.loads((trial / "params.json").read_text())
    return {"trial": trial.name.split("_")[2], "config": {k: params.get(k) for k in ("layers", "batch", "lr", "epochs")},
            "oracle": accuracy(net, test), "correct": (logits.argmax(1) == pool.labels).numpy().astype(float),
            "p_true": p[torch.arange(len(pool)), pool.labels].numpy()}


def rank_quality(rows: list[dict], n: int, sigma: float, draws: int, rng) -> dict:
    from scipy.stats import spearmanr

    oracle = [r["oracle"] for r in rows]
    hard, soft = [], []
    for _ in range(draws):
        idx = rng.choice(len(rows[0]["correct"]), n, replace=False)
        noise = rng.normal(0, sigma, len(rows))
        h = [r["correct"][idx].sum() + e for r, e in zip(rows, noise)]
        s = [r["p_true"][idx].sum() + e for r, e in zip(rows, noise)]
        hard.append(spearmanr(h, oracle).statistic)
        soft.append(spearmanr(s, oracle).statistic)
    return {"n": n, "spearman_hard": float(np.nanmean(hard)), "spearman_soft": float(np.nanmean(soft))}


def main(argv=None) -> int:
    from bench.ceiling import private_split
    from dpsearch.privacy.noisy_count import count_sigma
    from dpsearch.protocol import benchmark_delta
    from dpsearch.space import load_space

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="+", type=Path)
    p.add_argument("--eps", type=float, required=True, help="the sweeps' released ε (the counts compose to it)")
    p.add_argument("--n-private", type=int, required=True, help="the task's private records (δ = 1/(N ln N))")
    p.add_argument("--counts", type=int, default=12, help="planned counts: K trials + free candidates")
    p.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2500])
    p.add_argument("--draws", type=int, default=400)
    a = p.parse_args(argv)
    space = load_space("mnist")
    _, pool, test = private_split()
    sigma = count_sigma(a.counts, a.eps, benchmark_delta(a.n_private))
    rng = np.random.default_rng(0)
    result = {"eps": a.eps, "n_private": a.n_private, "sigma": sigma, "sweeps": []}
    for sweep in a.sweeps:
        trials = [t for t in sorted(sweep.glob("dp_trial_*")) if last_checkpoint(t)]
        rows = [per_record(t, space, pool, test, seed=i) for i, t in enumerate(trials)]
        quality = [rank_quality(rows, n, sigma, a.draws, rng) for n in a.sizes]
        for q in quality:
            print(f"{sweep.name}: n = {q['n']}: Spearman(objective, oracle) hard {q['spearman_hard']:.2f}, "
                  f"soft {q['spearman_soft']:.2f} over {len(rows)} trials", flush=True)
        result["sweeps"].append({"sweep": sweep.name, "trials": [{k: r[k] for k in ("trial", "config", "oracle")}
                                                                  for r in rows], "quality": quality})
    OUT.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
