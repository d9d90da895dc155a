"""Router state shared by several instances through Redis, on top of each instance's shared memory.

Requests never talk to Redis. The hot path (begin, end, add_tokens,
observe_latency, stats) works on the instance's own `SharedMemoryState` and
adds what the other instances reported, as of the last exchange. One sync
greenlet per worker makes that exchange every `interval` seconds, in one
pipeline: it publishes this worker's own cells, beats its heartbeat, reads the
workers of other instances and the cooldowns of every name the router asked
about, and pushes the failures and cooldowns recorded since the last one
(through a Lua script, so that counting a failure and cooling are atomic
across instances). Failures and cooldowns also apply locally at once, so this
instance never waits for Redis to react.

Keys (every one expires; names are deployment ids, so two configs sharing ids agree):
  shin:state:workers          zset  heartbeat: worker → Redis server time (s)
  shin:state:worker:<worker>  hash  name → "in_flight minute requests tokens latency ttft"
  shin:state:fails:<name>     zset  failures of the last 60 s, all instances
  shin:state:cool:<name>      str   "until kind retry_after", expiring at `until`
where <worker> is "<instance id>:<pid>:<random>".

When Redis is unreachable or answers an error the instance serves on its
local state: counters from other instances older than STALE seconds are
dropped, the outage is logged once (and its end), and `status()` says so.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from collections import deque
from datetime import datetime, timezone
from typing import Sequence
from urllib.parse import urlsplit, urlunsplit

import gevent
import redis
from gevent.event import Event
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..types import Cooldown, EntityStats
from .shared_memory import SharedMemoryState

PREFIX = "shin:state:"
WORKER_TTL = 5.0        # seconds a worker's cells (and heartbeat) outlive its last exchange
STALE = 3.0             # seconds after which counters from other instances no longer count
WINDOW = 60             # seconds a failure counts towards a cooldown (as in shared memory)
SOCKET_TIMEOUT = 0.5
OUTAGE_RETRY = 1.0      # seconds between attempts while Redis is unreachable
MAX_PENDING = 1000      # failures and cooldowns kept for Redis while it is unreachable

# KEYS: workers zset, this worker's hash. ARGV: member, ttl ms. Beats the heartbeat and returns the
# workers seen within the ttl, by Redis server time (so the hosts' clocks need not agree).
_HEARTBEAT = """
local now = redis.call('TIME')
local seconds = tonumber(now[1]) + tonumber(now[2]) / 1000000
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], seconds, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', seconds - ttl / 1000)
redis.call('PEXPIRE', KEYS[1], 60000)
redis.call('PEXPIRE', KEYS[2], ttl)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# KEYS: the name's failure window, its cooldown. ARGV: at ('' = cool at once), now, threshold,
# until, kind, retry_after, member. A cooldown is never shortened; cooling clears the window.
_COOL = """
local now = tonumber(ARGV[2])
local until_ = tonumber(ARGV[4])
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[7])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - %d)
  redis.call('PEXPIRE', KEYS[1], %d)
  if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then return 0 end
end
if until_ <= now then return 0 end
if ARGV[1] ~= '' then redis.call('DEL', KEYS[1]) end
local held = redis.call('GET', KEYS[2])
if held and tonumber(string.match(held, '^%%S+')) >= until_ then return 0 end
redis.call('SET', KEYS[2], ARGV[4] .. ' ' .. ARGV[5] .. ' ' .. ARGV[6], 'PX', math.ceil((until_ - now) * 1000))
return 1
""" % (WINDOW, WINDOW * 1000)


