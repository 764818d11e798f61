"""Chat in the hub without an event loop: who gets what, when it is durable, and pushes."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from geopresence.core.chat_message_wire import PushRequest
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.store import MemoryStore
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import Record
from geopresence.wire.client_messages import Send, Sync
from tests.helpers import RecordingSink


class HeldJournal:
    """A journal whose records become durable only when the test says so."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._durable = 0

    def append(self, record: Record) -> int:
        self.records.append(record)
        return len(self.records)

    @property
    def messages(self) -> list[ChatMessage]:
        return [r for r in self.records if isinstance(r, ChatMessage)]

    @property
    def durable_seq(self) -> int:
        return self._durable

    def flush(self) -> None:
        self._durable = len(self.records)


def make_hub(journal: Any = None) -> tuple[Hub, RecordingSink, list[PushRequest]]:
    sink = RecordingSink()
    pushes: list[PushRequest] = []
    hub = Hub(HubSettings(), MemoryStore(), sink, journal=journal, push=pushes.append)
    hub.membership.add_friendship("alice", "bob", 0)
    return hub, sink, pushes


def connect(hub: Hub, sink: RecordingSink, conn: int, user: str, device: str) -> None:
    hub.open_session(conn, user, device, now=1)
    sink.take(conn)


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


def test_one_to_one_reaches_every_device_and_the_senders_other_devices() -> None:
    hub, sink, pushes = make_hub()
    connect(hub, sink, 1, "alice", "phone")
    connect(hub, sink, 2, "alice", "laptop")
    connect(hub, sink, 3, "bob", "phone")
    connect(hub, sink, 4, "bob", "laptop")
    for conn in (1, 2, 3, 4):
        sink.take(conn)  # presence chatter
    hub.handle(1, Send(id=7, to="bob", text="hi", client_msg_id="c1"), now=10)
    [sent] = sink.take(1)
    assert sent["type"] == "sent" and sent["re"] == 7 and sent["created_at"] == 10
    assert "duplicate" not in sent
    message_id = sent["message_id"]
    assert isinstance(message_id, str) and message_id.isdigit()
    for conn in (3, 4):
        assert sink.take(conn) == [
            {
                "type": "message",
                "message_id": message_id,
                "from": "alice",
                "to": "bob",
                "text": "hi",
                "created_at": 10,
            }
        ]
    [own] = sink.take(2)
    assert own["client_msg_id"] == "c1" and own["message_id"] == message_id
    assert pushes == []


def test_forbidden_and_too_large_sends_are_errors_and_store_nothing() -> None:
    hub, sink, _ = make_hub()
    hub.membership.set_group("g", ["bob"])
    connect(hub, sink, 1, "alice", "phone")
    hub.handle(1, Send(id=1, to="carol", text="hi"), now=2)
    hub.handle(1, Send(id=2, group="g", text="hi"), now=2)
    hub.handle(1, Send(id=3, group="nope", text="hi"), now=2)
    hub.handle(1, Send(id=4, to="bob", text="é" * 2049), now=2)  # 4098 bytes
    frames = sink.take(1)
    assert [(f["re"], f["code"]) for f in frames] == [
        (1, "forbidden"),
        (2, "forbidden"),
        (3, "forbidden"),
        (4, "too_large"),
    ]
    assert frames[1]["message"] == frames[2]["message"].replace("nope", "g")
    assert len(hub.chat.store) == 0
    hub.handle(1, Send(id=5, to="bob", text="é" * 2048), now=2)  # exactly 4096 bytes
    assert types(sink.take(1)) == ["sent"]


