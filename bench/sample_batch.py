"""Images per second of `sample()` against its batch size, at 1 and 2 torch threads, with and without guidance.

    python bench/sample_batch.py [--model DIR] [--batches 50,100,250,500] [--threads 1,2] [--guidance 1,3]
                                 [--images 500] [--repeats 2] [--out FILE]

The default model is the one `dpsearch sweep` uses (the cached copy, else the shipped one); its weights do not change
the time. Every cell runs in a fresh process (its own thread count), after one warm-up sample; the best of --repeats
is kept. A trial samples at 1 thread (two trials at once on 2 cores), the final stage at 2. Prints a table and writes
bench/results/sample_batch.json. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _cell(model_dir: str, threads: int, batch: int, guidance: float, images: int, repeats: int) -> float:
    import torch

    from dpsearch.config import SampleConfig
    from dpsearch.models import load_ldm
    from dpsearch.sample import sample

    torch.set_num_threads(threads)
    model = load_ldm(model_dir, "cpu")
    k = model.meta["num_classes"]
    cfg = SampleConfig(per_class=max(1, images // k), guidance=guidance, batch=batch)
    sample(model, cfg.model_copy(update={"per_class": 2}), progress=False)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        n = len(sample(model, cfg, progress=False))
        best = min(best, time.perf_counter() - t)
    return n / best


def main(argv=None) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from dp_step import _default_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--batches", default="50,100,250,500")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--guidance", default="1,3")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "sample_batch.json"))
    a = ap.parse_args(argv)
    model = a.model or _default_model()
    rows = []
    print(f"{'threads':>7} {'guidance':>8} {'batch':>6} {'images/s':>9}")
    for t in (int(x) for x in a.threads.split(",")):
        for g in (float(x) for x in a.guidance.split(",")):
            for b in (int(x) for x in a.batches.split(",")):
                with ProcessPoolExecutor(1) as ex:  # a fresh process: its own thread count and caches
                    ips = ex.submit(_cell, model, t, b, g, a.images, a.repeats).result()
                rows.append({"threads": t, "guidance": g, "batch": b, "images_per_s": round(ips, 1)})
                print(f"{t:>7} {g:>8g} {b:>6} {ips:>9.1f}", flush=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "model": model, "machine": platform.platform(),
                                       "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
