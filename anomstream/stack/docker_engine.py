"""The stack in Docker containers: ``anomstream stack up --engine docker``.

The Docker SDK runs the compose file's own ``kafka`` and ``schema-registry`` services (image, environment,
ports, health check, as :func:`container_specs` reads them) on a private network, their ports published on
127.0.0.1 only. Containers are ours when labelled with the stack folder, so ``down`` removes exactly those.
Which engine serves a command is decided in :mod:`anomstream.stack.engine`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomstream.errors import StackError
from anomstream.stack.compose_file import (
    COMPOSE_FILE,
    LABEL,
    STACK_SERVICES,
    ContainerSpec,
    HealthCheck,
    container_specs,
    load_compose,
)
from anomstream.stack.servers import kafka_answers, registry_answers
from anomstream.stack.settings import StackSettings

if TYPE_CHECKING:
    from docker import APIClient, DockerClient

__all__ = [
    "STACK_SERVICES",
    "ContainerSpec",
    "HealthCheck",
    "container_specs",
    "create_kwargs",
    "docker_client",
    "load_compose",
    "down",
    "registry_url",
    "running",
    "status",
    "up",
]

logger = logging.getLogger(__name__)
NETWORK = "anomstream-stack"
DIGEST_LABEL = "io.anomstream.spec"


def docker_client(timeout_s: float = 3.0) -> DockerClient | None:
    """A client of the Docker engine that ``DOCKER_HOST`` (or the default socket) names, if it answers."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        return None
    try:
        client = docker.from_env(timeout=int(max(timeout_s, 1)))
        client.ping()
    except (DockerException, OSError) as error:
        logger.debug("no Docker engine: %s", error)
        return None
    return client


def registry_url(settings: StackSettings) -> str:
    """Confluent's registry serves its API at the root, unlike Apicurio's ``/apis/ccompat/v7``."""
    return f"http://127.0.0.1:{settings.registry_port}"


def running(client: DockerClient, settings: StackSettings) -> bool:
    """True when containers of this stack folder exist (running or stopped)."""
    return bool(_our_containers(client, settings))


def _our_containers(client: DockerClient, settings: StackSettings) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL}={settings.stack_dir}"}))


def create_kwargs(spec: ContainerSpec, api: APIClient) -> dict[str, Any]:
    """The keyword arguments of ``client.containers.create`` for ``spec`` (its image aside).

    The container joins :data:`NETWORK` under the compose service's names, so the addresses written in
    the compose file (``kafka:9092``) resolve between the containers as they do under Compose.
    """
    return {
        "command": spec.command,
        "name": spec.name,
        "hostname": spec.aliases[-1],
        "environment": spec.environment,
        "ports": spec.ports,
        "healthcheck": spec.healthcheck.as_docker() if spec.healthcheck else None,
        "labels": {**spec.labels, DIGEST_LABEL: spec.digest},
        "network": NETWORK,
        "networking_config": {NETWORK: api.create_endpoint_config(aliases=list(spec.aliases))},
    }


def _create(client: DockerClient, spec: ContainerSpec) -> Any:
    from docker.errors import ImageNotFound

    if not client.images.list(name=spec.image):
        logger.info("pulling %s", spec.image)
        client.images.pull(spec.image)
    try:
        return client.containers.create(spec.image, **create_kwargs(spec, client.api))
    except ImageNotFound as error:
        raise StackError(f"image {spec.image} not found: check the compose file's tag") from error


def _ensure_container(client: DockerClient, spec: ContainerSpec) -> tuple[Any, bool]:
    """The running container for ``spec`` (created or restarted as needed) and whether we started it."""
    from docker.errors import APIError, NotFound

    try:
        container = client.containers.get(spec.name)
    except NotFound:
        container = None
    if container is not None and container.labels.get(DIGEST_LABEL) != spec.digest:
        # the compose file changed since this container was made: recreate it rather than run stale settings
        logger.info("recreating %s: its settings differ from the compose file", spec.name)
        container.remove(force=True)
        container = None
    if container is None:
        container = _create(client, spec)
    if container.status == "running":
        return container, False
    try:
        container.start()
    except APIError as error:  # most often a host port already taken (a JVM stack, another broker)
        raise StackError(f"container {spec.name} could not start: {error.explanation or error}") from error
    return container, True


def _wait_healthy(container: Any, spec: ContainerSpec, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        container.reload()
        state = container.attrs.get("State", {})
        if state.get("Status") in ("exited", "dead"):
            logs = container.logs(tail=15).decode(errors="replace")
            raise StackError(f"container {spec.name} exited while starting; last lines:\n{logs}")
        if spec.healthcheck is None or state.get("Health", {}).get("Status") == "healthy":
            return
        time.sleep(1.0)
    raise StackError(f"{spec.name} was not healthy within {timeout_s:.0f} s: see `docker logs {spec.name}`")


def up(settings: StackSettings, compose_path: Path = COMPOSE_FILE) -> list[str]:
    """Start (or reuse) the compose file's Kafka and registry containers; return the names started."""
    client = docker_client()
    if client is None:
        raise StackError("no Docker engine answers: start Docker or use --engine jvm")
    specs = container_specs(compose_path, settings)
    if not client.networks.list(names=[NETWORK]):
        client.networks.create(NETWORK, driver="bridge", labels={LABEL: str(settings.stack_dir)})
    started = []
    for spec in specs:
        container, was_started = _ensure_container(client, spec)
        _wait_healthy(container, spec, settings.start_timeout_s)
        if was_started:
            started.append(spec.name)
    # the health checks run inside the containers; clients on this machine need the published ports too
    deadline = time.monotonic() + settings.start_timeout_s
    while not (kafka_answers(settings.bootstrap_servers) and registry_answers(registry_url(settings))):
        if time.monotonic() > deadline:
            raise StackError("the containers are healthy but 127.0.0.1 ports do not answer: is a port taken?")
        time.sleep(1.0)
    return started


def down(settings: StackSettings) -> list[str]:
    """Stop and remove our containers (and their network); return their names."""
    client = docker_client()
    if client is None:
        return []
    removed = []
    for container in _our_containers(client, settings):
        container.stop(timeout=30)
        container.remove()
        removed.append(container.name)
    for network in client.networks.list(names=[NETWORK]):
        if network.attrs.get("Labels", {}).get(LABEL) == str(settings.stack_dir):
            network.remove()
    return removed


def status(settings: StackSettings) -> list[tuple[str, str, str, str]]:
    """(container, image, state, address) for each of our containers."""
    client = docker_client()
    if client is None:
        return []
    addresses = {"anomstream-kafka": settings.bootstrap_servers, "anomstream-schema-registry": registry_url(settings)}
    rows = []
    for container in _our_containers(client, settings):
        health = container.attrs.get("State", {}).get("Health", {}).get("Status", "")
        state = f"{container.status} ({health})" if health else container.status
        image = ",".join(container.image.tags) if container.image else "?"
        rows.append((container.name, image, state, addresses.get(container.name, "-")))
    return rows
