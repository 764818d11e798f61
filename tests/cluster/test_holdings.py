"""``Holdings`` (cluster): what reaches a node about friendships and groups becomes reads
again of what it holds: a notice, a change on the feed from an older version, a gap on an
inbox or group channel (no server needed: the slices are watched)."""

from __future__ import annotations

from typing import Any

from geopresence.cluster.channel_events import Reread
from geopresence.cluster.holdings import Holdings
from geopresence.cluster.redis_keys import Keys
from geopresence.core.hub import Hub
from geopresence.core.settings import HubSettings
from geopresence.core.store import MemoryStore
from geopresence.model.records import Befriended, GroupSet, MemberRemoved, UserForgotten
from tests.helpers import Listening, RecordingSink


async def _written() -> None:
    return None


def watched() -> tuple[Holdings, list[Any]]:
    hub = Hub(HubSettings(), MemoryStore(), RecordingSink())
    holdings = Holdings(hub, None, Keys("gp"), _written, Listening(), lambda op: None)
    stale: list[Any] = []
    holdings.friends.stale = lambda users: stale.append(("friends", tuple(users)))  # type: ignore[method-assign]
    holdings.groups.stale = lambda users, groups: stale.append(  # type: ignore[method-assign]
        ("groups", tuple(users), tuple(groups))
    )
    return holdings, stale


def test_a_notice_a_gap_or_an_older_node_s_feed_entry_reads_again() -> None:
    holdings, stale = watched()
    holdings.heard(Reread(friends_of=("alice",), groups_of=("bob",), groups=("hikers",)))
    assert stale == [("friends", ("alice",)), ("groups", ("bob",), ("hikers",))]
    stale.clear()
    holdings.gap(["inbox:bob", "group:chess", "user:carol", "cell:abc"])
    assert stale == [("friends", ("bob",)), ("groups", ("bob",), ("chess",))]
    stale.clear()
    holdings.gap(["user:carol"])  # carries neither: nothing is read again
    assert stale == []
    holdings.heard_op(Befriended("a", "b"))
    holdings.heard_op(GroupSet("g", ["x", "y"], 5))
    holdings.heard_op(MemberRemoved("g", "x"))
    assert stale == [
        ("friends", ("a", "b")),
        ("groups", (), ()),  # a friendship reads no groups again
        ("friends", ()),  # a group change reads no friends again
        ("groups", ("x", "y"), ("g",)),
        ("friends", ()),
        ("groups", ("x",), ("g",)),
    ]


def test_a_forget_reads_again_what_it_touched_here() -> None:
    """From a review: a forget heard on the feed may come after the notice of a later
    re-friending or rejoin; what it touched here is read again after it is applied."""
    hub = Hub(HubSettings(), MemoryStore(), RecordingSink())
    holdings = Holdings(hub, None, Keys("gp"), _written, Listening(), lambda op: None)
    hub.membership.load_friends("bob", ["alice", "carol"])
    holdings.friends._held.add("bob")
    hub.state.users.set_group("hikers", {"alice": 1, "bob": 2})
    assert holdings.forgetting(UserForgotten("alice")) == Reread(
        ("alice", "bob"), ("alice",), ("hikers",)
    )
