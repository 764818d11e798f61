"""The shared state in Redis, on a real Redis and a 3-master Redis Cluster: what one node's
journal writes, a node that starts later loads, exactly; and the feed reaches the others."""

from __future__ import annotations

from typing import Any

import coredis
import pytest
import trio

from geopresence.cluster import redis_load
from geopresence.cluster.chat_reads import read_sync
from geopresence.cluster.group_state import load_group
from geopresence.cluster.redis_feed import RedisFeed
from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_load import (
    load_locations,
    load_state,
    read_friends,
    read_groups,
    read_groups_of,
    read_kept,
    read_settings,
)
from geopresence.cluster.redis_state import RedisJournal
from geopresence.cluster.state_writes import write
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.replication import FeedOp, LocationSet, LogoutRequested
from geopresence.core.store import MemoryStore, UserSettings
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import Befriended, GroupSet, SettingsChanged
from geopresence.storage.snapshot import capture
from geopresence.wire.client_messages import LocationUpdate, Send
from tests.helpers import RecordingSink
from tests.redis_server import AnyRedis, redis_server

NOW = 1_800_000_000.0


def comparable(hub: Hub) -> dict[str, Any]:
    snapshot = capture(hub.state, 0, NOW, hub.chat.pending_messages())
    return {
        "friendships": sorted(tuple(sorted(pair)) for pair in snapshot.friendships),
        "groups": snapshot.groups,
        "settings": sorted(snapshot.settings, key=lambda s: s.user),
    }


class JournalReplicator:
    """Replicated ops go through the journal (as ``ClusterLink`` does); devices are ignored."""

    def __init__(self, journal: RedisJournal) -> None:
        self.journal = journal

    def replicate(self, op: FeedOp) -> None:
        # As ClusterLink: locations of users hidden from strangers (all here) stay off the feed.
        self.journal.replicate(op, feed=not isinstance(op, LocationSet))

    def device_alive(self, user: str, device: str, at: float) -> None:
        pass

    def device_ended(
        self, user: str, device: str, last_active_at: float | None, *, logout: bool
    ) -> None:
        pass

    def logout(self, user: str, device: str | None, last_active_at: float | None) -> None:
        pass


