"""The class-mean warm-up on its own: the public model, the DP class means and the warm-up steps, no DP-SGD.

A diagnostic for docs/utility.md: how much the noisy class means alone teach the public model. The data, model
and scoring are the ceiling ladder's (10,000 samples at guidance 1.0, CNN, real test split = oracle). The release
is (ε_w, δ)-DP by itself, printed; it is the warm-up `--warmup SHARE` composes into a run at ε.

    python bench/warmup_only.py --eps 1 --share 0.05
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ceiling import LADDER, private_split  # noqa: E402
from dpsearch.config import FinetuneConfig, PretrainConfig, SampleConfig, parse_layers  # noqa: E402
from dpsearch.finetune import DiffusionLoss, select_trainable  # noqa: E402
from dpsearch.models import attention_modules, load_ldm  # noqa: E402
from dpsearch.pretrain import pretrain  # noqa: E402
from dpsearch.privacy.accounting import warmup_sigma  # noqa: E402
from dpsearch.privacy.class_means import noisy_class_means  # noqa: E402
from dpsearch.privacy.randomness import MechanismRandomness  # noqa: E402
from dpsearch.protocol import benchmark_delta, score  # noqa: E402
from dpsearch.sample import sample, save_grid  # noqa: E402
from dpsearch.warmup import warm_up  # noqa: E402


def gaussian_epsilon(sigma: float, delta: float) -> float:
    """ε of one Gaussian release of noise multiplier σ at δ (dp-accounting's PLD)."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.GaussianDpEvent(sigma))
    return float(acc.get_epsilon(delta))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eps", type=float, default=1.0, help="the run's ε the share is taken of")
    p.add_argument("--share", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=FinetuneConfig.model_fields["warmup_steps"].default)
    p.add_argument("--guidance", type=float, default=1.0)
    a = p.parse_args(argv)
    private, _, test = private_split()
    model = load_ldm(pretrain(PretrainConfig()))
    lo, hi = parse_layers("all", len(attention_modules(model.unet)))
    model.vae.requires_grad_(False)
    trainable = select_trainable(model, FinetuneConfig(eps=a.eps), lo, hi)
    delta = benchmark_delta()
    sigma_w = warmup_sigma(a.eps, delta, a.share)
    t = time.time()
    means = noisy_class_means(private, sigma_w, MechanismRandomness())
    warm_up(model, DiffusionLoss(model, FinetuneConfig.model_fields["label_dropout"].default).train(), trainable,
            means, a.steps)
    seconds = time.time() - t
    model.unet.eval(), model.embedder.eval()
    synthetic = sample(model, SampleConfig(per_class=LADDER.n_synthetic // 10, guidance=a.guidance))
    out = Path(__file__).parent / "results" / "warmup_only" / f"eps{a.eps:g}-share{a.share:g}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(synthetic, out)
    row = {"eps_of_the_means_alone": gaussian_epsilon(sigma_w, delta), "delta": delta, "share_of": a.eps,
           "share": a.share, "sigma_w": sigma_w, "warmup_steps": a.steps, "warmup_seconds": seconds,
           "ladder_oracle_accuracy": score(synthetic, test, LADDER, seed=0)["oracle/accuracy"],
           "note": "oracle: real test split, not DP, chooses nothing"}
    out.with_suffix(".json").write_text(json.dumps(row, indent=2))
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
