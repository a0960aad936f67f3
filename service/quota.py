"""The session quota: at most ``max_sessions`` live sessions per tenant, counted in Redis.

Each tenant has one sorted set, ``cmanp:tenant:<tenant>:sessions``: member = session id, score
= the earliest time (Redis clock, ms) the session can expire. Creating a session first admits
it with one Lua script on that single key (so the count holds across API replicas, and the
script is Redis Cluster safe): if fewer than ``max_sessions`` are counted, the id is added with
score now + TTL; otherwise the answer is 403, after the check below.

Every use of a session pushes its expiry further out (``service.store`` refreshes the TTL), so
a score is a lower bound: a session whose score has passed may still be alive. Only when the
quota is full does admission look at those entries. Each one's meta key is asked its remaining
TTL (single-key commands: the session lives in another slot): gone means the session expired,
and its entry is removed; alive means its score is moved to its real expiry. Then admission is
tried again. So a deleted session frees its slot at once (DELETE removes its entry), and an
expired one frees it at the latest when a create finds the quota full. The set never holds more
than ``max_sessions`` entries, which bounds the work of that check.

Session ids are never reused, so removing an entry for a session verified gone cannot remove a
live one. A session just admitted is not yet written, but its score lies a whole TTL ahead, so
no concurrent check looks at it before it exists.
"""

from __future__ import annotations

from redis.asyncio import Redis

from service.errors import ForbiddenError
from service.store import KEY_PREFIX, session_keys
from service.text import plural

ADMIT_ATTEMPTS = 3  # admit, check expired entries, admit again; one more for a concurrent creator

# ARGV: session id, TTL (ms), limit. Returns {'ok'}, or {'full', ids whose score has passed}.
_ADMIT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
  return {'ok'}
end
return {'full', redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms)}
"""


def sessions_key(tenant: str) -> str:
    # Tenant names never contain ':' (API_KEYS entries are 'tenant:key').
    return f"{KEY_PREFIX}:tenant:{tenant}:sessions"


class SessionQuota:
    def __init__(self, redis: Redis, max_sessions: int) -> None:
        self.redis = redis
        self.max_sessions = max_sessions
        self._admit = redis.register_script(_ADMIT)

    async def admit(self, tenant: str, session_id: str, ttl_seconds: int) -> None:
        """Count a new session against its tenant's quota; 403 if the quota is full of live sessions."""
        key = sessions_key(tenant)
        for _ in range(ADMIT_ATTEMPTS):
            reply = await self._admit(keys=[key], args=[session_id, ttl_seconds * 1000, self.max_sessions])
            if reply[0] == b"ok":
                return
            if not await self._forget_expired(key, [member.decode() for member in reply[1]]):
                break
        raise ForbiddenError(
            f"this tenant already has {plural(self.max_sessions, 'live session')}, the limit "
            "(CMANP_MAX_SESSIONS_PER_TENANT); delete one or let one expire"
        )

    async def release(self, tenant: str, session_id: str) -> None:
        """Stop counting a session (deleted, or never written)."""
        await self.redis.zrem(sessions_key(tenant), session_id)

    async def _forget_expired(self, key: str, candidates: list[str]) -> bool:
        """Remove the candidates whose session is gone, re-score the live ones; True if any was removed."""
        if not candidates:
            return False
        seconds, micros = await self.redis.time()  # not in the pipeline: a cluster pipeline needs keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in candidates:
                pipe.pttl(session_keys(session_id)[0])
            ttls = await pipe.execute()
        now_ms = seconds * 1000 + micros // 1000
        gone = [session_id for session_id, ttl in zip(candidates, ttls, strict=True) if ttl == -2]
        alive = {session_id: now_ms + ttl for session_id, ttl in zip(candidates, ttls, strict=True) if ttl >= 0}
        async with self.redis.pipeline(transaction=False) as pipe:
            if gone:
                pipe.zrem(key, *gone)
            if alive:
                pipe.zadd(key, alive, xx=True)  # xx: never re-add an entry a DELETE removed meanwhile
            await pipe.execute()
        return bool(gone)
