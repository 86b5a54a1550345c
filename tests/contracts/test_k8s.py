"""
deploy/k8s agrees with the code: the CLI, the settings classes, the metrics ports and what each
process serves, and with the image and the dashboard of docker-compose.yml.

No cluster and no network. The manifests are parsed with PyYAML and validated offline against
the Kubernetes OpenAPI schemas that kubernetes-validate ships (strict: an unknown or misspelt
field fails); the custom resources (KEDA's ScaledObject, the Prometheus Operator's monitors),
which it has no schema for, are checked field by field here. `kustomize build` (the binary
`.ci/install.sh` installs, or `kubectl kustomize`) renders the kustomization as `kubectl apply
-k` would (offline too).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, cast
from urllib.parse import urlsplit
from wsgiref.util import setup_testing_defaults

import click
import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic_settings import BaseSettings
from test_compose import (
    _SECRET_NAME,
    _URL_PASSWORD,
    PROCESS_OF_COMMAND,
    SETTINGS_OF_COMMAND,
    _is_secret,
    dockerfile_instructions,
    env_fields,
    interpolate,
)
from test_compose import SERVICES as COMPOSE_SERVICES

import churnwatch.metrics
from churnwatch.api.app import create_app
from churnwatch.api.settings import ApiSettings
from churnwatch.cli import main
from churnwatch.core.errors import StoreUnavailableError
from churnwatch.metrics import DEFAULT_METRICS_PORTS, Metrics, ProcessType, serve
from churnwatch.notify.settings import NotifySettings
from churnwatch.sdk.settings import KafkaSettings
from churnwatch.stream.commands import _serve as serve_stream_metrics
from churnwatch.stream.health import StoreHealth
from churnwatch.stream.settings import StreamSettings, WorkerSettings
from needs import unavailable

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATION_FILE = K8S / "kustomization.yaml"
COMPOSE_DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
ALERTS_FILE = ROOT / "deploy" / "prometheus" / "alerts.yml"

# Files of deploy/k8s that the kustomization leaves out on purpose, and why.
NOT_INCLUDED = {
    "secret.example.yaml": "placeholders: the real Secret is created from the operator's store",
    "monitoring.yaml": "needs the Prometheus Operator's CRDs",
}
# Kinds kubernetes-validate has no schema for (CRDs); the tests below check them.
CUSTOM_KINDS = frozenset(
    {
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
    }
)
# The oldest Kubernetes release these manifests target, and a recent one.
KUBERNETES_VERSIONS = ("1.29", "1.33")
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job"})
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
# What churnwatch.metrics.serve answers: /healthz, and the metrics (at /metrics).
SERVE_PATHS = frozenset({"/healthz", "/metrics"})
# Liveness must outlast a long rebalance (and the model wait after one) before it restarts.
LIVENESS_PATIENCE_SECONDS = 120
PLACEHOLDER = "change-me"
_CITATION = re.compile(r'"([^"]*\|[^"]*)"')
_BENCHMARK = re.compile(r"benchmarks/results/[A-Za-z0-9_.-]+\.md")

Doc = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Reading the manifests


def load_manifests() -> dict[str, list[Doc]]:
    """
    Every YAML file under deploy/k8s but the kustomization, by path relative to it.
    """
    found: dict[str, list[Doc]] = {}
    for path in sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")]):
        if path == KUSTOMIZATION_FILE:
            continue
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        found[path.relative_to(K8S).as_posix()] = docs
    return found


MANIFESTS = load_manifests()
KUSTOMIZATION: Doc = yaml.safe_load(KUSTOMIZATION_FILE.read_text())
RESOURCES: list[str] = KUSTOMIZATION.get("resources", [])
INCLUDED = [doc for name in RESOURCES for doc in MANIFESTS.get(name, [])]
ALL_DOCS = [(name, doc) for name, docs in MANIFESTS.items() for doc in docs]


def name_of(doc: Mapping[str, Any]) -> str:
    return str(doc.get("metadata", {}).get("name", ""))


def included(kind: str) -> list[Doc]:
    return [doc for doc in INCLUDED if doc.get("kind") == kind]


def the(kind: str, name: str) -> Doc:
    found = [doc for doc in included(kind) if name_of(doc) == name]
    assert 1 == len(found), f"expected one included {kind} {name!r}, found {len(found)}"
    return found[0]


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def config_maps() -> dict[str, dict[str, str]]:
    return {name_of(doc): dict(doc.get("data") or {}) for doc in included("ConfigMap")}


def secret_example() -> Doc:
    docs = MANIFESTS.get("secret.example.yaml", [])
    assert 1 == len(docs), "deploy/k8s/secret.example.yaml holds one Secret"
    return docs[0]


@dataclass(frozen=True)
class Container:
    """A container of a workload, as the tests see it."""

    file: str
    workload: Doc
    spec: Doc

    @property
    def id(self) -> str:
        return f"{self.file}:{name_of(self.workload)}/{self.spec.get('name')}"

    @property
    def pod(self) -> dict[str, Any]:
        return pod_spec(self.workload)

    @property
    def command_path(self) -> tuple[str, ...]:
        """The churnwatch CLI path it runs (`("worker",)`), without options."""
        args = [str(arg) for arg in [*self.spec.get("command", []), *self.spec.get("args", [])]]
        if args[:1] != ["churnwatch"]:
            return ()
        path: list[str] = []
        group: click.Command = main
        rest = args[1:]
        while isinstance(group, click.Group) and rest and not rest[0].startswith("-"):
            path.append(rest[0])
            group = group.commands.get(rest[0], click.Command("missing"))
            rest = rest[1:]
        return tuple(path)

    @property
    def settings_class(self) -> type[BaseSettings]:
        path = self.command_path
        assert path in SETTINGS_OF_COMMAND, f"{self.id}: no settings class known for {path}"
        return SETTINGS_OF_COMMAND[path]


def all_containers() -> list[Container]:
    return [
        Container(name, doc, container)
        for name, doc in ALL_DOCS
        if doc.get("kind") in WORKLOAD_KINDS
        for container in pod_spec(doc).get("containers", [])
    ]


CONTAINERS = all_containers()
CONTAINER_IDS = [container.id for container in CONTAINERS]


def process_containers() -> dict[ProcessType, list[Container]]:
    found: dict[ProcessType, list[Container]] = {}
    for container in CONTAINERS:
        process = PROCESS_OF_COMMAND.get(container.command_path)
        if process is not None and container.workload in INCLUDED:
            found.setdefault(process, []).append(container)
    return found


PROCESSES = sorted(process_containers())
# The processes in a Kafka consumer group (the API reads Redis only).
CONSUMERS: list[ProcessType] = ["worker", "learner", "notify"]


def process(name: ProcessType) -> Container:
    found = process_containers().get(name, [])
    assert 1 == len(found), f"expected one included container running {name}, got {len(found)}"
    return found[0]


# ---------------------------------------------------------------------------------------------
# The environment of a container


@dataclass(frozen=True)
class EnvSource:
    """Where a variable of a container comes from, and its value when the manifests hold it."""

    origin: Literal["value", "configmap", "secret", "field"]
    value: str | None = None
    ref: str = ""
    optional: bool = False


def environment(container: Container) -> dict[str, EnvSource]:
    """
    The variables of a container as Kubernetes builds them: envFrom first, then env.
    """
    maps = config_maps()
    example = secret_example()
    found: dict[str, EnvSource] = {}
    for source in container.spec.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in maps, f"{container.id}: envFrom ConfigMap {name!r} is not included"
            for key, value in maps[name].items():
                found[prefix + key] = EnvSource("configmap", str(value), f"{name}/{key}")
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            assert name_of(example) == name, f"{container.id}: unknown Secret {name!r}"
            optional = bool(source["secretRef"].get("optional", False))
            for key in example.get("stringData", {}):
                found[prefix + key] = EnvSource("secret", None, f"{name}/{key}", optional)
    for entry in container.spec.get("env", []):
        name = entry["name"]
        if "value" in entry:
            found[name] = EnvSource("value", str(entry["value"]))
            continue
        ref = entry.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            cm, key = ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]
            assert key in maps.get(cm, {}), f"{container.id}: {name} needs {cm}/{key}"
            found[name] = EnvSource("configmap", maps[cm][key], f"{cm}/{key}")
        elif "secretKeyRef" in ref:
            secret, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
            optional = bool(ref["secretKeyRef"].get("optional", False))
            found[name] = EnvSource("secret", None, f"{secret}/{key}", optional)
        else:
            found[name] = EnvSource("field", None, json.dumps(ref, sort_keys=True))
    return found


def build_settings(container: Container, monkeypatch: pytest.MonkeyPatch) -> Any:
    """
    The settings object the container's process builds from its environment, with the Secret
    holding its required keys only (placeholders), as the least an operator creates.
    """
    with monkeypatch.context() as patch:
        for key in os.environ:
            if key.upper().startswith("CHURNWATCH_"):
                patch.delenv(key)
        for key, source in environment(container).items():
            if source.origin in ("value", "configmap") and source.value is not None:
                patch.setenv(key, source.value)
            elif source.origin == "secret" and not source.optional:
                patch.setenv(key, f"set-{key.lower()}")
        return container.settings_class()


def listen_port(settings: Any) -> int:
    port: int = settings.port if isinstance(settings, ApiSettings) else settings.metrics_port
    return port


def listen_host(settings: Any) -> str:
    host: str = settings.host if isinstance(settings, ApiSettings) else settings.metrics_host
    return host


def kafka_of(settings: Any) -> Any:
    return settings if isinstance(settings, KafkaSettings) else getattr(settings, "kafka", None)


# ---------------------------------------------------------------------------------------------
# What the processes serve


class _FakeServer:
    """Stands in for the WSGI server `serve` would bind: no socket is opened."""

    server_port = 0

    def serve_forever(self) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def server_close(self) -> None:
        return None


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


def captured_app(monkeypatch: pytest.MonkeyPatch, start: Callable[[], object]) -> WsgiApp:
    """
    The WSGI application `churnwatch.metrics.serve` builds inside `start()`.
    """
    apps: list[WsgiApp] = []

    def make_server(host: str, port: int, app: WsgiApp, *args: Any, **kwargs: Any) -> Any:
        apps.append(app)
        return _FakeServer()

    monkeypatch.setattr(churnwatch.metrics, "make_server", make_server)
    start()
    assert 1 == len(apps)
    return apps[0]


def wsgi_get(app: WsgiApp, path: str) -> tuple[int, bytes]:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[..., None]:
        statuses.append(status)
        return lambda _data: None

    body = b"".join(app(environ, start_response))
    return int(statuses[0].split()[0]), body


def served_paths(name: ProcessType) -> frozenset[str]:
    """
    The GET paths a process answers: the API's routes, or what the metrics server serves.
    """
    if name != "api":
        return SERVE_PATHS
    app = create_app(cast(Any, None), ApiSettings(), CollectorRegistry())
    return frozenset(
        route.resource.canonical
        for route in app.router.routes()
        if route.method == "GET" and route.resource is not None
    )


def resolve_port(container: Container, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.spec.get("ports", [])}
    assert port in named, f"{container.id}: no container port named {port!r}"
    return int(named[port])


# ---------------------------------------------------------------------------------------------
# Small parsers


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("500m", "1", "256Mi") as a number of units."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


def field(doc: Any, path: str) -> Any:
    """The value at a kustomize fieldPath (`a.b.0.[name=x].c`) of a document."""
    node = doc
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit():
            node = node[int(part)]
        elif isinstance(node, list) and part.startswith("[") and part.endswith("]"):
            key, _, value = part[1:-1].partition("=")
            matches = [item for item in node if str(item.get(key)) == value]
            assert 1 == len(matches), f"{path}: {part} matches {len(matches)} items"
            node = matches[0]
        else:
            assert isinstance(node, dict), f"{path}: {part} of a {type(node).__name__}"
            assert part in node, f"{path}: no {part!r}"
            node = node[part]
    return node


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions In/NotIn/Exists) selects labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def comments(path: Path) -> Iterator[str]:
    for line in path.read_text().splitlines():
        _, hash_sign, comment = line.partition("#")
        if hash_sign:
            yield comment


# ---------------------------------------------------------------------------------------------
# Files and the kustomization


def test_every_manifest_is_a_named_kubernetes_object() -> None:
    """
    Every document under deploy/k8s has an apiVersion, a kind and a metadata.name.
    """
    assert MANIFESTS
    incomplete = [
        f"{name}: {doc.get('kind')}/{name_of(doc)}"
        for name, doc in ALL_DOCS
        if not (doc.get("apiVersion") and doc.get("kind") and name_of(doc))
    ]
    assert [] == incomplete


def test_kustomization_lists_files_that_exist() -> None:
    """
    Every resource and generator file is a file inside deploy/k8s, listed once; every manifest
    file is either a resource or left out on purpose.
    """
    assert "kustomize.config.k8s.io/v1beta1" == KUSTOMIZATION["apiVersion"]
    assert "Kustomization" == KUSTOMIZATION["kind"]
    generated = [
        entry.rpartition("=")[2]
        for generator in KUSTOMIZATION.get("configMapGenerator", [])
        for entry in generator.get("files", [])
    ]
    listed = [*RESOURCES, *generated]
    assert sorted(set(listed)) == sorted(listed), "a file is listed twice"
    for name in listed:
        path = (K8S / name).resolve()
        assert path.is_file(), f"kustomization.yaml lists {name}, which does not exist"
        assert path.is_relative_to(K8S.resolve()), f"{name} is outside deploy/k8s"
    assert set(MANIFESTS) - set(NOT_INCLUDED) == set(RESOURCES)
    assert set() == set(NOT_INCLUDED) & set(RESOURCES)
    assert set(NOT_INCLUDED) <= set(MANIFESTS)


def test_included_objects_are_unique() -> None:
    """
    No two included objects share a kind and a name.
    """
    keys = [(doc["kind"], name_of(doc)) for doc in INCLUDED]
    assert sorted(set(keys)) == sorted(keys)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    """
    Every built-in object (included or not) validates, strictly, against the schemas of the
    Kubernetes release; only the known custom kinds are left to the tests below.
    """
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        unavailable(
            "kubernetes-validate is not installed",
            "install the dev extras (`.venv/bin/pip install -e '.[dev]'`)",
        )
    errors: list[str] = []
    for name, doc in ALL_DOCS:
        if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS:
            continue
        where = f"{name}: {doc.get('kind')}/{name_of(doc)}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            errors.append(f"{where}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    assert [] == errors


def test_the_dashboard_is_the_compose_dashboard() -> None:
    """
    The dashboard ConfigMap carries every dashboard of deploy/grafana/dashboards, byte for byte
    (kustomize reads no file outside deploy/k8s, so they are copies), for Grafana's sidecar.
    """
    generators = KUSTOMIZATION.get("configMapGenerator", [])
    dashboards = [g for g in generators if g["name"] == "churnwatch-grafana-dashboards"]
    assert 1 == len(dashboards)
    files = [K8S / entry.rpartition("=")[2] for entry in dashboards[0]["files"]]
    assert sorted(p.name for p in COMPOSE_DASHBOARDS.glob("*.json")) == sorted(
        p.name for p in files
    )
    for path in files:
        assert (COMPOSE_DASHBOARDS / path.name).read_bytes() == path.read_bytes(), path.name
        json.loads(path.read_text())
    assert "1" == dashboards[0]["options"]["labels"]["grafana_dashboard"]


# ---------------------------------------------------------------------------------------------
# Image and commands


def test_containers_run_the_compose_image() -> None:
    """
    Every container runs the image of docker-compose.yml, which the kustomization can re-point.
    """
    image = interpolate(str(COMPOSE_SERVICES["worker"]["image"]))
    assert {image} == {str(container.spec.get("image")) for container in CONTAINERS}
    name, _, tag = image.rpartition(":")
    entries = [entry for entry in KUSTOMIZATION.get("images", []) if entry["name"] == name]
    assert 1 == len(entries)
    assert tag == entries[0].get("newTag", tag)


@pytest.mark.parametrize("container", CONTAINERS, ids=CONTAINER_IDS)
def test_containers_run_real_cli_commands(container: Container) -> None:
    """
    Each container runs an existing `churnwatch` command with options it accepts.
    """
    args = [str(arg) for arg in [*container.spec["command"], *container.spec.get("args", [])]]
    assert "churnwatch" == args[0]
    command: click.Command = main
    rest = args[1:]
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        assert rest[0] in command.commands, f"`churnwatch {rest[0]}` does not exist"
        command, rest = command.commands[rest[0]], rest[1:]
    assert not isinstance(command, click.Group), f"{command.name} needs a subcommand"
    command.make_context(f"churnwatch {' '.join(container.command_path)}", rest)


def test_every_process_has_one_deployment() -> None:
    """
    The workers, the learner, the alert consumers and the API each run in one Deployment.
    """
    found = {
        name: [c.workload["kind"] for c in containers]
        for name, containers in process_containers().items()
    }
    assert {name: ["Deployment"] for name in DEFAULT_METRICS_PORTS} == found


# ---------------------------------------------------------------------------------------------
# The environment


@pytest.mark.parametrize("container", CONTAINERS, ids=CONTAINER_IDS)
def test_env_names_are_read_by_the_settings_class(container: Container) -> None:
    """
    Every variable a container gets is a CHURNWATCH_* name its settings class reads.
    """
    accepted = env_fields(container.settings_class)
    given = set(environment(container))
    assert set() == {key for key in given if not key.startswith("CHURNWATCH_")}
    assert set() == {key for key in given if key.upper() not in accepted}


def test_every_config_map_entry_reaches_a_process() -> None:
    """
    No ConfigMap entry is dead: each one is in the environment of some container.
    """
    used = {
        source.ref
        for container in CONTAINERS
        for source in environment(container).values()
        if source.origin == "configmap"
    }
    entries = {f"{name}/{key}" for name, data in config_maps().items() for key in data}
    assert set() == entries - used


@pytest.mark.parametrize("name", PROCESSES)
def test_environment_builds_valid_settings(
    name: ProcessType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The environment validates, listens beyond loopback, and points at a Kafka and a Redis that
    are not the pod itself, with a password that is not in the URL.
    """
    settings = build_settings(process(name), monkeypatch)
    assert "0.0.0.0" == listen_host(settings)
    kafka = kafka_of(settings)
    if kafka is not None:
        hosts = {server.strip().rpartition(":")[0] for server in kafka.bootstrap.split(",")}
        assert set() == hosts & {"127.0.0.1", "localhost", "::1"}
    redis = settings.redis
    assert urlsplit(redis.url).hostname not in {"127.0.0.1", "localhost", "::1"}
    assert urlsplit(redis.url).password is None
    assert redis.password is not None, f"{name}: Redis requires a password"


