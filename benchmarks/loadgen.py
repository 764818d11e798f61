"""The lean load generator: every simulated user of the load model on one ``wsclient.Loop``.

Each user ``u<i>`` opens a WebSocket to target ``i mod len(targets)``, says hello (``user``:
the server runs ``--insecure``) with its first location, then heartbeats every
``heartbeat_interval`` (skipped when a location went out meanwhile: any message is activity)
and sends its location every ``location_interval`` while walking. Deliveries are counted by a
prefix check on the payload; one ``friend_location`` in ``sample_every`` is parsed for its
latency (now minus the ``ts`` the mover put in its update; same machine, same clock).
"""

from __future__ import annotations

import math
import random
import sys
import time

import orjson

from benchmarks.population import SPEEDS, Model, home, step
from benchmarks.wsclient import Conn, Loop, encode_client_frame

FRIEND_LOCATION = b'{"type":"friend_location"'
WELCOME = b'{"type":"welcome"'
ERROR = b'{"type":"error"'
GONE = b'{"type":"friend_gone"'
BEAT, MOVE = 0, 1
HEARTBEAT = encode_client_frame(b'{"type":"heartbeat"}')


class LoadGen(Loop):
    """The load model's users on one loop; counters for the measuring window."""

    def __init__(self, model: Model, targets: list[tuple[str, int]], sample_every: int = 0) -> None:
        super().__init__()
        self.model = model
        self.targets = targets
        self.nodes = len(targets)
        self.rng = random.Random(7)
        self.homes = [home(i, model) for i in range(model.users)]
        self.where = list(self.homes)
        self.by_user: list[Conn | None] = [None] * model.users
        self.last_sent = [0.0] * model.users
        self.step_m = SPEEDS[model.speed] * model.location_interval
        expected = model.users * (model.cluster - 1) / model.location_interval
        self.sample_every = sample_every or max(1, int(expected // 2000))
        self.started = 0
        self.connected = 0
        self.sent = 0
        self.locations = 0
        self.deliveries = 0
        self.gone = 0
        self.errors = 0
        self.other = 0
        self.measuring = False
        self.grouped = False
        """User i connects to target (i // cluster) mod targets, not i mod targets: each
        cluster of near friends on one node, so that no live event crosses nodes (a control
        run: what k processes cost on this machine without the events between them)."""
        self.hold_moves = False
        """Start the periodic locations only once every user is connected (``ceiling``: a
        server saturated by the first users would otherwise starve the later logins)."""
        self._ramping = False
        self._held: list[int] = []
        self.latencies: list[float] = []
        self.node_deliveries = [0] * self.nodes
        """Deliveries to each target's users since the start (several targets only)."""
        self.node_latencies: list[list[float]] = [[] for _ in targets]
        """The latency samples of each target's users."""
        self.cross: list[float] = []
        self.same: list[float] = []
        self.duplicates = 0
        self._seen: set[tuple[int, bytes, float]] = set()

    # -------------------------------------------------------------- connecting

    def ramp(self, rate: float, timeout: float, quiet: bool, pending_max: int = 500) -> None:
        """Connect every user, ``rate`` per second at most and ``pending_max`` handshakes
        in flight at most, with a progress line; give up ``timeout`` s after the last start."""
        n = self.model.users
        t0 = time.monotonic()
        last_print = [0.0]
        gave_up = [t0 + n / max(rate, 1e-9) + timeout]

        def tick(now: float) -> bool:
            due = n if rate <= 0 else min(n, int((now - t0) * rate) + 1)
            failed = sum(self.closed.values())
            while self.started < due and self.started - self.connected - failed < pending_max:
                i = self.started
                host, port = self.targets[self.target_of(i)]
                self.by_user[i] = self.open(i, host, port)
                self.started += 1
            done = self.connected + failed >= n
            if not quiet and (now - last_print[0] >= 0.5 or done):
                last_print[0] = now
                print(
                    f"\r  connecting {self.connected:,}/{n:,} ({now - t0:.0f} s, "
                    f"{failed:,} failed)  ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            if self.started < n:
                gave_up[0] = now + timeout
            return done or now > gave_up[0]

        self._ramping = True
        try:
            self.run_until(math.inf, tick, every=0.01)
        finally:
            self._ramping = False
        now = time.monotonic()
        for i in self._held:
            self.schedule(now + self.rng.uniform(0, self.model.location_interval), i, MOVE)
        self._held.clear()
        if not quiet:
            print(file=sys.stderr, flush=True)

    def target_of(self, i: int) -> int:
        """The target user ``i`` connects to."""
        return (i // self.model.cluster if self.grouped else i) % self.nodes

    def on_open(self, conn: Conn) -> None:
        user = f"u{conn.index}".encode()
        hello = encode_client_frame(b'{"type":"hello","user":"' + user + b'","device":"d"}')
        self.send(conn, hello + self._location(conn.index, time.monotonic()))

    def on_close(self, conn: Conn, code: int | None) -> None:
        if 0 <= conn.index < len(self.by_user) and self.by_user[conn.index] is conn:
            self.by_user[conn.index] = None

    # -------------------------------------------------------------- frames

    def on_text(self, conn: Conn, data: bytes, start: int, end: int) -> None:
        if data.startswith(FRIEND_LOCATION, start):
            self.deliveries += 1
            if self.nodes > 1:
                self.node_deliveries[self.target_of(conn.index)] += 1
            if self.measuring and self.deliveries % self.sample_every == 0:
                self._sample(conn, data[start:end])
        elif data.startswith(WELCOME, start):
            self.connected += 1
            now = time.monotonic()
            i = conn.index
            self.schedule(now + self.rng.uniform(0, self.model.heartbeat_interval), i, BEAT)
            if self.hold_moves and self._ramping:
                self._held.append(i)
            else:
                self.schedule(now + self.rng.uniform(0, self.model.location_interval), i, MOVE)
        elif data.startswith(GONE, start):
            self.gone += 1
        elif data.startswith(ERROR, start):
            self.errors += 1
        else:
            self.other += 1

    def _sample(self, conn: Conn, payload: bytes) -> None:
        frame = orjson.loads(payload)
        latency = time.time() - frame["ts"]
        self.latencies.append(latency)
        self.node_latencies[self.target_of(conn.index)].append(latency)
        if self.nodes > 1:
            mover: str = frame["user"]
            if self.target_of(int(mover[1:])) != self.target_of(conn.index):
                self.cross.append(latency)
            else:
                self.same.append(latency)
            key = (conn.index, mover.encode(), frame["ts"])
            if key in self._seen:
                self.duplicates += 1
            self._seen.add(key)

    # -------------------------------------------------------------- sending

    def _location(self, index: int, now: float) -> bytes:
        lat, lon = self.where[index]
        self.last_sent[index] = now
        self.sent += 1
        self.locations += 1
        self.frames_out += 1
        body = orjson.dumps({"type": "location", "lat": lat, "lon": lon, "ts": time.time()})
        return encode_client_frame(body)

    def on_timer(self, index: int, kind: int, now: float) -> None:
        conn = self.by_user[index]
        if conn is None:
            return
        model = self.model
        if kind == BEAT:
            since = now - self.last_sent[index]
            if since < model.heartbeat_interval * 0.99:
                self.schedule(self.last_sent[index] + model.heartbeat_interval, index, BEAT)
                return
            self.last_sent[index] = now
            self.sent += 1
            self.frames_out += 1
            self.send(conn, HEARTBEAT)
            self.schedule(now + model.heartbeat_interval, index, BEAT)
        else:
            self.where[index] = step(*self.where[index], self.homes[index], self.step_m, self.rng)
            self.send(conn, self._location(index, now))
            self.schedule(now + model.location_interval, index, MOVE)
