"""Two friends: watch alice see bob's presence change as it happens.

Run it as is; it starts a server in-process (heartbeat 0.2 s, offline after 1.5 s) and is done
in a few seconds::

    python examples/two_friends.py

Or point it at a server you started yourself (the waits then follow that server's
``offline_after``, 30 s by default)::

    geopresence serve
    python examples/two_friends.py --ws ws://127.0.0.1:8765/ws --http http://127.0.0.1:8766 \
        --admin-key "$(cat geopresence-data/admin_key)"

The story: alice and bob become friends; bob comes online, logs out (offline at once), comes
back, loses his connection for a moment and reconnects inside the grace window (alice sees
nothing: the elevator case), and finally drops for good without logging out (alice sees him go
offline once ``offline_after`` has passed since his last heartbeat).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

import httpx
import trio

from geopresence.client import AdminClient, ApiError, Client, SessionRefused, connect
from geopresence.testing import open_server

HEARTBEAT_INTERVAL = 0.2
OFFLINE_AFTER = 1.5


class Story:
    """Prints what alice sees, with times relative to the start of the story."""

    def __init__(self, admin: AdminClient, ws_url: str) -> None:
        self.admin = admin
        self.ws_url = ws_url
        self.started = trio.current_time()

    def say(self, text: str) -> None:
        print(f"[{trio.current_time() - self.started:6.2f}s] {text}", flush=True)

    async def session(self, user: str, device: str) -> AbstractAsyncContextManager[Client]:
        """A session with a token from the HTTP API (works with and without --insecure)."""
        token = await self.admin.token(user)
        return connect(self.ws_url, token=token, device=device, heartbeat=True)

    async def expect(self, alice: Client, status: str, timeout: float) -> None:
        """Wait for alice's next presence event about bob and check its status."""
        with trio.move_on_after(timeout):
            event = await alice.recv_type("presence")
            self.say(f"alice <- {json.dumps(event)}")
            if event["user"] != "bob" or event["status"] != status:
                sys.exit(f"expected bob {status}, got {event}")
            return
        sys.exit(f"no presence event 'bob {status}' within {timeout} s")

    async def expect_nothing(self, alice: Client, quiet: float) -> None:
        """Check that alice gets no presence event for ``quiet`` seconds."""
        with trio.move_on_after(quiet):
            event = await alice.recv_type("presence")
            sys.exit(f"expected no presence event, got {event}")
        self.say(f"alice <- (nothing for {quiet:.2f}s: no presence flap)")

    async def run(self) -> None:
        created = await self.admin.befriend("alice", "bob")
        self.say(f"PUT /v1/friendships/alice/bob -> {json.dumps(created)}")

        async with await self.session("alice", "laptop") as alice:
            offline_after = float(alice.welcome["offline_after"])
            self.say(f"alice <- {json.dumps(alice.welcome)}")
            self.say(
                f"alice <- {json.dumps({'type': 'friends_presence', 'friends': alice.friends})}"
            )
            # Margins for a server started elsewhere with the default 30 s window.
            slack = max(2.0, offline_after)
            away = min(offline_after / 2, 3.0)

            self.say("bob connects on his phone")
            async with await self.session("bob", "phone") as bob:
                await self.expect(alice, "online", slack)
                self.say("bob sends logout")
                await bob.logout()
                code, reason = await bob.closed()
                self.say(f"bob's socket closed by the server: {code} {reason}")
                await self.expect(alice, "offline", slack)

            self.say("bob reconnects")
            async with await self.session("bob", "phone"):
                await self.expect(alice, "online", slack)
                self.say("bob's connection drops (no logout)...")
            await trio.sleep(away)
            self.say(f"...and bob is back on the same device after {away:.2f}s")
            async with await self.session("bob", "phone"):
                await self.expect_nothing(alice, min(offline_after, 2.0))
                self.say("bob's connection drops for good (no logout)")
                dropped = trio.current_time()
            await self.expect(alice, "offline", offline_after + slack)
            self.say(
                f"offline {trio.current_time() - dropped:.2f}s after the drop "
                f"(offline_after={offline_after}s since his last heartbeat)"
            )

            user = await self.admin.user("bob")
            self.say(f"GET /v1/users/bob -> {json.dumps(user)}")


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

    # time_origin=None: epoch timestamps (open_server's default, 0, suits MockClock tests).
    async with open_server(
        heartbeat_interval=HEARTBEAT_INTERVAL, offline_after=OFFLINE_AFTER, time_origin=None
    ) as server:
        print(f"in-process server: {server.ws_url} {server.http_url}", flush=True)
        await Story(server.admin, server.ws_url).run()


if __name__ == "__main__":
    try:
        trio.run(main)
    except (ApiError, SessionRefused, httpx.HTTPError, OSError) as exc:
        sys.exit(f"two_friends.py: {exc}")
