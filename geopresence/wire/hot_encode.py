"""The fast path of ``encode`` for the frame that makes up most of the output.

A friend's move is forwarded to each friend in range as ``friend_location``: the same user,
coordinates and time for every recipient, a distance of each recipient's own. Building the
message class and unstructuring it with cattrs per recipient cost ~2 µs; here the JSON up
to ``distance_m`` is made once per move (``friend_location_head``) and each recipient's text
is that head, its distance and a closing brace (``friend_location_text``).

The contract: ``friend_location_text(friend_location_head(u, lat, lon, ts), d)`` equals
``encode(FriendLocation(user=u, lat=lat, lon=lon, ts=ts, distance_m=d))`` character for
character (tests/wire/test_hot_encode.py proves it with generated values).
"""

from __future__ import annotations

from typing import Final

import orjson

_DISTANCE: Final = b',"distance_m":'


def friend_location_head(user: str, lat: float, lon: float, ts: float) -> bytes:
    """The ``friend_location`` JSON of one move, up to and including ``"distance_m":``."""
    body = orjson.dumps({"type": "friend_location", "user": user, "lat": lat, "lon": lon, "ts": ts})
    return body[:-1] + _DISTANCE


def friend_location_text(head: bytes, distance_m: float) -> str:
    """One recipient's ``friend_location`` text: ``head`` completed with its distance."""
    return (head + orjson.dumps(distance_m) + b"}").decode()
