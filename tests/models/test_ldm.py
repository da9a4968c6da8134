import pytest
import torch

from dpsearch.config import ModelConfig
from dpsearch.models import ModelError, build_ldm, load_ldm, save_ldm


def _tiny():
    return build_ldm(ModelConfig(ae_channels=(8, 16, 16), unet_channels=(16, 32), cross_attention_dim=32))


def test_save_load_roundtrip_in_diffusers_format(tmp_path):
    m = _tiny()
    save_ldm(m, tmp_path / "m")
    for part in ("vae", "unet", "class_embedder", "scheduler"):
        assert (tmp_path / "m" / part).is_dir()
    m2 = load_ldm(tmp_path / "m")
    for a, b in zip(m.unet.state_dict().values(), m2.unet.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.allclose(m.encode(x), m2.encode(x))
    assert m2.decode(m2.encode(x)).shape == (2, 1, 28, 28)


def test_missing_incomplete_and_corrupt_models_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_ldm(tmp_path / "none")
    m = _tiny()
    save_ldm(m, tmp_path / "m")
    weights = next((tmp_path / "m" / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(ModelError, match="could not be loaded"):
        load_ldm(tmp_path / "m")
    import shutil

    shutil.rmtree(tmp_path / "m" / "vae")
    with pytest.raises(ModelError, match="incomplete"):
        load_ldm(tmp_path / "m")
