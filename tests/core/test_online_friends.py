"""``OnlineFriends`` answers what scanning the friendship graph answers, whatever the order
of logins, logouts, friendships made and ended."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from geopresence.core.online_friends import OnlineFriends

USERS = ["u0", "u1", "u2", "u3", "u4"]
user = st.sampled_from(USERS)
op = st.one_of(
    st.tuples(st.sampled_from(["online", "offline"]), user, st.none()),
    st.tuples(st.sampled_from(["befriend", "unfriend"]), user, user),
)


@given(st.lists(op, max_size=60))
def test_each_users_online_friends_are_its_friends_that_are_online(
    ops: list[tuple[Any, ...]],
) -> None:
    graph: dict[str, set[str]] = {u: set() for u in USERS}
    online: set[str] = set()
    index = OnlineFriends(lambda u: graph[u])
    for kind, a, b in ops:
        # The owner's calls, in the order Sessions and Membership make them: a transition
        # once per user, the graph changed before the index hears of it.
        if kind == "online" and a not in online:
            online.add(a)
            index.came_online(a)
        elif kind == "offline" and a in online:
            online.discard(a)
            index.went_offline(a)
        elif kind == "befriend" and a != b and b not in graph[a]:
            graph[a].add(b)
            graph[b].add(a)
            index.befriended(a, b)
        elif kind == "unfriend" and b in graph[a]:
            graph[a].discard(b)
            graph[b].discard(a)
            index.unfriended(a, b)
        for u in USERS:  # online or not: an offline user's friends are told it left
            assert sorted(index.of(u)) == sorted(graph[u] & online), (u, ops)  # each once
