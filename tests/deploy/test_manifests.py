"""The deploy files, checked without a cluster.

The kustomizations are rendered by ``kubectl kustomize`` (kubectl ships kustomize; the Makefile
installs Debian's ``kubernetes-client`` where kubectl is missing). Every rendered object whose
kind Kubernetes itself defines is validated strictly against the API schemas of the oldest and
newest supported versions (``kubernetes-validate``); the CloudNativePG ``Cluster`` is a custom
resource those schemas do not cover, so only what ties it to the rest is checked here. checkov
(its own virtualenv, ``make checkov``: its pins clash with the project's) scans the rendered
manifests and the Dockerfile; a skipped rule carries its reason in a ``checkov.io/skipN``
annotation, because kustomize drops comments.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import typer.main
import yaml

from kgents.cli.main import app
from kgents.config import Settings
from kgents.store.engine import database_url

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = [DEPLOY / "k8s", DEPLOY / "k8s" / "migrate"]
KUBERNETES_VERSIONS = ["1.29", kubernetes_validate.latest_version()]
CUSTOM_RESOURCES = {("postgresql.cnpg.io/v1", "Cluster")}
SECRET_SETTINGS = {
    "KGENTS_DATABASE_URL",
    "KGENTS_ADMIN_TOKEN",
    "KGENTS_OPENAI_API_KEY",
    "KGENTS_ANTHROPIC_API_KEY",
    "KGENTS_OPENMETER_TOKEN",
}

Manifest = dict[str, Any]


def render(kustomization: Path) -> list[Manifest]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render deploy/k8s (make kubectl installs it)"
    out = subprocess.run(
        [kubectl, "kustomize", str(kustomization)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[Path, list[Manifest]]:
    return {path: render(path) for path in KUSTOMIZATIONS}


@pytest.fixture(scope="module")
def manifests(rendered: dict[Path, list[Manifest]]) -> list[Manifest]:
    return [doc for docs in rendered.values() for doc in docs]


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    [found] = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def pod_spec(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def env_names_read_by_kgents() -> set[str]:
    """Every environment variable the product reads: Settings fields and CLI options."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        names.update(choices if choices else [f"KGENTS_{name.upper()}"])
    command = typer.main.get_command(app)
    for sub in getattr(command, "commands", {}).values():
        for param in sub.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
    return names


def test_every_kubernetes_object_validates_against_the_api_schemas(
    manifests: list[Manifest],
) -> None:
    checked = 0
    for manifest in manifests:
        if (manifest["apiVersion"], manifest["kind"]) in CUSTOM_RESOURCES:
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)
        checked += 1
    assert checked == len(manifests) - len(CUSTOM_RESOURCES)


