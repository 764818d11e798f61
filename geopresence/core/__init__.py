"""The sans-I/O domain: the hub (sessions, friendships, groups, fan-out) and its features
(presence, nearby friends, nearby strangers, chat). Passed ``now``, returns frames through
a ``Sink``; never imports trio, sockets or files. The seams are in ``context`` and in the
``Protocol`` classes of ``store``, ``broker``, ``journal`` and ``replication``."""
