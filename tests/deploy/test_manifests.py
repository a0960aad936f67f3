"""The Kubernetes manifests under deploy/ are valid and say what they must.

Every resource that deploy/base/kustomization.yaml lists validates against the Kubernetes 1.33
schema (``kubernetes-validate``, which ships the schemas: no cluster, no network), in strict
mode, so a misspelt field fails too. Then what the schema cannot know: the probes point at the
service's own health routes, the container has requests and limits and runs as the image's
unprivileged user, the HPA scales this Deployment, the PDB and the Service select its pods, no
image is ``latest`` or untagged, the environment parses into ``service.settings.Settings``, and
the Redis Cluster values (deploy/redis/values.yaml) are the ones the API expects: replicas for
WAIT, the append-only file, the Secret and the Service name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "base"
REDIS_VALUES = REPO / "deploy" / "redis" / "values.yaml"
KUBERNETES_VERSION = "1.33.0"


def resources() -> list[dict]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [doc for doc in yaml.safe_load_all((BASE / name).read_text()) if doc]
    return docs


def one(kind: str) -> dict:
    (found,) = [doc for doc in resources() if doc["kind"] == kind]
    return found


def api_container() -> dict:
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("doc", resources(), ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}")
def test_every_resource_validates_against_the_kubernetes_schema(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_what_kubernetes_would() -> None:
    """Strict validation is what catches a typo: the test above could not fail without it."""
    deployment = one("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_base_has_what_the_api_needs() -> None:
    assert sorted(doc["kind"] for doc in resources()) == [
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "ServiceAccount"
    ]  # fmt: skip


def test_probes_use_the_health_routes() -> None:
    container = api_container()
    port_names = {port["name"] for port in container["ports"]}
    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"] in port_names) == (path, True), probe
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    env = yaml.safe_load((BASE / "configmap.yaml").read_text())["data"]
    assert int(env["CMANP_PORT"]) == port and env["CMANP_HOST"] == "0.0.0.0"


def quantity(value: str) -> float:
    """A Kubernetes quantity in base units: "500m" -> 0.5, "1536Mi" -> 1536 * 2**20."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * units[unit]


def test_the_container_has_requests_and_limits() -> None:
    resources_ = api_container()["resources"]
    for name in ("cpu", "memory"):
        assert 0 < quantity(resources_["requests"][name]) <= quantity(resources_["limits"][name]), name
    # One worker process per CPU of the limit (the default would count the node's CPUs).
    env = yaml.safe_load((BASE / "configmap.yaml").read_text())["data"]
    assert int(env["CMANP_WORKERS"]) == quantity(resources_["limits"]["cpu"])


def test_it_runs_as_the_images_unprivileged_user() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    container = api_container()
    uid = int(re.search(r"useradd .*--uid (\d+)", (REPO / "docker" / "Dockerfile").read_text()).group(1))
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid != 0
    context = container["securityContext"]
    assert context["runAsNonRoot"] and context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] and context["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False


def test_the_hpa_scales_the_deployment_and_the_budget_leaves_it_serving() -> None:
    deployment, hpa, pdb = one("Deployment"), one("HorizontalPodAutoscaler"), one("PodDisruptionBudget")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "cmanp-api")
    assert deployment["metadata"]["name"] == "cmanp-api" and "replicas" not in deployment["spec"]  # the HPA's
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (pdb["spec"]["selector"]["matchLabels"], one("Service")["spec"]["selector"]):
        assert selector.items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_no_image_is_latest_or_untagged() -> None:
    images = [api_container()["image"]]
    values = yaml.safe_load(REDIS_VALUES.read_text())
    images += [f"{values[k]['image']}:{values[k]['tag']}" for k in ("redisCluster", "redisExporter")]
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest"), image
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert all(entry["newTag"] not in ("", "latest") for entry in kustomization["images"])


def test_the_environment_is_the_services_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CMANP_* variable names a setting, and together they parse (e.g. the WAIT timeout is
    shorter than the socket timeout); secrets come from Secrets."""
    container = api_container()
    env = dict(yaml.safe_load((BASE / "configmap.yaml").read_text())["data"])
    from_secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert from_secrets["CMANP_API_KEYS"]["name"] == "cmanp-api-keys"
    password = "s3cret"
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"].replace("$(REDIS_PASSWORD)", password)
    env["CMANP_API_KEYS"] = "tenant:key"
    names = {f"CMANP_{name.upper()}" for name in Settings.model_fields}
    assert {name for name in env if name.startswith("CMANP_")} <= names
    for name in list(os.environ):
        if name.startswith("CMANP_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.redis_cluster and settings.redis_wait_replicas == 1
    assert settings.redis_url == f"redis://:{password}@cmanp-redis-leader:6379/0"


def test_the_redis_cluster_values_match_what_the_api_expects() -> None:
    values = yaml.safe_load(REDIS_VALUES.read_text())
    cluster = values["redisCluster"]
    config = dict(line.split(" ", 1) for line in values["externalConfig"]["data"].splitlines() if line.strip())
    assert values["externalConfig"]["enabled"] and config["appendonly"] == "yes"
    assert config["appendfsync"] == "always" and config["maxmemory-policy"] == "noeviction"
    assert cluster["persistenceEnabled"] and cluster["clusterSize"] >= 3
    env = yaml.safe_load((BASE / "configmap.yaml").read_text())["data"]
    # WAIT for n replicas needs n per master: followers are counted over the whole cluster.
    assert cluster["follower"]["replicas"] >= cluster["leader"]["replicas"] * int(env["CMANP_REDIS_WAIT_REPLICAS"])
    container = api_container()
    secret = next(e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "REDIS_PASSWORD")
    assert (secret["name"], secret["key"]) == (
        cluster["redisSecret"]["secretName"],
        cluster["redisSecret"]["secretKey"],
    )
    url = next(e["value"] for e in container["env"] if e["name"] == "CMANP_REDIS_URL")
    assert f"@{cluster['name']}-leader:" in url
    assert "# Redis Cluster" in REDIS_VALUES.read_text() and "--version 0.16.0" in REDIS_VALUES.read_text()