def test_secrets_come_only_from_the_secret() -> None:
    """
    A password or token is never a literal or a ConfigMap entry: it is a secretKeyRef to the
    Secret of secret.example.yaml, by a key that example holds.
    """
    example = secret_example()
    keys = set(example.get("stringData", {})) | set(example.get("data", {}))
    wrong: list[str] = []
    for container in CONTAINERS:
        fields = env_fields(container.settings_class)
        for key, source in environment(container).items():
            info = fields.get(key.upper())
            secret = (info is not None and _is_secret(info.annotation)) or _SECRET_NAME.search(key)
            if secret and source.origin != "secret":
                wrong.append(f"{container.id}: {key} from {source.origin}")
            if source.origin == "secret":
                secret_name, _, secret_key = source.ref.partition("/")
                if secret_name != name_of(example) or secret_key not in keys:
                    wrong.append(f"{container.id}: {key} from unknown {source.ref}")
            if _URL_PASSWORD.search(source.value or ""):
                wrong.append(f"{container.id}: {key} has a password in a URL")
    for name, data in config_maps().items():
        wrong.extend(f"ConfigMap {name}: {key}" for key in data if _SECRET_NAME.search(key))
    assert [] == wrong


def test_no_secret_is_included() -> None:
    """
    The kustomization carries no Secret and generates none; the example holds placeholders only,
    one for every key the pods ask for.
    """
    assert [] == included("Secret")
    assert "secretGenerator" not in KUSTOMIZATION
    example = secret_example()
    assert "Secret" == example["kind"]
    assert "data" not in example
    assert {PLACEHOLDER} == set(example["stringData"].values())
    asked = {
        source.ref.partition("/")[2]
        for container in CONTAINERS
        for source in environment(container).values()
        if source.origin == "secret"
    }
    assert asked == set(example["stringData"])


