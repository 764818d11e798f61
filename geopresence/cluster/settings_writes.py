"""Settings stored in Redis with a version (cluster): ``gp:settings:{U}``.

A node keeps only the settings its sessions need (``geopresence.cluster.kept_settings``) and
hears changes on the users' channels, possibly out of order and from several nodes: each
change is stored by a script (``SET_SETTINGS``) that gives it a version above the last one
and Redis' time, and the version travels with it. Many changes share one pipeline
(``SetSettings``): one round trip however many, as blind writes do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from geopresence.cluster.presence_scripts import PipelinedScript
from geopresence.cluster.redis_keys import Keys
from geopresence.core.state import settings_from
from geopresence.core.store import DEFAULT_SETTINGS
from geopresence.model.records import SettingsChanged

SET_SETTINGS: Final = """
-- KEYS[1]: gp:settings:{U}; ARGV[1]: the settings' JSON object, without "v".
-- Stores it with a version above the previous one and the time (microseconds), so that
-- versions order the changes made through any node, a forgotten user's included. The
-- JSON is spliced, never decoded: floats stay as written.
local old = redis.call('GET', KEYS[1])
local v = 0
if old then v = tonumber(cjson.decode(old)['v']) or 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now > v then v = now else v = v + 1 end
redis.call('SET', KEYS[1], '{"v":' .. string.format('%d', v) .. ',' .. string.sub(ARGV[1], 2))
return v
"""


def settings_json(record: SettingsChanged) -> str:
    """The settings of ``record`` as stored (``SET_SETTINGS`` adds the version)."""
    return orjson.dumps(
        {
            "share_location": record.share_location,
            "radius_m": record.radius_m,
            "visible_to_strangers": record.visible_to_strangers,
        }
    ).decode()


class SetSettings:
    """Stores settings changes for one node's journal (``SET_SETTINGS`` by its SHA)."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self._script = PipelinedScript(SET_SETTINGS)

    async def __call__(self, changes: Sequence[SettingsChanged]) -> list[int]:
        """Store each change, in order, in one pipeline; returns their versions. The key
        stays at the defaults too (its version must go on rising); the index
        ``gp:settings_users`` lists the others."""
        client, keys = self._client, self._keys
        async with self._script.ready(client) as sha:
            async with client.pipeline(transaction=False) as pipe:
                requests = []
                for change in changes:
                    key = keys.of("settings", change.user)
                    requests.append(pipe.evalsha(sha, keys=[key], args=[settings_json(change)]))
                    if settings_from(change) == DEFAULT_SETTINGS:
                        pipe.srem(keys.settings_users, [change.user])
                    else:
                        pipe.sadd(keys.settings_users, [change.user])
            return [int(await request) for request in requests]
