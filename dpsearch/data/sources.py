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


def _fit(im: Image.Image, size: int, channels: int) -> np.ndarray:
    """Any image → [C, size, size] uint8: the short side scaled to `size`, then a centre crop (no distortion)."""
    im = im.convert("L" if channels == 1 else "RGB")
    scale = size / min(im.size)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    im = im.resize((w, h), Image.LANCZOS)
    left, top = (w - size) // 2, (h - size) // 2
    a = np.asarray(im.crop((left, top, left + size, top + size)), np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def image_folder(path: Path, size: int = 28, channels: int = 1) -> ImageSet:
    """One subfolder per class (its name is the label name); every image is read, and all unreadable ones are
    named together so that one pass fixes them."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"image folder {path} has no class subfolders (expected {path}/<class>/<image>)")
    imgs, labels, bad = [], [], []
    for k, c in enumerate(classes):
        for f in sorted((path / c).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    imgs.append(_fit(im, size, channels))
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                bad.append(f"{f} ({type(e).__name__}: {str(e)[:80]})")
                continue
            labels.append(k)
    if bad:
        raise DataError(f"{len(bad)} unreadable image(s) in {path}: " + "; ".join(bad[:20])
                        + (f"; … {len(bad) - 20} more" if len(bad) > 20 else "") + ". Remove or replace them.")
    if not imgs:
        raise DataError(f"image folder {path} has class folders {classes} but no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    found = set(labels)
    empty = [c for k, c in enumerate(classes) if k not in found]
    if empty:
        raise DataError(f"class folder(s) {', '.join(empty)} in {path} hold no images; remove them or add images")
    return ImageSet(torch.from_numpy(np.stack(imgs)), torch.tensor(labels), len(classes), f"folder:{path.name}",
                    tuple(classes))


def conform(data: ImageSet, size: int | None, channels: int | None) -> ImageSet:
    """The set at the model's resolution and channels (grey ↔ RGB), unchanged when it already is."""
    c, h, w = data.image_shape
    size, channels = size or h, channels or c
    if (c, h, w) == (channels, size, size):
        return data
    mode = "L" if c == 1 else "RGB"
    out = [_fit(Image.fromarray(x[0] if c == 1 else x.transpose(1, 2, 0), mode), size, channels)
           for x in data.images.numpy()]
    return ImageSet(torch.from_numpy(np.stack(out)), data.labels, data.num_classes, data.name, data.class_names)


def torchvision_set(name: str, size: int | None, channels: int | None) -> tuple[ImageSet, ImageSet]:
    """A torchvision dataset (downloaded where there is internet) at `size`/`channels`, or its own when None."""
    import torchvision.datasets as tvd

    if not hasattr(tvd, name):
        raise DataError(f"torchvision has no dataset {name!r}")
    cls = getattr(tvd, name)
    root = str(data_cache() / "torchvision")

    def convert(ds, split):
        imgs, labels = [], []
        for im, y in ds:
            imgs.append(_fit(im, size or min(im.size), channels or (1 if im.mode == "L" else 3)))
            labels.append(int(y))
        names = tuple(str(c) for c in getattr(ds, "classes", []))
        n_cls = len(names) or (max(labels) + 1)
        return ImageSet(torch.from_numpy(np.stack(imgs)), torch.tensor(labels), n_cls, f"{name}-{split}", names)

    try:
        return convert(cls(root, train=True, download=True), "train"), convert(cls(root, train=False, download=True), "test")
    except Exception as e:  # noqa: BLE001 - torchvision raises many kinds when offline
        raise DataError(f"torchvision:{name} could not be loaded ({e}). Without internet, use folder:PATH.") from e


def load_dataset(spec: str, size: int | None = None, channels: int | None = None, seed: int = 0,
                 n: int | None = None) -> tuple[ImageSet, ImageSet | None]:
    """(train, test) at `size` × `size` with `channels` (a model's; None: the source's own, 28 × 28 grey for
    folders); test is None for sources without a test split."""
    if spec.startswith("folder:"):
        return image_folder(Path(spec[len("folder:"):]), size or 28, channels or 1), None
    if spec.startswith("torchvision:"):
        return torchvision_set(spec[len("torchvision:"):], size, channels)
    if spec == "mnist":
        train, test = load_mnist()
    elif spec in ("printed-digits", "printed-digits-elastic"):
        el = spec.endswith("-elastic")
        train, test = (printed_digits(n or 30000, seed=seed, elastic=el),
                       printed_digits(max(1000, (n or 30000) // 10), seed=seed + 10_000, elastic=el))
    else:
        raise DataError(f"unknown dataset {spec!r}: use mnist, printed-digits, printed-digits-elastic, folder:PATH "
                        f"or torchvision:NAME")
    return conform(train, size, channels), conform(test, size, channels)
