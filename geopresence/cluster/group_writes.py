"""How a group's replacement and deletion reach Redis (cluster): writers that read the
group first (``state_writes.WRITERS``). Each is idempotent: a write retried after a failure
part way, or repeated, is harmless."""

from __future__ import annotations

from typing import Any

from geopresence.cluster.chat_writes import delete_conversation
from geopresence.cluster.redis_keys import Keys, string, strings
from geopresence.model.records import GroupDeleted, GroupSet


async def write_group_set(client: Any, k: Keys, op: GroupSet) -> list[str]:
    """Returns the members it adds (``notices``: their nodes must hear of the group), also
    when it is a retry: a member whose mark is this op's was added by it. Each member's
    ``groups_of`` is written before its place in the group (and removed before it), so
    that a retry, which goes by the group's hash, repairs a half-done one."""
    key = k.of("group", op.group)
    current = {string(u): string(m) for u, m in (await client.hgetall(key)).items()}
    wanted = set(op.members)
    mark = str(op.joined_after)
    for user in set(current) - wanted:
        await client.srem(k.of("groups_of", user), [op.group])
        await client.hdel(key, [user])
    added = sorted(user for user in wanted if current.get(user, mark) == mark)
    for user in added:
        await client.sadd(k.of("groups_of", user), [op.group])
        await client.hset(key, {user: mark})
    await client.sadd(k.groups, [op.group])
    return added


async def write_group_deleted(client: Any, k: Keys, op: GroupDeleted) -> None:
    key = k.of("group", op.group)
    for user in strings(await client.hkeys(key)):
        await client.srem(k.of("groups_of", user), [op.group])
    await client.delete([key])
    await delete_conversation(client, k, f"g:{op.group}")
    await client.srem(k.groups, [op.group])
