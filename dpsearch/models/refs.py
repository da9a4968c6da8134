"""A model reference is a local directory or a Hugging Face hub id `owner/name`; both loaders read it here."""

from __future__ import annotations

import json
from pathlib import Path

from dpsearch.errors import ModelError

META_FILE = "dpsearch_model.json"


def is_local(ref: str) -> bool:
    return Path(ref).exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1


def model_root(ref: str) -> Path:
    """A local dpsearch model directory, or a trial directory's model/ (`dpsearch finetune --out`, a pulled
    checkpoint)."""
    root = Path(ref).expanduser()
    if not (root / META_FILE).exists() and (root / "model" / META_FILE).exists():
        return root / "model"
    return root


def read_config(ref: str, name: str) -> dict | None:
    """A config file of a local directory or a hub repository; None when it is not there."""
    local = Path(ref).expanduser()
    if local.is_dir():
        return json.loads((local / name).read_text()) if (local / name).is_file() else None
    if is_local(ref):
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(ref, name)).read_text())
    except EntryNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - offline, no such repository, no access: one user-facing problem
        raise ModelError(f"model {ref!r} is not a local directory and could not be read from the Hugging Face hub "
                         f"({type(e).__name__}: {str(e)[:200]}); check the path or the hub id") from e
