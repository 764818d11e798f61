"""msgspec structs for ``benchmarks.decode_paths``: the two hot messages with the wire's
range checks (a module of its own: msgspec resolves the annotations at run time).

Imports msgspec, so importing this module fails without it (the ``bench`` extra).
"""

from collections.abc import Callable
from typing import Annotated, Any

import msgspec

RequestId = int | str | None
Lat = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Lon = Annotated[float, msgspec.Meta(ge=-180, le=180)]


class HeartbeatStruct(
    msgspec.Struct, tag_field="type", tag="heartbeat", forbid_unknown_fields=True
):
    id: RequestId = None

    @property
    def type(self) -> str:
        return "heartbeat"


class LocationStruct(msgspec.Struct, tag_field="type", tag="location", forbid_unknown_fields=True):
    lat: Lat
    lon: Lon
    ts: float | None = None
    id: RequestId = None

    @property
    def type(self) -> str:
        return "location"


def decoder() -> Callable[[bytes], Any]:
    """Decodes a frame's bytes into one of the two structs (``msgspec.ValidationError`` for
    anything else)."""
    return msgspec.json.Decoder(HeartbeatStruct | LocationStruct).decode
