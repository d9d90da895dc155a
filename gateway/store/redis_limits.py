"""Key limits exact across every worker of every instance that uses one Redis: a Lua script per reserve and settle.

Each call is one round trip (EVALSHA; redis-py loads the script again after a
Redis restart) that checks and counts all of a request's asks atomically, so
no two workers anywhere can both take the last request of a minute. What live
requests hold is kept per lease with its expiry (`lease_until`): every call
first purges the expired leases of the rows it touches, so the reservations of
an instance that died free themselves.

Keys (every one expires TTL seconds after its last write, so idle keys go away):
  <prefix>row:<name>     hash  minute requests tokens period spend reserved_tokens reserved_cost
  <prefix>leases:<name>  zset  live lease → lease_until (its count is the name's requests in flight)
  <prefix>held:<name>    hash  lease → "tokens cost" it holds on this name

Numbers cross into Lua as decimal strings and are stored with 17 significant
digits, so a spend read back is the very double written. Times are the
callers' clocks: minutes and budget periods only roll forward, so instances
whose clocks differ by a little never reset each other's counts.

With `background=True` (the gateway's setting) settles leave the request
path: they queue and one greenlet sends whatever has queued in one pipelined
round trip, so a request pays for its reserve only. Until its settle lands, a
finished request still counts as in flight (for a few milliseconds: stricter,
never looser); `close()` sends what is queued.

When Redis is unreachable (or answers an error) the instance enforces limits
on its own `local` LimitState (per instance, exact across its workers), tries
Redis again at most once a second, logs the outage once and its end once, and
`status()` says so. A lease reserved locally is settled locally, wherever Redis
is by then. A lease reserved in Redis whose settle finds Redis down is settled
on `local` as a best effort: its usage is counted there (as one more request,
through a limit-free reservation released at once), its hold in Redis expires
at `lease_until`, and its usage is missing from the Redis counts.
"""
from __future__ import annotations

import collections
import logging
import math
import time
from datetime import datetime, timezone
from typing import Sequence
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from ..types import Ask, LimitState, Verdict
from .redis_state import redact_url

SOCKET_TIMEOUT = 0.25       # seconds for a connect or a reply: a request waits at most this long for Redis
POOL_SIZE = 64              # connections per worker (one per request in a reserve or settle at that moment)
POOL_WAIT = 1.0             # seconds a call waits for a free connection before counting as an outage
OUTAGE_RETRY = 1.0          # seconds between attempts while Redis is unreachable
TTL = 2 * 86400             # seconds a row, its leases and holds outlive their last write
MAX_LOCAL_LEASES = 100_000  # leases reserved locally and not settled yet (a bound against callers that never settle)
SETTLE_BATCH = 256          # settles sent in one pipelined round trip

# Shared by both scripts: loads a row (KEYS[3i-2..3i]), purges its expired leases, rolls its minute forward.
_LOAD = """
local function fmt(x) return string.format('%.17g', x) end
local function load(i, now, minute)    -- now: ARGV text (a Lua number would go out with 14 digits)
  local row, leases, held = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local v = redis.call('HMGET', row, 'minute', 'requests', 'tokens', 'period', 'spend',
                       'reserved_tokens', 'reserved_cost')
  local r = {minute = tonumber(v[1]) or -1, requests = tonumber(v[2]) or 0, tokens = tonumber(v[3]) or 0,
             period = tonumber(v[4]) or -1, spend = tonumber(v[5]) or 0,
             reserved_tokens = tonumber(v[6]) or 0, reserved_cost = tonumber(v[7]) or 0}
  local gone = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 1000)
  if #gone > 0 then
    local holds = redis.call('HMGET', held, unpack(gone))
    for _, hold in ipairs(holds) do
      if hold then
        local t, c = string.match(hold, '^(%S+) (%S+)$')
        r.reserved_tokens = math.max(0, r.reserved_tokens - tonumber(t))
        r.reserved_cost = math.max(0, r.reserved_cost - tonumber(c))
      end
    end
    redis.call('ZREM', leases, unpack(gone))
    redis.call('HDEL', held, unpack(gone))
  end
  r.in_flight = redis.call('ZCARD', leases)
  if r.in_flight == 0 then
    r.reserved_tokens = 0
    r.reserved_cost = 0
  end
  if minute > r.minute then
    r.minute = minute
    r.requests = 0
    r.tokens = 0
  end
  return r
end
local function roll_period(r, period, base_spend)
  if period > r.period then
    r.period = period
    r.spend = base_spend
  end
end
local function store(i, r, ttl)
  redis.call('HSET', KEYS[3 * i - 2], 'minute', fmt(r.minute), 'requests', fmt(r.requests),
             'tokens', fmt(r.tokens), 'period', fmt(r.period), 'spend', fmt(r.spend),
             'reserved_tokens', fmt(r.reserved_tokens), 'reserved_cost', fmt(r.reserved_cost))
  redis.call('EXPIRE', KEYS[3 * i - 2], ttl)
  redis.call('EXPIRE', KEYS[3 * i - 1], ttl)
  redis.call('EXPIRE', KEYS[3 * i], ttl)
end
"""

