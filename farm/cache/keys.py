"""Every Redis key farm uses, built here and nowhere else (one prefix, one template per noun).

    farm:idx:{target}        HASH   pattern ID -> cache key (pattern IDs are hash fields: binary-safe data)
    farm:art:{key}           HASH   meta (JSON), last_hit; size, target, created (what eviction reads without the
                                    metadata); counted: the size added to the indexed bytes, taken off on eviction
    farm:refs:{key}          SET    "{target}\0{pattern ID}" of every index entry that pointed at the artifact, so
                                    evicting it removes them (those still pointing at it)
    farm:artifacts           SET    every indexed cache key
    farm:direct:{dkey}       STRING the cache key a direct-mode key (farm/cache/direct.py) maps to
    farm:directs:{key}       SET    the direct-mode keys recorded with an artifact, so evicting it removes them
                                    (those still pointing at it)
    farm:locks               ZSET   lock key -> expiry (ms, Redis clock): work in flight without a SCAN
    farm:counters            HASH   cluster-wide counters (HINCRBYFLOAT); per-target ones as "name:target"
    farm:hot                 ZSET   pattern ID -> requests + native rule firings
    farm:lock:{key}          STRING single-flight lock; the value is the Celery task ID doing the work
    farm:deliveries:{task}   STRING how often a compile message was delivered (redelivery cap)
    farm:deadletter          LIST   JSON records of messages given up on
    farm:toolchain:{target}  STRING JSON tool versions the workers for that target run
    farm:targets             SET    every target a worker has published a toolchain for (no SCAN)
    farm:worker:{name}       STRING JSON status of a live worker (farm.cache.index.WorkerStatus), expiring
    farm:workers             SET    names of workers that beat (the dead ones leave it when listed)
    farm:module:{sha256}     STRING a module compile messages name by content key (farm/cluster/messages.py)
"""

from __future__ import annotations

PREFIX = "farm"


def index(target: str) -> str:
    return f"{PREFIX}:idx:{target}"


def artifact(key: str) -> str:
    return f"{PREFIX}:art:{key}"


def refs(key: str) -> str:
    return f"{PREFIX}:refs:{key}"


def direct(direct_key: str) -> str:
    return f"{PREFIX}:direct:{direct_key}"


def directs(key: str) -> str:
    return f"{PREFIX}:directs:{key}"


COUNTERS = f"{PREFIX}:counters"
ARTIFACTS = f"{PREFIX}:artifacts"
HOT = f"{PREFIX}:hot"
LOCKS = f"{PREFIX}:locks"
TARGETS = f"{PREFIX}:targets"
WORKERS = f"{PREFIX}:workers"
DEADLETTER = f"{PREFIX}:deadletter"


def lock(key: str) -> str:
    return f"{PREFIX}:lock:{key}"


def deliveries(task_id: str) -> str:
    return f"{PREFIX}:deliveries:{task_id}"


def toolchain(target: str) -> str:
    return f"{PREFIX}:toolchain:{target}"


def worker(name: str) -> str:
    return f"{PREFIX}:worker:{name}"


def module(content_key: str) -> str:
    return f"{PREFIX}:module:{content_key}"


QUEUE_PREFIX = f"{PREFIX}.compile."


def queue(target: str) -> str:
    """The Celery queue of one CPU target."""
    return f"{QUEUE_PREFIX}{target}"


def target_of_queue(name: str) -> str | None:
    """The target whose queue this is; None for any other queue."""
    return name.removeprefix(QUEUE_PREFIX) if name.startswith(QUEUE_PREFIX) else None