async def write_then_load(client: Any) -> None:
    keys = Keys("t")
    journal = RedisJournal(client, keys, node_id=1)
    first = Hub(
        HubSettings(node_id=1),
        MemoryStore(),
        RecordingSink(),
        journal=journal,
        replicator=JournalReplicator(journal),
    )
    journal.on_durable = lambda: first.journal_advanced(NOW)
    written: list[Any] = []
    versions: list[Any] = []

    # What ClusterLink publishes, with what the writer returned (settings: their version).
    def on_written(record: Any, version: Any) -> None:
        written.append(record)
        versions.append(version)

    journal.on_written = on_written
    keys.location_ttl = first.settings.location_ttl  # as ClusterLink passes it
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        first.membership.add_friendship("alice", "bob", NOW)
        first.membership.add_friendship("alice", "carol", NOW)
        first.membership.add_friendship("dave", "erin", NOW)
        first.membership.remove_friendship("dave", "erin")
        first.membership.set_group("hikers", ["alice", "bob", "carol"])
        first.open_session(1, "alice", "phone", NOW)
        first.handle(1, Send(id=1, to="bob", text="hi bob", client_msg_id="c1"), NOW)
        first.handle(1, Send(id=2, group="hikers", text="hi all"), NOW + 1)
        first.membership.remove_member("hikers", "carol")
        first.membership.add_member("hikers", "dave")  # joins after both messages: reads neither
        first.membership.add_member("climbers", "dave")
        first.membership.set_group("gone", ["x"])
        first.handle(1, Send(id=3, group="hikers", text="later"), NOW + 2)
        first.membership.delete_group("gone")
        first.nearby.change_settings("alice", UserSettings(radius_m=1200.0), NOW)
        first.nearby.change_settings("bob", UserSettings(visible_to_strangers=True), NOW)
        first.nearby.change_settings("bob", UserSettings(), NOW)  # back to the defaults
        first.handle(1, LocationUpdate(lat=37.5, lon=127.0, ts=None), NOW + 3)
        with trio.fail_after(10):
            await journal.flush()
        assert first.chat.pending_count == 0 and journal.durable_seq == journal.last_seq
        nursery.cancel_scope.cancel()
    # Settings are not on the feed: once written, they go to the nodes keeping them.
    pairs = list(zip(written, versions, strict=True))
    kept = [(r, v) for r, v in pairs if isinstance(r, SettingsChanged)]
    assert [r for r, _ in kept] == [
        SettingsChanged("alice", True, 1200.0, False),
        SettingsChanged("bob", True, None, True),
        SettingsChanged("bob", True, None, False),
    ]
    assert kept[1][1] < kept[2][1]  # each change above the last
    # Nor are friendship and group changes: once written, their users' and groups' nodes
    # hear a notice (a GroupSet says whom it added).
    changes = [(type(r).__name__, v) for r, v in pairs]
    assert changes[:7] == [
        ("Befriended", None),
        ("Befriended", None),
        ("Befriended", None),
        ("Unfriended", None),
        ("GroupSet", ["alice", "bob", "carol"]),
        ("MemberRemoved", None),
        ("MemberAdded", None),
    ]
    assert ("GroupSet", ["x"]) in changes and ("GroupDeleted", None) in changes
    # Nor messages (published as written, chat_writes), nor locations: the feed is empty.
    assert await client.xlen(keys.feed) == 0

    second = Hub(HubSettings(node_id=2), MemoryStore(), RecordingSink())
    counts = await load_state(client, keys, second)
    # A starting node holds no friendship: it reads a user's as a session or request of the
    # user needs them (FriendSlices).
    assert "friendships" not in counts and second.store.friendship_count() == 0
    assert await read_friends(client, keys, ["alice", "dave", "nobody"]) == {
        "alice": ["bob", "carol"],
        "dave": [],
        "nobody": [],
    }
    for user, friends in (await read_friends(client, keys, ["alice", "bob", "carol"])).items():
        second.membership.load_friends(user, friends)
    # Nor any settings: a node reads those its sessions need (KeptSettings).
    assert list(second.store.settings_items()) == []
    for user, settings in (await read_settings(client, keys, ["alice", "bob", "carol"])).items():
        second.store.put_settings(user, settings)
    # Nor any group: a node reads those of its sessions' users (GroupSlices).
    assert counts["groups"] == 0 and list(second.store.groups()) == []
    found = await read_groups_of(client, keys, ["dave", "nobody"])
    assert {user: sorted(groups) for user, groups in found.items()} == {
        "dave": ["climbers", "hikers"],
        "nobody": [],
    }
    read = await read_groups(client, keys, ["hikers", "climbers", "gone"])
    assert sorted(read) == ["climbers", "hikers"]  # "gone" was deleted
    for group, joined in read.items():
        load_group(second.state, group, joined)
    assert comparable(second) == comparable(first)
    # Nor any message: a sync reads them (chat_reads), each reader its own.
    assert "messages" not in counts and len(second.chat.store) == 0

    async def texts(user: str, groups: dict[str, int]) -> list[str]:
        found = await read_sync(client, keys, user, groups, 0, 2**63, 10)
        return [message.text for message in found]

    def marks(user: str) -> dict[str, int]:
        found = {g: second.chat.store.joined_after(g, user) for g in second.store.groups_of(user)}
        return {group: mark for group, mark in found.items() if mark is not None}

    assert await texts("bob", marks("bob")) == ["hi bob", "hi all", "later"]
    assert await texts("alice", marks("alice")) == ["hi bob", "hi all", "later"]
    assert await texts("dave", marks("dave")) == ["later"]  # joined after the first two
    assert await texts("carol", marks("carol")) == []  # no longer a member
    # A starting node holds no location: it reads them as sessions that need them open
    # (ClusterLink.open_view).
    assert "locations" not in counts and second.nearby.locations.get("alice", NOW + 4) is None
    assert await load_locations(client, keys, ["bob", "alice"]) == [
        LocationSet("alice", 37.5, 127.0, NOW + 3, NOW + 3)
    ]
    # gp:loc:{alice} expires in Redis when the TTL from its acceptance on the origin ends.
    expires = await client.pexpiretime(keys.location("alice"))
    assert expires.timestamp() == NOW + 3 + first.settings.location_ttl


