"""Cluster artifact store: an S3-compatible server (MinIO in deploy/), spoken to only through the minio SDK.

Objects are content-addressed: artifacts/<key>.so, then artifacts/<key>.json written last as the commit
marker. A fetch downloads into a local store (the node's cache), checking sha256 before it is kept.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import urllib3
from minio import Minio
from minio.error import S3Error

from farm.cache.counting import CountSink, best_effort
from farm.cache.store import ArtifactMeta, ArtifactStore, check_key, stored_meta
from farm.cache.store.local import LocalStore
from farm.errors import BackendUnavailable, IntegrityError, ReadOnlyShared
from farm.runtime.loader import sha256_file

_MISSING = ("NoSuchKey", "NoSuchObject", "NoSuchBucket")


class S3Store(ArtifactStore):
    def __init__(self, client: Minio, bucket: str, local: LocalStore, endpoint: str = "",
                 counters: CountSink | None = None, read_only: bool = False) -> None:
        """counters: where local-tier hits/misses and pulled bytes are counted (the shared index). read_only: this
        node only reads the bucket (it neither creates it nor writes or deletes an object)."""
        self.counters = counters
        self.client = client
        self.bucket = bucket
        self.local = local
        self.endpoint = endpoint
        self.read_only = read_only
        if read_only:
            return
        with self._errors():
            if not client.bucket_exists(bucket):
                try:
                    client.make_bucket(bucket)
                except S3Error as exc:  # another node created it first
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

    @classmethod
    def connect(cls, endpoint: str, bucket: str, local: LocalStore, access_key: str | None = None,
                secret_key: str | None = None, secure: bool = False, region: str = "us-east-1",
                counters: CountSink | None = None, read_only: bool = False) -> S3Store:
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=60),
                                   retries=urllib3.Retry(total=3, backoff_factor=0.2,
                                                         status_forcelist=[500, 502, 503, 504]))
        client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
                       http_client=http)
        return cls(client, bucket, local, endpoint, counters, read_only)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise BackendUnavailable(f"S3 server {self.endpoint} is unreachable: {exc}") from None

    @staticmethod
    def object_names(key: str) -> tuple[str, str]:
        check_key(key)
        return f"artifacts/{key}.so", f"artifacts/{key}.json"

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyShared(f"this node's shared cache is read-only (FARM_SHARED_MODE=read-only): it does not "
                                 f"{what} s3://{self.bucket}")

    def put(self, so_path: Path, meta: ArtifactMeta) -> None:
        self._writable("store into")
        so_name, meta_name = self.object_names(meta.key)
        data = meta.to_json().encode()
        with self._errors():
            self.client.fput_object(self.bucket, so_name, str(so_path), content_type="application/octet-stream",
                                    metadata={"x-amz-meta-sha256": meta.sha256})
            self.client.put_object(self.bucket, meta_name, io.BytesIO(data), len(data),
                                   content_type="application/json")
        self.local.put(so_path, meta)

    def remote_meta(self, key: str) -> ArtifactMeta | None:
        _, meta_name = self.object_names(key)
        with self._errors():
            try:
                response = self.client.get_object(self.bucket, meta_name)
                try:
                    return stored_meta(response.read().decode(errors="replace"), key)
                finally:
                    response.close()
                    response.release_conn()
            except S3Error as exc:
                if exc.code in _MISSING:
                    return None
                raise

    def fetch(self, key: str) -> tuple[Path, ArtifactMeta] | None:
        """The local copy if it is intact, else a verified download; None if S3 does not have it."""
        cached = self.local.fetch(key)
        if cached and sha256_file(cached[0]) == cached[1].sha256 and self._exists_remote(key):
            self._count("local_hits")
            return cached
        self._count("local_misses")
        meta = self.remote_meta(key)
        if meta is None:
            return None
        so_name, _ = self.object_names(key)
        self.local.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.local.root) as tmp:
            target = Path(tmp) / "download.so"
            with self._errors():
                try:
                    self.client.fget_object(self.bucket, so_name, str(target))
                except S3Error as exc:
                    if exc.code in _MISSING:
                        return None
                    raise
            actual = sha256_file(target)
            if actual != meta.sha256:
                raise IntegrityError(f"s3://{self.bucket}/{so_name}: sha256 is {actual}, metadata says "
                                     f"{meta.sha256}; the object was tampered with or truncated, refusing it")
            self.local.put(target, meta)
        self._count("artifact_bytes_pulled", meta.size)
        return self.local.fetch(key)

    def _count(self, name: str, amount: float = 1) -> None:
        counters = self.counters
        if counters is not None:
            best_effort(f"the store's {name}", lambda: counters.incr(name, amount))

    def _exists_remote(self, key: str) -> bool:
        """One HEAD of the .so: a local copy is served only while the shared object still exists."""
        so_name, _ = self.object_names(key)
        with self._errors():
            try:
                self.client.stat_object(self.bucket, so_name)
            except S3Error as exc:
                if exc.code in _MISSING:
                    return False
                raise
        return True

    def local_path(self, key: str) -> Path:
        return self.local.local_path(key)

    def exists(self, key: str) -> bool:
        return self._exists_remote(key)

    def delete(self, key: str) -> None:
        """The metadata (the commit marker, written last) first, then the library, then this node's copy."""
        self._writable("delete from")
        with self._errors():
            for name in reversed(self.object_names(key)):
                self.client.remove_object(self.bucket, name)
        self.local.delete(key)
