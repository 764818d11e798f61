"""geopresence: a real-time presence and nearby-friends server.

Embedding::

    async with trio.open_nursery() as nursery:
        running = await nursery.start(geopresence.serve, geopresence.Config(port=0, http_port=0))
        print(running.ws_url, running.http_url)
        ...
        running.stop()
"""

from geopresence.config import Config
from geopresence.shell.server import RunningServer, serve

__all__ = ["Config", "RunningServer", "serve"]
__version__ = "0.1.0"
