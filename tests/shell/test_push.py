"""The push hook: webhook POSTs with retries and backoff, never blocking a sender."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from trio.testing import MockClock

from geopresence.config import Config
from geopresence.core.chat_message_wire import PushRequest
from geopresence.model.chat_message import ChatMessage
from geopresence.shell import server as server_module
from geopresence.shell.push import SUMMARY_INTERVAL_S, PushNotifier
from geopresence.testing import open_server

MESSAGE = ChatMessage(42, "alice", "hi", 10.0, to="bob", client_msg_id="secret-key")


def notifier(handler: Any, **overrides: Any) -> PushNotifier:
    config = Config(push_webhook="http://push.test/hook", **overrides)
    return PushNotifier(config, transport=httpx.MockTransport(handler))


async def pushed(push: PushNotifier, recipients: tuple[str, ...], *, for_s: float) -> None:
    """Run ``push`` for ``for_s`` seconds with one message for ``recipients`` submitted."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(push.run)
        push.submit(PushRequest(recipients, MESSAGE))
        await trio.sleep(for_s)
        nursery.cancel_scope.cancel()


async def test_a_push_posts_the_message_and_the_recipient(autojump_clock: MockClock) -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    push = notifier(handler)
    await pushed(push, ("bob",), for_s=1)
    [request] = seen
    assert request.method == "POST" and str(request.url) == "http://push.test/hook"
    assert request.headers["content-type"] == "application/json"
    assert orjson.loads(request.content) == {
        "type": "message",
        "message_id": "42",
        "from": "alice",
        "to": "bob",
        "text": "hi",
        "created_at": 10.0,
        "recipient": "bob",
    }  # the sender's client_msg_id is not sent to a third party
    assert push.results == {"delivered": 1}


async def test_retries_back_off_on_errors_and_5xx(autojump_clock: MockClock) -> None:
    times: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        if len(times) == 1:
            raise httpx.ConnectError("refused")
        return httpx.Response(503 if len(times) < 4 else 200)

    push = notifier(handler, push_retries=3)
    await pushed(push, ("bob",), for_s=10)
    assert times == [0, 0.5, 1.5, 3.5]
    assert push.results == {"delivered": 1}


