"""`anomstream stack --engine docker|jvm|auto`: container specifications derived from docker-compose.yml, and
engine selection. No Docker engine runs here, so the containers themselves are not started; what the SDK
would be given is checked field by field against the compose file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from anomstream.errors import StackError
from anomstream.stack import engine
from anomstream.stack.compose_file import LABEL, interpolate, parse_duration_ns, parse_port
from anomstream.stack.docker_engine import NETWORK, ContainerSpec, container_specs, create_kwargs, registry_url
from anomstream.stack.settings import KAFKA_VERSION, StackSettings
from tests.conftest import PROJECT_ROOT, Stack, anomstream

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
NO_ENGINE = "unix:///nonexistent/anomstream-test/docker.sock"


@pytest.fixture
def settings(tmp_path: Path) -> StackSettings:
    return StackSettings(stack_dir=tmp_path / "stack", kafka_port=19192, registry_port=18181)


@pytest.fixture
def specs(settings: StackSettings) -> dict[str, ContainerSpec]:
    return {spec.service: spec for spec in container_specs(COMPOSE, settings)}


def test_specs_use_the_official_images_of_the_compose_file(specs: dict[str, ContainerSpec]) -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert list(specs) == ["kafka", "schema-registry"]
    assert specs["kafka"].image == services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert specs["schema-registry"].image == services["schema-registry"]["image"]
    assert specs["schema-registry"].image.startswith("confluentinc/cp-schema-registry:")
    assert specs["schema-registry"].image.split(":")[1] != "latest"
    assert specs["kafka"].name == "anomstream-kafka" and specs["kafka"].aliases == ("kafka",)


def test_ports_are_published_on_loopback_at_the_settings_ports(specs: dict[str, ContainerSpec]) -> None:
    assert specs["kafka"].ports == {"19092/tcp": ("127.0.0.1", 19192)}
    assert specs["schema-registry"].ports == {"8081/tcp": ("127.0.0.1", 18181)}


def test_environment_is_the_compose_environment_with_ports_filled_in(
    specs: dict[str, ContainerSpec], settings: StackSettings
) -> None:
    kafka = specs["kafka"].environment
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    # clients on the host are told to come back to the published port, services to kafka:9092
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == "INTERNAL://kafka:9092,HOST://127.0.0.1:19192"
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert all(isinstance(value, str) and "${" not in value for value in kafka.values())
    registry = specs["schema-registry"].environment
    assert registry["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"] == "PLAINTEXT://kafka:9092"
    assert registry_url(settings) == "http://127.0.0.1:18181"


def test_health_checks_come_from_the_compose_file(specs: dict[str, ContainerSpec]) -> None:
    kafka = specs["kafka"].healthcheck
    assert kafka is not None and kafka.test[0] == "CMD-SHELL" and "kafka-broker-api-versions.sh" in kafka.test[1]
    assert kafka.as_docker() == {
        "test": kafka.test,
        "interval": 10_000_000_000,
        "timeout": 10_000_000_000,
        "retries": 12,
        "start_period": 20_000_000_000,
    }
    registry = specs["schema-registry"].healthcheck
    assert registry is not None and "http://localhost:8081/subjects" in registry.test[1]


def services_kafka_test() -> str:
    return str(yaml.safe_load(COMPOSE.read_text())["services"]["kafka"]["healthcheck"]["test"][1])


def test_the_sdk_sends_the_engine_what_the_compose_file_says(
    monkeypatch: pytest.MonkeyPatch, specs: dict[str, ContainerSpec], settings: StackSettings
) -> None:
    """The Docker SDK's own argument handling, stopped at the HTTP call: the exact create request."""
    import docker

    client = docker.DockerClient(base_url=NO_ENGINE, version="1.45")  # a fixed version: no engine is asked
    requests: dict[str, dict[str, Any]] = {}
    monkeypatch.setattr(
        client.api,
        "create_container_from_config",
        lambda config, name, platform=None: requests.update({name: config}) or {"Id": name},
    )
    monkeypatch.setattr(client.api, "inspect_container", lambda container_id: {"Id": container_id})
    for spec in specs.values():
        client.containers.create(spec.image, **create_kwargs(spec, client.api))
    kafka = requests["anomstream-kafka"]
    assert kafka["Image"] == f"apache/kafka:{KAFKA_VERSION}" and kafka["Hostname"] == "kafka"
    assert kafka["HostConfig"] == {
        "NetworkMode": NETWORK,
        "PortBindings": {"19092/tcp": [{"HostIp": "127.0.0.1", "HostPort": "19192"}]},
    }
    assert kafka["NetworkingConfig"] == {"EndpointsConfig": {NETWORK: {"Aliases": ["kafka"]}}}
    assert "KAFKA_ADVERTISED_LISTENERS=INTERNAL://kafka:9092,HOST://127.0.0.1:19192" in kafka["Env"]
    assert kafka["Healthcheck"] == {
        "Test": ["CMD-SHELL", services_kafka_test()],
        "Interval": 10_000_000_000,
        "Timeout": 10_000_000_000,
        "Retries": 12,
        "StartPeriod": 20_000_000_000,
    }
    assert kafka["Labels"] == {LABEL: str(settings.stack_dir), "io.anomstream.spec": specs["kafka"].digest}
    registry = requests["anomstream-schema-registry"]
    assert registry["HostConfig"]["PortBindings"] == {"8081/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18181"}]}
    assert registry["NetworkingConfig"] == {"EndpointsConfig": {NETWORK: {"Aliases": ["schema-registry"]}}}


