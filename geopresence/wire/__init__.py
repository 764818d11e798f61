"""The WebSocket contract: client and server messages, their codec and error codes
(``protocol``), encoded frames (``outgoing``) and the per-connection queue (``outbox``)."""
