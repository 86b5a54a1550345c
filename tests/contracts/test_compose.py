"""
docker-compose.yml, its Dockerfile, Prometheus and Grafana files agree with the code.

No Docker here: the files are parsed and checked against the CLI (click), the settings classes
(pydantic-settings), the metrics (churnwatch.metrics) and `promtool check config`, so a renamed
command, a misspelt variable or a dashboard query on a metric that does not exist fails here.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import AliasChoices, BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from churnwatch.api.settings import ApiSettings
from churnwatch.cli import main
from churnwatch.metrics import DEFAULT_METRICS_PORTS, Metrics, ProcessType
from churnwatch.notify.settings import NotifySettings
from churnwatch.sdk.settings import KafkaSettings
from churnwatch.stream.settings import LearnerSettings, WorkerSettings
from needs import unavailable

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ALERTS_FILE = ROOT / "deploy" / "prometheus" / "alerts.yml"

# DESIGN.md, "Running it": Apache Kafka (KRaft), Redis, scoring workers, the learner, alert
# consumers, the API, Prometheus, Grafana; plus the one-shot that creates the topics.
DESIGN_SERVICES = frozenset(
    {"kafka", "kafka-init", "redis", "worker", "learner", "notify", "api", "prometheus", "grafana"}
)

# The settings class each command builds from the environment (see the commands' modules).
SETTINGS_OF_COMMAND: dict[tuple[str, ...], type[BaseSettings]] = {
    ("topics", "create"): KafkaSettings,
    ("worker",): WorkerSettings,
    ("learner",): LearnerSettings,
    ("notify",): NotifySettings,
    ("api",): ApiSettings,
}
PROCESS_OF_COMMAND: dict[tuple[str, ...], ProcessType] = {
    ("worker",): "worker",
    ("learner",): "learner",
    ("notify",): "notify",
    ("api",): "api",
}

# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}.
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
# A reference that commits no value: no default, compose fails (or substitutes "") when unset.
_SECRET_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?\?[^}]*)?\}$")
_SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|AUTH|CREDENTIALS|API_KEY)$", re.I)
_SECRET_FLAG = re.compile(r"^--?(requirepass|password|pass|token|secret)$", re.I)
_URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:([^@\s/]+)@", re.I)
_METRIC_NAME = re.compile(r"\bchurnwatch_[a-zA-Z0-9_:]+")


# ---------------------------------------------------------------------------------------------
# Reading the compose file


def load_compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return compose


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def command_of(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def churnwatch_path(name: str) -> tuple[str, ...]:
    """
    The CLI path of a churnwatch service (`("topics", "create")`), without its options.
    """
    args = command_of(SERVICES[name])[1:]
    path: list[str] = []
    group: click.Command = main
    while isinstance(group, click.Group) and args and not args[0].startswith("-"):
        path.append(args[0])
        group = group.commands.get(args[0], click.Command("missing"))
        args = args[1:]
    return tuple(path)


CHURNWATCH_SERVICES = sorted(
    name for name, svc in SERVICES.items() if command_of(svc)[:1] == ["churnwatch"]
)
PROCESS_SERVICES = sorted(
    name for name in CHURNWATCH_SERVICES if churnwatch_path(name) in PROCESS_OF_COMMAND
)


def environment_of(service: Mapping[str, Any]) -> dict[str, str | None]:
    """
    The environment entries of a service as written (None: passed through from the shell).
    """
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {key: (value if sep else None) for key, sep, value in pairs}
    return {key: None if value is None else str(value) for key, value in env.items()}


def interpolate(value: str) -> str:
    """
    The value compose would pass on with every variable unset: defaults are used, required
    variables get a placeholder (as if the operator had set them).
    """

    def one(match: re.Match[str]) -> str:
        name, op, word = match.group(1), match.group(2) or "", match.group(3) or ""
        return word if "-" in op else f"set-{name.lower()}"

    return _INTERPOLATION.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def container_ports(service: Mapping[str, Any]) -> set[int]:
    """
    The container side of `ports` ("127.0.0.1:9467:9467" -> 9467) and `expose`.
    """
    found: set[int] = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            found.add(int(entry["target"]))
        else:
            found.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    found.update(int(str(port).split("/")[0]) for port in service.get("expose", []))
    return found


def strings_in(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from strings_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings_in(value)


def mounts_of(service: Mapping[str, Any]) -> dict[str, Path]:
    """
    Bind mounts of a service: container path -> host path (relative to the compose file).
    """
    found: dict[str, Path] = {}
    for entry in service.get("volumes", []):
        source, _, rest = str(entry).partition(":")
        if source.startswith((".", "/")):
            found[rest.split(":")[0]] = (COMPOSE_FILE.parent / source).resolve()
    return found


def host_path(service: Mapping[str, Any], container_path: str) -> Path:
    """
    Where a container path of a service comes from on the host (a file or under a directory).
    """
    for target, source in sorted(mounts_of(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"expected {container_path} to be a bind mount, got {mounts_of(service)}")


# ---------------------------------------------------------------------------------------------
# What the settings classes read


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
    return None


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret(arg) for arg in typing.get_args(annotation))


def _field_keys(name: str, field: FieldInfo, prefix: str) -> list[str]:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str)]
    if isinstance(alias, str):
        return [alias]
    if field.alias:
        return [field.alias]
    return [prefix + name]


def _nested_keys(model: type[BaseModel], delimiter: str) -> Iterator[tuple[str, FieldInfo]]:
    for name, field in model.model_fields.items():
        yield name, field
        inner = _nested_model(field.annotation)
        if inner is not None:
            for sub, sub_field in _nested_keys(inner, delimiter):
                yield name + delimiter + sub, sub_field


def env_fields(cls: type[BaseSettings]) -> dict[str, FieldInfo]:
    """
    Every environment name a settings class reads (upper case), with the field it sets:
    env_prefix + field name, validation aliases, `prefix + group + delimiter + field` for nested
    groups, and the own names of nested settings that are built by their default factory.
    """
    config = cls.model_config
    prefix = config.get("env_prefix", "")
    delimiter = config.get("env_nested_delimiter")
    found: dict[str, FieldInfo] = {}
    for name, field in cls.model_fields.items():
        keys = _field_keys(name, field, prefix)
        found.update(dict.fromkeys(keys, field))
        model = _nested_model(field.annotation)
        if model is None:
            continue
        if delimiter:
            for key in keys:
                for sub, sub_field in _nested_keys(model, delimiter):
                    found[key + delimiter + sub] = sub_field
        if issubclass(model, BaseSettings) and field.default_factory is not None:
            found.update(env_fields(model))
    if config.get("case_sensitive"):
        return found
    return {key.upper(): field for key, field in found.items()}


def settings_class(name: str) -> type[BaseSettings]:
    path = churnwatch_path(name)
    assert path in SETTINGS_OF_COMMAND, f"{name}: no settings class known for {path}"
    return SETTINGS_OF_COMMAND[path]


def build_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """
    The settings object the service's process builds from its compose environment.
    """
    with monkeypatch.context() as patch:
        for key in os.environ:
            if key.upper().startswith("CHURNWATCH_"):
                patch.delenv(key)
        for key, value in environment_of(SERVICES[name]).items():
            if value is not None:
                patch.setenv(key, interpolate(value))
        return settings_class(name)()


def listen_port(settings: Any) -> int:
    port: int = settings.port if isinstance(settings, ApiSettings) else settings.metrics_port
    return port


def registered_metric_names() -> set[str]:
    """
    The sample names a Metrics registry exposes (counters as `_total`, histograms' series).
    """
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    registry = CollectorRegistry()
    Metrics(registry)
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def promtool_path() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None:
        unavailable(
            "promtool not found", "install Debian's prometheus package (`bash .ci/install.sh`)"
        )
    return found


# ---------------------------------------------------------------------------------------------
# The services


def test_every_service_of_the_design_is_present() -> None:
    """
    Every component DESIGN.md lists for the production stack is a compose service.
    """
    assert set() == DESIGN_SERVICES - set(SERVICES)


@pytest.mark.parametrize("name", CHURNWATCH_SERVICES)
def test_churnwatch_services_run_real_cli_commands(name: str) -> None:
    """
    Each churnwatch service runs an existing `churnwatch` command with options it accepts.
    """
    args = command_of(SERVICES[name])[1:]
    command: click.Command = main
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        assert args[0] in command.commands, f"{name}: `churnwatch {args[0]}` does not exist"
        command, args = command.commands[args[0]], args[1:]
    assert not isinstance(command, click.Group), f"{name}: {command.name} needs a subcommand"
    command.make_context(f"churnwatch {' '.join(churnwatch_path(name))}", list(args))


def test_the_expected_services_run_churnwatch() -> None:
    """
    The topic creator, the workers, the learner, the alert consumers and the API run churnwatch.
    """
    expected = {
        "kafka-init": ("topics", "create"),
        "worker": ("worker",),
        "learner": ("learner",),
        "notify": ("notify",),
        "api": ("api",),
    }
    assert expected == {name: churnwatch_path(name) for name in CHURNWATCH_SERVICES}


def test_churnwatch_services_share_one_image_built_from_the_dockerfile() -> None:
    """
    Every churnwatch service uses the same image, built from a Dockerfile in the repository.
    """
    images = {SERVICES[name].get("image") for name in CHURNWATCH_SERVICES}
    builds = {
        json.dumps(SERVICES[name].get("build"), sort_keys=True) for name in CHURNWATCH_SERVICES
    }
    assert 1 == len(images)
    assert 1 == len(builds)
    build = SERVICES[CHURNWATCH_SERVICES[0]]["build"]
    context = COMPOSE_FILE.parent / build["context"]
    assert (context / build.get("dockerfile", "Dockerfile")).is_file()


def test_other_images_are_pinned() -> None:
    """
    Images pulled from a registry name a version tag, never `latest` or none.
    """
    unpinned = {
        name: svc["image"]
        for name, svc in SERVICES.items()
        if "build" not in svc
        and (":" not in svc["image"].rsplit("/", 1)[-1] or svc["image"].endswith(":latest"))
    }
    assert {} == unpinned


# ---------------------------------------------------------------------------------------------
# The environment


def test_accepted_env_names_follow_the_settings_classes() -> None:
    """
    The accepted names include prefixed fields, nested groups and aliases, and no typo.
    """
    worker = env_fields(WorkerSettings)
    api = env_fields(ApiSettings)
    notify = env_fields(NotifySettings)
    for name in (
        "CHURNWATCH_KAFKA_BOOTSTRAP",
        "CHURNWATCH_KAFKA__BOOTSTRAP",
        "CHURNWATCH_REDIS_URL",
        "CHURNWATCH_METRICS_PORT",
        "CHURNWATCH_HORIZON_DAYS",
    ):
        assert name in worker
    assert "CHURNWATCH_KAFKA_BOOTSTRAPS" not in worker
    assert "CHURNWATCH_KAFKA_PARTITIONS" in api
    assert "CHURNWATCH_API_TOPIC_PARTITIONS" not in api
    assert "CHURNWATCH_NOTIFY_SMTP_PASSWORD" in notify
    assert _is_secret(notify["CHURNWATCH_NOTIFY_SMTP_PASSWORD"].annotation)


@pytest.mark.parametrize("name", CHURNWATCH_SERVICES)
def test_compose_sets_only_variables_the_process_reads(name: str) -> None:
    """
    Every CHURNWATCH_* variable of a churnwatch service is read by its settings class.
    """
    accepted = env_fields(settings_class(name))
    given = {key for key in environment_of(SERVICES[name]) if key.upper().startswith("CHURNWATCH_")}
    assert set() == {key for key in given if key.upper() not in accepted}


@pytest.mark.parametrize("name", CHURNWATCH_SERVICES)
def test_compose_environment_builds_valid_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The compose environment validates, and points at the compose broker and Redis.
    """
    settings = build_settings(name, monkeypatch)
    kafka = settings if isinstance(settings, KafkaSettings) else getattr(settings, "kafka", None)
    if kafka is not None:
        advertised = environment_of(SERVICES["kafka"])["KAFKA_ADVERTISED_LISTENERS"] or ""
        addresses = {entry.split("://", 1)[1] for entry in advertised.split(",")}
        in_network = {a for a in addresses if a.rsplit(":", 1)[0] in SERVICES}
        bootstrap = {server.strip() for server in kafka.bootstrap.split(",")}
        assert set() == bootstrap - in_network
    redis = getattr(settings, "redis", None)
    if redis is not None:
        assert urlsplit(redis.url).hostname in SERVICES
        assert redis.password is not None, f"{name}: Redis requires a password"


@pytest.mark.parametrize("name", PROCESS_SERVICES)
def test_processes_listen_beyond_loopback(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Metrics and the API listen on 0.0.0.0, so Prometheus and the host can reach them.
    """
    settings = build_settings(name, monkeypatch)
    host = settings.host if isinstance(settings, ApiSettings) else settings.metrics_host
    assert "0.0.0.0" == host


def test_no_secret_is_committed() -> None:
    """
    Passwords and tokens appear only as ${VAR} references without a default, or passed through.
    """
    secret_names = {
        key
        for cls in SETTINGS_OF_COMMAND.values()
        for key, field in env_fields(cls).items()
        if _is_secret(field.annotation)
    }
    literal: list[str] = []
    for name, svc in SERVICES.items():
        for key, value in environment_of(svc).items():
            secret = key.upper() in secret_names or _SECRET_NAME.search(key)
            if secret and value is not None and not _SECRET_REFERENCE.match(value):
                literal.append(f"{name}: {key}")
        command = command_of(svc)
        for flag, value in itertools.pairwise(command):
            if _SECRET_FLAG.match(flag) and not _SECRET_REFERENCE.match(value):
                literal.append(f"{name}: {flag}")
    for text in strings_in(COMPOSE):
        for match in _URL_PASSWORD.finditer(text):
            if not _SECRET_REFERENCE.match(match.group(1)):
                literal.append(f"password in URL {text!r}")
    assert [] == literal


def test_redis_persists_and_shares_the_clients_password() -> None:
    """
    Redis runs with the AOF fsynced every second and the password the clients are given.
    """
    command = command_of(SERVICES["redis"])
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert "yes" == flags.get("--appendonly")
    assert "everysec" == flags.get("--appendfsync")
    client = {
        environment_of(SERVICES[name]).get("CHURNWATCH_REDIS_PASSWORD")
        for name in CHURNWATCH_SERVICES
    }
    client.discard(None)
    assert {flags.get("--requirepass")} == client


# ---------------------------------------------------------------------------------------------
# Ports, health and start order


@pytest.mark.parametrize("name", PROCESS_SERVICES)
def test_ports_match_the_metrics_ports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Each process listens on its default metrics port, which compose exposes and health-checks.
    """
    settings = build_settings(name, monkeypatch)
    port = listen_port(settings)
    assert DEFAULT_METRICS_PORTS[PROCESS_OF_COMMAND[churnwatch_path(name)]] == port
    assert {port} == container_ports(SERVICES[name])
    check = " ".join(SERVICES[name]["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/" in check


def test_api_port_is_published() -> None:
    """
    The API's port is published on the host, at the same number.
    """
    port = ApiSettings.model_fields["port"].default
    published = [str(entry) for entry in SERVICES["api"].get("ports", [])]
    assert [f"127.0.0.1:{port}:{port}"] == published


def test_workers_start_after_the_topics_and_redis() -> None:
    """
    Stream processes wait for the one-shot topic creation and a healthy Redis.
    """
    for name in ("worker", "learner", "notify"):
        depends = SERVICES[name]["depends_on"]
        assert "service_completed_successfully" == depends["kafka-init"]["condition"]
        assert "service_healthy" == depends["redis"]["condition"]
    assert "service_healthy" == SERVICES["kafka-init"]["depends_on"]["kafka"]["condition"]
    assert "no" == SERVICES["kafka-init"]["restart"]


def test_healthy_conditions_have_healthchecks() -> None:
    """
    Every `service_healthy` dependency names a service that defines a healthcheck.
    """
    missing = {
        f"{name} -> {target}"
        for name, svc in SERVICES.items()
        for target, condition in (svc.get("depends_on") or {}).items()
        if target not in SERVICES
        or (
            condition.get("condition") == "service_healthy"
            and "healthcheck" not in SERVICES[target]
        )
    }
    assert set() == missing


# ---------------------------------------------------------------------------------------------
# Prometheus


def prometheus_config_path() -> str:
    command = command_of(SERVICES["prometheus"])
    given = [arg.split("=", 1)[1] for arg in command if arg.startswith("--config.file=")]
    return given[0] if given else "/etc/prometheus/prometheus.yml"


def prometheus_targets() -> list[tuple[str, str, int]]:
    """
    (job, host, port) of every static and DNS target of the compose scrape config.
    """
    config = yaml.safe_load(host_path(SERVICES["prometheus"], prometheus_config_path()).read_text())
    found: list[tuple[str, str, int]] = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                found.append((job["job_name"], host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            found.extend((job["job_name"], host, int(dns["port"])) for host in dns["names"])
    return found


def test_prometheus_targets_are_compose_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Every scrape target is a compose service at the port that service listens on.
    """
    wrong: list[str] = []
    for job, host, port in prometheus_targets():
        if host not in SERVICES:
            wrong.append(f"{job}: {host} is not a service")
            continue
        if host in PROCESS_SERVICES:
            listening = {listen_port(build_settings(host, monkeypatch))}
        else:
            listening = container_ports(SERVICES[host])
        if port not in listening:
            wrong.append(f"{job}: {host}:{port}, expected a port in {sorted(listening)}")
    assert [] == wrong
    assert set(PROCESS_SERVICES) <= {host for _job, host, _port in prometheus_targets()}


def test_alert_rules_name_scraped_jobs() -> None:
    """
    The jobs alerts.yml selects on are jobs of the compose scrape config.
    """
    jobs = {job for job, _host, _port in prometheus_targets()}
    assert set() == set(re.findall(r'job="([^"]+)"', ALERTS_FILE.read_text())) - jobs


def test_promtool_accepts_the_compose_config(tmp_path: Path) -> None:
    """
    `promtool check config` accepts the config and its rule file, laid out as mounted.
    """
    promtool = promtool_path()
    for target, source in mounts_of(SERVICES["prometheus"]).items():
        copy = tmp_path / target.lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, copy)
    config = tmp_path / prometheus_config_path().lstrip("/")
    done = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    assert 0 == done.returncode, done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------
# Grafana


def grafana_provisioning(kind: str) -> list[dict[str, Any]]:
    folder = host_path(SERVICES["grafana"], f"/etc/grafana/provisioning/{kind}")
    return [yaml.safe_load(path.read_text()) for path in sorted(folder.glob("*.y*ml"))]


def dashboards() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for provisioning in grafana_provisioning("dashboards"):
        for provider in provisioning["providers"]:
            folder = host_path(SERVICES["grafana"], provider["options"]["path"])
            for path in sorted(folder.glob("*.json")):
                found[path.name] = json.loads(path.read_text())
    return found


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    """
    The provisioned Prometheus datasource points at the compose service and its port.
    """
    sources = [s for p in grafana_provisioning("datasources") for s in p["datasources"]]
    assert ["prometheus"] == [source["type"] for source in sources]
    url = urlsplit(sources[0]["url"])
    assert "prometheus" == url.hostname
    assert url.port in container_ports(SERVICES["prometheus"])


def test_dashboards_use_the_provisioned_datasource() -> None:
    """
    At least one dashboard is provisioned, and every panel queries the provisioned datasource.
    """
    uids = {s["uid"] for p in grafana_provisioning("datasources") for s in p["datasources"]}
    found = dashboards()
    assert found
    used = {
        target["datasource"]["uid"]
        for dashboard in found.values()
        for panel in dashboard["panels"]
        for target in [panel, *panel.get("targets", [])]
        if "datasource" in target
    }
    assert set() == used - uids


def test_dashboard_queries_use_registered_metrics() -> None:
    """
    Every churnwatch metric a dashboard queries is one that churnwatch.metrics registers.
    """
    registered = registered_metric_names()
    queried: set[str] = set()
    for dashboard in dashboards().values():
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                assert target.get("expr"), f"panel {panel['title']!r} has a target without expr"
                queried.update(_METRIC_NAME.findall(target["expr"]))
    assert queried
    assert set() == queried - registered


# ---------------------------------------------------------------------------------------------
# The Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    build = SERVICES[CHURNWATCH_SERVICES[0]]["build"]
    path = COMPOSE_FILE.parent / build["context"] / build.get("dockerfile", "Dockerfile")
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = (line.strip() for line in text.splitlines())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_installs_the_package_without_dev_extras() -> None:
    """
    The image is python:3.11-slim with `pip install .` of the package and no extras.
    """
    steps = dockerfile_instructions()
    assert ("FROM", "python:3.11-slim") == steps[0]
    installs = [arg for op, arg in steps if op == "RUN" and "pip install" in arg]
    assert 1 == len(installs)
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", installs[0]), installs[0]
    assert "[" not in installs[0]
    assert " -e " not in installs[0]


def test_dockerfile_runs_as_a_non_root_user() -> None:
    """
    The image's last USER is neither root nor uid 0.
    """
    users = [arg.split(":")[0] for op, arg in dockerfile_instructions() if op == "USER"]
    assert users
    assert users[-1] not in {"root", "0"}
