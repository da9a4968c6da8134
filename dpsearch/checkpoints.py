"""Checkpoints a trial can trust: a manifest of sizes and SHA-256 written into every checkpoint,
the uploaded copy verified against it before the trial goes on, and every later reader (resume,
`dpsearch pull`) verifying it again, so a truncated or corrupted checkpoint is an error, never a model.

Ray Tune uploads a reported checkpoint itself (pyarrow, to `storage_path`) and does not check what
arrived; S3 ETags are not MD5 for multipart uploads, so the manifest is ours.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pyarrow.fs as pafs

from dpsearch.config import ConfigError
from dpsearch.storage import with_retries

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path) -> dict:
    """Records every file's size and SHA-256 (relative paths) in root/manifest.json."""
    root = Path(root)
    files = {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in _files(root)}
    (root / MANIFEST).write_text(json.dumps({"files": files}, indent=1))
    return files


def verify_local(root: Path) -> None:
    """Raises ConfigError naming the first file that is missing, truncated or altered."""
    root = Path(root)
    mf = root / MANIFEST
    if not mf.exists():
        raise ConfigError(f"checkpoint {root} has no {MANIFEST}: it was not written completely (or by an older "
                          f"dpsearch); delete it and run the trial again")
    try:
        files = json.loads(mf.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise ConfigError(f"checkpoint {root}: {MANIFEST} is unreadable ({e}); the checkpoint is corrupt, delete it") from None
    for rel, want in files.items():
        p = root / rel
        if not p.exists():
            raise ConfigError(f"checkpoint {root} is incomplete: {rel} is missing; pull it again or delete it")
        if p.stat().st_size != want["size"] or sha256_file(p) != want["sha256"]:
            raise ConfigError(f"checkpoint {root} is corrupt: {rel} does not match its recorded size/SHA-256; "
                              f"pull it again or delete it")


def _remote_mismatches(fs: pafs.FileSystem, base: str, files: dict) -> list[str]:
    infos = fs.get_file_info([f"{base}/{rel}" for rel in [*files, MANIFEST]])
    bad = [rel for rel, info in zip(files, infos) if info.type != pafs.FileType.File or info.size != files[rel]["size"]]
    if infos[-1].type != pafs.FileType.File:
        bad.append(MANIFEST)
    return bad


def report_verified(metrics: dict, local_dir: Path) -> None:
    """tune.report with the checkpoint in local_dir, retried on transient storage errors; then the stored
    copy is checked file by file (size) against the manifest and uploaded again once if it differs.
    A copy that still differs fails the trial rather than letting it finish on a bad checkpoint."""
    from ray import tune

    files = write_manifest(local_dir)
    with_retries(lambda: tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(local_dir))),
                 "uploading the trial's checkpoint")
    stored = tune.get_checkpoint()
    if stored is None:
        return
    bad = _remote_mismatches(stored.filesystem, stored.path, files)
    if bad:
        log.warning("checkpoint %s: %s differ from what was written; uploading again", stored.path, bad)
        with_retries(lambda: pafs.copy_files(str(local_dir), stored.path, source_filesystem=pafs.LocalFileSystem(),
                                             destination_filesystem=stored.filesystem), "re-uploading the checkpoint")
        bad = _remote_mismatches(stored.filesystem, stored.path, files)
        if bad:
            raise OSError(f"checkpoint {stored.path} could not be stored intact ({', '.join(bad)} differ after a "
                          f"second upload); check the storage server's free space and health")


__all__ = ["MANIFEST", "write_manifest", "verify_local", "report_verified"]
