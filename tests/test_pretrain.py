"""Public pretraining reads only sources registered as public."""

import pytest

from dpsearch.cli import main
from dpsearch.config import ConfigError, PretrainConfig, validate


@pytest.mark.parametrize("source", ["mnist", "folder:/data/patients", "torchvision:CIFAR10", "public-folder:"])
def test_a_private_source_named_as_public_is_refused(source, tmp_path, capsys):
    with pytest.raises(ConfigError, match="is not a public source"):
        validate(PretrainConfig, public=source)
    cfg = tmp_path / "pretrain.yaml"
    cfg.write_text(f"public: '{source}'\n")
    assert main(["pretrain", "--config", str(cfg), "--out", str(tmp_path / "m"), "--no-baseline", "--quiet"]) == 2
    assert "not a public source" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_registered_public_sources_are_accepted():
    assert validate(PretrainConfig, public="printed-digits").public == "printed-digits"
    assert PretrainConfig().public == "printed-digits-elastic"  # the default (docs/utility.md)
    assert validate(PretrainConfig, public="public-folder:/data/fonts").public == "public-folder:/data/fonts"