def test_the_validation_is_strict(manifests: list[Manifest]) -> None:
    deployment = json.loads(json.dumps(one(manifests, "Deployment", "kgents")))
    pod_spec(deployment)["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_deployment_keeps_its_promises(manifests: list[Manifest]) -> None:
    deployment = one(manifests, "Deployment", "kgents")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = pod_spec(deployment)
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert set(container["resources"]) == {"requests", "limits"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # preStop sleep, the drain of open requests (15 s), the running turns' grace, 10 s to close.
    config = one(manifests, "ConfigMap", "kgents-config")["data"]
    grace = float(config["KGENTS_SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] >= 5 + 15 + grace + 10
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        one(manifests, "PodDisruptionBudget", "kgents")["spec"]["selector"]["matchLabels"],
        one(manifests, "Service", "kgents")["spec"]["selector"],
        one(manifests, "NetworkPolicy", "kgents")["spec"]["podSelector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()


def test_secrets_are_referenced_never_written(manifests: list[Manifest]) -> None:
    assert not [m for m in manifests if m["kind"] == "Secret"]
    for workload in (
        one(manifests, "Deployment", "kgents"),
        one(manifests, "Job", "kgents-migrate"),
    ):
        for container in pod_spec(workload)["containers"]:
            for env in container.get("env", []):
                if env["name"] in SECRET_SETTINGS:
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
    env = pod_spec(one(manifests, "Deployment", "kgents"))["containers"][0]["env"]
    assert SECRET_SETTINGS <= {e["name"] for e in env}
    config = one(manifests, "ConfigMap", "kgents-config")["data"]
    assert not SECRET_SETTINGS & set(config)


def test_every_variable_set_is_one_kgents_reads(manifests: list[Manifest]) -> None:
    known = env_names_read_by_kgents()
    config = one(manifests, "ConfigMap", "kgents-config")["data"]
    env = pod_spec(one(manifests, "Deployment", "kgents"))["containers"][0]["env"]
    job_env = pod_spec(one(manifests, "Job", "kgents-migrate"))["containers"][0]["env"]
    used = set(config) | {e["name"] for e in env + job_env}
    assert used - known == set()
    assert config["KGENTS_HOST"] == "0.0.0.0"


def test_the_config_map_loads_as_settings(
    manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in one(manifests, "ConfigMap", "kgents-config")["data"].items():
        monkeypatch.setenv(name, value)
    # What CloudNativePG's "uri" key looks like.
    monkeypatch.setenv("KGENTS_DATABASE_URL", "postgresql://kgents:pw@kgents-db-rw:5432/kgents")
    settings = Settings()
    assert settings.host == "0.0.0.0"
    assert settings.workers == 1
    assert settings.nats_replicas == 3
    assert settings.nats_failover_seconds == 30
    assert database_url(settings).drivername == "postgresql+asyncpg"


def test_database_comes_from_the_cloudnativepg_cluster(manifests: list[Manifest]) -> None:
    cluster = one(manifests, "Cluster", "kgents-db")
    assert cluster["spec"]["instances"] == 3
    # CloudNativePG writes the application's connection URI to <cluster>-app, key "uri".
    expected = {"name": f"{cluster['metadata']['name']}-app", "key": "uri"}
    for workload in (
        one(manifests, "Deployment", "kgents"),
        one(manifests, "Job", "kgents-migrate"),
    ):
        [url] = [
            e
            for e in pod_spec(workload)["containers"][0]["env"]
            if e["name"] == "KGENTS_DATABASE_URL"
        ]
        assert url["valueFrom"]["secretKeyRef"] == expected


def test_the_migration_job_runs_db_upgrade(rendered: dict[Path, list[Manifest]]) -> None:
    [job] = [m for m in rendered[DEPLOY / "k8s" / "migrate"] if m["kind"] == "Job"]
    [container] = pod_spec(job)["containers"]
    assert container["args"] == ["db", "upgrade"]
    assert "db" in getattr(typer.main.get_command(app), "commands", {})
    # Applied apart from the Deployment, so that it can finish before the Deployment rolls.
    assert not [m for m in rendered[DEPLOY / "k8s"] if m["kind"] == "Job"]
    deployment = one(rendered[DEPLOY / "k8s"], "Deployment", "kgents")
    assert container["image"] == pod_spec(deployment)["containers"][0]["image"]


def test_nats_values_match_what_kgents_connects_to(manifests: list[Manifest]) -> None:
    values = yaml.safe_load((DEPLOY / "nats" / "values.yaml").read_text())
    config = values["config"]
    assert config["jetstream"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert config["cluster"]["enabled"] is True
    assert config["nats"]["tls"]["enabled"] is True
    assert config["nats"]["tls"]["merge"]["verify"] is True
    assert config["resolver"]["enabled"] is True
    # The chart sets no security context; the namespace enforces "restricted".
    pod_security = values["podTemplate"]["merge"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in (values["container"], values["reloader"]):
        security = container["merge"]["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
    replicas = config["cluster"]["replicas"]
    assert replicas == 3
    kgents = one(manifests, "ConfigMap", "kgents-config")["data"]
    assert int(kgents["KGENTS_NATS_REPLICAS"]) == replicas
    # Release "nats": pods nats-0..N-1 behind the headless Service nats-headless.
    urls = kgents["KGENTS_NATS_URL"].split(",")
    assert urls == [f"tls://nats-{i}.nats-headless:4222" for i in range(replicas)]
    # The client credentials and certificates are files in the mounted Secret.
    deployment = one(manifests, "Deployment", "kgents")
    [mount] = [
        m
        for m in pod_spec(deployment)["containers"][0]["volumeMounts"]
        if m["name"] == "nats-client"
    ]
    for name in ("CREDS", "TLS_CA", "TLS_CERT", "TLS_KEY"):
        assert PurePosixPath(kgents[f"KGENTS_NATS_{name}"]).parent == PurePosixPath(
            mount["mountPath"]
        )


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_runs_as_non_root_and_checks_liveness() -> None:
    instructions = dockerfile_instructions()
    assert len([arg for op, arg in instructions if op == "FROM"]) == 2  # build, runtime
    assert [arg for op, arg in instructions if op == "USER"] == ["10001:10001"]
    [healthcheck] = [arg for op, arg in instructions if op == "HEALTHCHECK"]
    assert "/health/live" in healthcheck
    env = " ".join(arg for op, arg in instructions if op in ("ENV", "ARG"))
    assert "KGENTS_HOST=0.0.0.0" in env.split()
    assert not [name for name in SECRET_SETTINGS if name in env]


def checkov_binary() -> str:
    given = os.environ.get("KGENTS_TEST_CHECKOV")
    path = Path(given) if given else ROOT / ".venv-checkov" / "bin" / "checkov"
    assert path.exists(), f"checkov not found at {path}: run `make checkov`"
    return str(path)


def test_checkov_passes(rendered: dict[Path, list[Manifest]], tmp_path: Path) -> None:
    files = []
    for index, docs in enumerate(rendered.values()):
        target = tmp_path / f"rendered-{index}.yaml"
        target.write_text(yaml.safe_dump_all(docs))
        files += ["-f", str(target)]
    files += ["-f", str(DEPLOY / "Dockerfile"), "-f", str(DEPLOY / "nats" / "values.yaml")]
    run = subprocess.run(
        [checkov_binary(), "--skip-download", "--compact", "-o", "json"]
        + ["--framework", "kubernetes", "dockerfile", "secrets", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    reports = json.loads(run.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} >= {"kubernetes", "dockerfile"}
    failed = [c for r in reports for c in r["results"]["failed_checks"]]
    assert failed == [], [(c["check_id"], c["resource"]) for c in failed]
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    assert all(c["check_result"].get("suppress_comment") for c in skipped), skipped
    assert run.returncode == 0, run.stderr[-2000:]
