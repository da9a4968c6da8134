"""Empirical privacy audit of dpsearch's DP-SGD (Steinke, Nasr & Jagielski 2023, one run, Dirac canaries).

    python bench/privacy_audit.py [--eps 2] [--m 1000] [--n-real 10000] [--batch 256] [--epochs 5]

Runs dpsearch's own DP-SGD loop (`privatize` + `dp_sgd_epoch`: Opacus, Poisson sampling) on MNIST images
plus m canaries, once as configured and once with each deliberate bug (noise off; clipping off with the
same noise), all claiming (ε, δ). Prints the empirical ε lower bound beside the claim and writes
bench/results/privacy_audit.json. A bound above the claim means broken; the correct configuration must
stay below it. The one-run bound with m canaries cannot exceed about 5.4 (m = 1000) even for a
mechanism with no privacy at all, so the claim audited here is small (ε = 2 by default).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from dpsearch.config import default_delta
from dpsearch.data import load_mnist
from dpsearch.privacy.audit import BREAKS, canary_audit, format_audit

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", type=float, default=2.0)
    ap.add_argument("--delta", type=float, default=None, help="default: 1/(N ln N), two significant digits")
    ap.add_argument("--m", type=int, default=1000, help="canaries, each included with probability 1/2")
    ap.add_argument("--n-real", type=int, default=10000, help="MNIST training images beside the canaries")
    ap.add_argument("--batch", type=int, default=256, help="expected (Poisson) batch size")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")  # Opacus' secure-RNG and hook notices, once per run

    train, _ = load_mnist()
    real = train.subset(a.n_real, seed=a.seed)
    x, y = real.as_float(), real.labels
    delta = a.delta if a.delta is not None else default_delta(a.n_real + a.m)
    results, seconds = [], {}
    for broken in (None, *BREAKS):
        t = time.time()
        results.append(canary_audit(x, y, 10, eps=a.eps, delta=delta, batch=a.batch, epochs=a.epochs, clip=a.clip,
                                    lr=a.lr, m=a.m, broken=broken, seed=a.seed))
        seconds[broken or "correct"] = round(time.time() - t, 1)
    print(format_audit(results))
    print("seconds per run:", seconds)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "privacy_audit.json"
    out.write_text(json.dumps({"args": vars(a), "seconds": seconds, "results": [r.to_dict() for r in results]}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