def test_resend_with_the_same_client_msg_id_is_idempotent() -> None:
    hub, sink, _ = make_hub()
    connect(hub, sink, 1, "alice", "phone")
    connect(hub, sink, 3, "bob", "phone")
    sink.take(1)
    hub.handle(1, Send(id=1, to="bob", text="hi", client_msg_id="c1"), now=2)
    [first] = sink.take(1)
    hub.handle(1, Send(id=2, to="bob", text="hi", client_msg_id="c1"), now=3)
    [again] = sink.take(1)
    assert again["message_id"] == first["message_id"] and again["re"] == 2
    assert again["created_at"] == 2 and again["duplicate"] is True
    assert len(hub.chat.store) == 1
    assert types(sink.take(3)) == ["message"]  # delivered once
    hub.handle(3, Send(id=3, to="alice", text="hi", client_msg_id="c1"), now=4)  # bob's own key
    assert sink.take(3)[0]["message_id"] != first["message_id"]
    hub.membership.remove_friendship("alice", "bob")
    sink.take(1)
    hub.handle(1, Send(id=4, to="bob", text="hi", client_msg_id="c1"), now=5)
    [retry] = sink.take(1)  # a retry after the friendship ended still gets its answer
    assert retry["message_id"] == first["message_id"] and retry["duplicate"] is True
    hub.handle(1, Send(id=5, to="bob", text="hi", client_msg_id="c2"), now=5)
    assert sink.take(1)[0]["code"] == "forbidden"
    hub.membership.add_friendship("alice", "carol", 6)
    sink.take(1)
    hub.handle(1, Send(id=6, to="carol", text="hi", client_msg_id="c1"), now=6)
    [reused] = sink.take(1)  # the same key for another message: refused, not swallowed
    assert reused["code"] == "bad_request" and "different message" in reused["message"]
    assert hub.chat.duplicates == 2


def test_nothing_is_delivered_or_acked_before_the_journal_says_durable() -> None:
    journal = HeldJournal()
    hub, sink, _ = make_hub(journal)
    connect(hub, sink, 1, "alice", "phone")
    connect(hub, sink, 3, "bob", "phone")
    sink.take(1)
    hub.handle(1, Send(id=1, to="bob", text="one", client_msg_id="c1"), now=2)
    hub.handle(1, Send(id=2, to="bob", text="two"), now=2)
    hub.handle(1, Send(id=3, to="bob", text="one", client_msg_id="c1"), now=2)  # resend
    hub.handle(3, Sync(id=4), now=2)
    assert sink.take(1) == []
    assert sink.take(3) == [{"type": "messages", "re": 4, "messages": [], "more": False}]
    assert len(journal.messages) == 2 and hub.chat.pending_count == 2
    journal.flush()
    hub.journal_advanced(now=3)
    acks = sink.take(1)  # in the order asked (the resend is acked with its original)
    assert [(f["re"], f.get("duplicate")) for f in acks] == [(1, None), (2, None), (3, True)]
    assert acks[0]["message_id"] == acks[2]["message_id"] < acks[1]["message_id"]
    assert [f["text"] for f in sink.take(3)] == ["one", "two"]
    assert hub.chat.pending_count == 0 and hub.chat.duplicates == 1


def test_group_messages_follow_membership() -> None:
    hub, sink, pushes = make_hub()
    hub.membership.set_group("g", ["alice", "bob", "carol"])
    connect(hub, sink, 1, "alice", "phone")
    connect(hub, sink, 3, "bob", "phone")
    sink.take(1)
    hub.handle(1, Send(id=1, group="g", text="before"), now=2)
    assert [p.recipients for p in pushes] == [("carol",)]  # no connected device
    assert sink.take(3)[0]["group"] == "g"
    hub.membership.add_member("g", "dave")
    connect(hub, sink, 5, "dave", "phone")
    hub.handle(1, Send(id=2, group="g", text="after"), now=3)
    assert [f["text"] for f in sink.take(5)] == ["after"]
    hub.handle(5, Sync(id=3), now=3)
    [reply] = sink.take(5)
    assert [m["text"] for m in reply["messages"]] == ["after"]  # nothing from before it joined
    hub.membership.remove_member("g", "bob")
    sink.take(3)
    hub.handle(1, Send(id=4, group="g", text="without bob"), now=4)
    assert sink.take(3) == []
    hub.handle(3, Sync(id=5), now=4)
    assert sink.take(3)[0]["messages"] == []
    hub.handle(3, Send(id=6, group="g", text="let me in"), now=4)
    assert sink.take(3)[0]["code"] == "forbidden"


