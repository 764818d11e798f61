"""geopresence's pytest plugin: a ``geopresence_server`` fixture for your own test suite.

It is registered with geopresence (the ``pytest11`` entry point ``geopresence``), so any
project that has geopresence installed has the fixture; nothing to import. What it needs:

- **pytest-trio** (``pip install pytest-trio``, or ``pip install 'geopresence[pytest]'``):
  the fixture and the tests that use it are trio code;
- tests that pytest-trio runs: either ``trio_mode = true`` in the pytest configuration
  (``[tool.pytest.ini_options]`` of pyproject.toml, or ``[pytest]`` of pytest.ini), or
  ``@pytest.mark.trio`` on each test. Without them pytest answers "async def functions are
  not natively supported"; this plugin says which of the two is missing instead.

The fixture is ``geopresence.testing.open_server()``'s ``TestServer``: free loopback ports,
in memory, insecure, no rate limit, a ready HTTP ``admin`` client, ``server.connect(user)``.
``@pytest.mark.geopresence(offline_after=30, ...)`` sets ``Config`` fields for one test. Take
pytest-trio's ``autojump_clock`` as an argument of the test to run it under a ``MockClock``
(a 30-second wait takes no time; server times equal ``trio.current_time()``)::

    async def test_bob_goes_offline(geopresence_server, autojump_clock):
        await geopresence_server.admin.befriend("alice", "bob")
        async with geopresence_server.connect("alice", heartbeat=True) as alice:
            async with geopresence_server.connect("bob"):
                assert (await alice.recv_type("presence"))["status"] == "online"
            assert (await alice.recv_type("presence"))["status"] == "offline"
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from geopresence.testing import TestServer

FIXTURE = "geopresence_server"
NEEDS_PYTEST_TRIO = (
    "geopresence_server needs pytest-trio: pip install pytest-trio, then set trio_mode = true "
    "in the pytest configuration (or mark the test @pytest.mark.trio)"
)
NEEDS_ASYNC_TEST = (
    "geopresence_server is a trio fixture: {name} must be an async def test (pytest-trio "
    "runs only those)"
)
NEEDS_TRIO_TEST = (
    "geopresence_server is a trio fixture: set trio_mode = true in the pytest configuration "
    "([tool.pytest.ini_options] in pyproject.toml), or mark the test @pytest.mark.trio"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "geopresence(**fields): Config fields of the geopresence_server fixture for this test",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Say what configuration is missing, before the fixture fails obscurely."""
    if FIXTURE not in getattr(item, "fixturenames", ()):
        return
    if not item.config.pluginmanager.hasplugin("trio"):
        pytest.fail(NEEDS_PYTEST_TRIO, pytrace=False)
    test = getattr(item, "obj", None)
    if callable(test) and not inspect.iscoroutinefunction(test):
        pytest.fail(NEEDS_ASYNC_TEST.format(name=item.name), pytrace=False)
    if item.get_closest_marker("trio") is None:
        pytest.fail(NEEDS_TRIO_TEST, pytrace=False)
    marker = item.get_closest_marker("geopresence")
    if marker is not None:
        from geopresence.testing import config_problem

        problem = config_problem(*marker.args, **marker.kwargs)
        if problem is not None:
            separator = " " if marker.args else ": "
            pytest.fail(f"@pytest.mark.geopresence{separator}{problem}", pytrace=False)


@pytest.fixture
async def geopresence_server(request: pytest.FixtureRequest) -> AsyncIterator[TestServer]:
    """A geopresence server for the test (``geopresence.testing.open_server``)."""
    from geopresence.testing import open_server

    marker = request.node.get_closest_marker("geopresence")
    async with open_server(**(marker.kwargs if marker else {})) as server:
        yield server
