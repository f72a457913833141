"""Reading docker-compose.yml into container specifications, without a Docker engine.

The compose file is the one description of the Kafka and Schema Registry containers: ``anomstream stack up
--engine docker`` runs exactly the image, environment, ports and health check written there, so the two
cannot drift apart. Pure functions only: parsing, ``${VAR:-default}`` interpolation, port and duration
syntax; the Docker SDK calls live in :mod:`anomstream.stack.docker_engine`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anomstream.config import PROJECT_ROOT
from anomstream.errors import StackError
from anomstream.stack.settings import StackSettings

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
# The compose services that make up the stack; the application services stay compose-only.
STACK_SERVICES = ("kafka", "schema-registry")
LABEL = "io.anomstream.stack"
LOOPBACK = "127.0.0.1"

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\})")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION_NS = {"us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}


@dataclass(frozen=True)
class HealthCheck:
    """A compose health check in the Docker Engine API's form (durations in nanoseconds)."""

    test: list[str]
    interval_ns: int = 30_000_000_000
    timeout_ns: int = 30_000_000_000
    retries: int = 3
    start_period_ns: int = 0

    def as_docker(self) -> dict[str, Any]:
        """The ``healthcheck`` argument of the Docker SDK's ``containers.create``."""
        return {
            "test": self.test,
            "interval": self.interval_ns,
            "timeout": self.timeout_ns,
            "retries": self.retries,
            "start_period": self.start_period_ns,
        }


@dataclass(frozen=True)
class ContainerSpec:
    """One stack container as the compose file describes it, ports bound to 127.0.0.1."""

    service: str
    name: str
    image: str
    environment: dict[str, str]
    ports: dict[str, tuple[str, int]]
    healthcheck: HealthCheck | None
    aliases: tuple[str, ...]
    command: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """A short hash of the specification: a running container with another digest is out of date."""
        fields = [self.image, self.environment, sorted(self.ports.items()), self.command, self.healthcheck]
        text = json.dumps(fields, sort_keys=True, default=lambda value: value.__dict__)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_compose(compose_path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as a mapping (YAML anchors and ``<<`` merge keys resolved)."""
    try:
        document = yaml.safe_load(compose_path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise StackError(f"cannot read the compose file {compose_path}: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        raise StackError(f"{compose_path} has no `services` mapping: is it a Docker Compose file?")
    return document


def compose_variables(settings: StackSettings) -> dict[str, str]:
    """The values of the ``${...}`` variables of the compose file, taken from the stack's settings."""
    return {"ANOMSTREAM_KAFKA_PORT": str(settings.kafka_port), "ANOMSTREAM_REGISTRY_PORT": str(settings.registry_port)}


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's variable syntax: ``$$``, ``${VAR}``, ``${VAR-default}`` and ``${VAR:-default}``.

    Raises:
        StackError: a variable has neither a value nor a default.
    """

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name, op = match.group("name"), match.group("op")
        value = variables.get(name)
        if op == ":-" and not value or op == "-" and value is None:
            return match.group("default")
        if value is None:
            raise StackError(f"the compose file uses ${{{name}}} without a default, and it has no value")
        return value

    return _VARIABLE.sub(substitute, text)


def parse_duration_ns(text: str | int | float) -> int:
    """A compose duration (``1m30s``, ``500ms``, ``10s``) in nanoseconds."""
    if isinstance(text, int | float):
        return int(text * 1_000_000_000)
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text.strip():
        raise StackError(f"{text!r} is not a compose duration such as 10s, 1m30s or 500ms")
    return int(sum(float(number) * _DURATION_NS[unit] for number, unit in parts))


def parse_port(entry: str | int | dict[str, Any]) -> tuple[str, int]:
    """One ``ports`` entry as (``"CONTAINER/proto"``, host port), short or long syntax.

    The host address written in the file is not used: the stack binds 127.0.0.1 only.
    """
    if isinstance(entry, dict):
        target, protocol = str(entry["target"]), entry.get("protocol")
        published = str(entry.get("published") or target)
    else:
        spec, _, protocol = str(entry).partition("/")
        parts = spec.split(":")
        target = parts[-1]
        published = parts[-2] if len(parts) >= 2 else target
    if "-" in str(target) or "-" in str(published):
        raise StackError(f"port ranges are not supported for stack services: {entry!r}")
    return f"{int(target)}/{protocol or 'tcp'}", int(published)


def parse_healthcheck(raw: dict[str, Any] | None) -> HealthCheck | None:
    """A compose ``healthcheck`` mapping, or None when absent or disabled."""
    if not raw or raw.get("disable"):
        return None
    test, retries = raw["test"], raw.get("retries", 3)
    return HealthCheck(
        test=["CMD-SHELL", test] if isinstance(test, str) else [str(part) for part in test],
        interval_ns=parse_duration_ns(raw.get("interval", "30s")),
        timeout_ns=parse_duration_ns(raw.get("timeout", "30s")),
        retries=int(retries),
        start_period_ns=parse_duration_ns(raw.get("start_period", "0s")),
    )


def _environment(raw: dict[str, Any] | list[str] | None, variables: Mapping[str, str]) -> dict[str, str]:
    if raw is None:
        return {}
    pairs = (item.partition("=")[::2] for item in raw) if isinstance(raw, list) else raw.items()
    # compose turns YAML booleans into "true"/"false", not Python's "True"
    text = {str(k): (str(v).lower() if isinstance(v, bool) else "" if v is None else str(v)) for k, v in pairs}
    return {key: interpolate(value, variables) for key, value in text.items()}


def container_specs(compose_path: Path, settings: StackSettings) -> list[ContainerSpec]:
    """The Kafka and Schema Registry containers of the compose file, for the Docker SDK.

    Args:
        compose_path: the compose file (normally the project's ``docker-compose.yml``).
        settings: the stack's settings; its ports fill the file's ``${ANOMSTREAM_*_PORT}`` variables.

    Returns:
        One spec per service of :data:`STACK_SERVICES`, in start order (Kafka first).

    Raises:
        StackError: the file lacks a stack service, or one has no image or an unreadable setting.
    """
    services = load_compose(compose_path)["services"]
    variables = compose_variables(settings)
    specs = []
    for service in STACK_SERVICES:
        raw = services.get(service)
        if not isinstance(raw, dict) or not raw.get("image"):
            raise StackError(f"{compose_path} has no service {service!r} with an image")
        command = raw.get("command")
        specs.append(
            ContainerSpec(
                service=service,
                name=f"anomstream-{service}",
                image=interpolate(str(raw["image"]), variables),
                environment=_environment(raw.get("environment"), variables),
                ports={
                    target: (LOOPBACK, published)
                    for target, published in (parse_port(interpolate_port(p, variables)) for p in raw.get("ports", []))
                },
                healthcheck=parse_healthcheck(raw.get("healthcheck")),
                aliases=tuple(dict.fromkeys([service, str(raw.get("hostname", service))])),
                command=[command] if isinstance(command, str) else command,
                labels={LABEL: str(settings.stack_dir)},
            )
        )
    return specs


def interpolate_port(entry: str | int | dict[str, Any], variables: Mapping[str, str]) -> str | int | dict[str, Any]:
    """A ``ports`` entry with its variables filled in."""
    if isinstance(entry, dict):
        return {key: interpolate(value, variables) if isinstance(value, str) else value for key, value in entry.items()}
    return interpolate(entry, variables) if isinstance(entry, str) else entry