class RedisState:
    """The RouterState of instances that share Redis: local shared memory plus the others' last report.

    The sync greenlet starts in the constructor, after one first exchange (so a
    new worker knows the cooldowns in force and `status()` is true from the
    start); the constructor runs in the worker, after gevent patched sockets.
    """
    backend = "redis"

    def __init__(self, local: SharedMemoryState, url: str, log: logging.Logger, *, interval: float = 0.1):
        self._local = local
        self._log = log
        self._interval = interval
        self._url = url
        self._shown_url = redact_url(url)
        self._client = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT, socket_keepalive=True,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0, max_connections=2,
            decode_responses=True)
        self._member = f"{local.instance_id}:{os.getpid()}:{secrets.token_hex(4)}"
        self._own_prefix = f"{local.instance_id}:"
        self._worker_key = f"{PREFIX}worker:{self._member}"
        self._known: set[str] = set()
        self._names: list[str] = []
        self._others: list[str] = []            # other instances' workers, as of the last exchange
        self._remote: dict[str, tuple] = {}     # name → (in_flight, minute, requests, tokens, latency, ttft)
        self._remote_at = -STALE                # time.monotonic() of the last good exchange
        self._cooldowns: dict[str, Cooldown] = {}
        self._pending: deque = deque(maxlen=MAX_PENDING)
        self._sequence = 0
        self._down_since: datetime | None = None
        self._down_reason = ""
        self._wake = Event()
        self._closed = False
        self.sync()
        self._loop = gevent.spawn(self._run)

    # --- the hot path: local state and cached attributes only --------------------------------

    def begin(self, name: str) -> None:
        self._local.begin(name)
        if name not in self._known:
            self._learn((name,))

    def end(self, name: str) -> None:
        self._local.end(name)

    def add_tokens(self, name: str, tokens: int) -> None:
        self._local.add_tokens(name, tokens)
        if name not in self._known:
            self._learn((name,))

    def observe_latency(self, name: str, seconds: float, first_token: bool) -> None:
        self._local.observe_latency(name, seconds, first_token)
        if name not in self._known:
            self._learn((name,))

    def stats(self, names: Sequence[str]) -> list[EntityStats]:
        local = self._local.stats(names)
        if not self._known.issuperset(names):
            self._learn(names)
        cooldowns = self._cooldowns
        remote = self._remote if time.monotonic() - self._remote_at <= STALE else {}
        if not remote and not cooldowns:
            return local
        now = self._local.clock()
        minute = int(now // 60)
        out = []
        for name, mine in zip(names, local, strict=True):
            theirs = remote.get(name)
            cooldown = cooldowns.get(name)
            if theirs is None and cooldown is None:
                out.append(mine)
                continue
            if cooldown is None or cooldown.until <= now or (
                    mine.cooldown is not None and mine.cooldown.until >= cooldown.until):
                cooldown = mine.cooldown        # the longer of this instance's and the others'
            out.append(_combine(mine, theirs, minute, cooldown) if theirs else mine._replace(cooldown=cooldown))
        return out

    # --- failures and cooldowns: local at once, Redis from the sync greenlet ------------------

    def record_failure(self, name: str, threshold: int, cooldown: Cooldown) -> Cooldown | None:
        held = self._local.record_failure(name, threshold, cooldown)
        self._push(name, self._local.clock(), max(1, threshold), cooldown)
        theirs = self._cooldowns.get(name)
        if theirs is not None and theirs.until > self._local.clock() and (held is None or theirs.until > held.until):
            return theirs
        return held

    def cool(self, name: str, cooldown: Cooldown) -> None:
        self._local.cool(name, cooldown)
        self._push(name, None, 0, cooldown)

    # --- per instance ------------------------------------------------------------------------

    def claim_probe(self, interval: float) -> bool:
        return self._local.claim_probe(interval)

    def publish_health(self, report: bytes) -> None:
        self._local.publish_health(report)

    def health_report(self) -> bytes | None:
        return self._local.health_report()

    def status(self) -> dict[str, str]:
        if self._down_since is None:
            return {"state": "redis", "redis": "ok"}
        since = self._down_since.isoformat(timespec="seconds")
        return {"state": "redis", "redis": f"unreachable since {since}: {self._down_reason}, serving on local state"}

    def close(self) -> None:
        """Stop syncing, take this worker's cells out of Redis at once, then close the local state."""
        if self._closed:
            return
        self._closed = True
        self._loop.kill(block=True, timeout=1)
        if self._down_since is None:
            try:
                with self._client.pipeline(transaction=False) as pipe:
                    pipe.delete(self._worker_key)
                    pipe.zrem(f"{PREFIX}workers", self._member)
                    pipe.execute()
            except (redis.RedisError, OSError):
                pass    # the keys expire within WORKER_TTL anyway
        self._client.close()
        self._local.close()

    # --- the sync greenlet -------------------------------------------------------------------

    def sync(self) -> bool:
        """One exchange with Redis (the loop's tick; tests call it too). False while Redis is unreachable."""
        batch = list(self._pending)
        self._pending.clear()
        try:
            others, remote, cooldowns = self._exchange(batch)
        except Exception as exc:    # any failure of Redis (or of what it holds) means: serve locally
            self._requeue(batch)
            self._outage(exc)
            return False
        self._others, self._remote, self._remote_at, self._cooldowns = others, remote, time.monotonic(), cooldowns
        if self._down_since is not None:
            self._log.info("Redis at %s is reachable again: router state is shared with other instances",
                           self._shown_url, extra={"event": "redis_back"})
            self._down_since = None
        return True

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._interval if self._down_since is None else max(self._interval, OUTAGE_RETRY))
            self._wake.clear()
            if not self._closed:
                self.sync()

    def _exchange(self, batch: list) -> tuple[list[str], dict[str, tuple], dict[str, Cooldown]]:
        names = self._names
        now = self._local.clock()
        minute = int(now // 60)
        cells = {name: f"{cell.in_flight} {minute} {cell.requests} {cell.tokens} {_number(cell.latency)} "
                       f"{_number(cell.ttft)}"
                 for name, cell in zip(names, self._local.worker_cells(names), strict=True)}
        others = self._others
        # Plain EVAL, not EVALSHA: a script cache emptied by a Redis restart costs nothing here.
        with self._client.pipeline(transaction=False) as pipe:
            for name, at, threshold, cooldown, event in batch:
                pipe.eval(_COOL, 2, f"{PREFIX}fails:{name}", f"{PREFIX}cool:{name}",
                          "" if at is None else repr(at), repr(now), threshold, repr(cooldown.until), cooldown.kind,
                          _number(cooldown.retry_after), event)
            if cells:
                pipe.hset(self._worker_key, mapping=cells)
            pipe.eval(_HEARTBEAT, 2, f"{PREFIX}workers", self._worker_key, self._member, int(WORKER_TTL * 1000))
            for member in others:
                pipe.hgetall(f"{PREFIX}worker:{member}")
            if names:
                pipe.mget([f"{PREFIX}cool:{name}" for name in names])
            replies = pipe.execute()
        replies = replies[len(batch) + (1 if cells else 0):]
        members = replies[0]
        hashes = replies[1:1 + len(others)]
        held = replies[1 + len(others)] if names else []
        return ([m for m in members if not m.startswith(self._own_prefix)], _remote(others, hashes, minute),
                _cooldowns(names, held, now))

    # --- internals ---------------------------------------------------------------------------

    def _learn(self, names) -> None:
        """A name the router has not asked about before: fetch its cooldown at the next chance, not the next tick."""
        self._known.update(names)
        self._names = sorted(self._known)
        self._wake.set()

    def _push(self, name: str, at: float | None, threshold: int, cooldown: Cooldown) -> None:
        if name not in self._known:
            self._learn((name,))
        self._sequence += 1     # the event's own id: sent again after an outage, a failure still counts once
        self._pending.append((name, at, threshold, cooldown, f"{self._member}:{self._sequence}"))
        self._wake.set()

    def _requeue(self, batch: list) -> None:
        """Keep what still matters for when Redis is back: failures within the window, live cooldowns."""
        now = self._local.clock()
        kept = [event for event in batch if (event[1] is None and event[3].until > now)
                or (event[1] is not None and event[1] > now - WINDOW)]
        self._pending = deque(kept + list(self._pending), maxlen=MAX_PENDING)     # the newest, if too many

    def _outage(self, exc: Exception) -> None:
        if self._down_since is not None:
            return
        self._down_since = datetime.now(timezone.utc)
        self._down_reason = self._reason(exc)
        self._log.warning("Redis at %s is unreachable (%s): serving on this instance's router state until it "
                          "is back", self._shown_url, self._down_reason, extra={"event": "redis_down"})

    def _reason(self, exc: Exception) -> str:
        text = (str(exc).splitlines() or [""])[0].strip().rstrip(".")
        password = urlsplit(self._url).password
        if password:
            text = text.replace(password, "***")
        reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        return reason[:200]


def redact_url(url: str) -> str:
    """The URL without its user-info (Redis passwords live there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an invalid URL)"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _number(value: float | None) -> str:
    return "-" if value is None else repr(float(value))


def _float(text: str) -> float | None:
    return None if text == "-" else float(text)


def _remote(members: list[str], hashes: list[dict], minute: int) -> dict[str, tuple]:
    """Other instances' cells added up per name; latencies averaged per instance, then over instances."""
    totals: dict[str, list] = {}
    latencies: dict[tuple[str, str, int], list[float]] = {}     # (name, instance, 4|5) → workers' values
    for member, cells in zip(members, hashes, strict=True):
        instance = member.split(":", 1)[0]
        for name, cell in cells.items():
            try:
                flying, at, asked, used, latency, ttft = cell.split(" ")
                flying, at, asked, used, latency, ttft = (int(flying), int(at), int(asked), int(used),
                                                          _float(latency), _float(ttft))
            except ValueError:
                continue    # not ours, or from another version: ignore rather than fail the exchange
            total = totals.setdefault(name, [0, 0, 0])
            total[0] += max(flying, 0)
            if at == minute:
                total[1] += asked
                total[2] += used
            if latency is not None:
                latencies.setdefault((name, instance, 4), []).append(latency)
            if ttft is not None:
                latencies.setdefault((name, instance, 5), []).append(ttft)
    averages: dict[tuple[str, int], list[float]] = {}
    for (name, _instance, field), values in latencies.items():
        averages.setdefault((name, field), []).append(sum(values) / len(values))
    return {name: (flying, minute, asked, used, averages.get((name, 4)), averages.get((name, 5)))
            for name, (flying, asked, used) in totals.items()}


def _cooldowns(names: list[str], held: list[str | None], now: float) -> dict[str, Cooldown]:
    out = {}
    for name, value in zip(names, held, strict=True):
        if not value:
            continue
        try:
            until, kind, retry_after = value.split(" ")
            cooldown = Cooldown(float(until), kind, _float(retry_after))
        except ValueError:
            continue
        if cooldown.until > now:
            out[name] = cooldown
    return out


def _combine(mine: EntityStats, theirs: tuple, minute: int, cooldown: Cooldown | None) -> EntityStats:
    flying, at, asked, used, latencies, ttfts = theirs
    if at != minute:
        asked = used = 0
    return EntityStats(mine.in_flight + flying, mine.requests + asked, mine.tokens + used,
                       _mean(mine.latency, latencies), _mean(mine.ttft, ttfts), cooldown)


def _mean(mine: float | None, theirs: list[float] | None) -> float | None:
    """This instance's average and each other instance's, weighted alike (workers' sample counts are not shared)."""
    values = ([mine] if mine is not None else []) + (theirs or [])
    return sum(values) / len(values) if values else None