def test_a_group_message_is_one_push_request_for_all_offline_members() -> None:
    hub, sink, pushes = make_hub()
    hub.membership.set_group("big", ["alice"] + [f"m{i}" for i in range(1000)])
    connect(hub, sink, 1, "alice", "phone")
    connect(hub, sink, 2, "m0", "phone")
    hub.handle(1, Send(id=1, group="big", text="all hands"), now=2)
    [push] = pushes
    assert sorted(push.recipients) == sorted(f"m{i}" for i in range(1, 1000))
    assert hub.chat.pushes == 999


def test_push_goes_to_recipients_without_a_connection_only() -> None:
    hub, sink, pushes = make_hub()
    connect(hub, sink, 1, "alice", "phone")
    hub.handle(1, Send(id=1, to="bob", text="are you there?"), now=2)
    [push] = pushes
    assert push.recipients == ("bob",) and push.message.text == "are you there?"
    connect(hub, sink, 3, "bob", "phone")
    hub.handle(1, Send(id=2, to="bob", text="now?"), now=3)
    assert len(pushes) == 1


def test_sync_shows_client_msg_id_only_on_the_readers_own_messages() -> None:
    hub, sink, _ = make_hub()
    connect(hub, sink, 1, "alice", "phone")
    connect(hub, sink, 3, "bob", "phone")
    hub.handle(1, Send(id=1, to="bob", text="a", client_msg_id="ca"), now=2)
    hub.handle(3, Send(id=2, to="alice", text="b", client_msg_id="cb"), now=3)
    for conn, user in ((1, "alice"), (3, "bob")):
        sink.take(conn)
        hub.handle(conn, Sync(id=9, after=0, limit=10), now=4)
        [reply] = sink.take(conn)
        assert [m["text"] for m in reply["messages"]] == ["a", "b"]
        for m in reply["messages"]:
            assert ("client_msg_id" in m) == (m["from"] == user)


def test_a_sync_page_stops_at_the_byte_budget_and_paging_loses_nothing() -> None:
    hub, sink, _ = make_hub()
    connect(hub, sink, 1, "alice", "phone")
    connect(hub, sink, 3, "bob", "phone")
    for i in range(10):
        hub.handle(1, Send(id=i, to="bob", text=f"{i}" + "x" * 300), now=2 + i)
    sink.take(3)
    hub.chat.sync_page_bytes = 1000  # three entries of ~400 bytes do not fit
    after, texts, pages = "0", [], 0
    while True:
        hub.handle(3, Sync(id="s", after=int(after), limit=100), now=20)
        [reply] = sink.take(3)
        assert reply["type"] == "messages" and reply["re"] == "s"
        assert 1 <= len(reply["messages"]) <= 2
        texts += [m["text"][0] for m in reply["messages"]]
        pages += 1
        if not reply["more"]:
            break
        after = reply["messages"][-1]["message_id"]
    assert texts == [str(i) for i in range(10)] and pages == 5
    hub.chat.sync_page_bytes = 10  # smaller than one entry: still one per page
    hub.handle(3, Sync(id=1, after=0, limit=100), now=20)
    [reply] = sink.take(3)
    assert len(reply["messages"]) == 1 and reply["more"] is True


def test_sync_limit_is_capped_and_applied() -> None:
    hub, sink, _ = make_hub()
    connect(hub, sink, 1, "alice", "phone")
    for i in range(3):
        hub.handle(1, Send(id=i, to="bob", text="t"), now=2)
    sink.take(1)
    hub.handle(1, Sync(id=1, after=0, limit=2), now=3)
    [reply] = sink.take(1)
    assert len(reply["messages"]) == 2 and reply["more"] is True
    hub.handle(1, Sync(id=2, after=0, limit=10**9), now=3)
    [reply] = sink.take(1)
    assert len(reply["messages"]) == 3 and reply["more"] is False


