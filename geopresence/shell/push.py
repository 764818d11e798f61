"""The push hook (shell): tell a third-party push service about messages for offline users.

The hub calls ``PushNotifier.submit`` for each recipient of a message that has no connected
device; it returns at once. Workers POST the message's JSON plus ``"recipient"`` to
``--push-webhook``, each POST bounded by ``push_timeout`` and retried with exponential
backoff on a network error, a timeout, 429 or 5xx (other statuses are final: the receiver
refused that request). Nothing here can delay a sender's ``sent`` ack or another
connection: the queue is bounded, and a push that does not fit is dropped and counted (the
message itself is stored either way; the device gets it with ``sync``). At shutdown
``finish`` gives the pushes still queued or in flight a bounded time to go out.

Without a webhook URL each push is a log line, so a developer sees that it would happen.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import orjson
import trio

from geopresence.config import Config
from geopresence.core.chat_message_wire import PushRequest, message_frame
from geopresence.model.chat_message import ChatMessage
from geopresence.shell.metrics import Metrics
from geopresence.wire.protocol import unstructure

log = logging.getLogger("geopresence.shell.push")

MAX_BACKOFF_S = 30.0
SUMMARY_INTERVAL_S = 60.0
"""Seconds between two INFO summaries of the pushes logged without a webhook."""


_Push = tuple[str, ChatMessage, int]
"""A queued push: the recipient, the message, and its sequence number (in submit order)."""


def push_body(recipient: str, message: ChatMessage) -> bytes:
    """The JSON POSTed for one recipient: the ``message`` frame plus ``recipient``."""
    body = unstructure(message_frame(message, own=False))
    body["recipient"] = recipient
    return orjson.dumps(body)


class PushNotifier:
    """Bounded queue plus ``push_concurrency`` workers POSTing to the webhook.

    The queue holds one entry per recipient (a group message for 300 offline members is 300
    POSTs). ``results`` counts outcomes per recipient: ``delivered`` (2xx), ``failed`` (gave
    up), ``dropped`` (queue full, or still waiting when ``finish`` gave up), ``logged`` (no
    webhook configured), ``forgotten`` (made before a forget of a user it involves),
    ``online`` (several nodes: the recipient was online in the cluster after all).
    """

    def __init__(self, config: Config, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = config.push_webhook
        self.timeout = config.push_timeout
        self.retries = config.push_retries
        self.concurrency = config.push_concurrency
        self.results: Counter[str] = Counter()
        self._transport = transport
        self._send, self._receive = trio.open_memory_channel[_Push](config.push_queue_size)
        self._drops_logged = 0
        self._unsent = 0  # messages logged (no webhook) since the last summary
        self._forgotten: dict[str, tuple[int, int]] = {}
        """user -> (the last message id issued when it was forgotten, the sequence number of
        the next push submitted after that): kept only while pushes submitted before the
        forget are queued or being sent (``_release_marks``)."""
        self._submitted = 0  # sequence number of the next push submitted
        self._unfinished: set[int] = set()
        """Sequence numbers of the pushes submitted and not done: queued, on their way to a
        worker (a memory channel hands a push to a waiting worker at once, before it runs),
        or being sent. Kept from ``submit`` to the worker's end, so none is ever missed."""
        self._workers: trio.CancelScope | None = None
        self._finishing = False
        self._settled = trio.Event()
        """Set by ``finish`` or a worker once nothing is queued or in flight (``finish``)."""
        self.online: Callable[[str], Awaitable[bool]] | None = None
        """Several nodes: whether a recipient is online in the cluster now (Redis). A node
        keeps the statuses of its sessions' friends and small groups only, so a big group's
        member it saw as offline is checked before its push (counted ``online``)."""

    def submit(self, request: PushRequest) -> None:
        """Queue one POST per recipient of ``request`` (never blocks; what does not fit is
        dropped and counted). Without a webhook: one log line per message."""
        message = request.message
        recipients = request.recipients
        if self.url is None:
            self.results["logged"] += len(recipients)
            shown = ", ".join(recipients[:3]) + (
                f" and {len(recipients) - 3} more" if len(recipients) > 3 else ""
            )
            self._unsent += 1
            log.debug(
                "push (no --push-webhook): message %d from %s to %s",
                message.message_id,
                message.sender,
                shown,
            )
            return
        for index, recipient in enumerate(recipients):
            try:
                self._send.send_nowait((recipient, message, self._submitted))
            except trio.WouldBlock:
                self._dropped(len(recipients) - index)
                return
            self._unfinished.add(self._submitted)
            self._submitted += 1

    def forget(self, user: str, last_id: int) -> int:
        """``user`` was forgotten when ``last_id`` was the last message id issued: drop the
        queued pushes for it or of its messages, and stop those being sent or retried
        before their next attempt. Returns how many were dropped from the queue (counted
        as ``forgotten``)."""
        if self.url is None:
            return 0  # nothing is ever queued or sent
        self._forgotten[user] = (last_id, self._submitted)
        queued: list[_Push] = []
        while True:
            try:
                queued.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        kept: list[_Push] = []
        for recipient, message, number in queued:
            if self._made_before_forget(recipient, message):
                self._unfinished.discard(number)  # done: dropped
            else:
                kept.append((recipient, message, number))
        for item in kept:
            self._send.send_nowait(item)  # fits, and in the same order: it was queued
        dropped = len(queued) - len(kept)
        if dropped:
            self.results["forgotten"] += dropped
        self._release_marks()
        self._check_settled()
        return dropped

    def _made_before_forget(self, recipient: str, message: ChatMessage) -> bool:
        """True if the push involves a forgotten user and predates its forget."""
        for user in (recipient, message.sender, message.to):
            mark = self._forgotten.get(user) if user is not None else None
            if mark is not None and message.message_id <= mark[0]:
                return True
        return False

    def _release_marks(self) -> None:
        """Forget marks whose pushes are all done go: a push submitted after a forget was
        made after it (its message could not involve the user), so only the pushes queued
        or being sent at the forget need the mark. Without this, every forget would cost
        memory for as long as the server runs."""
        if not self._forgotten:
            return
        oldest = min(self._unfinished, default=self._submitted)
        done = [user for user, (_, after) in self._forgotten.items() if after <= oldest]
        for user in done:
            del self._forgotten[user]

    async def finish(self, timeout: float) -> None:
        """Shutdown: wait at most ``timeout`` seconds for the queued and in-flight pushes to
        be delivered (or given up); then the workers stop, and the pushes not done are
        counted ``dropped`` and logged, never lost silently (nor sent after being counted).
        Without a webhook there is nothing to wait for."""
        if self.url is None:
            return
        self._finishing = True
        self._check_settled()
        with trio.move_on_after(timeout):
            await self._settled.wait()
        left = len(self._unfinished)
        if self._workers is not None:
            self._workers.cancel()  # at once, before a counted push can still go out
        if left:
            self.results["dropped"] += left
            log.warning(
                "shutting down: %d push(es) not sent within %g s (--drain-timeout) are dropped",
                left,
                timeout,
            )

    def _check_settled(self) -> None:
        if self._finishing and not self._unfinished:
            self._settled.set()

    def _dropped(self, count: int) -> None:
        self.results["dropped"] += count
        dropped = self.results["dropped"]
        # Logged when the total crosses 1, 10, 100, ... so a flood costs a few lines.
        if dropped >= 10**self._drops_logged:
            while dropped >= 10**self._drops_logged:
                self._drops_logged += 1
            log.warning("push queue full: %d pushes dropped so far", dropped)

    @property
    def queued(self) -> int:
        return self._send.statistics().current_buffer_used

    def register_metrics(self, metrics: Metrics) -> None:
        """``pushes_total`` by outcome and the ``push_queue`` gauge."""
        metrics.counter(
            "pushes_total",
            "Push hook calls for recipients without a connected device, by outcome.",
            lambda: [
                (f'{{result="{result}"}}', self.results[result])
                for result in ("delivered", "failed", "dropped", "logged", "forgotten", "online")
            ],
        )
        metrics.gauge("push_queue", "Pushes waiting for the webhook.", lambda: self.queued)

    async def run(self) -> None:
        """Deliver queued pushes until cancelled (without a webhook: log a summary of the
        pushes that would have been sent, once per ``SUMMARY_INTERVAL_S`` with any)."""
        if self.url is None:
            while True:
                await trio.sleep(SUMMARY_INTERVAL_S)
                if self._unsent:
                    log.info(
                        "push (no --push-webhook): %d message(s) for recipients without a "
                        "connected device in the last %g s (each at DEBUG)",
                        self._unsent,
                        SUMMARY_INTERVAL_S,
                    )
                    self._unsent = 0
        # httpx logs every request at INFO ("HTTP Request: POST URL", a key in the URL
        # included): a push is a line at most on failure (WARNING).
        quiet = logging.getLogger("httpx")
        quiet.setLevel(max(quiet.getEffectiveLevel(), logging.WARNING))
        async with (
            httpx.AsyncClient(timeout=self.timeout, transport=self._transport) as http,
            trio.open_nursery() as nursery,
        ):
            self._workers = nursery.cancel_scope  # ``finish`` stops them
            for _ in range(self.concurrency):
                nursery.start_soon(self._worker, http, self._receive.clone())

    async def _worker(
        self,
        http: httpx.AsyncClient,
        receive: trio.MemoryReceiveChannel[_Push],
    ) -> None:
        async for recipient, message, number in receive:
            try:
                if self.online is not None and await self.online(recipient):
                    self.results["online"] += 1
                    continue
                await self._deliver(http, recipient, message)
            except Exception:
                # A push is never worth the server: count it, log it, take the next one.
                self.results["failed"] += 1
                log.exception("push of message %d to %s failed", message.message_id, recipient)
            finally:
                self._unfinished.discard(number)
                self._release_marks()
                self._check_settled()

    async def _deliver(self, http: httpx.AsyncClient, recipient: str, message: ChatMessage) -> None:
        assert self.url is not None
        body = push_body(recipient, message)
        headers = {"content-type": "application/json"}
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await trio.sleep(min(0.5 * 2 ** (attempt - 1), MAX_BACKOFF_S))
            if self._made_before_forget(recipient, message):
                self.results["forgotten"] += 1
                return
            # httpx times each connect/read/write step; this bounds the whole request, so a
            # receiver that trickles its answer cannot hold a worker.
            with trio.move_on_after(self.timeout) as attempt_scope:
                try:
                    # Only the status is read: a receiver's body, however long, is not
                    # (the connection is closed unread).
                    stream = http.stream("POST", self.url, content=body, headers=headers)
                    async with stream as response:
                        pass
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    continue
            if attempt_scope.cancelled_caught:
                problem = f"no complete answer within {self.timeout:g} s"
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
            message.message_id,
            recipient,
            attempt + 1,
            problem,
        )
