"""Pick the index and store for a configuration: the embedded ones, or Redis and S3 for the cluster.

The in-memory ones (index/memory.py, store/memory.py) are not here: nothing they hold outlives the process, so no
setting selects them; tests and embedders construct them and pass them in."""

from __future__ import annotations

from farm.cache.counting import CountSink
from farm.cache.index import CacheIndex
from farm.cache.store import ArtifactStore
from farm.cache.store.local import LocalStore
from farm.config import FarmConfig
from farm.extras import needs_extra


def make_index(config: FarmConfig) -> CacheIndex:
    if config.redis_url:
        with needs_extra():
            from farm.cache.index.redis import RedisIndex

        redis_broker = config.broker_url if config.broker_url and config.broker_url.startswith(
            ("redis://", "rediss://", "unix://")) else None
        return RedisIndex(config.redis_url, broker_url=redis_broker)
    from farm.cache.index.sqlite import SQLiteIndex

    return SQLiteIndex(config.cache_dir / "index.sqlite")


def make_store(config: FarmConfig, counters: CountSink | None = None) -> ArtifactStore:
    local = LocalStore(config.cache_dir)
    if config.s3_endpoint:
        with needs_extra():
            from farm.cache.store.s3 import S3Store

        # A read-only node counts nothing into the shared index: counting is writing.
        return S3Store.connect(config.s3_endpoint, config.s3_bucket, local, config.s3_access_key,
                               config.s3_secret_key, config.s3_secure, config.s3_region,
                               None if config.read_only else counters, config.read_only)
    return local
