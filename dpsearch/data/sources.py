"""Resolve a dataset name given on the command line to (train, test) ImageSets.

Names: `mnist`; `printed-digits`; `folder:PATH` (one subfolder per class, images of any size,
converted to the model's channels and size); `torchvision:NAME` (e.g. CIFAR10, downloaded
where there is internet, cached under DPSEARCH_HOME).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dpsearch.data.imageset import DataError, ImageSet
from dpsearch.data.mnist import load_mnist
from dpsearch.data.printed_digits import printed_digits
from dpsearch.paths import data_cache

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_folder(path: Path, size: int = 28, channels: int = 1) -> ImageSet:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"image folder {path} has no class subfolders (expected {path}/<class>/<image>)")
    imgs, labels = [], []
    mode = "L" if channels == 1 else "RGB"
    for k, c in enumerate(classes):
        for f in sorted((path / c).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                im = Image.open(f).convert(mode).resize((size, size), Image.LANCZOS)
            except OSError as e:
                raise DataError(f"{f}: unreadable image ({e}); remove or replace it") from e
            a = np.asarray(im, np.uint8)
            imgs.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
            labels.append(k)
    if not imgs:
        raise DataError(f"image folder {path} has class folders {classes} but no images")
    return ImageSet(torch.from_numpy(np.stack(imgs)), torch.tensor(labels), len(classes), f"folder:{path.name}")


def torchvision_set(name: str, size: int, channels: int) -> tuple[ImageSet, ImageSet]:
    import torchvision.datasets as tvd

    if not hasattr(tvd, name):
        raise DataError(f"torchvision has no dataset {name!r}")
    cls = getattr(tvd, name)
    root = str(data_cache() / "torchvision")

    def convert(ds, split):
        imgs, labels = [], []
        mode = "L" if channels == 1 else "RGB"
        for im, y in ds:
            a = np.asarray(im.convert(mode).resize((size, size), Image.LANCZOS), np.uint8)
            imgs.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
            labels.append(int(y))
        n_cls = len(getattr(ds, "classes", [])) or (max(labels) + 1)
        return ImageSet(torch.from_numpy(np.stack(imgs)), torch.tensor(labels), n_cls, f"{name}-{split}")

    try:
        return convert(cls(root, train=True, download=True), "train"), convert(cls(root, train=False, download=True), "test")
    except Exception as e:  # noqa: BLE001 - torchvision raises many kinds when offline
        raise DataError(f"torchvision:{name} could not be loaded ({e}). Without internet, use folder:PATH.") from e


def load_dataset(spec: str, size: int = 28, channels: int = 1, seed: int = 0, n: int | None = None) -> tuple[ImageSet, ImageSet | None]:
    """(train, test); test is None for sources without a test split."""
    if spec == "mnist":
        return load_mnist()
    if spec in ("printed-digits", "printed-digits-elastic"):
        el = spec.endswith("-elastic")
        return (printed_digits(n or 30000, seed=seed, elastic=el),
                printed_digits(max(1000, (n or 30000) // 10), seed=seed + 10_000, elastic=el))
    if spec.startswith("folder:"):
        return image_folder(Path(spec[len("folder:"):]), size, channels), None
    if spec.startswith("torchvision:"):
        return torchvision_set(spec[len("torchvision:"):], size, channels)
    raise DataError(f"unknown dataset {spec!r}: use mnist, printed-digits, printed-digits-elastic, folder:PATH or torchvision:NAME")
