"""Tokens (HS256 JWT, ``sub`` = user id) and the secrets kept in the data dir."""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path

import jwt

from geopresence.model.ids import id_problem
from geopresence.storage.datadir import replace_file

SECRET_FILE = "secret"
ADMIN_KEY_FILE = "admin_key"
DEFAULT_TOKEN_TTL = 24 * 3600.0
MAX_TOKEN_TTL = 365 * 24 * 3600.0
"""The longest validity a token is minted with (seconds): `POST /v1/tokens` and `token`."""


class AuthError(Exception):
    """A token that cannot be accepted; the message says why (never echoes the token)."""


def load_or_create(data_dir: Path, name: str) -> str:
    """Read the secret called ``name`` from ``data_dir``, creating it (mode 0600, durably:
    the file and its directory are fsynced) if absent."""
    path = data_dir / name
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    # Durable before anything signed with it or read from it is used: after a power loss
    # an empty or missing file would mean a new value (every token void).
    replace_file(path, f"{value}\n".encode(), mode=0o600)
    return value


def _stored_or_new(data_dir: Path, name: str, in_memory: bool) -> str:
    if not in_memory:
        return load_or_create(data_dir, name)
    # --in-memory writes nothing: an existing file is used, else a value for this process.
    try:
        value = (data_dir / name).read_text().strip()
    except OSError:
        value = ""
    return value or secrets.token_urlsafe(32)


def resolve_secret(explicit: str | None, data_dir: Path, *, in_memory: bool = False) -> str:
    """The token secret: ``explicit``, else env ``GEOPRESENCE_SECRET``, else the data dir's
    (created there if absent; with ``in_memory``, generated for this process only)."""
    return (
        explicit
        or os.environ.get("GEOPRESENCE_SECRET")
        or _stored_or_new(data_dir, SECRET_FILE, in_memory)
    )


def resolve_admin_key(explicit: str | None, data_dir: Path, *, in_memory: bool = False) -> str:
    """The admin key: ``explicit``, else env ``GEOPRESENCE_ADMIN_KEY``, else the data dir's
    (created there if absent; with ``in_memory``, generated for this process only)."""
    return (
        explicit
        or os.environ.get("GEOPRESENCE_ADMIN_KEY")
        or _stored_or_new(data_dir, ADMIN_KEY_FILE, in_memory)
    )


def mint_token(secret: str, user: str, ttl: float, now: float) -> str:
    """An HS256 JWT for ``user`` valid for ``ttl`` seconds from ``now`` (epoch seconds)."""
    problem = id_problem(user, "user")
    if problem is not None:
        raise ValueError(problem)
    if not ttl > 0:
        raise ValueError("ttl must be positive")
    # NumericDate as an integer (what most JWT libraries expect), rounded up so that a
    # fractional ttl never yields a token shorter-lived than asked.
    claims = {"sub": user, "iat": int(now), "exp": math.ceil(now + ttl)}
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_token(secret: str, token: str, now: float) -> str:
    """The user id of a valid, unexpired token at ``now``; ``AuthError`` otherwise.

    Expiry is checked against the server's clock (``now``), not the wall clock, so that it
    follows the same time as every other rule.
    """
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["sub", "exp"], "verify_exp": False, "verify_iat": False},
        )
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise AuthError("invalid token: exp must be a number")
    if exp <= now:
        raise AuthError("token expired")
    user = claims["sub"]
    problem = id_problem(user, "token subject")
    if problem is not None:
        raise AuthError(f"invalid token: {problem}")
    assert isinstance(user, str)
    return user
