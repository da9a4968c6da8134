"""One tiny real trial through the CLI: pretrained (public) → DP fine-tune → sample → evaluate."""

import json

import pytest
from PIL import Image

from dpsearch.cli import main
from dpsearch.config import default_delta
from dpsearch.data import ImageSet
from dpsearch.models import load_ldm


@pytest.mark.e2e
def test_tiny_trial_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "trial"
    code = main(["run", "--model", str(tiny_model_dir), "--out", str(out), "--eps", "5", "--layers", "3-7",
                 "--clip", "0.01", "--batch", "100", "--epochs", "1", "--n-private", "500", "--per-class", "20",
                 "--steps", "4", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"δ = {default_delta(500):g}" in printed and "oracle accuracy (real test split, not DP)" in printed
    privacy = json.loads((out / "privacy.json").read_text())
    assert privacy["eps"] <= 5 and privacy["delta"] == default_delta(500) and privacy["layers"] == "3-7"
    assert privacy["n"] == 500  # the public size asked for, not the hash share's exact count
    assert privacy["steps"] == 5 and privacy["sampling"] == "poisson" and privacy["accountant"] == "prv"
    metrics = json.loads((out / "result.json").read_text())["metrics"]
    assert 0 <= metrics["oracle/accuracy"] <= 1 and metrics["oracle/fid"] > 0
    synth = ImageSet.load(out / "synthetic.npz")
    assert synth.class_counts() == [20] * 10
    assert Image.open(out / "samples.png").size == (10 * 28 * 2, 10 * 28 * 2)
    assert load_ldm(out / "model").meta["privacy"]["eps"] == privacy["eps"]
    assert not list(tmp_path.glob(".trial*"))

    # The trial's model released as a data set: sampling is post-processing, the card carries the trial's (ε, δ).
    rel = tmp_path / "release"
    assert main(["release", str(out), "--out", str(rel), "--n", "30", "--test", "none", "--steps", "2", "--quiet",
                 "--pngs"]) == 0
    assert "released 30 images" in capsys.readouterr().out
    card = json.loads((rel / "card.json").read_text())
    assert card["privacy"]["eps"] == privacy["eps"] and "sweep's released" in card["privacy"]["covers"]
    assert ImageSet.load(rel / "synthetic.npz").class_counts() == [3] * 10
    assert len(list((rel / "png").glob("*/*.png"))) == 30
    assert (rel / "data" / "train-00000-of-00001.parquet").exists()  # always; png/ only with --pngs
    assert main(["release", str(out), "--out", str(tmp_path / "r2"), "--n", "25", "--test", "none"]) == 2
    assert "multiple of the 10 classes" in capsys.readouterr().err


@pytest.mark.e2e
def test_non_private_reference_run_is_labelled_not_dp(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ref"
    code = main(["run", "--model", str(tiny_model_dir), "--out", str(out), "--non-private", "--layers", "3-7",
                 "--batch", "100", "--epochs", "1", "--n-private", "300", "--per-class", "5", "--steps", "2",
                 "--quiet"])
    assert code == 0
    assert "privacy: NONE. non-private reference run" in capsys.readouterr().out
    privacy = json.loads((out / "privacy.json").read_text())
    assert privacy["dp"] is False and "NOT differentially private" in privacy["statement"] and "eps" not in privacy
    assert load_ldm(out / "model").meta["privacy"]["dp"] is False


def test_non_private_and_eps_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--non-private", "--eps", "5"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.e2e
def test_finetune_then_sample_through_the_cli(tiny_model_dir, tmp_path, capsys):
    ft, syn = tmp_path / "ft", tmp_path / "syn"
    assert main(["finetune", "--model", str(tiny_model_dir), "--out", str(ft), "--eps", "5", "--layers", "2-4",
                 "--batch", "100", "--epochs", "1", "--n-private", "300", "--quiet"]) == 0
    assert "-DP by PRV" in capsys.readouterr().out
    assert json.loads((ft / "privacy.json").read_text())["layers"] == "2-4" and (ft / "model" / "unet").is_dir()
    assert main(["sample", "--model", str(ft), "--out", str(syn), "--per-class", "2", "--steps", "2", "--quiet"]) == 0
    assert ImageSet.load(syn / "synthetic.npz").class_counts() == [2] * 10


@pytest.mark.e2e
def test_a_lora_trial_on_the_default_kind_of_model(tiny_model_dir, tmp_path, capsys):
    """LoRA through the CLI on a dpsearch MNIST model: adapters trained under DP, merged into model/, written to lora/."""
    from dpsearch.models.lora import LORA_FILE

    out = tmp_path / "trial"
    assert main(["run", "--model", str(tiny_model_dir), "--out", str(out), "--eps", "5", "--layers", "2-6",
                 "--method", "lora", "--rank", "4", "--batch", "100", "--epochs", "1", "--n-private", "300",
                 "--per-class", "5", "--steps", "3", "--quiet"]) == 0
    assert "layers 2-6, lora r4" in capsys.readouterr().out
    privacy = json.loads((out / "privacy.json").read_text())
    assert privacy["method"] == "lora" and privacy["lora_rank"] == 4 and privacy["eps"] <= 5
    assert privacy["clipping"] == "bookkeeping" and privacy["trainable_fraction"] < 0.05
    assert (out / "lora" / LORA_FILE).stat().st_size > 0
    assert not any("lora" in name for name, _ in load_ldm(out / "model").unet.named_parameters())  # merged
