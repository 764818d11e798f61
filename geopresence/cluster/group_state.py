"""What a read of groups from Redis does to a node's state (cluster, pure): load a group
as read, drop it, apply the changes heard since over a read (``GroupSlices``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from geopresence.model.records import (
    GroupDeleted,
    GroupSet,
    MemberAdded,
    MemberRemoved,
    UserForgotten,
)

if TYPE_CHECKING:
    from geopresence.core.state import DurableState

GroupOp = GroupSet | GroupDeleted | MemberAdded | MemberRemoved
Recent = GroupOp | UserForgotten
"""A change kept to be applied again over a read: a group's, or a forget."""


def replay(state: DurableState, read: set[str], changes: Iterable[Recent]) -> None:
    """Apply ``changes`` again, in order and silently, to the groups just ``read``."""
    for op in changes:
        if isinstance(op, UserForgotten):
            for group in read & state.users.groups_of(op.user):
                state.apply(MemberRemoved(group, op.user))
        elif op.group in read:
            state.apply(op)


def replay_onto(
    found: dict[str, dict[str, int]], groups: set[str], changes: Iterable[Recent]
) -> None:
    """Apply ``changes`` again, in order, to the members and marks ``found`` of ``groups``
    (a read again after a gap)."""
    for op in changes:
        if isinstance(op, UserForgotten):
            for marks in found.values():
                marks.pop(op.user, None)
        elif op.group not in groups:
            continue
        elif isinstance(op, GroupSet):
            before = found.get(op.group, {})
            found[op.group] = {u: before.get(u, op.joined_after) for u in op.members}
        elif isinstance(op, MemberAdded):
            found.setdefault(op.group, {}).setdefault(op.user, op.joined_after)
        elif isinstance(op, MemberRemoved):
            found.get(op.group, {}).pop(op.user, None)
        else:
            found.pop(op.group, None)


def joins(changes: Iterable[Recent]) -> set[tuple[str, str]]:
    """(group, user) of each user ``changes`` added to a group."""
    joins = set()
    for op in changes:
        if isinstance(op, MemberAdded):
            joins.add((op.group, op.user))
        elif isinstance(op, GroupSet):
            joins.update((op.group, user) for user in op.members)
    return joins


def load_group(state: DurableState, group: str, marks: Mapping[str, int] | None) -> None:
    """``group``'s members with their join marks as read (None: it does not exist),
    replacing what the state had of it. Silent: nothing journaled, no frame."""
    if marks is None:
        unload_group(state, group)
        return
    _, removed = state.users.set_group(group, marks)
    for user in removed:
        state.chat.leave(group, user)
    for user, mark in marks.items():
        state.chat.leave(group, user)  # the mark read replaces one applied before
        state.chat.join(group, user, mark)
        state.ids.observe(mark)


def unload_group(state: DurableState, group: str) -> None:
    """Drop ``group`` from the state, silently (this node no longer needs it)."""
    for user in state.users.delete_group(group) or ():
        state.chat.leave(group, user)
