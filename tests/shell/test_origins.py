"""The WebSocket endpoint's Origin check (shell/origins, in the handshake): which web pages may
open a socket (``--allowed-origins``, default ``self``); clients without Origin always may."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from geopresence.config import Config
from geopresence.options import ConfigError
from geopresence.shell.origins import OriginPolicy
from geopresence.testing import open_server


def policy(*allowed: str, host: str = "127.0.0.1", http_port: int | None = 8766) -> OriginPolicy:
    made = OriginPolicy(Config(allowed_origins=allowed).allowed_origins, host)
    made.http_port = http_port
    return made


def allowed(p: OriginPolicy, origin: str | None, host: str | None = "127.0.0.1:8765") -> bool:
    return p.refusal([] if origin is None else [origin], host) is None


def test_self_is_the_consoles_own_origin() -> None:
    own = policy("self")
    assert allowed(own, None)  # not a browser
    assert allowed(own, "http://127.0.0.1:8766")
    assert allowed(own, "http://localhost:8766", "localhost:8765")
    assert allowed(own, "http://[::1]:8766", "[::1]:8765")
    assert allowed(own, "http://192.168.1.5:8766", "192.168.1.5:8765")  # an address: no DNS
    assert not allowed(own, "http://127.0.0.1:8767")  # another port of this host
    assert not allowed(own, "http://127.0.0.1")
    assert not allowed(own, "http://10.0.0.9:8766")  # a page of another host
    assert not allowed(own, "http://evil.example:8766", "evil.example:8765")  # DNS rebinding
    assert not allowed(own, "null")  # file:// pages, sandboxed frames
    assert not allowed(own, "http://127.0.0.1:8766", None)
    assert own.refusal(["http://127.0.0.1:8766"] * 2, "127.0.0.1:8765") is not None
    named = policy("self", host="geo.example")
    assert allowed(named, "https://geo.example:8766", "geo.example:8765")
    assert not allowed(policy("self", http_port=None), "http://127.0.0.1:8766")  # not bound yet


def test_listed_origins_and_any() -> None:
    listed = policy("https://App.Example.com:443/", "http://localhost:3000")
    assert allowed(listed, "https://app.example.com")
    assert allowed(listed, "http://localhost:3000")
    assert not allowed(listed, "http://app.example.com")
    assert not allowed(listed, "http://127.0.0.1:8766")  # no self
    assert allowed(listed, None)
    assert allowed(policy("*"), "http://anything.example:1")
    assert not allowed(policy(), "http://127.0.0.1:8766")  # none: no page at all
    reason = policy().refusal(["http://x.example"], "h")
    assert reason == "origin 'http://x.example' may not connect (see --allowed-origins)"


def test_a_bad_origin_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="an origin is scheme://host"):
        Config(allowed_origins=("example.com",))
    with pytest.raises(ConfigError, match="no path, query or user"):
        Config(allowed_origins=("https://example.com/app",))
    one: Any = "self"  # one string, not a tuple: an embedder's slip, taken as one origin
    assert Config(allowed_origins=one).allowed_origins == ("self",)


async def test_the_handshake_refuses_a_foreign_page_with_403() -> None:
    """Over TCP: the server's own origin and clients without Origin get in; a foreign
    origin gets HTTP 403 before any session, counted as forbidden."""
    async with open_server() as server:
        port = server.running.http_port
        with trio.fail_after(10):
            for origin in (None, f"http://127.0.0.1:{port}"):
                headers = [] if origin is None else [(b"origin", origin.encode())]
                async with open_websocket_url(server.ws_url, extra_headers=headers) as ws:
                    await ws.send_message('{"type":"hello","user":"alice","device":"d"}')
                    assert '"welcome"' in await ws.get_message()
            with pytest.raises(ConnectionRejected) as refused:
                async with open_websocket_url(
                    server.ws_url, extra_headers=[(b"origin", b"https://elsewhere.example")]
                ):
                    pass  # pragma: no cover
            assert refused.value.status_code == 403
            assert b"may not connect" in (refused.value.body or b"")
        metrics = await server.admin.metrics()
        assert 'geopresence_errors_total{code="forbidden"} 1' in metrics


def test_the_flag_and_its_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    from geopresence.cli import build_parser, main
    from geopresence.shell.flags import build_config, resolve

    def config_of(argv: list[str], env: dict[str, str]) -> Config:
        values, given = resolve(build_parser().parse_args(["serve", *argv]), env)
        return build_config({k: v for k, v in values.items() if not k.startswith("log_")}, given)

    flag = ["--allowed-origins", "self, https://app.example.com"]
    assert config_of(flag, {}).allowed_origins == ("self", "https://app.example.com")
    env = {"GEOPRESENCE_ALLOWED_ORIGINS": "*"}
    assert config_of([], env).allowed_origins == ("*",)
    assert config_of(["--allowed-origins", ""], env).allowed_origins == ()  # no page at all
    assert main(["serve", "--allowed-origins", "example.com"]) == 2
    assert capsys.readouterr().err.startswith(
        "geopresence serve: --allowed-origins example.com: an origin is scheme://host[:port]"
    )