USERS = ["ann", "ben", "cat", "dan"]
FRIENDS = [("ann", "ben"), ("ann", "cat"), ("ben", "cat"), ("cat", "dan")]

chat_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("send"),
            st.sampled_from(USERS),
            st.one_of(st.sampled_from(USERS), st.just("#g")),
            st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
        ),
        st.tuples(st.just("join"), st.sampled_from(USERS)),
        st.tuples(st.just("leave"), st.sampled_from(USERS)),
        st.tuples(st.just("flush")),
    ),
    max_size=40,
)


@given(steps=chat_steps)
def test_model_every_user_syncs_exactly_what_it_may_see(steps: list[tuple[Any, ...]]) -> None:
    """Random sends (with resends), membership changes and journal flushes: after the last
    flush, each user's sync is exactly the model's view, in id order; acks never disagree
    about an id; live frames never repeat an id on a connection."""
    journal = HeldJournal()
    sink = RecordingSink()
    hub = Hub(HubSettings(), MemoryStore(), sink, journal=journal)
    for a, b in FRIENDS:
        hub.membership.add_friendship(a, b, 0)
    hub.membership.set_group("g", [])
    conn_of = {user: n for n, user in enumerate(USERS, start=1)}
    for user, conn in conn_of.items():
        hub.open_session(conn, user, "d", now=0)
    member_since: dict[str, int] = {}  # user -> highest id issued when it joined
    accepted: dict[tuple[str, str], ChatMessage] = {}
    request = 0
    now = 1.0
    for step in steps:
        now += 0.5
        if step[0] == "send":
            _, sender, target, key = step
            request += 1
            fields: dict[str, Any] = {"group": "g"} if target == "#g" else {"to": target}
            hub.handle(
                conn_of[sender],
                Send(id=request, text=f"t{request}", client_msg_id=key, **fields),
                now,
            )
            if key is not None and (sender, key) not in accepted and journal.messages:
                last = journal.messages[-1]
                if last.sender == sender and last.client_msg_id == key:
                    accepted[(sender, key)] = last
        elif step[0] == "join":
            if hub.membership.add_member("g", step[1]):
                member_since[step[1]] = max((r.message_id for r in journal.messages), default=0)
        elif step[0] == "leave":
            if hub.membership.remove_member("g", step[1]):
                del member_since[step[1]]
        else:
            journal.flush()
            hub.journal_advanced(now)
    journal.flush()
    hub.journal_advanced(now)
    stored = {r.message_id: r for r in journal.messages}
    assert len(stored) == len(journal.messages)  # no id issued twice
    assert [r.message_id for r in journal.messages] == sorted(stored)
    # a client_msg_id is stored once per sender
    keys = [(r.sender, r.client_msg_id) for r in journal.messages if r.client_msg_id]
    assert len(keys) == len(set(keys))
    acks: dict[int, set[str]] = {}
    for user, conn in conn_of.items():
        live: list[str] = []
        for frame in sink.take(conn):
            if frame["type"] == "sent":
                acks.setdefault(frame["re"], set()).add(frame["message_id"])
            elif frame["type"] == "message":
                live.append(frame["message_id"])
        assert len(live) == len(set(live))
        hub.handle(conn, Sync(id="s", after=0, limit=1000), now)
        [reply] = sink.take(conn)
        seen = [int(m["message_id"]) for m in reply["messages"]]
        expected = [
            r.message_id
            for r in journal.messages
            if (r.to is not None and user in (r.sender, r.to))
            or (r.group is not None and user in member_since and member_since[user] < r.message_id)
        ]
        assert seen == expected
    assert all(len(ids) == 1 for ids in acks.values())
    assert set(accepted.values()) <= set(stored.values())
