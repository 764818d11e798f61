"""Chat: alice and bob message each other, in 1:1 and in a group, across several devices.

Run it as is; it starts a server in-process and is done in about two seconds::

    python examples/chat.py

Or point it at a server you started yourself::

    geopresence serve
    python examples/chat.py --ws ws://127.0.0.1:8765/ws --http http://127.0.0.1:8766 \
        --admin-key "$(cat geopresence-data/admin_key)"

The story: alice and bob become friends and, with carol, members of the group ``hikers``.
bob's laptop syncs once and goes offline, remembering the highest message id it has seen
(its ``cur_max_message_id``). alice sends from her phone: bob's phone and tablet get the
message live, and so does alice's own laptop (with her ``client_msg_id``); the phone itself
gets only the ``sent`` ack. bob answers, alice writes to the group (carol has no device
connected, so the server makes a push for her), and alice's phone resends a message whose ack
it "lost": the resend, with the same ``client_msg_id``, gets the original id back
(``duplicate``) and nobody receives it twice. Then bob's laptop comes back and catches up
with ``sync`` from its ``cur_max_message_id``, page by page until ``more`` is false, and
takes live messages from there on.

``Device`` below is the recommended client algorithm for multi-device sync (see
docs/protocol.md, Chat). Every step is checked: the script exits with a message if the server
does anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

import httpx
import trio

from geopresence.client import AdminClient, ApiError, Client, Json, SessionRefused, connect
from geopresence.testing import open_server

TIMEOUT = 2.0
"""How long to wait for an expected frame before giving up."""

QUIET = 0.3
"""How long a device must stay silent to count as "got nothing"."""


def compact(message: Json) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class Device:
    """One device's view of the user's messages: the client algorithm for multi-device sync.

    It keeps ``cur_max`` (the highest message id seen, as an int: ids are 64-bit and would
    lose digits as JavaScript numbers) and the messages by id, so that a message that comes
    both live and in a sync page is applied once. (A device that sends gets no ``message``
    frame for it, only ``sent``: it would apply its own message under the ``message_id`` of
    the ack.)
    """

    def __init__(self, name: str, cur_max: int = 0) -> None:
        self.name = name
        self.cur_max = cur_max
        self.messages: dict[int, Json] = {}

    def apply(self, message: Json) -> bool:
        """Store ``message`` unless it is already here; True if it was new."""
        message_id = int(message["message_id"])
        if message_id in self.messages:
            return False
        self.messages[message_id] = message
        self.cur_max = max(self.cur_max, message_id)
        return True

    def texts(self) -> list[str]:
        return [self.messages[i]["text"] for i in sorted(self.messages)]


class Story:
    """Prints what each device sends and receives, with times relative to the start."""

    def __init__(self, admin: AdminClient, ws_url: str) -> None:
        self.admin = admin
        self.ws_url = ws_url
        self.started = trio.current_time()
        self.run_id = uuid.uuid4().hex[:8]
        """Keeps client_msg_ids unique when the story runs again against the same server."""

    def say(self, text: str) -> None:
        print(f"[{trio.current_time() - self.started:5.2f}s] {text}", flush=True)

    async def session(self, user: str, device: str) -> AbstractAsyncContextManager[Client]:
        """A session with a token from the HTTP API (works with and without --insecure)."""
        token = await self.admin.token(user)
        return connect(self.ws_url, token=token, device=device, heartbeat=True)

    async def send(self, who: Client, text: str, **fields: str) -> Json:
        target = f"to {fields['to']}" if "to" in fields else f"to group {fields.get('group')}"
        self.say(f"{who.user}/{who.device} -> send {text!r} {target}")
        sent = await who.send_message(text, **fields)
        self.say(f"{who.user}/{who.device} <- {compact(sent)}")
        if sent["type"] != "sent":
            sys.exit(f"expected a sent ack, got {sent}")
        return sent

    async def expect(
        self, who: Client, sent: Json, text: str, *, own_key: str | None = None
    ) -> Json:
        """Wait for ``who``'s next chat message and check it is the one ``sent`` acked."""
        with trio.move_on_after(TIMEOUT):
            message = await who.recv_type("message")
            self.say(f"{who.user}/{who.device} <- {compact(message)}")
            if (message["message_id"], message["text"]) != (sent["message_id"], text):
                sys.exit(f"{who.user}/{who.device}: expected {text!r}, got {message}")
            if message.get("client_msg_id") != own_key:
                sys.exit(f"{who.user}/{who.device}: client_msg_id should be {own_key}: {message}")
            return message
        sys.exit(f"{who.user}/{who.device}: no message {text!r} within {TIMEOUT} s")

    async def expect_nothing(self, *devices: Client) -> None:
        """Check that none of ``devices`` gets a chat message for ``QUIET`` seconds."""

        async def watch(who: Client) -> None:
            with trio.move_on_after(QUIET):
                message = await who.recv_type("message")
                sys.exit(f"{who.user}/{who.device}: expected no message, got {message}")

        async with trio.open_nursery() as nursery:
            for who in devices:
                nursery.start_soon(watch, who)
        names = ", ".join(f"{who.user}/{who.device}" for who in devices)
        self.say(f"{names} <- (no message for {QUIET:.1f}s)")

    async def catch_up(self, client: Client, device: Device, limit: int) -> None:
        """Sync from ``device.cur_max`` until ``more`` is false (what ``Client.sync_all``
        does), applying each page."""
        while True:
            after = str(device.cur_max)
            reply = await client.sync(after=after, limit=limit)
            if reply["type"] != "messages":
                sys.exit(f"sync failed: {reply}")
            texts = [m["text"] for m in reply["messages"]]
            self.say(
                f"{client.user}/{client.device} sync after={after} limit={limit} -> "
                f"{len(texts)} message(s) {texts} more={str(reply['more']).lower()}"
            )
            for message in reply["messages"]:
                device.apply(message)
            if not reply["more"]:
                return

    async def pushes_logged(self) -> int:
        """``geopresence_pushes_total{result="logged"}`` from the metrics."""
        for line in (await self.admin.metrics()).splitlines():
            if line.startswith('geopresence_pushes_total{result="logged"}'):
                return int(float(line.split()[-1]))
        return 0

    async def run(self) -> None:
        created = await self.admin.befriend("alice", "bob")
        self.say(f"PUT /v1/friendships/alice/bob -> {compact(created)}")
        group = await self.admin.set_group("hikers", ["alice", "bob", "carol"])
        self.say(f"PUT /v1/groups/hikers -> {compact(group)}")

        self.say("bob's laptop syncs, then goes offline")
        laptop = Device("bob/laptop")
        async with await self.session("bob", "laptop") as bob_laptop:
            await self.catch_up(bob_laptop, laptop, limit=100)
        self.say(f"bob's laptop keeps cur_max_message_id={laptop.cur_max}")

        async with (
            await self.session("alice", "phone") as alice_phone,
            await self.session("alice", "laptop") as alice_laptop,
            await self.session("bob", "phone") as bob_phone,
            await self.session("bob", "tablet") as bob_tablet,
        ):
            pushes_before = await self.pushes_logged()
            key = f"hello-{self.run_id}"
            self.say("alice writes to bob from her phone")
            hello = await self.send(
                alice_phone, "hi bob! hike on Saturday?", to="bob", client_msg_id=key
            )
            await self.expect(bob_phone, hello, "hi bob! hike on Saturday?")
            await self.expect(bob_tablet, hello, "hi bob! hike on Saturday?")
            # the sender's other device also gets it, with her client_msg_id
            await self.expect(alice_laptop, hello, "hi bob! hike on Saturday?", own_key=key)

            self.say("bob answers from his phone")
            answer = await self.send(bob_phone, "yes! let's ask carol", to="alice")
            await self.expect(alice_phone, answer, "yes! let's ask carol")
            await self.expect(alice_laptop, answer, "yes! let's ask carol")
            await self.expect(bob_tablet, answer, "yes! let's ask carol")

            self.say("alice writes to the group (carol has no device connected: push)")
            summit = await self.send(alice_phone, "summit at 9, meet at 8", group="hikers")
            for who in (bob_phone, bob_tablet, alice_laptop):
                await self.expect(who, summit, "summit at 9, meet at 8")
            pushed = await self.pushes_logged() - pushes_before
            self.say(f"pushes logged for recipients without a connection: {pushed} (carol)")
            if pushed != 1:
                sys.exit(f"expected one push (carol), got {pushed}")

            self.say("alice's phone lost the ack of its first message and resends it")
            again = await self.send(
                alice_phone, "hi bob! hike on Saturday?", to="bob", client_msg_id=key
            )
            if (again["message_id"], again.get("duplicate")) != (hello["message_id"], True):
                sys.exit(f"expected the original id with duplicate: true, got {again}")
            await self.expect_nothing(bob_phone, bob_tablet, alice_laptop)

            self.say("bob's laptop comes back and catches up from its cur_max_message_id")
            async with await self.session("bob", "laptop") as bob_laptop:
                await self.catch_up(bob_laptop, laptop, limit=2)
                expected = [
                    "hi bob! hike on Saturday?",
                    "yes! let's ask carol",
                    "summit at 9, meet at 8",
                ]
                if laptop.texts()[-3:] != expected or len(laptop.messages) < 3:
                    sys.exit(f"bob's laptop caught up wrong: {laptop.texts()}")
                self.say("bob's laptop is up to date; from now on it applies live messages")
                late = await self.send(alice_phone, "bring water", to="bob")
                message = await self.expect(bob_laptop, late, "bring water")
                if not laptop.apply(message):
                    sys.exit("the live message was already there")
                if laptop.apply(message):  # the same id again (say, also in a sync page)
                    sys.exit("a message was applied twice")
                self.say(f"bob's laptop: cur_max_message_id={laptop.cur_max}, last messages:")
                for text in laptop.texts()[-4:]:
                    self.say(f"    {text}")


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--ws", help="WebSocket URL of a running server (ws://HOST:PORT/ws)")
    parser.add_argument("--http", help="HTTP API URL of a running server (http://HOST:PORT)")
    parser.add_argument(
        "--admin-key",
        default=os.environ.get("GEOPRESENCE_ADMIN_KEY"),
        help="the server's admin key (default: env GEOPRESENCE_ADMIN_KEY; "
        "not needed for an --insecure server)",
    )
    args = parser.parse_args(argv)
    if (args.ws is None) != (args.http is None):
        parser.error("give both --ws and --http, or neither")

    if args.ws is not None:
        async with AdminClient(args.http, args.admin_key) as admin:
            await Story(admin, args.ws).run()
        return

    # Show the in-process server's push log lines (without --push-webhook a push is logged).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("        server log: %(message)s"))
    push_log = logging.getLogger("geopresence.shell.push")
    push_log.addHandler(handler)
    push_log.setLevel(logging.DEBUG)  # each push is a DEBUG line; the INFO summary is per minute
    # time_origin=None: epoch timestamps (open_server's default, 0, suits MockClock tests).
    async with open_server(time_origin=None) as server:
        print(f"in-process server: {server.ws_url} {server.http_url}", flush=True)
        await Story(server.admin, server.ws_url).run()


if __name__ == "__main__":
    try:
        trio.run(main)
    except (ApiError, SessionRefused, httpx.HTTPError, OSError) as exc:
        sys.exit(f"chat.py: {exc}")
