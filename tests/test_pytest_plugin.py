"""The ``geopresence_server`` fixture in a fresh project (pytester): what the README's
"embed in a pytest test" needs, and a clear message when the configuration is missing."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

A_TEST = """
import trio

async def test_bob_goes_offline(geopresence_server, autojump_clock):
    await geopresence_server.admin.befriend("alice", "bob")
    async with geopresence_server.connect("alice", heartbeat=True) as alice:
        async with geopresence_server.connect("bob"):
            online = await alice.recv_type("presence")
        offline = await alice.recv_type("presence")
        assert offline["status"] == "offline"
        assert trio.current_time() == online["last_active_at"] + {offline_after}
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # A subprocess: the project's own configuration (this repository's trio_mode) is not
    # inherited, and the plugin comes from its entry point as in any other project.
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_the_fixture_works_with_trio_mode(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(A_TEST.format(offline_after=30))
    run(pytester).assert_outcomes(passed=1)


def test_the_marker_sets_config_fields_and_mark_trio_is_enough(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n"
        + A_TEST.format(offline_after=7).replace(
            "async def test",
            "@pytest.mark.trio\n@pytest.mark.geopresence(heartbeat_interval=2, offline_after=7)"
            "\nasync def test",
        )
    )
    run(pytester).assert_outcomes(passed=1)


def test_a_missing_configuration_is_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(A_TEST.format(offline_after=30))
    result = run(pytester)
    result.assert_outcomes(errors=1)  # at setup, before any trio code
    result.stdout.fnmatch_lines(["*geopresence_server is a trio fixture: set trio_mode = true*"])
    result = run(pytester, "-p", "no:trio")
    result.assert_outcomes(errors=1)  # at setup, before any trio code
    result.stdout.fnmatch_lines(["*geopresence_server needs pytest-trio: pip install*"])


def test_a_wrong_marker_is_one_line_at_setup(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.geopresence(offline_afterr=3)
        async def test_typo(geopresence_server):
            pass

        @pytest.mark.geopresence(heartbeat_interval=50)
        async def test_conflict(geopresence_server):
            pass

        @pytest.mark.geopresence(fsync="sometimes")
        async def test_choice(geopresence_server):
            pass

        @pytest.mark.geopresence({"offline_after": 3})
        async def test_positional(geopresence_server):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "*@pytest.mark.geopresence: offline_afterr is not a Config field"
            " (did you mean offline_after?)",
            "*@pytest.mark.geopresence: offline_after 30.0: must be longer than heartbeat_int*",
            "*@pytest.mark.geopresence: 'fsync' must be in ('always', 'everysec', 'no')*",
            "*@pytest.mark.geopresence takes Config fields as keywords*",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_a_sync_test_is_told_to_be_async(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile("def test_sync(geopresence_server):\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(errors=1)  # not "set trio_mode = true": it is set
    result.stdout.fnmatch_lines(
        ["*geopresence_server is a trio fixture: test_sync must be an async def*"]
    )
