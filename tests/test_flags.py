"""``geopresence serve``'s flags come from ``Config``: help by group with each default once in
readable units, an environment variable per flag (flag > env > default), and usage errors
in one line naming the flag. In-process (``cli.main``): no server is started here."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import attrs
import pytest

from geopresence.cli import build_parser, main
from geopresence.config import Config
from geopresence.options import GROUPS, ConfigError
from geopresence.shell.flags import UsageError, build_config, resolve, settings

UNSET_ENV = [item.env for item in settings()]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in UNSET_ENV:
        monkeypatch.delenv(name, raising=False)


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def config_of(*argv: str, env: dict[str, str] | None = None) -> Config:
    values, given = resolve(serve_args(*argv), env or {})
    values.pop("log_level", None)
    values.pop("log_format", None)
    return build_config(values, given)


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one stderr line of a refused command (exit status 2)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def help_text(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_every_config_field_but_time_origin_is_a_flag() -> None:
    names = {item.name for item in settings()}
    fields = {field.name for field in attrs.fields(Config)}
    assert fields - names == {"time_origin"}
    assert names - fields == {"log_level", "log_format"}


def test_help_groups_the_flags_and_says_each_default_once_in_units(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_text(capsys)
    positions = [text.index(f"\n{group}:\n") for group in GROUPS]
    assert positions == sorted(positions)
    assert "(default: None)" not in text and "default: None" not in text
    flat = " ".join(text.split())
    for item in settings():
        assert item.flag in text
        assert flat.count(f"env {item.env})") == 1, item.env
    for expected in (
        "(default: 64 MiB; env GEOPRESENCE_HISTORY_MAX_BYTES)",
        "(default: 30 s; env GEOPRESENCE_OFFLINE_AFTER)",
        "(default: 10 min; env GEOPRESENCE_LOCATION_TTL)",
        "(default: 64 KiB; env GEOPRESENCE_MAX_MESSAGE_BYTES)",
        "(default: 8765; env GEOPRESENCE_PORT)",
        "(default: generated in DATA_DIR/secret; env GEOPRESENCE_SECRET)",
        "(default: generated in DATA_DIR/admin_key; env GEOPRESENCE_ADMIN_KEY)",
        "(default: off; env GEOPRESENCE_INSECURE)",
        "GEOPRESENCE_OFFLINE_AFTER",
    ):
        assert expected in flat, expected
    assert "67108864" not in text
    assert flat.count("(default: ") == len(settings())  # one per flag, never two


def test_the_flag_beats_the_environment_which_beats_the_default() -> None:
    assert config_of().port == 8765
    env = {"GEOPRESENCE_PORT": "9000", "GEOPRESENCE_INSECURE": "yes"}
    from_env = config_of(env=env)
    assert (from_env.port, from_env.insecure) == (9000, True)
    flagged = config_of("--port", "9001", "--no-insecure", env=env)
    assert (flagged.port, flagged.insecure) == (9001, False)


def test_units_durations_sizes_lists_and_the_secrets_from_the_environment() -> None:
    config = config_of(
        "--offline-after", "2min", "--history-max-bytes", "1MiB", "--redis-cluster",
        "a:7000, b:7001", "--heartbeat-interval", "500ms",
        env={"GEOPRESENCE_SECRET": "s" * 32, "GEOPRESENCE_ADMIN_KEY": "k" * 32},
    )  # fmt: skip
    assert config.offline_after == 120 and config.heartbeat_interval == 0.5
    assert config.history_max_bytes == 1024 * 1024
    assert config.redis_cluster == ("a:7000", "b:7001")
    assert (config.secret, config.admin_key) == ("s" * 32, "k" * 32)
    assert "s" * 32 not in repr(config)  # never in a log line by accident


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["--offline-after", "1"],
            "geopresence serve: --offline-after 1: must be longer than "
            "--heartbeat-interval (5 s), or every client times out",
        ),
        (
            ["--heartbeat-interval", "40"],
            "geopresence serve: --heartbeat-interval 40: must be shorter than "
            "--offline-after (30 s), or every client times out",
        ),
        (["--host", "999.1.1.1"], "geopresence serve: --host 999.1.1.1: not an IP address"),
        (["--port", "80000"], "geopresence serve: --port 80000: must be 0..65535"),
        (["--port", "http"], "geopresence serve: --port http: not a whole number"),
        (["--offline-after", "soon"], "geopresence serve: --offline-after soon: not a duration"),
        (["--max-radius", "1000"], "geopresence serve: --max-radius 1000: must be at least"),
        (["--fsync", "sometimes"], "geopresence serve: --fsync sometimes: must be one of"),
        (["--node-id", "1024"], "geopresence serve: --node-id 1024: must be 0..1023"),
        (["--push-retries", "-1"], "geopresence serve: --push-retries -1: must be 0 or more"),
        (["--no-such-flag"], "geopresence serve: unrecognized arguments: --no-such-flag"),
        (["--port"], "geopresence serve: --port: expected one argument"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_flag(
    capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    assert usage_error(capsys, "serve", *argv).startswith(line)


def test_a_bad_environment_variable_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEOPRESENCE_PORT", "eighty")
    assert usage_error(capsys, "serve") == (
        "geopresence serve: GEOPRESENCE_PORT=eighty: not a whole number"
    )
    monkeypatch.setenv("GEOPRESENCE_PORT", "8765")
    monkeypatch.setenv("GEOPRESENCE_OFFLINE_AFTER", "1")
    assert usage_error(capsys, "serve").startswith(
        "geopresence serve: GEOPRESENCE_OFFLINE_AFTER=1: must be longer than --heartbeat-interval"
    )


def test_a_data_dir_that_is_a_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    line = usage_error(capsys, "serve", "--data-dir", str(blocker))
    assert line == f"geopresence serve: --data-dir {blocker}: is a file, not a directory"
    line = usage_error(capsys, "serve", "--data-dir", str(blocker / "data"))
    assert line == f"geopresence serve: --data-dir {blocker / 'data'}: cannot be created: " + (
        f"{blocker} is a file"
    )


def test_config_errors_name_fields_for_embedders() -> None:
    with pytest.raises(ConfigError) as refused:
        Config(offline_after=1)
    assert str(refused.value) == (
        "offline_after 1: must be longer than heartbeat_interval (5 s), or every client times out"
    )
    assert isinstance(refused.value, ValueError)  # what embedders caught before


def test_flags_values_reach_the_config_unchanged() -> None:
    """Every flag of the old hand-written parser still sets the same field."""
    config = config_of(
        "--host", "::1", "--port", "1", "--http-port", "2", "--data-dir", "d", "--insecure",
        "--admin-key", "k", "--secret", "s" * 32, "--heartbeat-interval", "1",
        "--offline-after", "3",
        "--location-ttl", "4", "--radius", "5", "--max-radius", "6", "--strangers-query-burst",
        "7", "--strangers-query-interval", "8", "--history-max-bytes", "9", "--in-memory",
        "--snapshot-interval", "10", "--fsync", "always", "--presence-fanout-limit", "11",
        "--max-friends", "12", "--max-message-bytes", "13", "--hello-timeout", "14",
        "--queue-size", "15", "--queue-bytes", "1600", "--state-queue-size", "17", "--node-id",
        "18", "--redis", "redis://r:1/0", "--redis-prefix", "p", "--redis-sweep-interval", "19",
        "--push-webhook", "http://h/p", "--push-timeout", "20", "--push-retries", "21",
        "--gc-freeze-interval", "0", "--max-devices-per-user", "22",
        "--max-connections-per-user", "23", "--rate-limit", "0", "--rate-burst", "24",
    )  # fmt: skip
    assert attrs.asdict(config) == {
        **attrs.asdict(Config()),
        "host": "::1", "port": 1, "http_port": 2, "data_dir": Path("d"), "insecure": True,
        "admin_key": "k", "secret": "s" * 32, "heartbeat_interval": 1.0, "offline_after": 3.0,
        "location_ttl": 4.0, "radius": 5.0, "max_radius": 6.0, "strangers_query_burst": 7,
        "strangers_query_interval": 8.0, "history_max_bytes": 9, "in_memory": True,
        "snapshot_interval": 10.0, "fsync": "always", "presence_fanout_limit": 11,
        "max_friends": 12, "max_message_bytes": 13, "hello_timeout": 14.0, "queue_size": 15,
        "queue_bytes": 1600, "state_queue_size": 17, "node_id": 18, "redis": "redis://r:1/0",
        "redis_prefix": "p", "redis_sweep_interval": 19.0, "push_webhook": "http://h/p",
        "push_timeout": 20.0, "push_retries": 21, "gc_freeze_interval": 0.0,
        "max_devices_per_user": 22, "max_connections_per_user": 23, "rate_limit": 0.0,
        "rate_burst": 24,
    }  # fmt: skip


def test_the_data_dir_tools_take_data_dir_like_the_other_commands(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in ("inspect", "snapshot"):
        for argv in ([str(empty)], ["--data-dir", str(empty)]):
            assert main([command, *argv]) == 1
            err = capsys.readouterr().err
            assert err.strip() == (
                f"geopresence {command}: {empty} is not a geopresence data dir (no state/, "
                "history/, secret or admin_key in it); give the server's --data-dir"
            )
    monkeypatch.setenv("GEOPRESENCE_DATA_DIR", str(tmp_path / "missing"))
    assert main(["inspect"]) == 1
    assert "missing does not exist, not a data dir" in capsys.readouterr().err
    (empty / "state").mkdir()
    assert main(["inspect", "--data-dir", str(empty)]) == 0
    assert f"data dir {empty} (not in use)" in capsys.readouterr().out
    line = usage_error(capsys, "inspect", str(empty), "--data-dir", str(tmp_path))
    assert line.startswith("geopresence inspect: DATA_DIR ") and "give one of them" in line


def test_the_other_commands_usage_errors_are_one_line_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert usage_error(capsys, "token", "alice", "--ttl", "soon").startswith(
        "geopresence token: --ttl soon: not a duration"
    )
    assert usage_error(capsys, "history", "alice", "--since", "yesterday").startswith(
        "geopresence history: --since yesterday: not a time"
    )
    assert usage_error(capsys, "token") == (
        "geopresence token: the following arguments are required: USER "
        "(see geopresence token --help)"
    )


def test_history_retention_takes_days_forever_and_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert Config().history_retention == 30 * 86400
    assert config_of("--history-retention", "12h").history_retention == 12 * 3600
    assert config_of("--history-retention", "forever").history_retention == math.inf
    assert config_of(env={"GEOPRESENCE_HISTORY_RETENTION": "0"}).history_retention == 0
    flat = " ".join(help_text(capsys).split())
    assert "(default: 30 d; env GEOPRESENCE_HISTORY_RETENTION)" in flat
    assert usage_error(capsys, "serve", "--history-retention", "soon") == (
        "geopresence serve: --history-retention soon: not a duration (seconds, or a number "
        "with ms, s, min, h or d), or forever"
    )
    assert usage_error(capsys, "serve", "--history-retention=-1d").endswith(
        "must be 0 or more (or forever)"
    )


def test_usage_error_helper_catches_unexpected_problems() -> None:
    with pytest.raises(UsageError, match="--port x: not a whole number"):
        config_of("--port", "x")


def test_hub_settings_come_from_config() -> None:
    """HubSettings repeats no default: each is Config's, and ``from_config`` copies them."""
    from geopresence.core.hub import HubSettings

    assert HubSettings() == HubSettings.from_config(Config())
    changed = Config(radius=100.0, node_id=7, heartbeat_interval=1.0, abuse_limit=5)
    settings = HubSettings.from_config(changed)
    assert (settings.default_radius, settings.node_id) == (100.0, 7)
    assert (settings.heartbeat_interval, settings.abuse_limit) == (1.0, 5)
    for field in attrs.fields(HubSettings):
        assert getattr(settings, field.name) == getattr(
            changed, field.metadata.get("config", field.name)
        )


