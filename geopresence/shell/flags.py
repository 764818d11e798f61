"""The flags of ``geopresence serve``, generated from ``Config``'s field metadata.

Each ``Config`` field with an ``Option`` is a flag (``offline_after``: ``--offline-after``)
and an environment variable (``GEOPRESENCE_OFFLINE_AFTER``); a flag given on the command line
beats the environment, which beats the default. ``--help`` lists them by group with each
default once, in the unit a person reads (``64 MiB``, ``30 s``). A value that cannot be used
is one line naming the flag (or the variable) and the problem: ``UsageError``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs

from geopresence.config import Config
from geopresence.options import GROUPS, LIMITS, ConfigError, Option, option
from geopresence.units import parse_duration, parse_int, parse_number, parse_size, show

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

ENV_RULE = (
    "Every flag can also be set by an environment variable: GEOPRESENCE_ and the flag in "
    "capitals with underscores (--offline-after: GEOPRESENCE_OFFLINE_AFTER); a flag on the "
    "command line wins over the environment, which wins over the default. Durations are "
    "seconds or take a unit (250ms, 30s, 10min, 1h, 30d); sizes are bytes or take one (64KiB, "
    "64MiB, 1GiB); switches read 1/0, true/false, yes/no, on/off from the environment."
)


class UsageError(Exception):
    """A flag or environment variable that cannot be used: one line, exit status 2."""


@attrs.frozen
class Setting:
    """One flag of ``serve``: a ``Config`` field, or a setting of the command itself."""

    name: str
    option: Option
    default: Any

    @property
    def flag(self) -> str:
        return self.option.flag_for(self.name)

    @property
    def env(self) -> str:
        return self.option.env_for(self.name)

    @property
    def is_switch(self) -> bool:
        return isinstance(self.default, bool)

    def parse(self, text: str) -> Any:
        """The value of ``text`` (from the command line or the environment); ``ValueError``
        saying what is wrong."""
        unit, default = self.option.unit, self.default
        if self.option.parse is not None:
            return self.option.parse(text)
        if self.option.choices:
            if text not in self.option.choices:
                raise ValueError(f"must be one of {', '.join(self.option.choices)}")
            return text
        if isinstance(default, bool):
            return _switch(text)
        if isinstance(default, int):
            return parse_size(text) if unit == "B" else parse_int(text)
        if isinstance(default, float):
            return parse_duration(text) if unit == "s" else parse_number(text)
        if isinstance(default, tuple):
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if isinstance(default, Path):
            return Path(text)
        return text

    def metavar(self) -> str | None:
        if self.option.metavar:
            return self.option.metavar
        if self.option.choices:
            return "{" + ",".join(self.option.choices) + "}"
        if self.option.unit == "s":
            return "SECONDS"
        if self.option.unit == "B":
            return "SIZE"
        if self.option.unit == "m":
            return "METRES"
        if isinstance(self.default, int | float):
            return "N"
        return self.name.upper()

    def help(self) -> str:
        if self.option.default_text is not None:
            default = self.option.default_text
        elif self.is_switch:
            default = "on" if self.default else "off"
        else:
            default = show(self.default, self.option.unit)
        text = f"{self.option.help} (default: {default}; env {self.env})"
        return text.replace("%", "%%")  # argparse %-formats help


def _switch(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 1 or 0 (true/false, yes/no, on/off)")


COMMAND_SETTINGS = (
    Setting("log_level", Option("log verbosity", LIMITS, choices=LOG_LEVELS), "info"),
    Setting(
        "log_format",
        Option("text lines, or one JSON object per line (ts, level, logger, message)", LIMITS,
               choices=LOG_FORMATS),
        "text",
    ),
)  # fmt: skip
"""Settings of the command that are not ``Config``'s (logging is the process's)."""


def config_settings() -> Iterator[Setting]:
    """A ``Setting`` per ``Config`` field that has a flag."""
    for field in attrs.fields(Config):
        found = option(field)
        if found is not None:
            yield Setting(field.name, found, field.default)


def settings() -> list[Setting]:
    return [*config_settings(), *COMMAND_SETTINGS]


def setting(name: str) -> Setting:
    for candidate in settings():
        if candidate.name == name:
            return candidate
    raise KeyError(name)


class _Switch(argparse.Action):
    """``--insecure`` sets it, ``--no-insecure`` clears it (over an environment variable)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, not (option_string or "").startswith("--no-"))


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def add_flag(parser: argparse.ArgumentParser | Any, item: Setting) -> None:
    """Add ``item`` to ``parser`` (or an argument group). Nothing is stored unless the flag
    is given: ``resolve`` then looks at the environment and the default."""
    if item.is_switch:
        parser.add_argument(
            item.flag,
            "--no-" + item.flag.removeprefix("--"),
            dest=item.name,
            action=_Switch,
            nargs=0,
            default=argparse.SUPPRESS,
            help=item.help(),
        )
    else:
        parser.add_argument(
            item.flag,
            dest=item.name,
            default=argparse.SUPPRESS,
            metavar=item.metavar(),
            help=item.help(),
        )


