"""REDIS_KEY_PREFIX covers every key the system writes: one whole job through the API and the real
worker, and every Redis key that appeared meanwhile starts with this run's prefix."""

from __future__ import annotations

import threading
from typing import Any

from tests.conftest import RUN_PREFIX
from tests.integration.conftest import Stack

# Other test runs on this machine share the database under prefixes of their own.
OTHER_RUNS = b"mptest-"


def test_every_key_a_whole_job_writes_starts_with_the_prefix(make_stack: Any, redis_client: Any) -> None:
    # Limits on the stub, so the job writes rate-limit buckets too; a little latency, so that
    # the queues and the unacked set live long enough to be seen.
    stack: Stack = make_stack({"STUB_TPM": "1000000", "STUB_RPM": "10000", "STUB_LATENCY_MS": "150"})
    before = set(redis_client.scan_iter(count=1000))
    seen: set[bytes] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(redis_client.scan_iter(count=1000))
            done.wait(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        job = stack.wait(stack.submit("every key under the prefix"))
    finally:
        done.set()
        watcher.join(5)
    seen.update(redis_client.scan_iter(count=1000))

    assert job["status"] == "succeeded", job["error"]
    prefix = f"{RUN_PREFIX}:".encode()
    new = seen - before
    ours = {k for k in new if k.startswith(prefix)}
    strays = {k for k in new - ours if not k.startswith(OTHER_RUNS)}
    assert not strays, f"keys outside {RUN_PREFIX}: {sorted(strays)[:20]}"
    # what a job writes was seen: the buckets it debited and a queue it was published to
    assert any(b":rl:{stub}" in k for k in ours), sorted(ours)
    assert any(k.endswith((b":personas", b":pipeline")) for k in ours), sorted(ours)
