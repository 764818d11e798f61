"""The chat store: sorted indexes, sync pages, group visibility, client_msg_id lookup."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geopresence.core.chat_store import ChatStore
from geopresence.model.chat_message import ChatMessage


def dm(message_id: int, sender: str, to: str, text: str = "hi") -> ChatMessage:
    return ChatMessage(message_id, sender, text, created_at=float(message_id), to=to)


def gm(message_id: int, sender: str, group: str, text: str = "hi") -> ChatMessage:
    return ChatMessage(message_id, sender, text, created_at=float(message_id), group=group)


def ids(
    store: ChatStore, user: str, groups: list[str], after: int = 0, limit: int = 100
) -> list[int]:
    return [m.message_id for m in store.sync(user, groups, after, limit).messages]


def test_sync_merges_both_directions_and_groups_in_id_order() -> None:
    store = ChatStore()
    store.join("g", "alice", 0)
    store.join("g", "bob", 0)
    store.add(dm(10, "alice", "bob"))
    store.add(gm(11, "carol", "g"))
    store.add(dm(12, "bob", "alice"))
    store.add(dm(13, "bob", "carol"))  # not alice's
    store.add(gm(14, "bob", "h"))  # a group alice is not in
    assert ids(store, "alice", ["g"]) == [10, 11, 12]
    assert ids(store, "alice", ["g"], after=10) == [11, 12]
    assert ids(store, "alice", ["g"], after=12) == []
    page = store.sync("alice", ["g"], 0, 2)
    assert [m.message_id for m in page.messages] == [10, 11] and page.more
    assert not store.sync("alice", ["g"], 11, 2).more


def test_group_members_read_only_what_came_after_they_joined() -> None:
    store = ChatStore()
    store.join("g", "alice", 0)
    store.add(gm(5, "alice", "g"))
    store.join("g", "bob", 5)  # joined when 5 was the last id issued
    store.add(gm(6, "alice", "g"))
    assert ids(store, "bob", ["g"]) == [6]
    assert store.joined_after("g", "bob") == 5
    store.join("g", "bob", 6)  # a repeated join keeps the first
    assert store.joined_after("g", "bob") == 5
    store.leave("g", "bob")
    assert ids(store, "bob", ["g"]) == []  # passing the group without membership: nothing
    assert store.joined_after("g", "bob") is None


def test_delete_group_forgets_its_messages() -> None:
    store = ChatStore()
    store.join("g", "alice", 0)
    store.add(ChatMessage(1, "alice", "x", 1.0, group="g", client_msg_id="c1"))
    store.add(dm(2, "alice", "bob"))
    assert store.delete_group("g", {"alice"}) == 1
    assert len(store) == 1 and store.get(1) is None
    assert store.find_client_msg("alice", "c1") is None
    store.join("g", "alice", 2)
    assert ids(store, "alice", ["g"]) == [2]


def test_client_msg_id_lookup_is_per_sender() -> None:
    store = ChatStore()
    store.add(ChatMessage(1, "alice", "x", 1.0, to="bob", client_msg_id="same"))
    found = store.find_client_msg("alice", "same")
    assert found is not None and found.message_id == 1
    assert store.find_client_msg("bob", "same") is None


def test_add_refuses_a_stored_id_and_sync_a_zero_limit() -> None:
    store = ChatStore()
    store.add(dm(1, "alice", "bob"))
    with pytest.raises(ValueError):
        store.add(dm(1, "alice", "bob"))
    with pytest.raises(ValueError):
        store.sync("alice", [], 0, 0)


USERS = ["alice", "bob", "carol"]
GROUPS = ["g1", "g2"]


@given(
    messages=st.lists(
        st.tuples(
            st.sampled_from(USERS),
            st.one_of(
                st.sampled_from(USERS).map(lambda u: ("to", u)),
                st.sampled_from(GROUPS).map(lambda g: ("group", g)),
            ),
            st.text(max_size=30),
        ),
        max_size=60,
    ),
    id_gaps=st.lists(st.integers(min_value=1, max_value=1000), min_size=60, max_size=60),
    limit=st.integers(min_value=1, max_value=7),
    reader=st.sampled_from(USERS),
)
def test_sync_pages_concatenate_to_the_full_history(
    messages: list[tuple[str, tuple[str, str], str]],
    id_gaps: list[int],
    limit: int,
    reader: str,
) -> None:
    """Walking the pages (cursor = last id of a page, until ``more`` is false) yields every
    message the reader may see exactly once, in id order: no gaps, no duplicates."""
    store = ChatStore()
    for group in GROUPS:
        for user in USERS:
            store.join(group, user, 0)
    expected: list[int] = []
    message_id = 0
    for (sender, (kind, target), text), gap in zip(messages, id_gaps, strict=False):
        message_id += gap
        if kind == "to":
            store.add(dm(message_id, sender, target, text))
            if reader in (sender, target):
                expected.append(message_id)
        else:
            store.add(gm(message_id, sender, target, text))
            expected.append(message_id)
    seen: list[int] = []
    after = 0
    for _ in range(len(expected) + 2):
        page = store.sync(reader, GROUPS, after, limit)
        assert len(page.messages) <= limit
        seen.extend(m.message_id for m in page.messages)
        if not page.more:
            break
        assert page.messages
        after = page.messages[-1].message_id
    else:
        pytest.fail("sync never reported the end")
    assert seen == expected
