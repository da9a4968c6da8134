"""How to spend a CPU node's cores on one DP fine-tune: threads in one process, or data-parallel processes.

    python bench/final_run_layout.py [--layers 3-5] [--batch 2000] [--physical 256] [--rounds 3] [--repeats 3]
                                     [--physicals 128,256,512] [--out FILE]

The final run of a sweep has the node to itself (two cores here). Each round times one book-keeping DP step of
`--batch` examples (median of --repeats after a warm-up, bench/dp_step.py's `bench_mode`) laid out two ways, one
after the other: one process at all the node's threads, and one process per core at one thread each, each on its
share of the batch, started together (the step is as long as the slower of them). Then, with --physicals, the
physical batch sizes at all the threads, interleaved in one process so drift of the machine hits every size alike.
The data-parallel layout here only times the arithmetic of each share: it does not exchange the clipped sums
(two small all-reduces per step for the layers 3-5) and is not a DP run. Prints a table and writes
bench/results/final_run_layout.json (or --out). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(Path(__file__).parent))


def _loaded(threads: int, batch: int):
    """(dp_step, model, latents, labels): the default model and `batch` random inputs, at `threads` torch threads."""
    import dp_step
    import torch

    from dpsearch.models import load_ldm

    torch.set_num_threads(threads)
    model = load_ldm(dp_step._default_model(), "cpu")
    return (dp_step, model, *dp_step._inputs(model, "default", "random", batch, 256, torch.device("cpu")))


def _one(threads: int, batch: int, physical: int, layers: str, repeats: int) -> float:
    """Seconds per DP step, measured in this process (called in a fresh one by _spawn)."""
    dp_step, model, x, y = _loaded(threads, batch)
    return dp_step.bench_mode(model, x, y, layers, batch, physical, "bookkeeping", repeats)


def _spawn(threads: int, batch: int, physical: int, layers: str, repeats: int) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import final_run_layout as f; "
            f"print('SECONDS', f._one({threads}, {batch}, {physical}, {layers!r}, {repeats}))")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)


def _seconds(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("SECONDS")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"a timing process failed (exit {proc.returncode}): {out[-2000:]}")
    return float(lines[-1].split()[1])


def _physicals(sizes: list[int], cores: int, batch: int, layers: str, rounds: int, repeats: int) -> dict:
    """Physical batch sizes interleaved in one process: {size: [ms per example per round]}."""
    dp_step, model, x, y = _loaded(cores, batch)
    out = {p: [] for p in sizes}
    for r in range(rounds):
        for p in sizes:
            out[p].append(1000 * dp_step.bench_mode(model, x, y, layers, batch, p, "bookkeeping", repeats) / batch)
        print(f"round {r + 1}: " + ", ".join(f"physical {p}: {v[-1]:.3f} ms/example" for p, v in out.items()), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="3-5")
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--physical", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--physicals", default="", help="comma-separated physical batch sizes to compare (empty: skip)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    if cores < 2:
        raise SystemExit("one core: there is no layout to choose")
    share = a.batch // cores
    rows = []
    for r in range(a.rounds):
        threads = _seconds(_spawn(cores, a.batch, a.physical, a.layers, a.repeats))
        procs = [_spawn(1, share, a.physical, a.layers, a.repeats) for _ in range(cores)]
        parallel = max(_seconds(p) for p in procs)
        rows.append({"round": r + 1, "threads_s": threads, "processes_s": parallel, "speedup": threads / parallel})
        print(f"round {r + 1}: one process at {cores} threads {threads:.3f} s/step; {cores} processes at 1 thread on "
              f"{share} examples each {parallel:.3f} s/step (the slower); processes {threads / parallel:.2f}x", flush=True)
    speedups = [x["speedup"] for x in rows]
    print(f"\nlayers {a.layers}, batch {a.batch}, physical {a.physical}, book-keeping: {cores} data-parallel processes "
          f"are {statistics.mean(speedups):.2f}x one process at {cores} threads (range {min(speedups):.2f}-"
          f"{max(speedups):.2f}, {a.rounds} rounds)")
    result = {"cores": cores, "layers": a.layers, "batch": a.batch, "physical": a.physical, "rounds": rows,
              "mean_speedup": statistics.mean(speedups), "machine": platform.processor() or platform.machine()}
    if a.physicals:
        sizes = [int(s) for s in a.physicals.split(",")]
        per = _physicals(sizes, cores, a.batch, a.layers, a.rounds, a.repeats)
        result["physical_ms_per_example"] = {str(p): v for p, v in per.items()}
        print("median ms per example: " + ", ".join(f"physical {p}: {statistics.median(v):.3f}" for p, v in per.items()))
    out = Path(a.out) if a.out else RESULTS / "final_run_layout.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