# ARGV: now, minute, lease, lease_until, ttl, then per ask: rpm tpm parallel budget ('' = none) period
# base_spend tokens cost. Returns {refusing ask's index (0: granted), limit, first row's requests, tokens,
# reserved tokens, spend} after the call.
_RESERVE = _LOAD + """
local now, minute, lease, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[5])
local n = #KEYS / 3
local rows, asks = {}, {}
for i = 1, n do
  local a = 5 + 8 * (i - 1)
  local ask = {rpm = tonumber(ARGV[a + 1]), tpm = tonumber(ARGV[a + 2]), parallel = tonumber(ARGV[a + 3]),
               budget = tonumber(ARGV[a + 4]), tokens = tonumber(ARGV[a + 7]), cost = tonumber(ARGV[a + 8])}
  local r = load(i, now, minute)
  roll_period(r, tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]))
  rows[i], asks[i] = r, ask
end
local refused, limit = 0, ''
for i = 1, n do
  local r, ask = rows[i], asks[i]
  if ask.rpm and r.requests + 1 > ask.rpm then
    limit = 'rpm'
  elseif ask.tpm and not (r.tokens < ask.tpm and (r.tokens + r.reserved_tokens + ask.tokens <= ask.tpm
                                                  or r.in_flight == 0)) then
    limit = 'tpm'
  elseif ask.parallel and r.in_flight + 1 > ask.parallel then
    limit = 'parallel'
  elseif ask.budget and not (r.spend < ask.budget and (r.spend + r.reserved_cost + ask.cost <= ask.budget
                                                       or r.in_flight == 0)) then
    limit = 'budget'
  end
  if limit ~= '' then
    refused = i
    break
  end
end
for i = 1, n do
  local r, ask = rows[i], asks[i]
  if refused == 0 then
    r.requests = r.requests + 1
    r.reserved_tokens = r.reserved_tokens + ask.tokens
    r.reserved_cost = r.reserved_cost + ask.cost
    local tokens, cost = ask.tokens, ask.cost
    local before = redis.call('HGET', KEYS[3 * i], lease)
    if before then      -- the same lease reserving twice holds both
      local t, c = string.match(before, '^(%S+) (%S+)$')
      tokens, cost = tokens + tonumber(t), cost + tonumber(c)
    end
    redis.call('ZADD', KEYS[3 * i - 1], ARGV[4], lease)
    redis.call('HSET', KEYS[3 * i], lease, fmt(tokens) .. ' ' .. fmt(cost))
  end
  store(i, r, ttl)
end
local first = rows[1]
return {refused, limit, first.requests, first.tokens, first.reserved_tokens, fmt(first.spend)}
"""

# ARGV: now, minute, lease, tokens, cost, ttl, then per ask: period base_spend. Returns the first row's spend.
_SETTLE = _LOAD + """
local now, minute, lease, tokens, cost, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]),
                                              tonumber(ARGV[5]), tonumber(ARGV[6])
local first
for i = 1, #KEYS / 3 do
  local a = 6 + 2 * (i - 1)
  local period = tonumber(ARGV[a + 1])
  local r = load(i, now, minute)
  roll_period(r, period, tonumber(ARGV[a + 2]))
  local hold = redis.call('HGET', KEYS[3 * i], lease)
  if hold then
    local t, c = string.match(hold, '^(%S+) (%S+)$')
    r.reserved_tokens = math.max(0, r.reserved_tokens - tonumber(t))
    r.reserved_cost = math.max(0, r.reserved_cost - tonumber(c))
    redis.call('HDEL', KEYS[3 * i], lease)
    redis.call('ZREM', KEYS[3 * i - 1], lease)
    if redis.call('ZCARD', KEYS[3 * i - 1]) == 0 then
      r.reserved_tokens = 0
      r.reserved_cost = 0
    end
  end
  r.tokens = r.tokens + math.max(0, tokens)
  if period == r.period then
    r.spend = r.spend + cost
  end
  store(i, r, ttl)
  if i == 1 then first = r end
end
return fmt(first.spend)
"""

