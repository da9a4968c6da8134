"""Public models that ship inside the package, so a fresh machine does not spend ≈ 10 minutes pretraining them.

Each is a directory here with a SHA-256 manifest: `pretrained-<hash>` is what `dpsearch pretrain` makes with the
default PretrainConfig (hash = the config's, so a changed config never picks it up) and `fid-public-cnn-v1` is the
offline FID extractor. Both were trained by dpsearch on public printed digits only: no private record went into
them. The cache gets a verified copy; a copy that fails its manifest is not used (the model is trained instead).
`dpsearch pretrain --overwrite` retrains the default model on the machine at hand.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from dpsearch.checkpoints import MANIFEST, verify_local
from dpsearch.config import ConfigError
from dpsearch.outputs import atomic_dir, partial_path

log = logging.getLogger(__name__)
HERE = Path(__file__).parent


def available(name: str) -> bool:
    return (HERE / name / MANIFEST).is_file()


def _verified(name: str) -> Path | None:
    src = HERE / name
    try:
        verify_local(src)
    except ConfigError as e:
        log.warning("the shipped %s does not match its manifest (%s); training it here instead", name, e)
        return None
    return src


def install_dir(name: str, dest: Path) -> bool:
    """Copies the shipped directory `name` (manifest verified) to dest; False when there is none or it is damaged."""
    if not available(name) or (src := _verified(name)) is None:
        return False
    with atomic_dir(Path(dest)) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST, "__pycache__"))
    log.info("installed the shipped %s (public data only) to %s", name, dest)
    return True


def install_file(name: str, filename: str, dest: Path) -> bool:
    """Copies one verified file of the shipped directory `name` to dest (atomically); False as install_dir."""
    if not available(name) or (src := _verified(name)) is None or not (src / filename).is_file():
        return False
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(dest)  # two trials may install at once
    shutil.copyfile(src / filename, tmp)
    tmp.replace(dest)
    log.info("installed the shipped %s to %s", name, dest)
    return True
