"""The hot messages' decode, three ways: what issue 16 asked to measure before choosing.

    python -m benchmarks.decode_paths [--frames 200000]

A ``heartbeat`` with an id and a ``location`` with ``ts`` and an id, as a client sends them
(UTF-8 bytes, as the transport hands them over), decoded and validated into a message the
hub can use, one way after the other in this process:

- ``cattrs``: ``orjson.loads`` then the generic path (cattrs with detailed validation and the
  wire's strict hooks), what every other message takes;
- ``hand-checked``: ``orjson.loads`` then ``hot_message`` (the server's path for these two);
- ``msgspec``: a tagged union of ``msgspec.Struct`` with the same range checks, decoded
  straight from the bytes; then again with the server's own message built from the struct
  (what using it would cost: the hub takes ``LocationUpdate``, not a struct). Skipped when
  msgspec is not installed (``pip install -e '.[bench]'``).

Printed: the best of five repeats, µs per frame; only same-run figures compare.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from geopresence.wire.client_messages import Heartbeat, LocationUpdate
from geopresence.wire.hot_decode import hot_message
from geopresence.wire.protocol import _structure

FRAMES = {
    "heartbeat": b'{"type":"heartbeat","id":17}',
    "location": b'{"type":"location","lat":37.566535,"lon":126.977969,"ts":1764979200.5,"id":18}',
}


def generic(frame: bytes) -> object:
    return _structure(orjson.loads(frame), frame)


def hand_checked(frame: bytes) -> object:
    message = hot_message(orjson.loads(frame))
    assert message is not None
    return message


def msgspec_paths() -> dict[str, Callable[[bytes], object]]:
    """The two msgspec rows (empty without msgspec)."""
    try:
        from benchmarks.decode_structs import decoder
    except ImportError:
        return {}
    decode = decoder()

    def to_message(frame: bytes) -> object:
        s = decode(frame)
        if s.type == "location":
            return LocationUpdate(lat=s.lat, lon=s.lon, ts=s.ts, id=s.id)
        return Heartbeat(id=s.id)

    return {"msgspec (its struct)": decode, "msgspec + our message": to_message}


def per_frame(decode: Callable[[bytes], Any], frame: bytes, count: int) -> float:
    """µs per frame: the best of five repeats of ``count`` decodes."""
    best = min(timeit.repeat(lambda: decode(frame), number=count, repeat=5))
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=200_000, help="decodes per repeat")
    args = parser.parse_args()
    paths: dict[str, Callable[[bytes], object]] = {
        "cattrs (generic)": generic,
        "hand-checked (server)": hand_checked,
        **msgspec_paths(),
    }
    if len(paths) == 2:
        print("msgspec not installed: its rows skipped (pip install -e '.[bench]')")
    for kind, frame in FRAMES.items():
        expected = generic(frame)
        assert hand_checked(frame) == expected
        for name, decode in paths.items():
            print(f"{kind:<10} {name:<22} {per_frame(decode, frame, args.frames):6.2f} µs/frame")


if __name__ == "__main__":
    main()
