"""Shared fixtures. Server tests run in-process under a MockClock (see geopresence.testing)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from geopresence.testing import TestServer, open_server
from tests.redis_server import AnyRedis, redis_client

# No per-example deadline: the first example of a run pays one-off costs (cattrs compiles its
# structuring functions), and a slow CI machine must not turn that into a failure.
settings.register_profile(
    "geopresence", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("geopresence")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the reason of a ``pytest.skip`` raised inside a trio test (e.g. "redis-server
    is not installed"): pytest-trio re-raises it from a nursery's exception group as a bare
    ``Skipped``, and the summary line would read only "Skipped"."""
    report = yield
    excinfo = call.excinfo
    if report.skipped and excinfo is not None and isinstance(report.longrepr, tuple):
        group: Any = excinfo.value.__context__
        if isinstance(group, BaseExceptionGroup):
            match, _ = group.split(pytest.skip.Exception)
            inner = match.exceptions[0] if match else None
            while isinstance(inner, BaseExceptionGroup):
                inner = inner.exceptions[0]
            if inner is not None and str(inner):
                where = item.location
                report.longrepr = (where[0], (where[1] or 0) + 1, f"Skipped: {inner}")
    return report


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    """An insecure in-process server with the contract's default timings (5 s / 30 s).

    Tests that use it also take ``autojump_clock`` as a parameter: pytest-trio only picks up
    a clock passed to the test function itself. Server times then equal
    ``trio.current_time()`` (virtual, starting at 0)."""
    async with open_server() as running:
        yield running


@pytest.fixture(params=["standalone", "cluster"])
async def any_redis(request: pytest.FixtureRequest) -> AsyncIterator[AnyRedis]:
    """Runs the test twice: on a standalone redis-server and on a 3-master Redis Cluster
    (skipped, saying why, without ``redis-server``)."""
    async with redis_client(request.param) as client:
        yield client
