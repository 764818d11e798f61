"""The trio node: listeners and connections (``server``, ``transport``), the HTTP API, push,
metrics, logs and auth. Wires the core to sockets, disk and Redis."""
