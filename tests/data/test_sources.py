import numpy as np
import pytest
from PIL import Image

from dpsearch.data import DataError, load_dataset


def test_image_folder_one_subfolder_per_class(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((40, 50, 3), 100 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    train, test = load_dataset(f"folder:{tmp_path}")
    assert test is None and len(train) == 6 and train.num_classes == 2
    assert train.image_shape == (1, 28, 28) and train.class_counts() == [3, 3]


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="no class subfolders"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable image"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")