# ---------------------------------------------------------------------------------------------
# Ports, probes and scraping


@pytest.mark.parametrize("name", PROCESSES)
def test_ports_and_probes_match_what_the_process_serves(
    name: ProcessType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Each process listens on its default metrics port, which the container declares and every
    probe targets, on a path the process serves; readiness is /healthz.
    """
    container = process(name)
    port = listen_port(build_settings(container, monkeypatch))
    assert DEFAULT_METRICS_PORTS[name] == port
    assert [port] == [p["containerPort"] for p in container.spec["ports"]]
    paths = served_paths(name)
    for probe_name in PROBES:
        probe = container.spec.get(probe_name)
        assert probe is not None, f"{name}: no {probe_name}"
        check = probe.get("httpGet") or probe.get("tcpSocket")
        assert check is not None, f"{name}: {probe_name} is neither httpGet nor tcpSocket"
        assert port == resolve_port(container, check["port"]), f"{name}: {probe_name} port"
        if "httpGet" in probe:
            assert probe["httpGet"]["path"] in paths, f"{name}: {probe_name} path"
    assert "/healthz" == container.spec["readinessProbe"]["httpGet"]["path"]


@pytest.mark.parametrize("name", PROCESSES)
def test_liveness_is_not_health(name: ProcessType) -> None:
    """
    Liveness never asks /healthz: it reports Redis, and a Redis outage is not cured by a restart.
    """
    probe = process(name).spec["livenessProbe"]
    assert "/healthz" != probe.get("httpGet", {}).get("path")


@pytest.mark.parametrize("name", CONSUMERS)
def test_liveness_outlasts_a_rebalance(name: ProcessType) -> None:
    """
    A Kafka consumer's liveness waits longer than a long rebalance before the kubelet kills it.
    """
    probe = process(name).spec["livenessProbe"]
    patience = probe.get("failureThreshold", 3) * probe.get("periodSeconds", 10)
    assert patience > LIVENESS_PATIENCE_SECONDS


def test_the_metrics_server_serves_the_probed_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    `serve` answers /metrics with the registry and /healthz with 200, or 503 when unhealthy.
    """
    metrics = Metrics(CollectorRegistry())
    app = captured_app(monkeypatch, lambda: serve(0, registry=metrics.registry))
    status, body = wsgi_get(app, "/metrics")
    assert 200 == status
    assert b"churnwatch_" in body
    status, body = wsgi_get(app, "/healthz")
    assert (200, {"status": "ok"}) == (status, json.loads(body))

    def unhealthy() -> tuple[bool, dict[str, object]]:
        return False, {"status": "unavailable"}

    app = captured_app(monkeypatch, lambda: serve(0, registry=metrics.registry, health=unhealthy))
    assert 503 == wsgi_get(app, "/healthz")[0]


@pytest.mark.parametrize("name", ["worker", "learner"])
def test_stream_healthz_is_503_while_redis_is_unreachable(
    name: ProcessType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The workers' and the learner's /healthz (their readiness) follows the store's health.
    """
    settings = cast(StreamSettings, build_settings(process(name), monkeypatch))
    metrics = Metrics(CollectorRegistry())
    health = StoreHealth(metrics, max_backoff=1.0)
    runtime = SimpleNamespace(health=health)
    app = captured_app(monkeypatch, lambda: serve_stream_metrics(settings, metrics, runtime))
    assert 200 == wsgi_get(app, "/healthz")[0]
    health.failed(StoreUnavailableError("redis did not answer"), during="test")
    assert 503 == wsgi_get(app, "/healthz")[0]
    health.succeeded()
    assert 200 == wsgi_get(app, "/healthz")[0]


@pytest.mark.parametrize("name", PROCESSES)
def test_pods_are_annotated_for_prometheus(name: ProcessType) -> None:
    """
    The prometheus.io annotations name the metrics port and /metrics, which the process serves.
    """
    annotations = process(name).workload["spec"]["template"]["metadata"]["annotations"]
    assert "true" == annotations["prometheus.io/scrape"]
    assert str(DEFAULT_METRICS_PORTS[name]) == annotations["prometheus.io/port"]
    assert "/metrics" == annotations["prometheus.io/path"]
    assert "/metrics" in served_paths(name)


def endpoints(monitor: Doc) -> list[Doc]:
    spec = monitor["spec"]
    return [*spec.get("podMetricsEndpoints", []), *spec.get("endpoints", [])]


def test_monitors_scrape_every_process_as_the_alert_jobs() -> None:
    """
    monitoring.yaml's PodMonitor and ServiceMonitor reach every process at its metrics port,
    with the job names deploy/prometheus/alerts.yml selects on.
    """
    monitors = MANIFESTS["monitoring.yaml"]
    services = included("Service")
    jobs: set[str] = set()
    covered: set[ProcessType] = set()
    for monitor in monitors:
        label = monitor["spec"]["jobLabel"]
        selector = monitor["spec"]["selector"]
        if monitor["kind"] == "PodMonitor":
            ports = {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}
            for name in PROCESSES:
                container = process(name)
                labels = container.workload["spec"]["template"]["metadata"]["labels"]
                if not selector_matches(selector, labels):
                    continue
                served = [
                    port
                    for port in ports
                    if port in {p.get("name") for p in container.spec["ports"]}
                ]
                assert served, f"{name}: the PodMonitor scrapes none of its ports"
                assert DEFAULT_METRICS_PORTS[name] == resolve_port(container, served[0])
                jobs.add(labels[label])
                covered.add(name)
        else:
            assert "ServiceMonitor" == monitor["kind"]
            for service in services:
                if not selector_matches(selector, service["metadata"].get("labels", {})):
                    continue
                names = {port["name"] for port in service["spec"]["ports"]}
                for endpoint in monitor["spec"]["endpoints"]:
                    assert endpoint["port"] in names
                jobs.add(service["metadata"]["labels"][label])
                covered.update(
                    name
                    for name in PROCESSES
                    if selector_matches(
                        {"matchLabels": service["spec"]["selector"]},
                        process(name).workload["spec"]["template"]["metadata"]["labels"],
                    )
                )
        assert all(
            endpoint.get("path", "/metrics") == "/metrics" for endpoint in endpoints(monitor)
        )
    assert set(PROCESSES) == covered
    assert set() == set(re.findall(r'job="([^"]+)"', ALERTS_FILE.read_text())) - jobs


def test_the_api_service_reaches_the_api() -> None:
    """
    The API's Service selects the API pods and forwards to the API port.
    """
    api = process("api")
    labels = api.workload["spec"]["template"]["metadata"]["labels"]
    selecting = [
        service
        for service in included("Service")
        if selector_matches({"matchLabels": service["spec"]["selector"]}, labels)
    ]
    assert 1 == len(selecting)
    ports = selecting[0]["spec"]["ports"]
    assert [DEFAULT_METRICS_PORTS["api"]] == [resolve_port(api, p["targetPort"]) for p in ports]


def test_workload_selectors_match_their_pods() -> None:
    """
    Each workload and PodDisruptionBudget selects pods of the kustomization, each its own.
    """
    pods = {
        name_of(doc): doc["spec"]["template"]["metadata"]["labels"]
        for doc in INCLUDED
        if doc["kind"] in WORKLOAD_KINDS
    }
    for doc in INCLUDED:
        if doc["kind"] in WORKLOAD_KINDS:
            matched = [
                n for n, labels in pods.items() if selector_matches(doc["spec"]["selector"], labels)
            ]
            assert [name_of(doc)] == matched
    for pdb in included("PodDisruptionBudget"):
        assert [
            n for n, labels in pods.items() if selector_matches(pdb["spec"]["selector"], labels)
        ]


# ---------------------------------------------------------------------------------------------
# Scaling and shutdown


def test_scaled_object_scales_the_workers_up_to_the_partition_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    KEDA scales the worker Deployment by the lag of the workers' group on the topic the scorers
    consume, at the configured brokers, up to the partition count of the ConfigMap.
    """
    worker = process("worker")
    settings = cast(WorkerSettings, build_settings(worker, monkeypatch))
    scaled = the("ScaledObject", name_of(worker.workload))
    target = scaled["spec"]["scaleTargetRef"]
    assert ("Deployment", name_of(worker.workload)) == (target.get("kind"), target["name"])
    partitions = int(config_maps()["churnwatch-kafka"]["CHURNWATCH_KAFKA_PARTITIONS"])
    assert partitions == settings.kafka.partitions
    assert partitions == scaled["spec"]["maxReplicaCount"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= partitions
    assert "replicas" not in worker.workload["spec"], "KEDA owns the worker replica count"
    triggers = scaled["spec"]["triggers"]
    assert ["kafka"] == [trigger["type"] for trigger in triggers]
    meta = triggers[0]["metadata"]
    assert settings.group_id == meta["consumerGroup"]
    assert settings.kafka.topics().events == meta["topic"]
    assert settings.kafka.bootstrap == meta["bootstrapServers"]
    assert int(meta["lagThreshold"]) > 0
    assert "false" == meta.get("allowIdleConsumers", "false")


def test_kustomize_copies_the_worker_settings_into_the_scaled_object() -> None:
    """
    The kustomization's replacements copy the partition count, the brokers and the group id
    from where the workers read them into the ScaledObject, whose own values are the same.
    """
    copied: dict[str, Any] = {}
    for replacement in KUSTOMIZATION["replacements"]:
        source = replacement["source"]
        value = field(the(source["kind"], source["name"]), source["fieldPath"])
        for target in replacement["targets"]:
            doc = the(target["select"]["kind"], target["select"]["name"])
            for path in target["fieldPaths"]:
                assert str(value) == str(field(doc, path)), f"{path} differs from its source"
                copied[f"{doc['kind']}:{path}"] = value
    assert {
        "ScaledObject:spec.maxReplicaCount",
        "ScaledObject:spec.triggers.0.metadata.bootstrapServers",
        "ScaledObject:spec.triggers.0.metadata.consumerGroup",
    } == set(copied)


def test_the_learner_is_a_single_replica() -> None:
    """
    Exactly one learner: one replica, the old one stopped before the new starts, no autoscaler.
    """
    learner = process("learner").workload
    assert 1 == learner["spec"]["replicas"]
    assert "Recreate" == learner["spec"]["strategy"]["type"]
    targets = {
        doc["spec"]["scaleTargetRef"]["name"]
        for doc in INCLUDED
        if doc["kind"] in {"ScaledObject", "HorizontalPodAutoscaler"}
    }
    assert name_of(learner) not in targets


@pytest.mark.parametrize("name", CONSUMERS)
def test_shutdown_has_time_to_commit(name: ProcessType, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    After SIGTERM a faust process gets a commit request and its interval; the alert consumer
    the longest delivery it allows between polls.
    """
    container = process(name)
    settings = build_settings(container, monkeypatch)
    grace = container.pod["terminationGracePeriodSeconds"]
    if isinstance(settings, NotifySettings):
        assert grace > settings.max_poll_interval_ms / 1000
    else:
        assert grace >= settings.request_timeout + settings.broker_commit_interval


# ---------------------------------------------------------------------------------------------
# Security and resources


def dockerfile_uid() -> int:
    users = [arg.split(":")[0] for op, arg in dockerfile_instructions() if op == "USER"]
    return int(users[-1])


@pytest.mark.parametrize("container", CONTAINERS, ids=CONTAINER_IDS)
def test_containers_are_locked_down(container: Container) -> None:
    """
    Non-root (the image's uid), a read-only root file system, no privilege escalation, no
    capabilities; no service account token, no service-link variables in the environment.
    """
    pod = container.pod.get("securityContext", {})
    own = container.spec.get("securityContext", {})
    effective = {**pod, **own}
    assert effective.get("runAsNonRoot") is True
    assert dockerfile_uid() == effective.get("runAsUser")
    assert effective["runAsUser"] != 0
    assert own.get("readOnlyRootFilesystem") is True
    assert own.get("allowPrivilegeEscalation") is False
    assert own.get("privileged", False) is False
    assert "ALL" in own.get("capabilities", {}).get("drop", [])
    assert [] == own.get("capabilities", {}).get("add", [])
    assert "RuntimeDefault" == effective.get("seccompProfile", {}).get("type")
    assert container.pod.get("automountServiceAccountToken") is False
    assert container.pod.get("enableServiceLinks") is False


@pytest.mark.parametrize("container", CONTAINERS, ids=CONTAINER_IDS)
def test_writable_paths_are_empty_dirs(container: Container) -> None:
    """
    /tmp and faust's data directory (CHURNWATCH_DATA_DIR) are emptyDir mounts.
    """
    empty = {v["name"] for v in container.pod.get("volumes", []) if "emptyDir" in v}
    mounts = [
        m["mountPath"].rstrip("/")
        for m in container.spec.get("volumeMounts", [])
        if m["name"] in empty
    ]
    assert "/tmp" in mounts
    if "data_dir" in container.settings_class.model_fields:
        data_dir = environment(container)["CHURNWATCH_DATA_DIR"].value or ""
        assert any(data_dir == m or data_dir.startswith(m + "/") for m in mounts), data_dir


@pytest.mark.parametrize("container", CONTAINERS, ids=CONTAINER_IDS)
def test_resources_are_requested_and_bounded(container: Container) -> None:
    """
    Each container requests CPU and memory and is limited to no less than it requests.
    """
    resources = container.spec["resources"]
    for kind in ("cpu", "memory"):
        request = quantity(resources["requests"][kind])
        limit = quantity(resources["limits"][kind])
        assert 0 < request <= limit, f"{kind}: request {request}, limit {limit}"


def test_sizes_cite_measured_figures() -> None:
    """
    The worker's sizes cite the benchmark results, and every quoted table row of a comment is
    a row of a benchmark file the same manifest names.
    """
    cited: dict[str, set[str]] = {}
    wrong: list[str] = []
    for name in RESOURCES:
        lines = list(comments(K8S / name))
        files = set(_BENCHMARK.findall(" ".join(lines)))
        cited[name] = files
        texts = [" ".join((ROOT / file).read_text().split()) for file in files]
        for line in lines:
            for quote in _CITATION.findall(line):
                if not any(" ".join(quote.split()) in text for text in texts):
                    wrong.append(f"{name}: {quote!r} is not in {sorted(files)}")
    assert [] == wrong
    worker = process("worker").file
    assert {
        "benchmarks/results/stream_throughput.md",
        "benchmarks/results/core_throughput.md",
    } <= cited[worker]


# ---------------------------------------------------------------------------------------------
# kustomize itself


def kustomize_command() -> list[str]:
    """
    `kubectl kustomize`, or the kustomize binary `.ci/install.sh` puts in deploy/local/bin
    (Debian's kubectl is too old for `replacements`); neither: skipped on a laptop, failed in CI.
    """
    installed = ROOT / "deploy/local/bin/kustomize"
    if installed.is_file():
        return [str(installed), "build"]
    for name, verb in (("kubectl", "kustomize"), ("kustomize", "build")):
        found = shutil.which(name)
        if found is not None:
            return [found, verb]
    unavailable("neither kubectl nor kustomize found", "install them with `bash .ci/install.sh`")


def test_kubectl_kustomize_renders_the_manifests(tmp_path: Path) -> None:
    """
    `kustomize build` (offline; or `kubectl kustomize`) renders every included object and the
    dashboard ConfigMap into the namespace, with the image, and follows a change of the
    partitions, the brokers and the group id into the ScaledObject.
    """
    command = kustomize_command()
    copy_dir = tmp_path / "k8s"
    shutil.copytree(K8S, copy_dir)
    edited: dict[str, list[Doc]] = {}
    for name, docs in MANIFESTS.items():
        edited[name] = copy.deepcopy(docs)
        for doc in edited[name]:
            if (doc["kind"], name_of(doc)) == ("ConfigMap", "churnwatch-kafka"):
                doc["data"]["CHURNWATCH_KAFKA_PARTITIONS"] = "12"
                doc["data"]["CHURNWATCH_KAFKA_BOOTSTRAP"] = "brokers.example:9093"
            if (doc["kind"], name_of(doc)) == ("Deployment", "churnwatch-worker"):
                env = field(doc, "spec.template.spec.containers.[name=worker].env")
                field(env, "[name=CHURNWATCH_GROUP_ID]")["value"] = "another-group"
        (copy_dir / name).write_text(yaml.safe_dump_all(edited[name], sort_keys=False))
    done = subprocess.run([*command, str(copy_dir)], capture_output=True, text=True, check=False)
    assert 0 == done.returncode, done.stderr
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]
    expected = {(doc["kind"], name_of(doc)) for doc in INCLUDED}
    expected.add(("ConfigMap", "churnwatch-grafana-dashboards"))
    assert expected == {(doc["kind"], name_of(doc)) for doc in rendered}
    namespace = KUSTOMIZATION["namespace"]
    assert {namespace} == {
        doc["metadata"].get("namespace") for doc in rendered if doc["kind"] != "Namespace"
    }
    images = {
        container["image"]
        for doc in rendered
        if doc["kind"] in WORKLOAD_KINDS
        for container in pod_spec(doc)["containers"]
    }
    assert {interpolate(str(COMPOSE_SERVICES["worker"]["image"]))} == images
    scaled = next(doc for doc in rendered if doc["kind"] == "ScaledObject")
    assert 12 == scaled["spec"]["maxReplicaCount"]
    meta = scaled["spec"]["triggers"][0]["metadata"]
    assert ("brokers.example:9093", "another-group") == (
        meta["bootstrapServers"],
        meta["consumerGroup"],
    )
