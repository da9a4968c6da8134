"""Outputs are written under a temporary name and moved into place only when complete."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class OutputExists(FileExistsError):
    pass


def check_output(path: Path, overwrite: bool) -> Path:
    """Fail before any work starts, not after an hour of training."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExists(f"output {path} already exists; choose another --out or pass --overwrite to replace it")
    return path


@contextmanager
def atomic_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    path = check_output(Path(path), overwrite)
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def write_json(path: Path, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
