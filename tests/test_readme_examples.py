"""The README's own-images examples run as typed: every `dpsearch run` line on `folder:/data/images` is accepted
(no batch refusal on a small folder) and writes a DP model with its privacy.json.

The only changes to a line: /data/images becomes a small folder of PNGs made here, PIPELINE the tiny Stable
Diffusion pipeline of tests/tiny_sd.py, its --resolution that pipeline's RESOLUTION (16: the line's 256 would train
the same code path ~250× slower on CPU), and a few flags are appended so that it runs in seconds (--epochs 1, few
samples, --out in a temporary directory). Appended flags override the line's own (argparse: the last one wins).
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpsearch.cli import main
from tests.tiny_sd import RESOLUTION, make_tiny_sd

ROOT = Path(__file__).resolve().parent.parent
FOLDER = "folder:/data/images"
FAST = ["--epochs", "1", "--per-class", "3", "--steps", "2", "--quiet"]


def readme_run_lines(readme: Path = ROOT / "README.md") -> list[str]:
    """The README's `dpsearch run` lines (a leading `$ ` prompt allowed) that read folder:/data/images."""
    lines = []
    for line in Path(readme).read_text().splitlines():
        s = line.strip().removeprefix("$ ")
        if s.startswith("dpsearch run") and FOLDER in s:
            lines.append(s)
    return lines


def image_folder(root: Path, classes: int, per_class: int, size: int, mode: str) -> Path:
    """`classes` subfolders of `per_class` small random PNGs each (one class lighter than the next)."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"class{k}").mkdir(parents=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            img = np.clip(rng.integers(0, 60, shape) + 20 * k, 0, 255).astype(np.uint8)
            Image.fromarray(img, mode).save(root / f"class{k}" / f"{i}.png")
    return root


def adapt(line: str, images: Path, pipeline: Path | None, out: Path) -> list[str]:
    """The line's arguments with the substitutions the module docstring lists, and FAST and --out appended."""
    args = shlex.split(line)
    assert args[:2] == ["dpsearch", "run"], line
    args = [a.replace("/data/images", str(images)) if a == FOLDER else a for a in args[2:]]
    for flag, value in (("--model", str(pipeline) if pipeline else None), ("--resolution", str(RESOLUTION))):
        if flag in args and value is not None:
            args[args.index(flag) + 1] = value
    return [*args, *FAST, "--out", str(out)]


def run_readme_examples(readme: Path, tmp: Path) -> list[dict]:
    """Runs every such line of `readme`; returns each one's privacy.json. Fails if there is none."""
    lines = readme_run_lines(readme)
    assert lines, (f"{readme} has no `dpsearch run ... {FOLDER} ...` line: the own-images examples this test runs are "
                   f"missing (or moved: update tests/test_readme_examples.py)")
    records = []
    for i, line in enumerate(lines):
        sd = "--model" in shlex.split(line)
        # the default model is conditioned on 10 classes of 28×28 grey images; a pipeline takes any labels and sizes
        images = image_folder(tmp / f"images{i}", classes=2 if sd else 10, per_class=20 if sd else 4,
                              size=24 if sd else 28, mode="RGB" if sd else "L")
        pipeline = None
        if sd:
            pipeline = tmp / "pipeline"
            if not pipeline.exists():
                make_tiny_sd(pipeline)
        out = tmp / f"trial{i}"
        argv = adapt(line, images, pipeline, out)
        assert main(["run", *argv]) == 0, f"README line failed: {line}\n  ran: dpsearch run {shlex.join(argv)}"
        privacy = json.loads((out / "privacy.json").read_text())
        assert math.isfinite(privacy["eps"]) and 0 < privacy["eps"] <= 5.0, (line, privacy)
        assert privacy["batch"] <= privacy["n"], (line, privacy)
        records.append(privacy)
    return records


EXAMPLES = """\
Your own images, one subfolder per class:

    dpsearch run --private folder:/data/images --eps 5 --physical-batch 8

A Stable Diffusion pipeline at its prompt and resolution:

    dpsearch run --model PIPELINE --private folder:/data/images --prompt "a photo of a {label}" --resolution 256 --physical-batch 8 --eps 5
"""


def test_the_lines_are_found_and_adapted(tmp_path):
    (tmp_path / "README.md").write_text(EXAMPLES + "\n    dpsearch run --eps 5\n    dpsearch sweep --private folder:/data/images\n")
    lines = readme_run_lines(tmp_path / "README.md")
    assert len(lines) == 2 and all(line.startswith("dpsearch run") for line in lines)
    argv = adapt(lines[1], Path("/tmp/im"), Path("/tmp/pipe"), Path("/tmp/out"))
    assert argv[:8] == ["--model", "/tmp/pipe", "--private", "folder:/tmp/im", "--prompt", "a photo of a {label}",
                        "--resolution", str(RESOLUTION)]
    (tmp_path / "EMPTY.md").write_text("no examples here\n")
    with pytest.raises(AssertionError, match="no `dpsearch run"):
        run_readme_examples(tmp_path / "EMPTY.md", tmp_path)


@pytest.mark.e2e
def test_the_examples_run_as_typed_on_a_small_folder(tmp_path):
    """The two lines the README is to carry, from a copy of their text (the README itself: the test below)."""
    (tmp_path / "README.md").write_text(EXAMPLES)
    records = run_readme_examples(tmp_path / "README.md", tmp_path)
    assert [r["n"] for r in records] == [40, 40]
    assert [r["batch"] for r in records] == [3, 3]  # the default rate q = 1/15 of 40 records, not 4000


@pytest.mark.e2e
def test_the_readme_examples_run_as_typed(tmp_path):
    run_readme_examples(ROOT / "README.md", tmp_path)
