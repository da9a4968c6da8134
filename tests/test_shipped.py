"""The public models shipped in the package: the default config's pretrained model and the FID extractor."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from dpsearch import shipped
from dpsearch.checkpoints import MANIFEST, verify_local
from dpsearch.config import PretrainConfig
from dpsearch.pretrain import default_model_dir


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSEARCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_shipped_model_is_the_default_configs_and_matches_its_manifest():
    name = default_model_dir(PretrainConfig()).name
    assert shipped.available(name), f"no shipped model for the default PretrainConfig ({name}): reship it"
    verify_local(shipped.HERE / name)
    made = json.loads((shipped.HERE / name / "dpsearch_model.json").read_text())["pretraining"]
    assert made["pretrain_config"] == json.loads(PretrainConfig().model_dump_json())
    assert made["trained_on"] == "public data only"


def test_pretrain_installs_the_shipped_model_into_an_empty_cache_without_training(empty_home, monkeypatch, caplog):
    import dpsearch.pretrain as pre
    from dpsearch.models import load_ldm
    from dpsearch.models.layers import attention_modules

    def no_training(*a, **k):
        raise AssertionError("pretrain trained although the default model ships with the package")

    monkeypatch.setattr(pre, "train_autoencoder", no_training)
    with caplog.at_level(logging.INFO):
        out = pre.pretrain(PretrainConfig())
    assert out == empty_home / "models" / default_model_dir(PretrainConfig()).name
    assert "installed the shipped pretrained" in caplog.text
    assert len(attention_modules(load_ldm(out).unet)) == 7
    src = shipped.HERE / out.name
    for rel in json.loads((src / MANIFEST).read_text())["files"]:
        assert (out / rel).read_bytes() == (src / rel).read_bytes()


def test_an_explicit_out_or_overwrite_trains_instead(empty_home, monkeypatch, tmp_path):
    import dpsearch.pretrain as pre

    class Trained(Exception):
        pass

    def training(*a, **k):
        raise Trained

    monkeypatch.setattr(pre, "load_dataset", training)  # the first step of training: reading the public data
    with pytest.raises(Trained):
        pre.pretrain(PretrainConfig(), out=tmp_path / "mine")
    with pytest.raises(Trained):
        pre.pretrain(PretrainConfig(), overwrite=True)


def test_a_damaged_shipped_copy_is_not_installed(tmp_path, monkeypatch, caplog):
    name = default_model_dir(PretrainConfig()).name
    copy = tmp_path / "shipped"
    shutil.copytree(shipped.HERE / name, copy / name)
    weights = copy / name / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "HERE", copy)
    with caplog.at_level(logging.WARNING):
        assert not shipped.install_dir(name, tmp_path / "dest")
    assert "does not match its manifest" in caplog.text and "training it here instead" in caplog.text
    assert not (tmp_path / "dest").exists()
    assert not shipped.install_dir("pretrained-000000000000", tmp_path / "dest2")


def test_the_fid_extractor_comes_from_the_shipped_copy(empty_home, monkeypatch):
    import dpsearch.evaluate as ev
    from dpsearch.config import EvaluateConfig

    def no_training(*a, **k):
        raise AssertionError("the FID extractor was trained although it ships with the package")

    monkeypatch.setattr(ev, "train_classifier", no_training)
    net = ev.public_feature_extractor(EvaluateConfig())
    cached = empty_home / "models" / "fid-public-cnn-v1.pt"
    assert cached.read_bytes() == (shipped.HERE / "fid-public-cnn-v1" / "fid-public-cnn-v1.pt").read_bytes()
    want = torch.load(cached, weights_only=True)
    assert all(torch.equal(v, want[k]) for k, v in net.state_dict().items())
