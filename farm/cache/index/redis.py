"""Cluster cache index in Redis: the key layout is in farm/cache/keys.py; multi-key writes are MULTI pipelines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis

from farm.cache import keys
from farm.cache.index import (
    GONE,
    Claim,
    ClusterIndex,
    IndexedArtifact,
    WorkerStatus,
    build_fields,
    indexed_from,
    least_recent_first,
)
from farm.cache.store import FORMAT_VERSION, ArtifactMeta, stored_meta
from farm.config import masked
from farm.errors import BackendRefusedWrite, BackendUnavailable, IntegrityError

T = TypeVar("T")

# The lock, or its holder, in one round trip; a lock taken is filed under its expiry (Redis's clock) in the
# locks ZSET, so the work in flight is counted without a SCAN over the whole keyspace. A function, for the scripts
# that take it (this one and _HIT_OR_ACQUIRE). Keys: farm:lock:{key}, farm:locks. Args: task ID, TTL (ms).
_ACQUIRE_FN = """
local function acquire(lock, locks, task, ttl)
  if redis.call('SET', lock, task, 'NX', 'PX', ttl) then
    local now = redis.call('TIME')
    redis.call('ZADD', locks, now[1] * 1000 + math.floor(now[2] / 1000) + ttl, lock)
    return task
  end
  return redis.call('GET', lock)
end
"""
_ACQUIRE = _ACQUIRE_FN + "return acquire(KEYS[1], KEYS[2], ARGV[1], ARGV[2])\n"
# Delete the lock only if it still names this task (compare-and-delete).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('ZREM', KEYS[2], KEYS[1])
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Locks past their expiry leave the ZSET when counted: what stays is the work in flight.
_INFLIGHT = """
local now = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now[1] * 1000 + math.floor(now[2] / 1000))
return redis.call('ZCARD', KEYS[1])
"""
# Index an artifact; the first time its key is indexed, add its size to the stored bytes (a counter, so a
# scrape reads the store's size without going through every artifact) and note what was added ('counted'), which
# an eviction takes off again. A function, for the scripts that index (this one and _HIT_OR_ACQUIRE). Keys:
# farm:art:{key}, farm:artifacts, farm:idx:{target}, farm:counters, farm:refs:{key}. Args: meta JSON, key,
# pattern ID, size, target, created_at.
_RECORD_FN = """
local function record(art, artifacts, index, counters, refs, meta, key, pattern, size, target, created)
  redis.call('HSET', art, 'meta', meta, 'size', size, 'target', target, 'created', created)
  redis.call('HSET', index, pattern, key)
  redis.call('SADD', refs, target .. '\\0' .. pattern)
  if redis.call('SADD', artifacts, key) == 1 then
    redis.call('HINCRBYFLOAT', counters, 'artifact_bytes_indexed', size)
    redis.call('HSET', art, 'counted', size)
  end
end
"""
_RECORD = _RECORD_FN + """
record(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return 0
"""
# A build indexed and counted in one round trip (note_build; note_build_if_new when ARGV[7] is '1': then only if the
# artifact has no entry, i.e. no metadata, yet). Keys and ARGV[1..6] as _RECORD's; ARGV[8..]: counter, amount, ...
# (build_fields). Returns 1 if it indexed and counted the build.
_NOTE_BUILD = _RECORD_FN + """
if ARGV[7] == '1' and redis.call('HEXISTS', KEYS[1], 'meta') == 1 then
  return 0
end
record(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
for i = 8, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[4], ARGV[i], ARGV[i + 1])
end
return 1
"""
# A coordinator's request, decided and counted in one round trip (ClusterIndex.hit_or_acquire). A hit when the
# metadata decodes, is of this format and ARGV[4] vouches for the object ('stored', or the sha256 of the node's copy
# when the metadata names those bytes): indexed and counted as note_hit(hot=True) does, returning {1, meta}. No usable
# metadata, or 'gone': a miss, counted as note_miss does, and the lock taken: {0, holder}. Otherwise ('unknown', a
# copy of other bytes): {2}, nothing done. Keys: farm:art:{key}, farm:artifacts, farm:idx:{target}, farm:counters,
# farm:refs:{key}, farm:hot, farm:lock:{key}, farm:locks. Args: key, pattern ID, target, evidence, format version,
# now (the last-hit time, the caller's clock as touch() writes it), task ID, lock TTL (ms).
_HIT_OR_ACQUIRE = _RECORD_FN + _ACQUIRE_FN + """
local function usable(text)
  local ok, meta = pcall(cjson.decode, text)
  if ok and type(meta) == 'table' and meta.format_version == tonumber(ARGV[5]) and type(meta.sha256) == 'string'
      and type(meta.size) == 'number' and type(meta.created_at) == 'number' then
    return meta
  end
end
local text = redis.call('HGET', KEYS[1], 'meta')
local meta = text and usable(text)
if meta and ARGV[4] ~= 'gone' then
  if ARGV[4] ~= 'stored' and ARGV[4] ~= meta.sha256 then
    return {2}
  end
  record(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], text, ARGV[1], ARGV[2], string.format('%d', meta.size),
         ARGV[3], string.format('%.17g', meta.created_at))
  redis.call('HSET', KEYS[1], 'last_hit', ARGV[6])
  redis.call('HINCRBYFLOAT', KEYS[4], 'requests', 1)
  redis.call('HINCRBYFLOAT', KEYS[4], 'hits', 1)
  redis.call('ZINCRBY', KEYS[6], 1, ARGV[2])
  return {1, text}
