"""Fixtures: every limiter test runs on real Redis and on fakeredis (the embedded mode)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis


@pytest.fixture
def key_prefix() -> str:
    """A prefix no other test (or user of the shared Redis) has, so cleanup is exact."""
    return f"mptest-rl-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["redis", "fakeredis"])
def redis_client(request: pytest.FixtureRequest, key_prefix: str) -> Iterator[Any]:
    """A Redis client of either kind; keys under `key_prefix` are removed afterwards."""
    if request.param == "fakeredis":
        yield fakeredis.FakeRedis(server=fakeredis.FakeServer())
        return

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        client.close()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis not reachable at {url}")
        pytest.skip(f"Redis not reachable at {url}")
    try:
        yield client
    finally:
        # Only our own keys: the server is shared.
        keys = list(client.scan_iter(match=f"{key_prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
