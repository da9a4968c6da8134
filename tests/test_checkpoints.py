"""Checkpoint manifests: every way a checkpoint can arrive damaged is caught by name."""

import json

import pyarrow.fs as pafs
import pytest

from dpsearch.checkpoints import MANIFEST, _remote_mismatches, verify_local, write_manifest
from dpsearch.config import ConfigError


@pytest.fixture
def ckpt(tmp_path):
    d = tmp_path / "ckpt"
    (d / "model" / "unet").mkdir(parents=True)
    (d / "model" / "unet" / "weights.bin").write_bytes(bytes(range(256)) * 40)
    (d / "privacy.json").write_text(json.dumps({"eps": 5.0, "delta": 1e-5}))
    files = write_manifest(d)
    assert set(files) == {"model/unet/weights.bin", "privacy.json"}
    return d


def test_intact_checkpoint_verifies(ckpt):
    verify_local(ckpt)


@pytest.mark.parametrize("damage, word", [
    (lambda d: (d / "privacy.json").unlink(), "missing"),
    (lambda d: (d / "model/unet/weights.bin").write_bytes((d / "model/unet/weights.bin").read_bytes()[:-1]), "corrupt"),
    (lambda d: (d / "privacy.json").write_text(json.dumps({"eps": 0.5, "delta": 1e-5})), "corrupt"),  # same size
    (lambda d: (d / MANIFEST).unlink(), "no manifest"),
    (lambda d: (d / MANIFEST).write_text("{"), "unreadable"),
])
def test_damaged_checkpoint_is_named_in_the_error(ckpt, damage, word):
    damage(ckpt)
    with pytest.raises(ConfigError, match=word):
        verify_local(ckpt)


def test_stored_copy_is_compared_file_by_file(ckpt, tmp_path):
    files = json.loads((ckpt / MANIFEST).read_text())["files"]
    copy = tmp_path / "stored"
    fs = pafs.LocalFileSystem()
    pafs.copy_files(str(ckpt), str(copy))
    assert _remote_mismatches(fs, str(copy), files) == []
    (copy / "model/unet/weights.bin").write_bytes(b"truncated")
    (copy / MANIFEST).unlink()
    assert _remote_mismatches(fs, str(copy), files) == ["model/unet/weights.bin", MANIFEST]