end
redis.call('HINCRBYFLOAT', KEYS[4], 'requests', 1)
redis.call('HINCRBYFLOAT', KEYS[4], 'misses', 1)
redis.call('ZINCRBY', KEYS[6], 1, ARGV[2])
return {0, acquire(KEYS[7], KEYS[8], ARGV[7], ARGV[8])}
"""
# Evict an artifact's entry (the caller deletes its object afterwards): unless it was used after ARGV[2] (when
# given), remove the index entries still pointing at it (farm:idx:{target} hashes, named from ARGV[3], the
# prefix, and its refs: one Redis, no cluster slots), the direct-mode keys still pointing at it (named from
# ARGV[4], their prefix, and farm:directs:{key}), its hash, refs and directs, and take its counted size off the
# indexed bytes, all in one step. Keys: farm:art:{key}, farm:artifacts, farm:counters, farm:refs:{key},
# farm:directs:{key}. Args: key, unused_since or '', the index prefix, the direct-mode key prefix. Returns 1 if it
# was indexed and is gone.
_FORGET = """
local function drop_directs()
  for _, direct in ipairs(redis.call('SMEMBERS', KEYS[5])) do
    if redis.call('GET', ARGV[4] .. direct) == ARGV[1] then
      redis.call('DEL', ARGV[4] .. direct)
    end
  end
  redis.call('DEL', KEYS[5])
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then
  drop_directs()
  redis.call('DEL', KEYS[1], KEYS[4])
  return 0
end
if ARGV[2] ~= '' then
  local used = tonumber(redis.call('HGET', KEYS[1], 'last_hit') or redis.call('HGET', KEYS[1], 'created') or '')
  if used and used > tonumber(ARGV[2]) then
    return 0
  end
end
for _, ref in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local cut = string.find(ref, '\\0', 1, true)
  local index, pattern = ARGV[3] .. string.sub(ref, 1, cut - 1), string.sub(ref, cut + 1)
  if redis.call('HGET', index, pattern) == ARGV[1] then
    redis.call('HDEL', index, pattern)
  end
end
local counted = redis.call('HGET', KEYS[1], 'counted')
if counted then
  redis.call('HINCRBYFLOAT', KEYS[3], 'artifact_bytes_indexed', -tonumber(counted))
end
drop_directs()
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[4])
return 1
"""
# Zero the counters, keeping the indexed bytes (a gauge of what is stored, kept in the same hash).
_ZERO = """
local kept = redis.call('HGET', KEYS[1], 'artifact_bytes_indexed')
redis.call('DEL', KEYS[1])
if kept then
  redis.call('HSET', KEYS[1], 'artifact_bytes_indexed', kept)
