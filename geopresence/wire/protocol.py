"""Sans-I/O codec of the WebSocket protocol (the wire contract, documented in docs/protocol.md).

``decode`` turns one text frame into a typed client message or raises ``ProtocolError``
carrying the error code to send back (``decode_text`` takes a text frame's payload as ``str``
or UTF-8 bytes); ``encode`` turns a server message into the JSON text of one frame. Nothing
here does I/O or knows about connections, like wsproto's event classes.

``heartbeat`` and ``location``, most of the input, are checked by hand (``hot_decode``); every
other type, and every frame the fast path declines, goes through cattrs.

Decoding is strict: a field of the wrong JSON type is an error, never coerced (cattrs would
happily turn ``123`` into ``"123"``), numbers must be finite, ids must match ``ids.ID_PATTERN``.
Unknown fields are ignored so that clients may be newer than the server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Final, TypeVar

import cattrs
import cattrs.gen
import orjson

from geopresence.wire.client_messages import (
    CLIENT_MESSAGE_TYPES,
    ClientMessage,
    Sync,
    json_type_name,
    message_id,
)
from geopresence.wire.errors import MAX_REQUEST_ID_CHARS, MAX_SAFE_INTEGER, ProtocolError, RequestId
from geopresence.wire.hot_decode import hot_message
from geopresence.wire.server_messages import ChatMessageOut, Error, Sent, ServerMessage, Welcome

# --------------------------------------------------------------------------------------------
# Converter: strict JSON types, no coercion.

_converter = cattrs.Converter(detailed_validation=True)

T = TypeVar("T")


def _strict(expected: type[T], name: str) -> Callable[[Any, Any], T]:
    def structure(value: Any, _type: Any) -> T:
        # bool is an int subclass in Python; JSON true is not a number.
        if isinstance(value, bool) and expected is not bool:
            raise ValueError(f"expected {name}, got a boolean")
        if not isinstance(value, expected):
            raise ValueError(f"expected {name}, got {json_type_name(value)}")
        return value

    return structure


def _structure_float(value: Any, _type: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {json_type_name(value)}")
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return float(value)


def _structure_request_id(value: Any, _type: Any) -> RequestId:
    return _check_request_id(value)


_converter.register_structure_hook(str, _strict(str, "a string"))
_converter.register_structure_hook(bool, _strict(bool, "a boolean"))
_converter.register_structure_hook(int, _strict(int, "an integer"))
_converter.register_structure_hook(float, _structure_float)
_converter.register_structure_hook(RequestId, _structure_request_id)
_converter.register_structure_hook(
    Sync,
    cattrs.gen.make_dict_structure_fn(
        Sync,
        _converter,
        after=cattrs.gen.override(struct_hook=lambda value, _type: message_id(value)),
    ),
)
_converter.register_unstructure_hook(
    ChatMessageOut,
    cattrs.gen.make_dict_unstructure_fn(
        ChatMessageOut,
        _converter,
        sender=cattrs.gen.override(rename="from"),
        to=cattrs.gen.override(omit_if_default=True),
        group=cattrs.gen.override(omit_if_default=True),
        client_msg_id=cattrs.gen.override(omit_if_default=True),
    ),
)
_converter.register_unstructure_hook(
    Sent,
    cattrs.gen.make_dict_unstructure_fn(
        Sent, _converter, duplicate=cattrs.gen.override(omit_if_default=True)
    ),
)


_INTEGER_LITERAL: Final = object()
"""What ``_id_written_as_integer``'s parse makes of every integer literal."""


def _id_written_as_integer(frame: Payload) -> bool:
    """Whether the frame's own ``id`` member (the last one, as for the parsed object;
    its key maybe escaped) is an integer literal: no fraction, no exponent. The standard
    parser keeps literals apart where orjson, reading one beyond 64 bits as a float,
    cannot; only ids that need it (whole floats beyond 2**53) come here."""
    try:
        obj = json.loads(_text(frame), parse_int=lambda _literal: _INTEGER_LITERAL)
    except (RecursionError, ValueError):  # beyond this parser (nesting): refuse, never mangle
        return True
    return isinstance(obj, dict) and obj.get("id") is _INTEGER_LITERAL


Payload = str | bytes | bytearray | memoryview
"""The payload of a text frame: ``str``, or its UTF-8 bytes as a transport read them."""