def add_serve_flags(parser: argparse.ArgumentParser, defaults: Mapping[str, Any] = {}) -> None:
    """Every setting of ``serve``, by group; ``defaults``: the command's own defaults where
    they are not ``serve``'s (``demo``), shown in the help as such."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for item in settings():
        if item.name in defaults:
            item = attrs.evolve(item, default=defaults[item.name])
        add_flag(groups[item.option.group], item)


HIDDEN_SETTINGS = frozenset({"secret", "admin_key"})
"""Settings whose value an error never shows."""


@attrs.define
class Given:
    """Where each setting's value came from: the command line, the environment, or neither."""

    texts: dict[str, str] = attrs.Factory(dict)
    """Setting name -> the text the user gave (flag or environment)."""
    from_env: set[str] = attrs.Factory(set)

    def where(self, name: str) -> str:
        """``--offline-after 1``, ``GEOPRESENCE_OFFLINE_AFTER=1``, or the flag and default."""
        item = setting(name)
        if name in HIDDEN_SETTINGS:  # never echo a key into a terminal or a log
            return item.env if name in self.from_env else item.flag
        if name in self.from_env:
            return f"{item.env}={self.texts[name]}"
        if name in self.texts:
            text = self.texts[name]
            return text if item.is_switch else f"{item.flag} {text}"
        return f"{item.flag} {show(item.default, item.option.unit)}"


def resolve(
    args: argparse.Namespace, environ: Mapping[str, str], names: Sequence[str] | None = None
) -> tuple[dict[str, Any], Given]:
    """The values of the settings ``names`` (every one by default) that the command line or
    the environment gives, parsed; ``UsageError`` for one that cannot be parsed."""
    given = Given()
    values: dict[str, Any] = {}
    for item in settings():
        if names is not None and item.name not in names:
            continue
        raw: Any
        if item.name in vars(args):
            raw = getattr(args, item.name)
        elif environ.get(item.env):
            raw = environ[item.env]
            given.from_env.add(item.name)
        else:
            continue
        if isinstance(raw, bool):  # a switch on the command line
            values[item.name] = raw
            given.texts[item.name] = item.flag if raw else "--no-" + item.flag[2:]
            continue
        given.texts[item.name] = raw
        try:
            values[item.name] = item.parse(raw)
        except ValueError as exc:
            raise UsageError(f"{given.where(item.name)}: {exc}") from None
    return values, given


def blame(error: ConfigError, given: Given) -> str:
    """``error`` as one line naming the flag (or variable) the user set."""
    sides = (error, *error.alternatives)
    chosen = next(
        (e for e in sides if e.field in given.texts and e.field not in given.from_env),
        next((e for e in sides if e.field in given.texts), error),
    )
    return f"{given.where(chosen.field)}: {chosen.describe(lambda name: setting(name).flag)}"


def build_config(
    values: Mapping[str, Any], given: Given, make: Callable[..., Config] = Config
) -> Config:
    """``Config`` of ``values`` (command settings left out); ``UsageError`` naming the flag."""
    fields = attrs.fields_dict(Config)
    try:
        return make(**{name: value for name, value in values.items() if name in fields})
    except ConfigError as exc:
        raise UsageError(blame(exc, given)) from None
