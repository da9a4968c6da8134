"""Where a sweep lives: a local directory or an S3 prefix, behind one small interface.

pyarrow's filesystems are what Ray Tune itself uses for `storage_path`, so the sweep's own files
(sweep.json, the validation set, the summary) live beside Ray's trial checkpoints wherever those
are. An S3 endpoint comes from AWS_ENDPOINT_URL or the standard AWS config, never from arguments.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

import pyarrow.fs as pafs

from dpsearch.config import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRIES = int(os.environ.get("DPSEARCH_STORAGE_RETRIES", "5"))


def with_retries(fn: Callable[[], T], what: str, attempts: int | None = None, base_s: float = 1.0) -> T:
    """Runs fn again after a transient storage error (OSError: pyarrow's S3 errors, connection resets),
    with exponential backoff and jitter. pyarrow's own S3 retries cover single requests; this covers a
    server that is away for a few seconds (a restart). The last error is raised unchanged."""
    attempts = RETRIES if attempts is None else attempts
    for i in range(attempts):
        try:
            return fn()
        except (OSError, ConnectionError) as e:
            if isinstance(e, FileNotFoundError) or i == attempts - 1:
                raise
            wait = base_s * 2 ** i * (1 + random.random() / 2)
            log.warning("%s failed (%s); retrying in %.1f s (%d/%d)", what, str(e).splitlines()[0][:200], wait,
                        i + 1, attempts - 1)
            time.sleep(wait)
    raise AssertionError("unreachable")


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


class Store:
    """Files under one root (a local path or s3://bucket/prefix)."""

    def __init__(self, root: str | Path):
        self.root = str(root).rstrip("/")
        if is_remote(self.root):
            try:
                self.fs, self.base = pafs.FileSystem.from_uri(self.root)
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad URI
                raise ConfigError(f"cannot use storage {self.root}: {e}") from e
        else:
            self.fs, self.base = pafs.LocalFileSystem(), str(Path(self.root).expanduser().resolve())

    def child(self, *parts: str) -> "Store":
        return Store(self.uri(*parts))

    def uri(self, *parts: str) -> str:
        return "/".join([self.root if is_remote(self.root) else self.base, *parts])

    def _p(self, name: str) -> str:
        return f"{self.base}/{name}" if name else self.base

    def exists(self, name: str = "") -> bool:
        return self.fs.get_file_info(self._p(name)).type != pafs.FileType.NotFound

    def read_bytes(self, name: str) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(self._p(name)) as f:
                return f.read()

        return with_retries(read, f"reading {self.uri(name)}")

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def write_bytes(self, name: str, data: bytes) -> None:
        with_retries(lambda: self._write_once(name, data), f"writing {self.uri(name)}")

    def _write_once(self, name: str, data: bytes) -> None:
        """Local writes go to a temporary name first (S3 puts are atomic by themselves)."""
        path = self._p(name)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = f"{path}.partial-{os.getpid()}"  # two writers of one name never share a temporary file
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            with self.fs.open_output_stream(path) as f:
                f.write(data)
        size = self.fs.get_file_info(path).size
        if size != len(data):  # verified before anyone relies on it
            raise OSError(f"wrote {len(data)} bytes to {self.uri(name)} but the store holds {size}")

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def download_dir(self, name: str, dest: Path) -> Path:
        """Copies a directory (e.g. a checkpoint) to a local path."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        with_retries(lambda: pafs.copy_files(self._p(name), str(dest), source_filesystem=self.fs,
                                             destination_filesystem=pafs.LocalFileSystem()), f"downloading {self.uri(name)}")
        return dest


def check_storage(uri: str) -> None:
    """Fails before any training when the storage cannot be listed or written (clear message)."""
    store = Store(uri)
    try:
        if is_remote(uri) and uri.startswith("s3://"):
            _ensure_bucket(uri)
        store._write_once(".dpsearch-write-check", b"ok")  # no retries: an absent server should fail fast
        store.fs.delete_file(store._p(".dpsearch-write-check"))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here is "cannot use this storage"
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "the AWS default")
        raise ConfigError(f"storage {uri} is not reachable or not writable (S3 endpoint: {endpoint}): "
                          f"{str(e).splitlines()[0][:300]}. Start it (dpsearch services up) or fix AWS_ENDPOINT_URL "
                          f"and credentials") from None


def _ensure_bucket(uri: str) -> None:
    """Creates the bucket when missing (boto3: pyarrow cannot create buckets on every S3 server)."""
    import boto3
    import botocore

    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    cfg = botocore.config.Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})
    s3 = boto3.client("s3", config=cfg)
    try:
        s3.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            s3.create_bucket(Bucket=bucket)
        else:
            raise


def npz_bytes(save) -> bytes:
    """Bytes of an .npz written by `save(path)` (ImageSet.save wants a path)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.npz"
        save(p)
        return p.read_bytes()


def load_npz(data: bytes, load):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.npz"
        p.write_bytes(data)
        return load(p)


__all__ = ["Store", "is_remote", "check_storage", "npz_bytes", "load_npz", "with_retries"]
