"""Per-tenant rate limit, kept in Redis so that it holds across every API replica.

GCRA (the generic cell rate algorithm, a token bucket expressed as one timestamp): a tenant may
send ``burst`` requests at once, and then one every ``1 / rate`` seconds on average. The key
``cmanp:tenant:<tenant>:rate`` holds the tenant's theoretical arrival time (TAT, Redis clock in
microseconds). A request at time ``now`` is allowed when ``max(TAT, now) - now <= (burst - 1) *
interval``, and then moves TAT on by one interval; otherwise it is refused, with the wait until
it would be allowed. One Lua script on that single key does both atomically with the Redis
server's clock, so replicas with skewed clocks share one consistent limit, and the key expires
by itself once the tenant is idle long enough for the bucket to be full again.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

from service.errors import TooManyRequestsError
from service.store import KEY_PREFIX

# ARGV: interval (us), tolerance = (burst - 1) * interval (us). Returns 0 if allowed, else the wait (us).
_ACQUIRE = """
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now_us), now_us)
if tat - now_us > tolerance then return tat - tolerance - now_us end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now_us) / 1000))
return 0
"""


def rate_key(tenant: str) -> str:
    return f"{KEY_PREFIX}:tenant:{tenant}:rate"


class RateLimiter:
    def __init__(self, redis: Redis, per_second: float, burst: int) -> None:
        self.per_second = per_second
        self.burst = burst
        self.interval_us = max(1, round(1_000_000 / per_second))
        self._acquire = redis.register_script(_ACQUIRE)

    async def acquire(self, tenant: str) -> None:
        """Count one request of the tenant; 429 with Retry-After (whole seconds, rounded up) if over the limit."""
        args = [self.interval_us, (self.burst - 1) * self.interval_us]
        wait_us = await self._acquire(keys=[rate_key(tenant)], args=args)
        if wait_us > 0:
            retry_after = max(1, math.ceil(wait_us / 1_000_000))
            raise TooManyRequestsError(
                f"rate limit of {self.per_second:g} requests/s (burst {self.burst}) exceeded for this tenant "
                f"(CMANP_RATE_LIMIT_PER_SECOND, CMANP_RATE_LIMIT_BURST); retry in {retry_after} s",
                retry_after,
            )
