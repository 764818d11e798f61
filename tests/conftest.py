"""Shared fixtures. Server tests run in-process under a MockClock (see geopresence.testing)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, settings

from geopresence.testing import TestServer, open_server

# No per-example deadline: the first example of a run pays one-off costs (cattrs compiles its
# structuring functions), and a slow CI machine must not turn that into a failure.
settings.register_profile(
    "geopresence", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("geopresence")


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    """An insecure in-process server with the contract's default timings (5 s / 30 s).

    Tests that use it also take ``autojump_clock`` as a parameter: pytest-trio only picks up
    a clock passed to the test function itself. Server times then equal
    ``trio.current_time()`` (virtual, starting at 0)."""
    async with open_server() as running:
        yield running
