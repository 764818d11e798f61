"""Small trio helpers shared by the client, the test helper and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _single(group: BaseExceptionGroup[Any]) -> BaseException | None:
    """The one leaf exception of a group (through nesting), or None if there are several."""
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner  # type: ignore[no-any-return]
        group = inner
    return None


@contextmanager
def collapse_exception_groups() -> Iterator[None]:
    """Re-raise a lone exception out of the nurseries this module opens, so that callers
    see ``ConnectionClosed`` rather than an ``ExceptionGroup`` wrapping it."""
    try:
        yield
    except BaseExceptionGroup as group:
        single = _single(group)
        if single is None:
            raise
        raise single from None
