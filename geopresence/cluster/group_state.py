"""What a read of a group from Redis does to a node's state (cluster, pure): load it, drop
it, or find the changes that turn the group the node has into the one read
(``GroupSlices``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from geopresence.core.replication import FeedOp
from geopresence.model.records import GroupDeleted, GroupSet, MemberAdded, MemberRemoved

if TYPE_CHECKING:
    from geopresence.core.state import DurableState


def touched_by(op: FeedOp) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(users, groups) whose groups or membership ``op`` changes."""
    if isinstance(op, MemberAdded | MemberRemoved):
        return (op.user,), (op.group,)
    if isinstance(op, GroupSet):
        return tuple(op.members), (op.group,)
    if isinstance(op, GroupDeleted):
        return (), (op.group,)
    return (), ()


def differences(state: DurableState, group: str, marks: Mapping[str, int] | None) -> list[FeedOp]:
    """The changes that turn ``state``'s ``group`` into the one read (``marks``: members
    with their join marks; None: it does not exist), in a stable order."""
    had = state.users.group_members(group)
    if marks is None:
        return [] if had is None else [GroupDeleted(group)]
    members = set(had or ())
    ops: list[FeedOp] = [MemberAdded(group, u, marks[u]) for u in sorted(marks.keys() - members)]
    ops += [MemberRemoved(group, user) for user in sorted(members - marks.keys())]
    return ops


def remark(state: DurableState, group: str, marks: Mapping[str, int]) -> None:
    """The join marks read of members who left and joined again since, silently."""
    chat = state.chat
    for user, mark in marks.items():
        joined = chat.joined_after(group, user)
        if joined is not None and joined != mark:
            chat.leave(group, user)
            chat.join(group, user, mark)


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
