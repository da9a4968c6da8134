"""LoRA (rank r) against whole-attention fine-tuning of the same layer range, on the default MNIST setup.

    python bench/lora.py [--eps 1,10] [--methods attention,lora4,lora16] [--layers all] [--threads N] [--tag T]

Every (ε, method) runs the product's pipeline (`run_pipeline`: DP fine-tune → sample → score) on all 60,000
MNIST training images from the default pretrained model, with the default fine-tune, sampling and evaluation
configs, each in a fresh process (its own peak RSS). Printed per run: the accountant's ε and δ, trainable
parameters, seconds per DP step (fine-tune time / steps, Poisson sampling included), peak RSS and the ORACLE
accuracy of a CNN trained on the synthetic images and tested on the real MNIST test split (oracle: it
chooses nothing). Writes bench/results/lora[-T].json. Step times are only comparable when the machine is
otherwise idle; bench/dp_step.py --method lora times steps alone.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _method(name: str) -> dict:
    if name == "attention":
        return {"method": "attention"}
    if name.startswith("lora") and name[4:].isdigit():
        return {"method": "lora", "rank": int(name[4:])}
    raise SystemExit(f"unknown method {name!r}: attention or loraR (e.g. lora4)")


def _one(eps: float, method: str, layers: str, threads: int) -> dict:
    import torch

    from dpsearch.config import EvaluateConfig, FinetuneConfig, PretrainConfig, SampleConfig
    from dpsearch.data import load_mnist
    from dpsearch.pipeline import run_pipeline
    from dpsearch.pretrain import pretrain

    torch.set_num_threads(threads)
    train, test = load_mnist()
    ft = FinetuneConfig(eps=eps, layers=layers, **_method(method))
    t0 = time.time()
    out = run_pipeline(pretrain(PretrainConfig()), train, ft, SampleConfig(), EvaluateConfig(), oracle=test,
                       progress=False)
    p = out.privacy
    return {"eps_target": eps, "method": method, "layers": layers, "eps": p["eps"], "delta": p["delta"],
            "accountant": p["accountant"], "clipping": p["clipping"], "trainable_params": p["trainable_params"],
            "steps": p["steps"], "seconds_per_dp_step": out.seconds["finetune"] / p["steps"],
            "finetune_s": out.seconds["finetune"], "total_s": time.time() - t0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "oracle_accuracy": out.scores["oracle/accuracy"], "oracle_fid": out.scores["oracle/fid"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", default="1,10")
    ap.add_argument("--methods", default="attention,lora4,lora16")
    ap.add_argument("--layers", default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    for m in args.methods.split(","):
        _method(m)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"lora{('-' + args.tag) if args.tag else ''}.json"
    rows = []
    for eps in (float(e) for e in args.eps.split(",")):
        for method in args.methods.split(","):
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                row = pool.submit(_one, eps, method, args.layers, args.threads).result()
            rows.append(row)
            print(f"ε {row['eps']:.3f} (δ {row['delta']:g}, {row['accountant']})  {method:>9}  layers {args.layers}  "
                  f"{row['trainable_params']:>9,} trainable  {row['seconds_per_dp_step']:6.2f} s/step  "
                  f"{row['peak_rss_mb']:6.0f} MB peak  oracle acc {100 * row['oracle_accuracy']:5.2f}%  "
                  f"oracle FID {row['oracle_fid']:.2f}", flush=True)
            out.write_text(json.dumps({"args": vars(args), "machine": platform.platform(), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
