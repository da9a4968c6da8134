"""Stable Diffusion-format pipelines end to end and offline, on a tiny pipeline with random weights
(tests/tiny_sd.py) and a folder of images of mixed sizes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dpsearch.cli import main
from dpsearch.config import ConfigError
from dpsearch.inputs import resolve_inputs
from dpsearch.models import ModelError, load_ldm
from dpsearch.models.lora import LORA_FILE
from tests.tiny_sd import RESOLUTION, make_tiny_sd


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("sd") / "pipeline")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two classes named by their folders, images of several sizes, RGB and grey."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k, name in enumerate(("blue", "red")):
        (root / name).mkdir()
        for i in range(30):
            h, w = (20, 36) if i % 2 else (48, 24)
            img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
            img[..., 2 if name == "blue" else 0] += 150
            Image.fromarray(img).convert("L" if i == 0 else "RGB").save(root / name / f"{i}.png")
    return root


def test_layers_numbers_the_pipelines_unet(tiny_sd, capsys):
    assert main(["layers", str(tiny_sd)]) == 0
    out = capsys.readouterr().out
    assert "L = 4 attention modules" in out and "class prompts" in out and "LoRA r=4" in out


def test_a_raw_pipeline_given_where_a_dpsearch_model_is_expected_says_what_to_do(tiny_sd):
    with pytest.raises(ModelError, match="Stable Diffusion-format pipeline: give it as --model"):
        load_ldm(tiny_sd)


def test_class_prompts_are_embedded_once_as_the_pipeline_embeds_them(tiny_sd, photos):
    from diffusers import StableDiffusionPipeline

    got = resolve_inputs(str(tiny_sd), f"folder:{photos}", "a photo of a {label}")
    assert got.private.image_shape == (3, RESOLUTION, RESOLUTION) and got.private.class_names == ("blue", "red")
    model = load_ldm(got.model)
    assert model.meta["family"] == "stable-diffusion" and model.meta["prompts"] == ["a photo of a blue", "a photo of a red"]
    assert not any(p.requires_grad for p in model.embedder.parameters())  # a table, nothing to train
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    cond, uncond = pipe.encode_prompt(["a photo of a blue", "a photo of a red"], "cpu", 1, True)
    torch.testing.assert_close(model.embedder(torch.tensor([0, 1])), cond)
    torch.testing.assert_close(model.embedder(torch.tensor([model.embedder.null_class])), uncond[:1])
    # Converted once: the same inputs reuse the cached conversion.
    stamp = (Path(got.model) / "dpsearch_model.json").stat().st_mtime_ns
    again = resolve_inputs(str(tiny_sd), f"folder:{photos}", "a photo of a {label}")
    assert again.model == got.model and (Path(got.model) / "dpsearch_model.json").stat().st_mtime_ns == stamp
    assert resolve_inputs(str(tiny_sd), f"folder:{photos}", "a {label} photo").model != got.model


@pytest.mark.parametrize("args, message", [
    (["--prompt", "a photo"], "has no {label}"),
    (["--resolution", "18"], "not a multiple of 4"),
])
def test_bad_prompt_or_resolution_is_a_clear_error(tiny_sd, photos, tmp_path, capsys, args, message):
    assert main(["run", "--model", str(tiny_sd), "--private", f"folder:{photos}", "--eps", "5", "--batch", "10",
                 "--out", str(tmp_path / "t"), "--quiet", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_a_resolution_is_refused_for_a_dpsearch_model(tiny_model_dir):
    with pytest.raises(ConfigError, match="works at 28 × 28 only"):
        resolve_inputs(str(tiny_model_dir), "printed-digits", resolution=64)


@pytest.mark.e2e
def test_one_lora_trial_on_an_image_folder_and_its_adapter_loads_into_the_pipeline(tiny_sd, photos, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "trial"
    assert main(["run", "--model", str(tiny_sd), "--private", f"folder:{photos}", "--prompt", "a photo of a {label}",
                 "--method", "lora", "--rank", "2", "--layers", "2-4", "--eps", "5", "--batch", "20", "--epochs", "2",
                 "--physical-batch", "20", "--per-class", "5", "--steps", "3", "--out", str(out), "--quiet"]) == 0
    privacy = json.loads((out / "privacy.json").read_text())
    assert privacy["method"] == "lora" and privacy["lora_rank"] == 2 and privacy["eps"] <= 5.0
    assert privacy["layers"] == "2-4" and privacy["n"] == 60
    synthetic = np.load(out / "synthetic.npz")
    assert synthetic["images"].shape == (10, 3, RESOLUTION, RESOLUTION)
    assert list(synthetic["class_names"]) == ["blue", "red"]
    assert (out / "samples.png").exists() and (out / "lora" / LORA_FILE).exists()

    # The adapter is ordinary diffusers LoRA weights: it loads into the original pipeline, which then computes
    # what the trial's merged UNet computes, and generates from a prompt.
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    pipe.load_lora_weights(out / "lora")
    merged = load_ldm(out / "model").unet
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 600]), torch.randn(2, 8, 32)
    torch.testing.assert_close(pipe.unet(x, t, encoder_hidden_states=c).sample,
                               merged(x, t, encoder_hidden_states=c).sample, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        before = StableDiffusionPipeline.from_pretrained(tiny_sd).unet(x, t, encoder_hidden_states=c).sample
    assert not torch.allclose(before, merged(x, t, encoder_hidden_states=c).sample)  # DP training moved it
    image = pipe("a photo of a red", num_inference_steps=2, height=RESOLUTION, width=RESOLUTION, output_type="np").images
    assert image.shape == (1, RESOLUTION, RESOLUTION, 3)


@pytest.mark.e2e
def test_a_two_trial_sweep_searches_the_method_on_the_pipeline(tiny_sd, photos, tmp_path, embedded_services_dir):
    from dpsearch.html_report import build_report
    from dpsearch.search import SweepOptions, format_summary, run_sweep

    space = {
        "name": "tiny-sd", "private": f"folder:{photos}", "prompt": "a photo of a {label}", "eps": 5.0,
        "params": {"layers": {"low": 1, "high": 4}, "clip": {"value": 0.1}, "batch": {"value": 20},
                   "lr": {"value": 1e-3}, "epochs": {"value": 1}, "method": {"choice": ["attention", "lora"]},
                   "rank": {"choice": [2, 4]}},
        "reference": {"layers": "all", "clip": 0.1, "batch": 20, "lr": 1e-3, "epochs": 1},
        "validation": {"per_class": 5}, "sample": {"per_class": 5, "steps": 3, "batch": 50},
        "evaluate": {"classifier_epochs": 2, "fid_extractor": "public-cnn"}, "free": {"guidance": [3.0], "steps": [3]},
        "release": {"n": 20}}
    path = tmp_path / "tiny-sd.yaml"
    path.write_text(yaml.safe_dump(space))
    res = run_sweep(SweepOptions(eps=5.0, space=str(path), trials=2, concurrency=1, sampler="random", seed=0,
                                 model=str(tiny_sd), name="sd", progress=False))
    methods = {r["method"].split()[0] for r in res.rows}
    assert methods == {"attention", "lora"}, "the random draw did not try both methods: pick another seed"
    assert all(r["status"] == "DONE" and r["eps"] <= 5.0 for r in res.rows)
    table = format_summary(res)
    assert "method" in table and "lora r" in table
    html = build_report(str(res.path), tmp_path / "report.html").read_text()
    assert "<th>method</th>" in html and "lora r" in html
