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


def partial_path(path: Path) -> Path:
    """A temporary name beside `path` for this process, keeping its suffix (np.savez appends one to a name without
    it): two processes writing the same file never share a temporary one."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


@contextmanager
def atomic_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    path = check_output(Path(path), overwrite)
    tmp = partial_path(path)
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
    tmp = partial_path(path)
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
