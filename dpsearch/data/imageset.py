"""The one in-memory dataset type that flows through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import zipfile

import numpy as np
import torch

from dpsearch.errors import DataError


@dataclass(frozen=True)
class ImageSet:
    """Labelled images kept as uint8 so 60k MNIST digits cost 47 MB, not 188 MB."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    num_classes: int
    name: str
    # What each label means (folder names, torchvision's classes), for text prompts. Treated as public: they name
    # the classes the release is conditioned on. Empty: the labels' numbers.
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.class_names and len(self.class_names) != self.num_classes:
            raise DataError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(f"{self.name}: images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name}: {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise DataError(f"{self.name}: labels outside 0..{self.num_classes - 1}")

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.class_names or tuple(str(i) for i in range(self.num_classes))

    def take(self, idx: torch.Tensor, name: str) -> "ImageSet":
        """The images at `idx`, with this set's classes and their names."""
        return ImageSet(self.images[idx], self.labels[idx], self.num_classes, name, self.class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def as_float(self) -> torch.Tensor:
        """Images scaled to [-1, 1], the range the autoencoder works in."""
        return self.images.float().div(127.5).sub(1.0)

    def subset(self, n: int | None, seed: int = 0) -> "ImageSet":
        """A uniformly random subset of n images, chosen by a seeded permutation that looks at no image (all
        images when n is None or ≥ N). Not stratified: class counts vary around their proportions. For public and
        synthetic sets only: a private subset takes the per-record hash rule (privacy/slices.py, hash_share), since
        inserting one record moves many positions."""
        if n is None or n >= len(self):
            return self
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(self))[:n]
        idx.sort()
        return self.take(torch.from_numpy(idx), f"{self.name}[:{n}]")

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    @staticmethod
    def from_float(images: torch.Tensor, labels: torch.Tensor, num_classes: int, name: str,
                   class_names: tuple[str, ...] = ()) -> "ImageSet":
        """Inverse of `as_float`: [-1, 1] floats back to uint8."""
        u8 = images.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu()
        return ImageSet(u8, labels.detach().long().cpu(), num_classes, name, class_names)

    def save(self, path) -> None:
        np.savez_compressed(path, images=self.images.numpy(), labels=self.labels.numpy(),
                            num_classes=self.num_classes, name=self.name, class_names=np.array(self.class_names, str))

    @staticmethod
    def load(path) -> "ImageSet":
        try:
            with np.load(path, allow_pickle=False) as z:
                names = tuple(str(c) for c in z["class_names"]) if "class_names" in z.files else ()
                return ImageSet(torch.from_numpy(z["images"].copy()), torch.from_numpy(z["labels"].astype(np.int64)),
                                int(z["num_classes"]), str(z["name"]), names)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: not a readable dataset file ({e}). Delete it and let dpsearch recreate it.") from e
