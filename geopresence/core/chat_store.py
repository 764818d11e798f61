"""The chat message store: sorted per user and per group, synced after a cursor (sans-I/O).

The design keeps chat history in a key-value store keyed by message id and reads it with
``WHERE message_id > cur_max_message_id``. Here that is two kinds of sorted index over one
table of messages:

- ``inbox[u]``: the ids of u's 1:1 messages, both directions (the merge of all of u's 1:1
  conversations, kept incrementally, so a sync never visits conversations one by one);
- ``group_log[g]``: the ids of group g's messages.

A sync for user u after id A merges ``inbox[u]`` with the logs of u's groups, each entered
by bisection after A: O(G log n + k log G) for G groups and k messages returned, never a
scan of history.

Who sees a group message: the members of the group at the time of the read who were members
when it was sent. Each membership records the last id issued when it began (``join``), and
a member reads only what came after it; someone removed from a group reads none of it.
Nothing older than a membership is shown to it, as in Signal or WhatsApp.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator

import attrs
from sortedcontainers import SortedList

from geopresence.model.chat_message import ChatMessage


@attrs.frozen
class SyncPage:
    """Messages after a cursor, ascending by id; ``more`` when the page was cut short."""

    messages: list[ChatMessage]
    more: bool


class ChatStore:
    """Every stored message, with the per-user and per-group indexes described above.

    Contract: ``add`` takes messages in ascending id order (ids come from one
    ``SnowflakeGenerator`` and are committed in journal order), so the table's insertion
    order is id order; an id at or below the last one added is a ValueError.
    ``find_client_msg`` answers whether a sender's ``client_msg_id`` was already stored, for
    idempotent resends.
    """

    def __init__(self) -> None:
        self._messages: dict[int, ChatMessage] = {}
        self._inbox: dict[str, SortedList] = {}
        self._group_log: dict[str, SortedList] = {}
        self._group_sent: dict[str, list[int]] = {}
        """sender -> the ids of its group messages, ascending (ids of deleted groups' messages
        may linger: readers skip ids no longer stored). What a forget and an export need."""
        self._by_client_id: dict[tuple[str, str], int] = {}
        self._joined: dict[tuple[str, str], int] = {}
        self._last_added = 0
        self._in_order = True

    def __len__(self) -> int:
        return len(self._messages)

    def get(self, message_id: int) -> ChatMessage | None:
        return self._messages.get(message_id)

    def add(self, message: ChatMessage) -> None:
        """Store ``message`` and index it for its readers."""
        if message.message_id <= self._last_added:
            raise ValueError(
                f"message {message.message_id} is not after the last one ({self._last_added})"
            )
        self._store(message)

    def insert(self, message: ChatMessage) -> bool:
        """Store ``message`` unless its id is already stored, in any id order (messages
        other nodes committed); False if it was there."""
        if message.message_id in self._messages:
            return False
        if message.message_id < self._last_added:
            self._in_order = False
        self._store(message)
        return True

    def _store(self, message: ChatMessage) -> None:
        self._last_added = max(self._last_added, message.message_id)
        self._messages[message.message_id] = message
        if message.group is not None:
            self._group_log.setdefault(message.group, SortedList()).add(message.message_id)
            sent = self._group_sent.setdefault(message.sender, [])
            if not sent or sent[-1] < message.message_id:
                sent.append(message.message_id)
            else:  # another node's message, arriving out of id order
                bisect.insort(sent, message.message_id)
        for user in message.readers():
            self._inbox.setdefault(user, SortedList()).add(message.message_id)
        if message.client_msg_id is not None:
            self._by_client_id[(message.sender, message.client_msg_id)] = message.message_id

    def find_client_msg(self, sender: str, client_msg_id: str) -> ChatMessage | None:
        """The message ``sender`` stored with ``client_msg_id``, if any."""
        message_id = self._by_client_id.get((sender, client_msg_id))
        return None if message_id is None else self._messages[message_id]

    # ------------------------------------------------------------ group membership

    def join(self, group: str, user: str, after_id: int) -> None:
        """``user`` became a member of ``group`` when ``after_id`` was the last id issued: it
        reads the group's messages with greater ids. A repeated join keeps the first."""
        self._joined.setdefault((group, user), after_id)

    def leave(self, group: str, user: str) -> None:
        """``user`` is no longer a member: a later ``join`` starts a new membership."""
        self._joined.pop((group, user), None)

    def delete_group(self, group: str, members: Iterable[str]) -> int:
        """Forget ``group``'s messages and memberships; returns how many messages went."""
        for user in members:
            self._joined.pop((group, user), None)
        log = self._group_log.pop(group, None)
        if log is None:
            return 0
        for message_id in log:
            message = self._messages.pop(message_id)
            if message.client_msg_id is not None:
                self._by_client_id.pop((message.sender, message.client_msg_id), None)
        return len(log)

    def forget(self, user: str) -> int:
        """Delete every message ``user`` sent or received 1:1 and every group message it
        sent; returns how many went. Its join marks go with its memberships (``leave``)."""
        ids = set(self._inbox.pop(user, ()))
        ids.update(self._group_sent.pop(user, ()))
        removed = 0
        for message_id in ids:
            message = self._messages.pop(message_id, None)
            if message is None:
                continue  # a deleted group's message
            removed += 1
            if message.group is not None:
                log = self._group_log.get(message.group)
                if log is not None:
                    log.discard(message_id)
            for reader in message.readers():
                inbox = self._inbox.get(reader)
                if inbox is not None:
                    inbox.discard(message_id)
                    if not inbox:
                        del self._inbox[reader]
            if message.client_msg_id is not None:
                self._by_client_id.pop((message.sender, message.client_msg_id), None)
        return removed

    def ids_of(self, user: str, groups: Iterable[str]) -> list[int]:
        """The ids of every message ``user`` sent or can read, ascending: its 1:1 messages,
        the group messages it sent, and those of ``groups`` it reads (an export's list)."""
        ids = set(self._inbox.get(user, ()))
        ids.update(i for i in self._group_sent.get(user, ()) if i in self._messages)
        ids.update(m.message_id for m in self.read_after(user, groups, 0) if m.group is not None)
        return sorted(ids)

    def joined_after(self, group: str, user: str) -> int | None:
        """The id after which ``user`` reads ``group`` (None: not a member here)."""
        return self._joined.get((group, user))

    # ------------------------------------------------------------ reading

    def read_after(self, user: str, groups: Iterable[str], after: int) -> Iterator[ChatMessage]:
        """``user``'s messages with id > ``after``, ascending, lazily.

        Covers ``user``'s 1:1 messages and, for each of ``groups``, that group's messages
        after both ``after`` and the start of ``user``'s membership. The iterator reads the
        indexes as they are when it advances: consume it before changing the store.
        """
        sources: list[Iterator[int]] = []
        inbox = self._inbox.get(user)
        if inbox is not None:
            sources.append(inbox.irange(minimum=after, inclusive=(False, True)))
        for group in groups:
            log = self._group_log.get(group)
            joined = self._joined.get((group, user))
            if log is None or joined is None:
                continue
            sources.append(log.irange(minimum=max(after, joined), inclusive=(False, True)))
        messages = self._messages
        for message_id in heapq.merge(*sources):
            yield messages[message_id]

    def group_messages_after(self, group: str, after: int) -> Iterator[ChatMessage]:
        """``group``'s messages with id > ``after``, ascending, lazily (as ``read_after``)."""
        log = self._group_log.get(group)
        if log is None:
            return
        messages = self._messages
        for message_id in log.irange(minimum=after, inclusive=(False, True)):
            yield messages[message_id]

    def sync(self, user: str, groups: Iterable[str], after: int, limit: int) -> SyncPage:
        """The first ``limit`` messages of ``read_after``, and whether more follow."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        page: list[ChatMessage] = []
        for message in self.read_after(user, groups, after):
            if len(page) == limit:
                return SyncPage(page, more=True)
            page.append(message)
        return SyncPage(page, more=False)

    def messages(self) -> list[ChatMessage]:
        """Every stored message in id order (a snapshot's copy: O(n), no sort unless
        ``insert`` stored some out of order)."""
        if not self._in_order:
            return [self._messages[i] for i in sorted(self._messages)]
        return list(self._messages.values())

    def memberships(self) -> dict[tuple[str, str], int]:
        """(group, user) -> join mark, a copy (for snapshots)."""
        return dict(self._joined)

    def load(self, messages: Iterable[ChatMessage]) -> None:
        """Bulk-add ``messages`` (ascending ids) to an empty store: a restart's fast path."""
        if self._messages:
            raise ValueError("load needs an empty store")
        inbox: dict[str, list[int]] = {}
        group_log: dict[str, list[int]] = {}
        last = 0
        for message in messages:
            if message.message_id <= last:
                raise ValueError(f"messages out of order at {message.message_id}")
            last = message.message_id
            self._messages[last] = message
            if message.group is not None:
                group_log.setdefault(message.group, []).append(last)
                self._group_sent.setdefault(message.sender, []).append(last)
            for user in message.readers():
                inbox.setdefault(user, []).append(last)
            if message.client_msg_id is not None:
                self._by_client_id[(message.sender, message.client_msg_id)] = last
        self._last_added = last
        self._inbox = {user: SortedList(ids) for user, ids in inbox.items()}
        self._group_log = {group: SortedList(ids) for group, ids in group_log.items()}

    @property
    def last_id(self) -> int:
        """The highest id ever added (0 before any)."""
        return self._last_added
