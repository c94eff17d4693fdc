"""Real servers for tests and benchmarks, as subprocesses on free loopback ports; each stops itself."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check, what: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:  # type: ignore[type-arg, no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready within {timeout} s")


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:  # type: ignore[type-arg]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def redis_server(workdir: Path, port: int | None = None, durable: bool = False) -> Iterator[str]:
    """durable: an append-only file synced on every write, so a restart on the same port and directory
    comes back with every key (as deploy/ runs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (scripts/test installs it with apt-get)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence,
                             "--dir", str(workdir), "--protected-mode", "yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    try:
        _wait(ping, "redis-server", proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@contextmanager
def http_process(argv: list[str], ready_url: str, what: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None, timeout: float = 60.0) -> Iterator[subprocess.Popen]:  # type: ignore[type-arg]
    """A server process that is ready once `ready_url` answers 200; stopped on exit."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        with urllib.request.urlopen(ready_url, timeout=2) as r:
            return r.status == 200

    try:
        _wait(up, what, proc, timeout=timeout)
        yield proc
    finally:
        _stop(proc)


@contextmanager
def s3_server(port: int | None = None) -> Iterator[str]:
    """moto's S3 server mode: a real HTTP server speaking the S3 protocol."""
    port = port or free_port()
    with http_process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                      f"http://127.0.0.1:{port}/moto-api/", "moto S3 server"):
        yield f"127.0.0.1:{port}"


@contextmanager
def tcp_proxy(target_port: int, port: int | None = None) -> Iterator[int]:
    """A proxy process (tests/tcpproxy.py) in front of a loopback service; leaving the block kills it."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.tcpproxy", str(port), str(target_port)], cwd=ROOT)

    def accepting() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    try:
        _wait(accepting, "tcp proxy", proc)
        yield port
    finally:
        proc.kill()
        proc.wait()


def process_children(pid: int) -> list[int]:
    """Direct children of a process, from /proc (Linux)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cluster_env(redis_url: str, s3_endpoint: str, cache_dir: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "FARM_REDIS_URL": redis_url, "FARM_BROKER_URL": redis_url, "FARM_S3_ENDPOINT": s3_endpoint,
           "FARM_S3_ACCESS_KEY": "testing", "FARM_S3_SECRET_KEY": "testing-secret", "FARM_S3_BUCKET": "farm-test",
           "FARM_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT), **extra}
    return env


@contextmanager
def celery_worker(targets: str, env: dict[str, str], log: Path, concurrency: int = 1,
                  plain: bool = False) -> Iterator[subprocess.Popen]:  # type: ignore[type-arg]
    """A real Celery worker process serving the queues of `targets`: started through `farm worker`, or with
    `plain`, the plain Celery way (`celery -A workers.app worker -Q farm.compile.<target>`)."""
    if plain:
        queues = ",".join(f"farm.compile.{t}" for t in targets.split(","))
        argv = ["-m", "celery", "-A", "workers.app", "worker", "-Q", queues, "-c", str(concurrency),
                "--loglevel", "warning", "--without-gossip", "--without-mingle"]
    else:
        argv = ["-m", "farm.cli", "worker", "--targets", targets, "--concurrency", str(concurrency),
                "--loglevel", "warning"]
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
