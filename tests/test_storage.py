"""Storage retries: a transient failure is ridden out, a permanent one is raised; against the real S3."""

import threading
import time

import pytest

from dpsearch import services, storage
from dpsearch.storage import Store, with_retries


def test_with_retries_retries_transient_errors_then_succeeds():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return "ok"

    assert with_retries(flaky, "flaky", attempts=4, base_s=0.01) == "ok" and len(calls) == 3


def test_with_retries_gives_up_and_never_retries_a_missing_file():
    calls = []

    def gone():
        calls.append(1)
        raise FileNotFoundError("no such key")

    with pytest.raises(FileNotFoundError):
        with_retries(gone, "gone", attempts=4, base_s=0.01)
    assert len(calls) == 1

    def down():
        calls.append(1)
        raise OSError("AWS Error NETWORK_CONNECTION")

    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        with_retries(down, "down", attempts=3, base_s=0.01)
    assert len(calls) == 4


@pytest.mark.e2e
def test_a_write_during_an_s3_restart_is_retried_and_lands(embedded_services_dir, monkeypatch):
    """The embedded S3 goes down and comes back while a write is pending: the write lands intact."""
    s, _ = services.up()
    for k, v in s.client_env().items():
        monkeypatch.setenv(k, v)
    store = Store(f"{s.storage}/retry-test")
    store.write_text("before.txt", "written before the outage")
    monkeypatch.setattr(storage, "RETRIES", 8)
    services.down()
    restarted = threading.Thread(target=lambda: (time.sleep(2), services.up()))
    restarted.start()
    try:
        payload = bytes(range(256)) * 1000
        store.write_bytes("during.bin", payload)
    finally:
        restarted.join()
    assert store.read_bytes("during.bin") == payload
    assert store.read_text("before.txt") == "written before the outage"  # nothing already written is lost
