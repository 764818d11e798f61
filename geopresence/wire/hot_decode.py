"""The fast path of ``decode`` for the two messages that make up most of the input.

Under the load model every user sends a ``heartbeat`` every 5 s and a ``location`` every
30 s. The generic path (cattrs with detailed validation) costs 1-3 µs more per frame than
checking these two shapes by hand, so ``hot_message`` does that on the already parsed
object. Measured against msgspec too (issue 16, ``python -m benchmarks.decode_paths``):
decoding into its own structs takes 0.1-0.2 µs, but building the hub's message from them
leaves 0.6 µs for a heartbeat (1.0 by hand, 2.2 through cattrs) and 1.3 µs for a location
(1.8 by hand, 3.9 through cattrs): ~0.2 % of a core at the design's load for 19,000 users,
not enough to earn a new dependency whose typing rules (int to float, big integers,
non-finite numbers) would then need proving equal to ours.

The contract that keeps the two paths from drifting apart: ``hot_message`` returns a message
only when the generic path would return an equal one (same class, same field values and
types), and ``None`` for anything else, valid or not. It never builds an error: the caller
falls back to the generic path, which produces today's ``ProtocolError`` (code, text and
``re``) by construction. Range checks are not repeated here either: the message classes'
own validators run in their ``__init__``, and a ``ValueError`` from them means "decline".
tests/wire/test_hot_decode.py proves the contract with generated frames.
"""

from __future__ import annotations

from typing import Any, Final

from geopresence.wire.client_messages import ClientMessage, Heartbeat, LocationUpdate
from geopresence.wire.errors import MAX_REQUEST_ID_CHARS, MAX_SAFE_INTEGER

_BARE_HEARTBEAT: Final = Heartbeat()
"""Shared by every id-less heartbeat: the classes are frozen, so sharing is invisible."""

_DECLINE: Final = object()
"""What ``_request_id`` returns for an id the generic path has to judge."""


def hot_message(obj: dict[str, Any]) -> ClientMessage | None:
    """The ``heartbeat`` or ``location`` message in ``obj`` (a JSON object as orjson parsed
    it), or ``None`` when ``obj`` is another type, or anything the generic path would refuse
    or might read differently. Never raises."""
    kind = obj.get("type")
    if kind == "heartbeat":
        if "id" not in obj:
            return _BARE_HEARTBEAT
        request_id = _request_id(obj["id"])
        if request_id is _DECLINE:
            return None
        return _BARE_HEARTBEAT if request_id is None else Heartbeat(id=request_id)
    if kind == "location":
        return _location(obj)
    return None


def _location(obj: dict[str, Any]) -> LocationUpdate | None:
    request_id = _request_id(obj.get("id"))
    if request_id is _DECLINE:
        return None
    # The generic path turns a JSON integer into a float (``float(value)``) and refuses
    # booleans, strings, null, arrays and objects. orjson never yields NaN or infinity (it
    # refuses 1e400 and NaN literals), so an int or a float here is finite; ``type(x) is``
    # leaves bool (an int subclass) out.
    lat = obj.get("lat")
    if type(lat) is int:
        lat = float(lat)
    elif type(lat) is not float:
        return None
    lon = obj.get("lon")
    if type(lon) is int:
        lon = float(lon)
    elif type(lon) is not float:
        return None
    ts = obj.get("ts")
    if type(ts) is int:
        ts = float(ts)
    elif ts is not None and type(ts) is not float:
        return None
    try:
        # The validators check the ranges, so "lat must be in [-90, 90]" lives in one place.
        return LocationUpdate(lat=lat, lon=lon, ts=ts, id=request_id)
    except ValueError:
        return None


def _request_id(value: Any) -> Any:
    """``value`` when the generic path accepts it as an id unchanged, else ``_DECLINE``.

    A float that is a whole number beyond ±(2**53 - 1) is declined: whether it is refused
    depends on how the frame wrote it (``1e20`` is echoed, an integer literal beyond 64
    bits is refused), which only the generic path, given the frame, can tell."""
    kind = type(value)
    if value is None:
        return None
    if kind is int:
        return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else _DECLINE
    if kind is str:
        return value if len(value) <= MAX_REQUEST_ID_CHARS else _DECLINE
    if kind is float:
        return _DECLINE if value.is_integer() and abs(value) > MAX_SAFE_INTEGER else value
    return _DECLINE  # bool, array, object: refused by the generic path
