"""A whole sweep on a Stable Diffusion-format pipeline, offline: a tiny SD pipeline with random weights
(tests/tiny_sd.py) and a folder of two image classes, `method` and `rank` searched.

    python bench/tiny_sd_sweep.py [--trials 3] [--eps 5] [--seed 0] [--out /tmp/tiny_sd_sweep]

Prints the sweep's table (`dpsearch sweep`), keeps the sweep under OUT/sweeps and writes its HTML report
(`dpsearch report`) to OUT/report.html.
The model is untrained, so the scores say nothing about quality: this shows the path (prompts from folder names,
per-method heatmaps, method and rank in the table) end to end.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _photos(root: Path, per_class: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for name, channel in (("blue sky", 2), ("red brick", 0)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = (24, 40) if i % 2 else (48, 32)
            img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
            img[..., channel] += 150
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def main(argv=None) -> int:
    from dpsearch.cli import main as cli
    from tests.tiny_sd import make_tiny_sd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--eps", default="5")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "tiny_sd_sweep")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipeline = make_tiny_sd(tmp / "pipeline")
        photos = _photos(tmp / "photos")
        space = {
            "name": "tiny-sd", "private": f"folder:{photos}", "prompt": "a photo of {label}",
            "params": {"layers": {"low": 1, "high": 4}, "clip": {"log_uniform": [0.01, 1.0]}, "batch": {"value": 20},
                       "lr": {"log_uniform": [1e-4, 1e-2]}, "epochs": {"value": 2},
                       "method": {"choice": ["attention", "lora"]}, "rank": {"choice": [2, 8]}},
            "reference": {"layers": "all", "clip": 0.1, "batch": 20, "lr": 1e-3, "epochs": 1},
            "validation": {"per_class": 10}, "sample": {"per_class": 10, "steps": 5, "batch": 50},
            "evaluate": {"classifier_epochs": 2, "fid_extractor": "public-cnn"},
            "free": {"guidance": [1.0, 3.0], "steps": [5]}, "release": {"n": 40}}
        (tmp / "space.yaml").write_text(yaml.safe_dump(space))
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        rc = cli(["sweep", "--space", str(tmp / "space.yaml"), "--model", str(pipeline), "--eps", args.eps,
                  "--trials", str(args.trials), "--concurrency", "1", "--sampler", "random", "--seed", args.seed,
                  "--name", "tiny-sd", "--storage", str(args.out / "sweeps"), "--tracking", "none", "--quiet"])
        if rc not in (0, 1):
            return rc
        rc = cli(["report", str(args.out / "sweeps" / "tiny-sd"), "--out", str(args.out / "report.html")])
        print(f"report: {args.out / 'report.html'}")
        return rc


if __name__ == "__main__":
    sys.exit(main())
