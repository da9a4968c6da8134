"""Using the cores well: torch threads per trial versus concurrent trials, measured.

    python bench/concurrency.py [--work 2] [--steps 4] [--images-per-class 20]

A unit of work is a miniature trial: DP-SGD steps (Opacus hooks, all attention layers, logical batch 512)
then DDIM sampling, the two phases that fill 96% of a trial (bench/trial_phases.py). The same --work units
run as a sweep would run them with `--concurrency c` on this machine's C cores: c processes at once, each
with C // c torch threads (what dpsearch sweep sets), plus the oversubscribed case (c processes × C threads)
that a user gets when threads are not capped. Prints units/min per layout and writes
bench/results/concurrency.json. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _unit(model_dir: str, threads: int, units: int, steps: int, per_class: int) -> float:
    """Runs `units` miniature trials one after another in this process; returns its busy seconds."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(Path(__file__).parent))
    from dp_step import bench_mode

    from dpsearch.config import SampleConfig
    from dpsearch.data import load_mnist
    from dpsearch.models import load_ldm
    from dpsearch.sample import sample

    model = load_ldm(model_dir, "cpu")
    train, _ = load_mnist()
    sub = train.subset(512)
    with torch.no_grad():
        latents = model.encode(sub.as_float())
    t = time.perf_counter()
    for _ in range(units):
        bench_mode(model, latents, sub.labels, "all", 512, 128, "hooks", steps - 1)  # runs `steps` steps
        sample(model, SampleConfig(per_class=per_class, batch=500), progress=False)
    return time.perf_counter() - t


def run_layout(model_dir: str, processes: int, threads: int, work: int, steps: int, per_class: int) -> float:
    """Wall seconds for `work` units spread over `processes` concurrent processes (a sweep's trials)."""
    per = [work // processes + (i < work % processes) for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        busy = [f.result() for f in [pool.submit(_unit, model_dir, threads, n, steps, per_class) for n in per]]
    return max(busy)


def main(argv=None) -> None:
    from dpsearch.config import PretrainConfig
    from dpsearch.pretrain import default_model_dir

    cores = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir (default: the cached pretrained model)")
    ap.add_argument("--work", type=int, default=2 * cores, help="miniature trials per layout")
    ap.add_argument("--steps", type=int, default=4, help="DP steps per miniature trial")
    ap.add_argument("--images-per-class", type=int, default=20)
    a = ap.parse_args(argv)
    model_dir = a.model or str(default_model_dir(PretrainConfig()))
    layouts = [(c, max(1, cores // c), "dpsearch sweep --concurrency %d" % c) for c in range(1, cores + 1)
               if cores % c == 0]
    layouts.append((cores, cores, "oversubscribed: %d processes × %d threads" % (cores, cores)))
    rows = []
    for procs, threads, what in layouts:
        wall = run_layout(model_dir, procs, threads, a.work, a.steps, a.images_per_class)
        rows.append({"processes": procs, "threads_each": threads, "layout": what, "work_units": a.work,
                     "wall_s": wall, "units_per_min": 60 * a.work / wall})
        print(f"{what:>42}: {procs} × {threads} threads  {wall:7.1f} s  {60 * a.work / wall:6.2f} units/min",
              flush=True)
    best = max(rows, key=lambda r: r["units_per_min"])
    print(f"best on {cores} cores: {best['layout']} ({best['units_per_min']:.2f} units/min)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "concurrency.json"
    out.write_text(json.dumps({"args": vars(a), "cores": cores, "machine": platform.platform(), "rows": rows,
                               "best": best}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
