"""deploy/ as an operator meets it: compose refuses to start without its secrets, pins every image and keeps Redis
off the host; the Kubernetes manifests build with kubectl and match the API's schemas; the Celery app takes
broker, results and index each from its own URL, with task events on for Flower.

Each check skips, saying why, when its tool is missing; scripts/test installs them all (scripts/setup)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from farm.config import FarmConfig

from .test_monitoring import DEPLOY

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra: pip install -e '.[test]'")

COMPOSE_FILE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
PASSWORD = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
# What deploy/.env must give (deploy/README.md); compose has no default for any of them.
SECRETS = {"FARM_REDIS_PASSWORD": PASSWORD, "FARM_S3_SECRET_KEY": "s3-secret-for-tests",
           "FARM_SIGNING_KEY_FILE": "./keys/farm-signing.key", "FLOWER_BASIC_AUTH": "admin:flower-pw",
           "GRAFANA_ADMIN_PASSWORD": "grafana-pw"}
FARM_SERVICES = ("worker-x86", "worker-arm", "exporter")


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.skip("neither docker-compose nor the docker compose plugin is installed (scripts/setup installs "
                "Debian's docker-compose)")


def compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`compose config` on deploy/ with exactly `env`: an empty env file, so a developer's deploy/.env is not read."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return subprocess.run([*compose_command(), "--env-file", str(empty), "-f", str(COMPOSE_FILE), "config"],
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env}, cwd=DEPLOY,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = compose_config(tmp_path_factory.mktemp("compose"), SECRETS)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_compose_accepts_the_file_with_its_secrets(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    assert {"redis", "s3", "worker-x86", "worker-arm", "exporter", "flower", "prometheus", "grafana"} <= set(services)
    for name in FARM_SERVICES:
        env = services[name]["environment"]
        for variable, database in (("FARM_REDIS_URL", 0), ("FARM_BROKER_URL", 2), ("FARM_RESULT_URL", 1)):
            assert env[variable] == f"redis://:{PASSWORD}@redis:6379/{database}", (name, variable)
        assert env["FARM_S3_SECRET_KEY"] == SECRETS["FARM_S3_SECRET_KEY"]
    assert f"redis://:{PASSWORD}@redis:6379/2" == services["flower"]["environment"]["CELERY_BROKER_URL"]
    assert PASSWORD in services["redis"]["command"]


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret(missing: str, tmp_path: Path) -> None:
    result = compose_config(tmp_path, {k: v for k, v in SECRETS.items() if k != missing})
    assert result.returncode != 0, f"compose started without {missing}"
    assert missing in result.stderr


def test_only_the_builders_hold_the_signing_key(rendered: dict[str, Any]) -> None:
    for name, service in rendered["services"].items():
        mounts = " ".join(str(v) for v in service.get("volumes", []))
        builder = name.startswith("worker-")
        assert ("farm-signing.key" in mounts) == builder, name
        assert ("FARM_SIGNING_KEY" in service.get("environment", {})) == builder, name


def test_images_are_pinned_and_only_loopback_ports_are_published(rendered: dict[str, Any]) -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert "version" not in raw, "the top-level `version:` key is obsolete in the compose specification"
    for name, service in rendered["services"].items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), (name, image)
        for port in service.get("ports", []):
            # docker-compose v1 prints "127.0.0.1:9090:9090/tcp", the compose plugin a mapping with host_ip
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)
    assert "ports" not in rendered["services"]["redis"], "Redis is the broker: it is not published on the host"


def test_the_readme_names_every_secret_compose_requires() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE_FILE.read_text()))
    assert required == set(SECRETS)
    readme = (DEPLOY / "README.md").read_text()
    assert all(name in readme for name in required), required - {n for n in required if n in readme}


# ---- Kubernetes ----

def k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_specs() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc["spec"]["template"]["spec"] for doc in k8s_documents()
            if doc["kind"] in ("Deployment", "StatefulSet")}


def test_kubectl_builds_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (scripts/setup installs Debian's kubernetes-client)")
    # Client-side only: `kubectl apply --dry-run=client` and `create --dry-run=client` still ask an API server for
    # its resource types, and there is none here. kustomize builds the set without one.
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == \
        sorted((d["kind"], d["metadata"]["name"]) for d in k8s_documents())
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_k8s_manifests_match_the_kubernetes_api_schemas() -> None:
    validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev group "
                                   "(scripts/setup test dev installs it)")
    for doc in k8s_documents():
        validate.validate(doc, "1.30", strict=True)  # raises, naming the field, on a typo or a wrong type


def test_k8s_manifests_wire_up() -> None:
    docs = k8s_documents()
    pods = pod_specs()
    assert {"redis", "farm-worker", "farm-exporter"} <= set(pods)
    assert all("namespace" not in doc["metadata"] for doc in docs), "the manifests take the namespace applied into"
    templates = [doc["spec"]["template"]["metadata"]["labels"] for doc in docs
                 if doc["kind"] in ("Deployment", "StatefulSet")]
    for service in (doc for doc in docs if doc["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in templates), service["metadata"]["name"]
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", "nothing is published outside the cluster"
    secret_keys = {(ref["name"], ref["key"]) for spec in pods.values() for c in spec["containers"]
                   for e in c.get("env", []) if (ref := e.get("valueFrom", {}).get("secretKeyRef"))}
    assert secret_keys == {("farm-secrets", "redis-password"), ("farm-secrets", "s3-access-key"),
                           ("farm-secrets", "s3-secret-key")}
    readme = (DEPLOY / "README.md").read_text()
    assert all(name in readme and key in readme for name, key in secret_keys)
    signing = {name for name, spec in pods.items() for v in spec.get("volumes", [])
               if v.get("secret", {}).get("secretName") == "farm-signing-key"}
    assert signing == {"farm-worker"}, "only the builders hold the private key"
    for name, spec in pods.items():
        for container in spec["containers"] + spec.get("initContainers", []):
            assert not container["image"].endswith(":latest") and ":" in container["image"], (name, container["image"])
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            for variable in ("FARM_REDIS_URL", "FARM_BROKER_URL", "FARM_RESULT_URL"):
                if variable in env:
                    assert env[variable].startswith("redis://:$(REDIS_PASSWORD)@redis:6379/"), (name, variable)
    (redis,) = pods["redis"]["containers"]
    assert "$(REDIS_PASSWORD)" in redis["args"][redis["args"].index("--requirepass") + 1]


# ---- the Celery app ----

def test_celery_app_takes_broker_results_and_index_from_their_own_urls() -> None:
    from workers.app import make_app

    urls = {"FARM_REDIS_URL": f"redis://:{PASSWORD}@redis:6379/0", "FARM_BROKER_URL": f"redis://:{PASSWORD}@broker:6379/2",
            "FARM_RESULT_URL": f"redis://:{PASSWORD}@redis:6379/1", "FARM_S3_ENDPOINT": "s3:9000"}
    config = FarmConfig.from_env(urls)
    assert (config.redis_url, config.broker_url, config.result_url) == \
        (urls["FARM_REDIS_URL"], urls["FARM_BROKER_URL"], urls["FARM_RESULT_URL"])
    app = make_app(config)
    assert app.conf.broker_url == urls["FARM_BROKER_URL"] and app.conf.result_backend == urls["FARM_RESULT_URL"]
    assert app.conf.worker_send_task_events and app.conf.task_send_sent_event  # Flower sees every task
    # unset, results and broker share the index's Redis, as before
    plain = FarmConfig.from_env({"FARM_REDIS_URL": urls["FARM_REDIS_URL"]})
    assert plain.result_backend == plain.broker_url == urls["FARM_REDIS_URL"]
    assert make_app(plain).conf.result_backend == urls["FARM_REDIS_URL"]


def test_only_workers_retry_result_writes_for_about_the_outage_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker retries Celery's result writes through an outage (tests/test_faults.py meets one for real); a
    coordinator keeps its own ride-out loop, so its app does not."""
    from celery.signals import celeryd_init

    from workers.app import make_app

    monkeypatch.setenv("FARM_OUTAGE_GRACE", "30")
    app = make_app(FarmConfig.from_env({"FARM_REDIS_URL": "redis://redis:6379/0"}))
    assert not app.conf.result_backend_always_retry
    celeryd_init.send(sender="worker@host", instance=None, conf=app.conf, options={})  # as `celery worker` does
    assert app.conf.result_backend_always_retry and app.conf.result_backend_max_retries == 30