async def test_what_one_node_writes_another_loads(
    any_redis: AnyRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two keys to a round trip: every read spans several pipelines, in order.
    monkeypatch.setattr(redis_load, "PIPELINE", 2)
    await write_then_load(any_redis)
    if isinstance(any_redis, coredis.RedisCluster):
        # Each user's keys hash to their own slot: spread over the masters.
        slots = {
            await any_redis.cluster_keyslot(key)
            for key in ("t:friends:{alice}", "t:friends:{bob}", "t:friends:{carol}")
        }
        assert len(slots) == 3


async def test_a_reader_left_behind_by_trimming_says_so() -> None:
    from coredis import PureToken

    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client:
            keys = Keys("trim")
            writer = RedisFeed(client, keys, node_id=1)
            await writer.append(LocationSet("alice", 1.0, 2.0, 3.0, 4.0), 1)
            read_up_to = await writer.last_id()
            for uid in range(2, 22):
                await writer.append(LocationSet("alice", 1.0, 2.0, 3.0, 4.0), uid)
            up_to_date = RedisFeed(client, keys, node_id=2)
            await up_to_date._check_gap(await writer.last_id())
            assert not up_to_date.lost
            behind = RedisFeed(client, keys, node_id=3)
            await behind._check_gap(read_up_to)
            assert not behind.lost  # nothing trimmed yet: it can read on
            await client.xtrim(keys.feed, PureToken.MAXLEN, 5)
            await behind._check_gap(read_up_to)
            assert behind.lost


async def test_a_change_appended_twice_by_a_retried_write_is_applied_once() -> None:
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client:
            keys = Keys("dup")
            writer = RedisFeed(client, keys, node_id=1)
            first = LogoutRequested("alice", None)
            second = LogoutRequested("bob", None)
            await writer.append(first, 7)
            await writer.append(first, 7)  # the pipeline's reply was lost: written again
            await writer.append(second, 8)
            applied: list[FeedOp] = []
            reader = RedisFeed(client, keys, node_id=2)
            async with trio.open_nursery() as nursery:
                await nursery.start(reader.run, applied.append, "0-0")
                with trio.fail_after(10):
                    while len(applied) < 2:
                        await trio.sleep(0.01)
                await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
            assert applied == [first, second]


async def test_messages_are_stored_once_in_batches_and_published_not_fed(
    any_redis: AnyRedis,
) -> None:
    """Many messages queued at once go out together; a resend of one already stored
    (through another node: another id) is not stored, is reported with the stored message,
    and is not published; the others are, in order. None reaches the feed, and each 1:1
    conversation is listed for both parties (what a sync reads)."""

    keys = Keys("once")
    first = RedisJournal(any_redis, keys, 1)
    second = RedisJournal(any_redis, keys, 2)
    stored_before: list[tuple[int, int | None]] = []
    second.on_stored_before = lambda seq, original: stored_before.append(
        (seq, None if original is None else original.message_id)
    )
    published: list[int] = []

    def publications(message: ChatMessage) -> list[tuple[str, str, bytes]]:
        published.append(message.message_id)
        command = "spublish" if isinstance(any_redis, coredis.RedisCluster) else "publish"
        return [(command, "once-test", b"%d" % message.message_id)]

    second.chat.publications = publications

    def message(message_id: int, sender: str, cmid: str | None) -> ChatMessage:
        return ChatMessage(message_id, sender, "hi", 1.0, to="zoe", client_msg_id=cmid)

    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await nursery.start(second.run)
        first.append(message(10, "bob", "b1"))
        await first.flush()
        start = await second.feed.last_id()
        seqs = [second.append(message(100 + i, f"u{i}", "m")) for i in range(50)]
        resent = second.append(message(20, "bob", "b1"))  # bob's resend, via node 2
        seqs.append(second.append(message(200, "amy", "a1")))
        seqs.append(second.append(message(300, "amy", None)))
        elsewhere = ChatMessage(400, "bob", "hi", 1.0, to="amy", client_msg_id="b1")
        refused = second.append(elsewhere)  # bob's b1 was used with zoe: refused
        await second.flush()
        assert stored_before == [(resent, 10), (refused, None)]
        assert published == [*range(100, 150), 200, 300]
        assert await any_redis.zcard(keys.of("chat", "dm:amy:bob")) == 0
        assert await any_redis.xrange(keys.feed, f"({start}", "+") == ()
        assert second.durable_seq == refused
        assert await any_redis.smembers(keys.of("chats_of", "zoe")) == {
            b"dm:amy:zoe",
            b"dm:bob:zoe",
            *(f"dm:u{i}:zoe".encode() for i in range(50)),
        }
        assert await any_redis.smembers(keys.of("chats_of", "amy")) == {b"dm:amy:zoe"}
        # Node 2's last id: a restart with its clock behind never issues below it.
        assert await any_redis.get(keys.last_id(2)) == b"400"
        nursery.cancel_scope.cancel()


async def test_a_feed_reader_has_read_up_to_the_end_once_started() -> None:
    """A starting node serves only once it has read the feed up to its end as it was (every
    live node's latest chat watermark is then known), however long the backlog."""
    from geopresence.cluster import redis_feed

    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client:
            keys = Keys("catchup")
            writer = RedisFeed(client, keys, node_id=1)
            start = await writer.last_id()
            for uid in range(1, redis_feed.CATCH_UP_BATCH + 251):  # more than one read
                await writer.append(LocationSet(f"u{uid}", 1.0, 2.0, 3.0, 4.0), uid)
            reader = RedisFeed(client, keys, node_id=2)
            applied: list[FeedOp] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(reader.run, applied.append, start)
                assert len(applied) == redis_feed.CATCH_UP_BATCH + 250
                nursery.cancel_scope.cancel()


class FlakyRedis:
    """A client whose first ``failures`` pipelines fail (Redis unreachable), then the real one."""

    def __init__(self, client: Any, failures: int) -> None:
        self.client = client
        self.failures = failures

    def pipeline(self, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis is down")
        return self.client.pipeline(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


async def test_a_first_write_that_fails_is_retried(autojump_clock: Any) -> None:
    """The journal's very first write failing (Redis down as the node starts) is retried
    a second later, like any other: nothing is lost, the acks follow."""
    from geopresence.model.chat_message import ChatMessage
    from geopresence.model.records import Befriended

    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            journal = RedisJournal(FlakyRedis(client, 2), Keys("flaky"), 1)
            async with trio.open_nursery() as nursery:
                await nursery.start(journal.run)
                journal.append(Befriended("alice", "bob"))
                once = ChatMessage(7, "alice", "hi", 1.0, to="bob", client_msg_id="c1")
                last = journal.append(once)
                with trio.fail_after(10):
                    await journal.flush()
                assert journal.write_errors == 2
                assert journal.durable_seq == last
                assert await client.sismember(Keys("flaky").of("friends", "alice"), "bob")
                nursery.cancel_scope.cancel()


async def test_messages_with_client_ids_survive_redis_forgetting_the_script(
    autojump_clock: Any,
) -> None:
    """Redis restarted (its scripts gone): the batch fails once, the script is loaded again,
    and the retry stores the message."""
    from geopresence.model.chat_message import ChatMessage

    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            journal = RedisJournal(client, Keys("noscript"), 1)
            async with trio.open_nursery() as nursery:
                await nursery.start(journal.run)
                journal.append(ChatMessage(1, "alice", "one", 1.0, to="bob", client_msg_id="c1"))
                await journal.flush()
                await client.script_flush()
                last = journal.append(
                    ChatMessage(2, "alice", "two", 1.0, to="bob", client_msg_id="c2")
                )
                with trio.fail_after(10):
                    await journal.flush()
                assert journal.write_errors == 1
                assert journal.durable_seq == last
                nursery.cancel_scope.cancel()


async def test_settings_are_stored_with_a_rising_version_and_read_back_exactly() -> None:
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            keys = Keys("t")
            # A key an older version wrote has no version: any change is newer.
            legacy = b'{"share_location":false,"radius_m":null,"visible_to_strangers":true}'
            await client.set(keys.of("settings", "ann"), legacy)
            [(settings, version)] = (await read_kept(client, keys, (), ["ann"]))[1].values()
            assert (settings, version) == (UserSettings(False, None, True), 0)
            exact = SettingsChanged("ann", True, 1234.567890123456, False)
            first = await write(client, keys, exact)
            second = await write(client, keys, SettingsChanged("ann", True, None, False))
            assert 0 < first < second
            read = await read_kept(client, keys, (), ["ann", "bob"])
            assert read[1] == {"ann": (UserSettings(), second), "bob": (UserSettings(), 0)}
            # Not listed among the users with settings of their own: the defaults.
            assert await client.smembers(keys.settings_users) == set()
            await write(client, keys, exact)
            read = await read_kept(client, keys, (), ["ann"])
            assert read[1]["ann"][0] == UserSettings(True, 1234.567890123456, False)


class CountingPipelines:
    """A client that counts its pipelines (round trips)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pipelines = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def pipeline(self, **kwargs: Any) -> Any:
        self.pipelines += 1
        return self.client.pipeline(**kwargs)


async def test_settings_changes_share_a_round_trip() -> None:
    """From a review: 20 users change their settings at once, then a friendship is made:
    one pipeline for the settings (with their versions), one for the friendship, as when
    settings were blind writes; not one round trip each, holding the later acks."""
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            counting = CountingPipelines(client)
            journal = RedisJournal(counting, Keys("burst"), 1)
            versions: list[int | None] = []
            journal.on_written = lambda record, version: versions.append(version)
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    journal.append(SettingsChanged(f"u{i}", False, None, False))
                last = journal.append(Befriended("ann", "ben"))
                await nursery.start(journal.run)
                with trio.fail_after(10):
                    while journal.durable_seq < last:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
    assert len(versions) == 21 and counting.pipelines == 2  # the friendship's: None
    assert versions[-1] is None


class LosesOneWrite:
    """A client whose first write of ``command`` to a key naming ``part`` fails (a
    connection lost part way through a write), then the real one; and whose first pipeline
    fails when ``fail_pipeline`` (the notices' publish)."""

    def __init__(self, client: Any, command: str, part: str, fail_pipeline: bool = False) -> None:
        self.client = client
        self.command = command
        self.part = part
        self.failed = False
        self.fail_pipeline = fail_pipeline

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.client, name)
        if name == "pipeline" and self.fail_pipeline:
            self.fail_pipeline = False
            raise ConnectionError("redis connection lost")
        if name != self.command:
            return real

        async def once(key: Any, *args: Any) -> Any:
            if not self.failed and self.part in str(key):
                self.failed = True
                raise ConnectionError("redis connection lost")
            return await real(key, *args)

        return once


@pytest.mark.parametrize(
    "where", ["groups_of", "group:", "notices"], ids=["before", "after", "publishing"]
)
async def test_a_retried_group_set_announces_every_member_it_adds(
    where: str, autojump_clock: Any
) -> None:
    """From a review: a GroupSet written part way (its connection lost after a member's
    groups_of, or after its place in the group, or while its notices are published) is
    retried: every member it adds is still announced, and in its groups_of."""
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            keys = Keys("t")
            await client.hset(keys.of("group", "hikers"), {"carol": "1"})
            flaky = (
                LosesOneWrite(client, "", "", fail_pipeline=True)
                if where == "notices"
                else LosesOneWrite(client, "sadd" if where == "groups_of" else "hset", where)
            )
            journal = RedisJournal(flaky, keys, 1)
            announced: list[Any] = []

            def notices(op: Any, added: Any) -> list[tuple[str, str, bytes]]:
                announced.append(added)
                return [("publish", "n", b"x")]

            journal.notices = notices
            async with trio.open_nursery() as nursery:
                await nursery.start(journal.run)
                journal.append(GroupSet("hikers", ["alice", "bob", "carol"], 5))
                with trio.fail_after(10):
                    await journal.flush()
                nursery.cancel_scope.cancel()
            assert journal.write_errors == 1
            assert announced[-1] == ["alice", "bob"]  # not carol: she was there
            for user in ("alice", "bob"):
                assert await client.sismember(keys.of("groups_of", user), "hikers")


async def test_a_big_group_s_notices_are_all_published() -> None:
    """From a review: a group of thousands of members announces each one it adds; the
    journal publishes the notices itself, in pipelines, before the change counts as written
    (not through the broker's queue, which drops what is over its cap)."""
    members = [f"u{i:05d}" for i in range(2500)]
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            journal = RedisJournal(client, Keys("t"), 1)
            journal.notices = lambda op, added: [("publish", "n", b"x")] * (1 + len(added or ()))
            async with trio.open_nursery() as nursery:
                await nursery.start(journal.run)
                last = journal.append(GroupSet("big", members, 5))
                with trio.fail_after(30):
                    while journal.durable_seq < last:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
            stats: Any = await client.info("commandstats")
    assert stats["cmdstat_publish"]["calls"] == 2501