_RETRY_AFTER = {"parallel": 1.0, "budget": 0.0}     # rpm and tpm: to the next minute


class RedisLimits:
    """The LimitState of instances that share Redis (see types.LimitState), falling back to `local`.

    Built in the worker (after gevent patched sockets); the constructor does not
    talk to Redis. Lease ids must be unique per reservation.
    """

    def __init__(self, local: LimitState, url: str, log: logging.Logger, prefix: str = "shin:limit:",
                 clock=time.time, background: bool = False):
        self._local = local
        self._log = log
        self._url = url
        self._shown_url = redact_url(url)
        self._prefix = prefix
        self._clock = clock
        self._pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=POOL_WAIT, socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT, socket_keepalive=True, retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False, health_check_interval=0, decode_responses=True)
        self._client = redis.Redis(connection_pool=self._pool)
        self._reserve = self._client.register_script(_RESERVE)
        self._settle = self._client.register_script(_SETTLE)
        self._local_leases: dict[str, None] = {}    # reserved on `local`: settled there too
        self._down_since: datetime | None = None
        self._down_reason = ""
        self._retry_at = 0.0
        self._checked_at = float("-inf")
        self._background = background
        self._settles: collections.deque = collections.deque()
        self._settler = None
        self._wake = None

    def reserve(self, asks: Sequence[Ask], now: float, lease: str, lease_until: float) -> Verdict:
        if not asks:
            return Verdict(True, None, None, 0.0, None, None, 0.0)
        if self._try_redis():
            args = [repr(float(now)), int(now // 60), lease, repr(float(lease_until)),
                    max(TTL, math.ceil(lease_until - now) + 60)]
            for ask in asks:
                args += [_limit(ask.rpm), _limit(ask.tpm), _limit(ask.parallel), _limit(ask.budget),
                         repr(float(ask.period)), repr(float(ask.base_spend)), int(ask.tokens), repr(float(ask.cost))]
            try:
                reply = self._reserve(keys=self._keys(asks), args=args)
            except (redis.RedisError, OSError) as exc:
                self._outage(exc)
            else:
                self._reachable()
                return _verdict(asks, reply, now)
        verdict = self._local.reserve(asks, now, lease, lease_until)
        if verdict.ok:
            if len(self._local_leases) >= MAX_LOCAL_LEASES:
                self._local_leases.pop(next(iter(self._local_leases)))
            self._local_leases[lease] = None
        return verdict

    def settle(self, asks: Sequence[Ask], lease: str, tokens: int, cost: float, now: float) -> float | None:
        """The first ask's spend after this; None when the settle was queued (`background`)."""
        if not asks:
            return 0.0
        if lease in self._local_leases:
            del self._local_leases[lease]
            return self._local.settle(asks, lease, tokens, cost, now)
        if self._background:
            self._queue_settle((asks, lease, tokens, cost, now))
            return None
        if self._try_redis():
            try:
                spend = self._settle(keys=self._keys(asks), args=self._settle_args(asks, lease, tokens, cost, now))
            except (redis.RedisError, OSError) as exc:
                self._outage(exc)
            else:
                self._reachable()
                return float(spend)
        return self._settle_locally(asks, lease, tokens, cost, now)

    def status(self) -> dict[str, str]:
        """Asks Redis itself (at most once a second), so readiness follows Redis with no key traffic."""
        now = self._clock()
        if now - self._checked_at >= OUTAGE_RETRY:
            self._checked_at = now
            try:
                self._client.ping()
            except (redis.RedisError, OSError) as exc:
                self._outage(exc)
            else:
                self._reachable()
        if self._down_since is None:
            return {"limits": "ok"}
        since = self._down_since.isoformat(timespec="seconds")
        return {"limits": f"unreachable since {since}: {self._down_reason}, enforcing per instance"}

    def close(self) -> None:
        """Send the queued settles (a graceful stop leaves nothing held in Redis), then disconnect."""
        if self._settler is not None:
            self._settler.kill()
            self._settler = None
        while self._settles:
            self._send_settles()
        self._client.close()
        self._pool.disconnect()

    # --- settles off the request path (background) ----------------------------------------------

    def _queue_settle(self, item: tuple) -> None:
        self._settles.append(item)
        if self._settler is None:
            import gevent
            from gevent.event import Event
            self._wake = Event()
            self._settler = gevent.spawn(self._settle_forever)
        self._wake.set()

    def _settle_forever(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._settles:
                self._send_settles()

    def _send_settles(self) -> None:
        """Up to SETTLE_BATCH queued settles in one round trip; to `local` while Redis is down."""
        batch = [self._settles.popleft() for _ in range(min(SETTLE_BATCH, len(self._settles)))]
        if self._try_redis():
            try:
                replies = self._pipelined(batch)
                if any(isinstance(reply, NoScriptError) for reply in replies):   # Redis restarted: load, again
                    self._client.script_load(_SETTLE)
                    retry = [item for item, reply in zip(batch, replies, strict=True)
                             if isinstance(reply, NoScriptError)]
                    replies = self._pipelined(retry)
                    batch = retry
            except (redis.RedisError, OSError) as exc:
                self._outage(exc)
            else:
                self._reachable()
                for reply in replies:
                    if isinstance(reply, Exception):
                        self._log.warning("a key-limit settle failed in Redis (%s): its hold expires with its "
                                          "lease", type(reply).__name__, extra={"event": "redis_settle_failed"})
                return
        for asks, lease, tokens, cost, now in batch:
            self._settle_locally(asks, lease, tokens, cost, now)

    def _pipelined(self, batch: list) -> list:
        pipe = self._client.pipeline(transaction=False)
        for asks, lease, tokens, cost, now in batch:
            pipe.evalsha(self._settle.sha, len(asks) * 3, *self._keys(asks), *self._settle_args(asks, lease, tokens,
                                                                                               cost, now))
        return pipe.execute(raise_on_error=False)

    def _settle_locally(self, asks, lease, tokens, cost, now) -> float:
        """Reserved in Redis, which is gone now: count the usage here, holding nothing of another request's."""
        free = [ask._replace(rpm=None, tpm=None, parallel=None, budget=None, tokens=0, cost=0.0) for ask in asks]
        self._local.reserve(free, now, lease, now + 60.0)
        return self._local.settle(free, lease, tokens, cost, now)

    # --- internals ---------------------------------------------------------------------------

    @staticmethod
    def _settle_args(asks: Sequence[Ask], lease: str, tokens: int, cost: float, now: float) -> list:
        args = [repr(float(now)), int(now // 60), lease, int(tokens), repr(float(cost)), TTL]
        for ask in asks:
            args += [repr(float(ask.period)), repr(float(ask.base_spend))]
        return args

    def _keys(self, asks: Sequence[Ask]) -> list[str]:
        prefix = self._prefix
        keys = []
        for ask in asks:
            keys += [f"{prefix}row:{ask.name}", f"{prefix}leases:{ask.name}", f"{prefix}held:{ask.name}"]
        return keys

    def _try_redis(self) -> bool:
        """Always while Redis answers; during an outage once a second (the caller who gets the try)."""
        if self._down_since is None:
            return True
        now = self._clock()
        if self._retry_at - OUTAGE_RETRY <= now < self._retry_at:   # (a clock set back retries at once)
            return False
        self._retry_at = now + OUTAGE_RETRY
        return True

    def _outage(self, exc: Exception) -> None:
        self._retry_at = self._clock() + OUTAGE_RETRY
        if self._down_since is not None:
            return
        self._down_since = datetime.fromtimestamp(self._clock(), timezone.utc)
        self._down_reason = _reason(exc, self._url)
        self._log.warning("Redis at %s is unreachable (%s): key limits are enforced per instance until it is "
                          "back", self._shown_url, self._down_reason, extra={"event": "redis_down"})

    def _reachable(self) -> None:
        if self._down_since is not None:
            self._down_since = None
            self._log.info("Redis at %s is reachable again: key limits are exact across instances",
                           self._shown_url, extra={"event": "redis_back"})


def _limit(value: float | None) -> str:
    return "" if value is None else repr(value)


def _verdict(asks: Sequence[Ask], reply: list, now: float) -> Verdict:
    refused, limit, requests, tokens, held, spend = reply
    first = asks[0]
    remaining_requests = None if first.rpm is None else max(0, first.rpm - int(requests))
    remaining_tokens = None if first.tpm is None else max(0, first.tpm - int(tokens) - int(held))
    if not refused:
        return Verdict(True, None, None, 0.0, remaining_requests, remaining_tokens, float(spend))
    retry_after = _RETRY_AFTER.get(limit, 60 - now % 60)
    return Verdict(False, limit, asks[refused - 1].name, retry_after, remaining_requests, remaining_tokens,
                   float(spend))


def _reason(exc: Exception, url: str) -> str:
    """The error's type and first line, with the URL's password blanked out."""
    text = (str(exc).splitlines() or [""])[0].strip().rstrip(".")
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***")
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return reason[:200]
