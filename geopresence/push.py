"""The push hook (shell): tell a third-party push service about messages for offline users.

The hub calls ``PushNotifier.submit`` for each recipient of a message that has no connected
device; it returns at once. Workers POST the message's JSON plus ``"recipient"`` to
``--push-webhook``, each POST bounded by ``push_timeout`` and retried with exponential
backoff on a network error, a timeout, 429 or 5xx (other statuses are final: the receiver
refused that request). Nothing here can delay a sender's ``sent`` ack or another
connection: the queue is bounded, and a push that does not fit is dropped and counted (the
message itself is stored either way; the device gets it with ``sync``).

Without a webhook URL each push is a log line, so a developer sees that it would happen.
"""

from __future__ import annotations

import logging
from collections import Counter

import httpx
import orjson
import trio

from geopresence.chat import PushRequest, message_frame
from geopresence.config import Config
from geopresence.protocol import unstructure

log = logging.getLogger("geopresence.push")

MAX_BACKOFF_S = 30.0


def push_body(request: PushRequest) -> bytes:
    """The JSON POSTed for ``request``: the ``message`` frame plus ``recipient``."""
    body = unstructure(message_frame(request.message, own=False))
    body["recipient"] = request.recipient
    return orjson.dumps(body)


class PushNotifier:
    """Bounded queue plus ``push_concurrency`` workers POSTing to the webhook.

    ``results`` counts outcomes: ``delivered`` (2xx), ``failed`` (gave up), ``dropped``
    (queue full), ``logged`` (no webhook configured).
    """

    def __init__(self, config: Config, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = config.push_webhook
        self.timeout = config.push_timeout
        self.retries = config.push_retries
        self.concurrency = config.push_concurrency
        self.results: Counter[str] = Counter()
        self._transport = transport
        self._send, self._receive = trio.open_memory_channel[PushRequest](config.push_queue_size)

    def submit(self, request: PushRequest) -> None:
        """Queue ``request`` for the webhook (never blocks)."""
        message = request.message
        if self.url is None:
            self.results["logged"] += 1
            log.info(
                "push (no --push-webhook): message %d from %s to %s",
                message.message_id,
                message.sender,
                request.recipient,
            )
            return
        try:
            self._send.send_nowait(request)
        except trio.WouldBlock:
            self.results["dropped"] += 1
            dropped = self.results["dropped"]
            if dropped in (1, 10, 100) or dropped % 1000 == 0:
                log.warning("push queue full: %d pushes dropped so far", dropped)

    @property
    def queued(self) -> int:
        return self._send.statistics().current_buffer_used

    async def run(self) -> None:
        """Deliver queued pushes until cancelled."""
        if self.url is None:
            return
        async with (
            httpx.AsyncClient(timeout=self.timeout, transport=self._transport) as http,
            trio.open_nursery() as nursery,
        ):
            for _ in range(self.concurrency):
                nursery.start_soon(self._worker, http, self._receive.clone())

    async def _worker(
        self, http: httpx.AsyncClient, receive: trio.MemoryReceiveChannel[PushRequest]
    ) -> None:
        async for request in receive:
            await self._deliver(http, request)

    async def _deliver(self, http: httpx.AsyncClient, request: PushRequest) -> None:
        assert self.url is not None
        body = push_body(request)
        headers = {"content-type": "application/json"}
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await trio.sleep(min(0.5 * 2 ** (attempt - 1), MAX_BACKOFF_S))
            try:
                response = await http.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if response.is_success:
                self.results["delivered"] += 1
                return
            problem = f"HTTP {response.status_code}"
            if response.status_code != 429 and response.status_code < 500:
                break  # the receiver refused this request: retrying will not change that
        self.results["failed"] += 1
        log.warning(
            "push of message %d to %s failed after %d attempt(s): %s",
            request.message.message_id,
            request.recipient,
            attempt + 1,
            problem,
        )
