"""The WebSocket contract: client and server messages, their codec and error codes
(``protocol``), and encoded frames with the per-connection queue (``outbox``)."""