end
return 0
"""


def _client(url: str) -> Any:
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30,
                                retry_on_timeout=True)


class RedisIndex(ClusterIndex):
    def __init__(self, url: str, client: redis.Redis | None = None, broker_url: str | None = None) -> None:
        """broker_url: where Celery's queues are, when the broker is another Redis database or server than the
        index (deploy/ gives each its own database); their lengths are read there."""
        self.url = url
        # Typed as Any: redis-py declares bytes | str results for a client that always returns bytes here.
        self.r: Any = client or _client(url)
        self._broker_url = broker_url if broker_url and broker_url != url else None
        self._broker: Any = None
        self._acquire = self.r.register_script(_ACQUIRE)
        self._release = self.r.register_script(_RELEASE)
        self._inflight = self.r.register_script(_INFLIGHT)
        self._record_script = self.r.register_script(_RECORD)
        self._note_build_script = self.r.register_script(_NOTE_BUILD)
        self._hit_or_acquire = self.r.register_script(_HIT_OR_ACQUIRE)
        self._forget = self.r.register_script(_FORGET)
        self._zero = self.r.register_script(_ZERO)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.exceptions.ConnectionError as exc:
            raise BackendUnavailable(f"Redis at {masked(self.url)} is unreachable: {exc}") from None
        except redis.exceptions.NoPermissionError as exc:
            raise BackendRefusedWrite(f"Redis at {masked(self.url)} refused this user a command ({exc}); a node with "
                                      "read access only runs with FARM_SHARED_MODE=read-only") from None

    def _call(self, fn: Callable[[], T]) -> T:
        with self._errors():
            return fn()

    # --- CacheIndex ---
    def lookup(self, pattern_id: str, target: str) -> str | None:
        value = self._call(lambda: self.r.hget(keys.index(target), pattern_id))
        return value.decode() if value else None

    def meta(self, key: str) -> ArtifactMeta | None:
        value = self._call(lambda: self.r.hget(keys.artifact(key), "meta"))
        return stored_meta(value.decode()) if value else None

    def _record(self, pipe: Any, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        self._record_script(*_record_call(pattern_id, target, meta), client=pipe)

    def record(self, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        with self._errors():
            pipe = self.r.pipeline(transaction=True)
            self._record(pipe, pattern_id, target, meta)
            pipe.execute()

    def note_hit(self, pattern_id: str, target: str, meta: ArtifactMeta, hot: bool = False) -> None:
        with self._errors():
            pipe = self.r.pipeline(transaction=True)
            self._record(pipe, pattern_id, target, meta)
            pipe.hset(keys.artifact(meta.key), "last_hit", time.time())
            pipe.hincrbyfloat(keys.COUNTERS, "requests", 1)
            pipe.hincrbyfloat(keys.COUNTERS, "hits", 1)
            if hot:
                pipe.zincrby(keys.HOT, 1, pattern_id)
            pipe.execute()

    def note_miss(self, pattern_id: str) -> None:
        with self._errors():
            pipe = self.r.pipeline(transaction=True)
            pipe.hincrbyfloat(keys.COUNTERS, "requests", 1)
            pipe.hincrbyfloat(keys.COUNTERS, "misses", 1)
            pipe.zincrby(keys.HOT, 1, pattern_id)
            pipe.execute()

    def hit_or_acquire(self, key: str, pattern_id: str, target: str, task_id: str, ttl: float,
                       evidence: str) -> Claim:
        reply = self._call(lambda: self._hit_or_acquire(
            keys=[keys.artifact(key), keys.ARTIFACTS, keys.index(target), keys.COUNTERS, keys.refs(key), keys.HOT,
                  keys.lock(key), keys.LOCKS],
            args=[key, pattern_id, target, evidence, FORMAT_VERSION, time.time(), task_id, int(ttl * 1000)]))
        if reply[0] == 0:
            return Claim(holder=bytes(reply[1]).decode())
        if reply[0] == 2:
            return Claim()
        try:
            meta = stored_meta(bytes(reply[1]).decode())
        except IntegrityError:
            meta = None
        if meta is None:  # metadata Lua took for usable and Python does not (edited by hand): a miss, as elsewhere
            return self.hit_or_acquire(key, pattern_id, target, task_id, ttl, GONE)
        return Claim(meta)

    def note_build(self, pattern_id: str, target: str, meta: ArtifactMeta) -> None:
        self._note_build(pattern_id, target, meta, only_if_new=False)

    def note_build_if_new(self, pattern_id: str, target: str, meta: ArtifactMeta) -> bool:
        return self._note_build(pattern_id, target, meta, only_if_new=True)

    def _note_build(self, pattern_id: str, target: str, meta: ArtifactMeta, only_if_new: bool) -> bool:
        record_keys, record_args = _record_call(pattern_id, target, meta)
        counts = [part for pair in build_fields(target, meta).items() for part in pair]
        return bool(self._call(lambda: self._note_build_script(keys=record_keys,
                                                               args=[*record_args, int(only_if_new), *counts])))

    def lookup_direct(self, direct_key: str) -> str | None:
        value = self._call(lambda: self.r.get(keys.direct(direct_key)))
        return value.decode() if value else None

    def record_direct(self, direct_key: str, key: str) -> None:
        with self._errors():
            pipe = self.r.pipeline(transaction=True)
            pipe.set(keys.direct(direct_key), key)
            pipe.sadd(keys.directs(key), direct_key)
            pipe.execute()

    def touch(self, key: str) -> None:
        self._call(lambda: self.r.hset(keys.artifact(key), "last_hit", time.time()))

    def incr(self, counter: str, amount: float = 1) -> None:
        self._call(lambda: self.r.hincrbyfloat(keys.COUNTERS, counter, amount))

    def counters(self) -> dict[str, float]:
        raw = self._call(lambda: self.r.hgetall(keys.COUNTERS))
        return {k.decode(): float(v) for k, v in raw.items()}

    def artifact_count(self) -> int:
        return int(self._call(lambda: self.r.scard(keys.ARTIFACTS)))

    def artifact_bytes(self) -> int:
        """Counted as artifacts are first indexed (from this release on: older entries are not in it)."""
        value = self._call(lambda: self.r.hget(keys.COUNTERS, "artifact_bytes_indexed"))
        return int(float(value)) if value else 0

    def artifacts(self) -> list[IndexedArtifact]:
        """Two round trips whatever the number of artifacts (an operator's command, not a scrape); entries indexed
        before their fields were kept apart from the metadata are read from it."""
        with self._errors():
            names = sorted(key.decode() for key in self.r.smembers(keys.ARTIFACTS))
            pipe = self.r.pipeline(transaction=False)
            for key in names:
                pipe.hmget(keys.artifact(key), "size", "target", "created", "last_hit", "meta")
            rows = pipe.execute() if names else []
        return least_recent_first([_entry(key, *row) for key, row in zip(names, rows)])

    def forget(self, key: str, unused_since: float | None = None) -> bool:
        since = "" if unused_since is None else repr(unused_since)
        return bool(self._call(lambda: self._forget(
            keys=[keys.artifact(key), keys.ARTIFACTS, keys.COUNTERS, keys.refs(key), keys.directs(key)],
            args=[key, since, keys.index(""), keys.direct("")])))

    def zero_counters(self) -> None:
        self._call(lambda: self._zero(keys=[keys.COUNTERS]))

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting in each served target's Celery queue (kombu keeps a Redis list per queue): two round
        trips, whatever the size of the keyspace."""
        with self._errors():
            targets = sorted(name.decode() for name in self.r.smembers(keys.TARGETS))
            pipe = self._queues().pipeline(transaction=False)
            for target in targets:
                pipe.llen(keys.queue(target))
            return dict(zip(targets, map(int, pipe.execute())))

    def _queues(self) -> Any:
        """The client of the Redis that holds the broker's queues (the index's own unless told otherwise)."""
        if self._broker_url is None:
            return self.r
        if self._broker is None:
            self._broker = _client(self._broker_url)
        return self._broker

    def inflight(self) -> int:
        return int(self._call(lambda: self._inflight(keys=[keys.LOCKS])))

    # --- cluster-only: hot patterns, single flight, redelivery, toolchains ---
    def note_hot(self, pattern_id: str, amount: float = 1) -> None:
        self._call(lambda: self.r.zincrby(keys.HOT, amount, pattern_id))

    def hot(self, top: int) -> list[tuple[str, float]]:
        rows = self._call(lambda: self.r.zrevrange(keys.HOT, 0, top - 1, withscores=True))
        return [(pid.decode(), score) for pid, score in rows]

    def acquire(self, key: str, task_id: str, ttl: float) -> str:
        """Take the single-flight lock for `key`; returns the task ID that holds it (ours or another's)."""
        holder = self._call(lambda: self._acquire(keys=[keys.lock(key), keys.LOCKS], args=[task_id, int(ttl * 1000)]))
        return bytes(holder).decode()

    def release(self, key: str, task_id: str) -> None:
        self._call(lambda: self._release(keys=[keys.lock(key), keys.LOCKS], args=[task_id]))

    def ever_delivered(self, task_id: str) -> bool:
        """Whether a worker ever started this compile message (without counting a delivery)."""
        with self._errors():
            return bool(self.r.exists(keys.deliveries(task_id)))

    def delivered(self, task_id: str, ttl: float) -> int:
        """Count one more delivery of a compile message; the count expires with the message."""
        with self._errors():
            pipe = self.r.pipeline(transaction=True)
            pipe.incr(keys.deliveries(task_id))
            pipe.pexpire(keys.deliveries(task_id), int(ttl * 1000))
            count, _ = pipe.execute()
        return int(count)

    def dead_letter(self, record: dict[str, Any]) -> None:
        with self._errors():
            pipe = self.r.pipeline(transaction=True)
            pipe.rpush(keys.DEADLETTER, json.dumps(record))
            pipe.hincrbyfloat(keys.COUNTERS, "dead_letters", 1)
            pipe.execute()

    def dead_letters(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self._call(lambda: self.r.lrange(keys.DEADLETTER, 0, -1))]

    def share_module(self, content_key: str, text: str, ttl: float) -> None:
        """Keep a module's text for `ttl` seconds more; its text crosses the wire only when Redis lacks it."""
        with self._errors():
            if not self.r.expire(keys.module(content_key), int(ttl)):
                self.r.set(keys.module(content_key), text, ex=int(ttl))

    def shared_module(self, content_key: str) -> str | None:
        value = self._call(lambda: self.r.get(keys.module(content_key)))
        return value.decode() if value is not None else None

    def publish_toolchain(self, target: str, versions: dict[str, str], ttl: float | None = None) -> None:
        with self._errors():
            pipe = self.r.pipeline(transaction=True)
            pipe.set(keys.toolchain(target), json.dumps(versions, sort_keys=True),
                     px=int(ttl * 1000) if ttl is not None else None)
            pipe.sadd(keys.TARGETS, target)
            pipe.execute()

    def unpublish_toolchain(self, target: str) -> None:
        self._call(lambda: self.r.delete(keys.toolchain(target)))

    def publish_worker(self, worker: WorkerStatus, ttl: float) -> None:
        with self._errors():
            pipe = self.r.pipeline(transaction=True)
            pipe.set(keys.worker(worker.name), worker.to_json(), px=int(ttl * 1000))
            pipe.sadd(keys.WORKERS, worker.name)
            pipe.execute()

    def unpublish_worker(self, name: str) -> None:
        with self._errors():
            pipe = self.r.pipeline(transaction=True)
            pipe.delete(keys.worker(name))
            pipe.srem(keys.WORKERS, name)
            pipe.execute()

    def workers(self) -> list[WorkerStatus]:
        """Two round trips; names whose status lapsed leave the set here."""
        with self._errors():
            names = sorted(name.decode() for name in self.r.smembers(keys.WORKERS))
            statuses = self.r.mget([keys.worker(name) for name in names]) if names else []
            lapsed = [name for name, status in zip(names, statuses) if status is None]
            if lapsed:
                self.r.srem(keys.WORKERS, *lapsed)
        return [WorkerStatus.from_json(status) for status in statuses if status is not None]

    def toolchain(self, target: str) -> dict[str, str] | None:
        value = self._call(lambda: self.r.get(keys.toolchain(target)))
        return json.loads(value) if value else None


def _record_call(pattern_id: str, target: str, meta: ArtifactMeta) -> tuple[list[str], list[Any]]:
    """The keys and arguments of _RECORD (and of the scripts that index as it does) for one artifact."""
    return ([keys.artifact(meta.key), keys.ARTIFACTS, keys.index(target), keys.COUNTERS, keys.refs(meta.key)],
            [meta.to_json(), meta.key, pattern_id, meta.size, target, meta.created_at])


def _entry(key: str, size: bytes | None, target: bytes | None, created: bytes | None, last_hit: bytes | None,
           meta: bytes | None) -> IndexedArtifact:
    if size is None and meta is not None:  # indexed before size and target were kept beside the metadata
        try:
            fields = json.loads(meta)
        except ValueError:
            fields = {}
        fields = fields if isinstance(fields, dict) else {}
        return indexed_from(key, fields.get("size"), fields.get("target"), fields.get("created_at"), last_hit)
    return indexed_from(key, size, target.decode(errors="replace") if target else "", created, last_hit)