def test_a_change_in_the_compose_file_changes_the_spec(tmp_path: Path, settings: StackSettings) -> None:
    document = yaml.safe_load(COMPOSE.read_text())
    document["services"]["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"] = 3
    document["services"]["schema-registry"]["ports"] = [{"target": 8081, "published": "${ANOMSTREAM_REGISTRY_PORT}"}]
    edited = tmp_path / "docker-compose.yml"
    edited.write_text(yaml.safe_dump(document))
    before = {spec.service: spec for spec in container_specs(COMPOSE, settings)}
    after = {spec.service: spec for spec in container_specs(edited, settings)}
    assert after["kafka"].environment["KAFKA_NUM_PARTITIONS"] == "3"
    assert after["kafka"].digest != before["kafka"].digest
    assert after["schema-registry"].ports == {"8081/tcp": ("127.0.0.1", 18181)}


def test_a_compose_file_without_kafka_is_refused(tmp_path: Path, settings: StackSettings) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  schema-registry:\n    image: confluentinc/cp-schema-registry:8.0.0\n")
    with pytest.raises(StackError, match="no service 'kafka'"):
        container_specs(broken, settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${P:-9092}", "9092"),
        ("${Q:-9092}", "7"),
        ("${E:-d}", "d"),
        ("${E-d}", ""),
        ("a$${P}b", "a${P}b"),
        ("127.0.0.1:${Q}:19092", "127.0.0.1:7:19092"),
    ],
)
def test_interpolation_follows_compose(text: str, expected: str) -> None:
    assert interpolate(text, {"Q": "7", "E": ""}) == expected


def test_interpolation_without_value_or_default_is_an_error() -> None:
    with pytest.raises(StackError, match="MISSING"):
        interpolate("${MISSING}", {})


def test_port_and_duration_syntax() -> None:
    assert parse_port("127.0.0.1:9092:19092") == ("19092/tcp", 9092)
    assert parse_port("8081:8081/udp") == ("8081/udp", 8081)
    assert parse_port(9100) == ("9100/tcp", 9100)
    assert parse_duration_ns("1m30s") == 90_000_000_000
    assert parse_duration_ns("500ms") == 500_000_000
    with pytest.raises(StackError):
        parse_duration_ns("10 seconds")


def test_auto_falls_back_to_jvm_when_no_engine_answers(
    monkeypatch: pytest.MonkeyPatch, settings: StackSettings
) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    assert engine.resolve_engine("auto", settings, jvm_is_running=False) == "jvm"
    assert engine.resolve_engine("jvm", settings, jvm_is_running=False) == "jvm"
    with pytest.raises(StackError, match="no Docker engine answers"):
        engine.resolve_engine("docker", settings, jvm_is_running=False)
    with pytest.raises(StackError, match="unknown stack engine"):
        engine.resolve_engine("podman", settings, jvm_is_running=False)


def test_auto_keeps_a_running_jvm_stack_without_asking_docker(
    monkeypatch: pytest.MonkeyPatch, settings: StackSettings
) -> None:
    def no_probe() -> None:
        raise AssertionError("a running JVM stack must not wait on a Docker probe")

    monkeypatch.setattr(engine.docker_engine, "docker_client", no_probe)
    assert engine.resolve_engine("auto", settings, jvm_is_running=True) == "jvm"
    assert engine.resolve_engine("auto", settings.model_copy(update={"brokers": 3}), jvm_is_running=False) == "jvm"


def test_cli_auto_uses_the_jvm_stack_here(stack: Stack) -> None:
    """End to end through the CLI: no engine answers, so `auto` serves the running JVM stack."""
    env = os.environ | {"DOCKER_HOST": NO_ENGINE, "ANOMSTREAM_STACK_ENGINE": "auto"}
    exports = anomstream("stack", "env", env=env)
    assert exports.returncode == 0
    # the JVM stack's own addresses (Apicurio's path), not Docker's
    assert f"export SCHEMA_REGISTRY_URL={stack.registry_url}" in exports.stdout
    refused = anomstream("stack", "status", "--engine", "docker", env=env)
    assert refused.returncode == 1
    assert "no Docker engine answers" in refused.stderr
