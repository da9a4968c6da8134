"""Dataset sources. Every source returns an `ImageSet`: uint8 images [N, C, H, W] plus int64 labels."""

from dpsearch.data.imageset import ImageSet, DataError
from dpsearch.data.mnist import load_mnist
from dpsearch.data.printed_digits import printed_digits
from dpsearch.data.sources import load_dataset

__all__ = ["ImageSet", "DataError", "load_mnist", "printed_digits", "load_dataset"]