def _check_request_id(value: Any, frame: Payload | None = None) -> RequestId:
    """Validate a request id: a number or a short string (or absent). ``frame``, the text it
    was read from, tells a huge integer from a float (``decode`` passes it; the structuring
    hook, which runs after ``decode`` checked the same id, does not)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ProtocolError("bad_request", "id must be a number or a string")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError("bad_request", "id must be finite")
        if isinstance(value, int) and abs(value) > MAX_SAFE_INTEGER:
            # Echoed back, it would lose digits in JavaScript (and in our own JSON encoder).
            raise ProtocolError("bad_request", "an integer id must be within ±(2**53 - 1)")
        big = isinstance(value, float) and value.is_integer() and abs(value) > MAX_SAFE_INTEGER
        if big and frame is not None and _id_written_as_integer(frame):
            # The JSON parser reads an integer beyond 64 bits as a float, its digits already
            # lost; a number written with an exponent (1e20) is a float and echoes as it is.
            raise ProtocolError("bad_request", "an integer id must be within ±(2**53 - 1)")
        return value
    if isinstance(value, str):
        if len(value) > MAX_REQUEST_ID_CHARS:
            raise ProtocolError(
                "bad_request", f"id must be at most {MAX_REQUEST_ID_CHARS} characters"
            )
        return value
    raise ProtocolError("bad_request", "id must be a number or a string")


def _text(payload: Payload) -> str:
    """``payload`` as ``str``. Bytes only get here after orjson parsed them, so they are
    UTF-8; "replace" just keeps this total."""
    if isinstance(payload, str):
        return payload
    return bytes(payload).decode("utf-8", "replace")


def decode(frame: str | bytes) -> ClientMessage:
    """Parse one WebSocket message as a transport that tells text from binary hands it:
    ``str`` for a text frame, ``bytes`` for a binary frame.

    Raises ``ProtocolError`` (code ``bad_request``) for binary frames, else as
    ``decode_text``.
    """
    if isinstance(frame, bytes | bytearray):
        raise ProtocolError("bad_request", "binary frames are not supported; send JSON text")
    return decode_text(frame)


def decode_text(payload: Payload) -> ClientMessage:
    """Parse the payload of one text frame, ``str`` or its UTF-8 bytes (a transport that
    validated the UTF-8 itself need not decode it), into a client message.

    Raises ``ProtocolError`` (code ``bad_request``) for invalid JSON, a non-object, a missing
    or unknown ``type``, and fields of the wrong type or value. The error's ``re`` is the
    message's ``id`` whenever that much could be read. Bytes and their ``str`` give equal
    results and equal errors.

    ``heartbeat`` and ``location`` take a fast path (``hot_decode``) that returns exactly what
    the generic path below would; whatever it declines, errors included, goes the generic way.
    """
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        # orjson counts the error's position in characters for bytes too: one wording.
        raise ProtocolError("bad_request", f"invalid JSON: {exc}") from None
    if type(obj) is dict:
        message = hot_message(obj)
        if message is not None:
            return message
    return _structure(obj, payload)


def _structure(obj: Any, frame: Payload) -> ClientMessage:
    """The generic path: ``obj`` (parsed from ``frame``) checked and structured by cattrs."""
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "a message must be a JSON object")
    re = _check_request_id(obj.get("id"), frame)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_request", 'a message needs a string "type"', re)
    cls = CLIENT_MESSAGE_TYPES.get(kind)
    if cls is None:
        shown = kind if len(kind) <= 40 else kind[:40] + "..."
        raise ProtocolError("bad_request", f"unknown message type {shown!r}", re)
    fields = {key: value for key, value in obj.items() if key != "type"}
    try:
        return _converter.structure(fields, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        raise ProtocolError("bad_request", f"invalid {kind}: {_describe(exc)}", re) from None


def _describe(exc: BaseException) -> str:
    """One readable line per problem, e.g. ``device: expected a string, got a number``."""
    if not isinstance(exc, cattrs.BaseValidationError):
        return str(exc)
    problems = []
    for line in cattrs.transform_error(exc, path="", format_exception=_format_exception):
        text, _, path = line.rpartition(" @ ")
        field = path.lstrip("$.")
        problems.append(f"{field}: {text}" if field else text)
    return "; ".join(problems)


def _format_exception(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    return str(exc) or type(exc).__name__


def unstructure(message: ServerMessage) -> dict[str, Any]:
    """The JSON object of a server message, as ``encode`` would write it."""
    data: dict[str, Any] = _converter.unstructure(message)
    return data


def encode(message: ServerMessage) -> str:
    """Serialize a server message to the text of one frame."""
    data = _converter.unstructure(message)
    if isinstance(message, Welcome) and message.re is None:
        del data["re"]  # the contract's welcome has no "re"; add it only when asked for
    return orjson.dumps(data).decode()


def error_message(error: ProtocolError) -> Error:
    """The ``error`` reply for a ``ProtocolError``."""
    return Error(re=error.re, code=error.code, message=error.message)
