import numpy as np
import torch
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


def test_a_folder_of_any_sizes_is_cropped_to_the_model_and_keeps_its_class_names(tmp_path):
    """Wide and tall images, RGB and grey, at the model's size and channels; folder names become label names."""
    (tmp_path / "red car").mkdir()
    (tmp_path / "tree").mkdir()
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, 40:80] = (255, 0, 0)  # the centre third is red: a centre crop keeps only red
    Image.fromarray(wide).save(tmp_path / "red car" / "wide.png")
    Image.fromarray(np.full((90, 30), 200, np.uint8)).save(tmp_path / "tree" / "tall.jpg")
    train, _ = load_dataset(f"folder:{tmp_path}", size=16, channels=3)
    assert train.image_shape == (3, 16, 16) and train.class_names == ("red car", "tree")
    car = train.images[train.labels == 0][0].float()
    assert car[0].mean() > 240 and car[1:].mean() < 15  # cropped, not squashed (squashing would mix in black)
    grey, _ = load_dataset(f"folder:{tmp_path}", size=8, channels=1)
    assert grey.image_shape == (1, 8, 8)


def test_every_unreadable_file_is_named_at_once(tmp_path):
    (tmp_path / "a").mkdir()
    for n in ("x.png", "y.jpg"):
        (tmp_path / "a" / n).write_bytes(b"not an image")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a" / "ok.png")
    with pytest.raises(DataError, match=r"2 unreadable image\(s\).*x\.png.*y\.jpg.*Remove or replace"):
        load_dataset(f"folder:{tmp_path}")


def test_mnist_is_conformed_to_an_rgb_model_and_names_its_digits():
    train, test = load_dataset("printed-digits", size=16, channels=3, n=50)
    assert train.image_shape == (3, 16, 16) and test.image_shape == (3, 16, 16)
    assert train.label_names == tuple("0123456789")
    assert torch.equal(train.images[:, 0], train.images[:, 1])  # grey copied to every channel
