"""The pretrained model's files shipped through Ray's object store, so trials on any node get it."""

from __future__ import annotations

import tempfile
from pathlib import Path


def pack_model(model_dir: Path) -> dict[str, bytes]:
    """The pretrained model's files as bytes, so trials on any node get it from the object store."""
    model_dir = Path(model_dir)
    return {str(p.relative_to(model_dir)): p.read_bytes() for p in sorted(model_dir.rglob("*")) if p.is_file()}


def unpack_model(files: dict[str, bytes]) -> Path:
    """Materializes a packed model once per node (content-addressed) and returns its directory."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(files):
        h.update(k.encode())
        h.update(files[k])
    out = Path(tempfile.gettempdir()) / "dpsearch-models" / h.hexdigest()[:16]
    if not (out / "dpsearch_model.json").exists():
        tmp = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None))
        for k, data in files.items():
            (tmp / k).parent.mkdir(parents=True, exist_ok=True)
            (tmp / k).write_bytes(data)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(out)
        except OSError:  # another trial on this node got there first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out
