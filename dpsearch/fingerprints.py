"""What a sweep started with, so that `--resume` refuses to continue on other data, model or space.

The model and the space are public: a plain SHA-256. The private data is not: a plain hash of it is a
deterministic, unnoised function of the private set (an adversary who knows all records but one could
test a guess against it), so it is an HMAC under a secret key kept on this machine
(DPSEARCH_HOME/fingerprint.key, mode 0600), never stored beside the sweep.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from dpsearch.config import ConfigError
from dpsearch.paths import home


def key_file() -> Path:
    return home() / "fingerprint.key"


def _key(create: bool) -> bytes | None:
    f = key_file()
    if not f.exists():
        if not create:
            return None
        try:
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(32))
        except FileExistsError:
            pass  # another process made it first
    return f.read_bytes()


def private_fingerprint(images, labels, create_key: bool = True, salt: str | None = None) -> str | None:
    """HMAC-SHA256 of the salt, the private images and labels; None when this machine has no key (and none is
    made). The salt is drawn per sweep and stored with it: one machine key would otherwise give the same
    fingerprint to every sweep on the same data, linking them."""
    key = _key(create_key)
    if key is None:
        return None
    h = hmac.new(key, digestmod=hashlib.sha256)
    if salt:
        h.update(b"salt\0" + salt.encode() + b"\0")
    for t in (images, labels):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def files_fingerprint(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for k in sorted(files):
        h.update(k.encode())
        h.update(hashlib.sha256(files[k]).digest())
    return h.hexdigest()


def text_fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_resume(saved: dict, now: dict, name: str) -> None:
    """Refuses a resume whose private data, base model or space differ from the sweep's start."""
    what = {"private": "private data", "model": "base model", "space": "search space"}  # "salt" is not compared
    for k, label in what.items():
        before, after = saved.get(k), now.get(k)
        if before is None:
            continue  # a sweep started before fingerprints were recorded
        if k == "private" and after is None:
            raise ConfigError(f"cannot check that sweep {name!r} resumes on the same private data: this machine has no "
                              f"{key_file()} (the key the fingerprint was made with). Copy that file from the machine "
                              f"that started the sweep (keep it 0600)")
        if before != after:
            raise ConfigError(f"sweep {name!r} cannot resume: its {label} differs from the one it started with "
                              f"({k} fingerprint {str(after)[:12]}… ≠ {str(before)[:12]}…). Restore the original "
                              f"{label} or start a new sweep")