def test_an_empty_secret_or_admin_key_is_refused_without_echoing_a_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Leaving the flag out means "the data dir's"; an empty one (an unset shell variable)
    # silently meant the same, and `geopresence token --secret ""` signed with a secret it
    # generated in ./geopresence-data, which no server accepts.
    monkeypatch.chdir(tmp_path)
    assert "--secret: must not be empty" in usage_error(capsys, "serve", "--secret", "")
    assert "--admin-key: must not be empty" in usage_error(capsys, "serve", "--admin-key", "")
    line = usage_error(capsys, "serve", "--admin-key", "top secret")
    assert "--admin-key: " in line and "HTTP header" in line and "top secret" not in line
    assert "--secret: must not be empty" in usage_error(capsys, "token", "alice", "--secret", "")
    short = "must be at least 32 bytes (HS256; make one with `openssl rand -hex 32`)"
    assert f"--secret: {short}" in usage_error(capsys, "serve", "--secret", "s" * 31)
    assert f"--secret: {short}" in usage_error(capsys, "token", "alice", "--secret", "s" * 31)
    assert list(tmp_path.iterdir()) == []  # no ./geopresence-data/secret made up
    with pytest.raises(ConfigError) as refused:
        Config(admin_key="a b")
    assert "a b" not in str(refused.value)