@pytest.mark.parametrize(("status", "attempts"), [(400, 1), (429, 3), (500, 3)])
async def test_giving_up_is_counted_and_logged(
    status: int, attempts: int, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(status)

    push = notifier(handler, push_retries=2)
    await pushed(push, ("bob",), for_s=10)
    assert calls == attempts
    assert push.results == {"failed": 1}
    assert f"push of message 42 to bob failed after {attempts} attempt(s): HTTP {status}" in (
        caplog.text
    )


async def test_a_receiver_that_trickles_its_answer_times_out(autojump_clock: MockClock) -> None:
    """``push_timeout`` bounds the whole request, not each read."""
    times: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        await trio.sleep(3600)  # never answers in time
        return httpx.Response(200)

    push = notifier(handler, push_retries=1, push_timeout=2)
    await pushed(push, ("bob",), for_s=60)
    assert times == [0, 2.5]  # 2 s timeout, 0.5 s backoff, 2 s timeout
    assert push.results == {"failed": 1}


async def test_an_unexpected_error_costs_one_push_not_the_server(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("surprise")
        return httpx.Response(200)

    push = notifier(handler)
    await pushed(push, ("bob", "carol"), for_s=5)
    assert push.results == {"failed": 1, "delivered": 1}
    assert "push of message 42 to" in caplog.text and "RuntimeError: surprise" in caplog.text


def test_webhook_urls_are_checked_up_front() -> None:
    for bad in ("http://[::1/", "ftp://x/", "http:///path", "https://h:99999/"):
        with pytest.raises(ValueError, match="push_webhook"):
            Config(push_webhook=bad)
    assert Config(push_webhook="https://push.example/hook").push_webhook


async def test_a_full_queue_drops_instead_of_blocking(autojump_clock: MockClock) -> None:
    release = trio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200)

    push = notifier(handler, push_queue_size=2, push_concurrency=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(push.run)
        await trio.sleep(0.1)  # the worker is waiting for work
        push.submit(PushRequest(("bob", "carol"), MESSAGE))  # returns at once every time
        for _ in range(3):
            push.submit(PushRequest(("bob",), MESSAGE))
        await trio.sleep(1)
        release.set()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    # one handed to the waiting worker, two queued, the other two dropped
    assert push.results == {"delivered": 3, "dropped": 2}


async def test_without_a_webhook_a_push_is_a_debug_line_and_a_summary_a_minute(
    caplog: pytest.LogCaptureFixture, autojump_clock: MockClock
) -> None:
    caplog.set_level(logging.DEBUG, logger="geopresence.shell.push")
    push = PushNotifier(Config())
    push.submit(PushRequest(("bob",), MESSAGE))
    assert caplog.records[-1].levelno == logging.DEBUG
    assert "push (no --push-webhook): message 42 from alice to bob" in caplog.text
    assert "hi" not in caplog.messages[0].split(":", 1)[1]  # the text is not logged
    push.submit(PushRequest(tuple(f"m{i}" for i in range(500)), MESSAGE))
    assert caplog.messages[-1].endswith("to m0, m1, m2 and 497 more")  # one line, not 500
    assert push.results == {"logged": 501}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(push.run)
        await trio.sleep(SUMMARY_INTERVAL_S + 1)
        summaries = [r for r in caplog.records if r.levelno == logging.INFO]
        assert [r.getMessage() for r in summaries] == [
            "push (no --push-webhook): 2 message(s) for recipients without a connected "
            "device in the last 60 s (each at DEBUG)"
        ]
        await trio.sleep(SUMMARY_INTERVAL_S * 3)  # nothing new: no more lines
        assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 1
        nursery.cancel_scope.cancel()


async def test_offline_recipients_reach_a_real_local_webhook() -> None:
    """Real clock, real loopback HTTP: a tiny ASGI receiver served by hypercorn."""
    received: list[dict[str, Any]] = []

    async def receiver(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                kind = event["type"].rsplit(".", 1)[1]  # startup / shutdown
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        received.append(orjson.loads(body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    hconfig = HypercornConfig()
    hconfig.bind = ["127.0.0.1:0"]
    hconfig.accesslog = None
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(hypercorn_serve, receiver, hconfig)
        url = binds[0] + "/push"
        async with open_server(push_webhook=url) as server:
            await server.admin.befriend("alice", "bob")
            await server.admin.set_group("g", ["alice", "bob", "carol", "dave"])
            async with server.connect("alice") as alice, server.connect("dave"):
                direct = await alice.send_message("ping", to="bob")
                assert direct["type"] == "sent"
                with trio.fail_after(10):
                    while not received:
                        await trio.sleep(0.01)
                grouped = await alice.send_message("all", group="g")
                with trio.fail_after(10):
                    while len(received) < 3:
                        await trio.sleep(0.01)
                await trio.sleep(0.2)  # nothing more arrives (dave is connected)
        nursery.cancel_scope.cancel()
    assert received[0] == {
        "type": "message",
        "message_id": direct["message_id"],
        "from": "alice",
        "to": "bob",
        "text": "ping",
        "created_at": direct["created_at"],
        "recipient": "bob",
    }
    assert sorted(r["recipient"] for r in received[1:]) == ["bob", "carol"]
    assert all(r["message_id"] == grouped["message_id"] for r in received[1:])
    assert len(received) == 3


async def test_the_receivers_answer_body_is_not_read(autojump_clock: MockClock) -> None:
    """Only the status matters: a receiver answering with a huge body (or an endless one)
    must not make the server hold it (was: read whole, over a GB in one push timeout)."""
    pulled = 0

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> Any:
            nonlocal pulled
            chunk = b"x" * 1024 * 1024
            for _ in range(64):
                pulled += 1
                yield chunk

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Endless())

    push = notifier(handler)
    await pushed(push, ("bob",), for_s=1)
    assert push.results == {"delivered": 1}
    assert pulled <= 1


async def test_a_push_is_no_log_line_at_info(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """operations.md: INFO has a push summary a minute, never a line per push (was: httpx's
    "HTTP Request: POST URL" for each, the webhook's URL and any key in it included)."""
    caplog.set_level(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.NOTSET)  # as in a fresh process

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204)

    push = notifier(handler)
    await pushed(push, ("bob", "carol"), for_s=1)
    assert push.results == {"delivered": 2}
    assert [r.getMessage() for r in caplog.records] == []


async def test_a_forget_drops_the_users_queued_pushes_and_stops_its_retries(
    autojump_clock: MockClock,
) -> None:
    attempts: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(orjson.loads(request.content)["recipient"])
        return httpx.Response(503)  # retried with backoff

    push = notifier(handler, push_concurrency=1, push_retries=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(push.run)
        await trio.sleep(0.1)
        push.submit(PushRequest(("bob", "carol"), MESSAGE))  # bob is being sent, carol queued
        await trio.sleep(0.1)
        assert push.forget("alice", last_id=MESSAGE.message_id) == 1  # the sender's
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert attempts == ["bob"]  # bob's retries stopped; carol's push never went out
    assert push.results == {"forgotten": 2}


async def test_forget_marks_go_once_the_pushes_before_them_are_done(
    autojump_clock: MockClock,
) -> None:
    release = trio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(204)

    push = notifier(handler, push_concurrency=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(push.run)
        await trio.sleep(0.1)
        push.submit(PushRequest(("bob",), MESSAGE))  # being sent while the forgets happen
        await trio.sleep(0.1)
        for n in range(1000):
            push.forget(f"gone{n}", last_id=MESSAGE.message_id)
        assert len(push._forgotten) == 1000  # bob's push might involve any of them
        release.set()
        await trio.sleep(1)
        push.forget("one-more", last_id=MESSAGE.message_id)  # nothing queued: no mark kept
        nursery.cancel_scope.cancel()
    assert push.results == {"delivered": 1}
    assert push._forgotten == {}  # a long-running server does not keep a mark per forget


def test_without_a_webhook_a_forget_keeps_nothing() -> None:
    push = PushNotifier(Config())
    assert push.forget("alice", last_id=1) == 0
    assert push._forgotten == {}


async def test_a_shutdown_sends_the_pushes_still_queued_or_in_flight(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message sent just before a SIGTERM still gets its push (within --drain-timeout)."""
    delivered: list[str] = []

    async def slow_receiver(request: httpx.Request) -> httpx.Response:
        await trio.sleep(20)  # still answering when the server is told to stop
        delivered.append(orjson.loads(request.content)["recipient"])
        return httpx.Response(204)

    monkeypatch.setattr(
        server_module,
        "PushNotifier",
        lambda config: PushNotifier(config, transport=httpx.MockTransport(slow_receiver)),
    )
    async with open_server(
        # One push at a time: at the stop, one is in flight and two wait in the queue.
        push_webhook="http://push.test/hook",
        push_timeout=60,
        push_concurrency=1,
        drain_timeout=70,
    ) as server:
        await server.admin.befriend("alice", "bob")
        await server.admin.set_group("g", ["alice", "carol", "dave"])
        async with server.connect("alice") as alice:
            assert (await alice.send_message("hi", to="bob"))["type"] == "sent"
            assert (await alice.send_message("all", group="g"))["type"] == "sent"
        push = server.running.server.push
    assert sorted(delivered) == ["bob", "carol", "dave"]
    assert push.results == {"delivered": 3}


async def test_pushes_not_sent_by_the_end_of_a_shutdown_are_counted_and_logged(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def stuck(request: httpx.Request) -> httpx.Response:
        await trio.sleep(3600)
        return httpx.Response(204)

    push = notifier(stuck, push_concurrency=1, push_timeout=100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(push.run)
        push.submit(PushRequest(("bob", "carol", "dave"), MESSAGE))
        await trio.sleep(1)
        start = trio.current_time()
        await push.finish(10)
        assert trio.current_time() - start == 10
        nursery.cancel_scope.cancel()
    assert push.results == {"dropped": 3}  # one in flight, two queued
    assert "shutting down: 3 push(es) not sent within 10 s" in caplog.text
    start = trio.current_time()
    await notifier(stuck).finish(10)  # nothing queued: returns at once
    assert trio.current_time() == start


async def test_a_forget_stops_pushes_handed_to_idle_workers_in_the_same_tick(
    autojump_clock: MockClock,
) -> None:
    """A memory channel hands a push to a waiting worker before that worker runs: the
    forget's mark must hold until such a push is done too, whichever worker runs first
    (trio's scheduling order varies, hence the rounds)."""
    posted: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        posted.append(orjson.loads(request.content)["recipient"])
        return httpx.Response(204)

    for _ in range(30):
        push = notifier(handler, push_concurrency=2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(push.run)
            await trio.sleep(0.1)  # both workers wait for work
            push.submit(PushRequest(("u1",), MESSAGE))
            push.submit(PushRequest(("u2",), MESSAGE))
            push.forget("u1", last_id=MESSAGE.message_id)
            push.forget("u2", last_id=MESSAGE.message_id)
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
        assert push.results == {"forgotten": 2}
    assert posted == []


async def test_a_shutdown_waits_for_a_push_just_handed_to_a_worker(
    autojump_clock: MockClock,
) -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        await trio.sleep(0.5)
        return httpx.Response(204)

    push = notifier(answer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(push.run)
        await trio.sleep(0.1)
        push.submit(PushRequest(("bob",), MESSAGE))  # handed to the waiting worker
        await push.finish(10)
        nursery.cancel_scope.cancel()
    assert push.results == {"delivered": 1}


async def test_pushes_counted_dropped_at_a_shutdown_are_not_sent_after_all(
    autojump_clock: MockClock,
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await trio.sleep(2)
        return httpx.Response(204)

    push = notifier(slow, push_concurrency=2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(push.run)
        await trio.sleep(0.1)
        push.submit(PushRequest(("bob", "carol"), MESSAGE))
        await push.finish(1.0)
        await trio.sleep(5)  # with Redis, the node leaves the cluster meanwhile
        nursery.cancel_scope.cancel()
    assert push.results == {"dropped": 2}
