"""Which engine serves a stack command (``--engine docker|jvm|auto``), and the Docker side of the CLI.

``auto`` keeps a JVM stack that already runs (``up`` stays idempotent), else picks Docker when an engine
answers, else the JVM stack. ``down``, ``status`` and ``env`` pick Docker only where this stack folder's
containers exist. The JVM side stays in :mod:`anomstream.stack.cli`; :func:`dispatch` returns None for it.
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table

from anomstream.config import KafkaSettings, TopicSettings, settings_from_args
from anomstream.errors import StackError
from anomstream.stack import docker_engine
from anomstream.stack.servers import kafka_servers, registry_server
from anomstream.stack.settings import StackSettings

ENGINES = ("docker", "jvm", "auto")
ENGINE_ENV = "ANOMSTREAM_STACK_ENGINE"
console = Console(stderr=True)


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--engine`` flag, defaulting from ``ANOMSTREAM_STACK_ENGINE``."""
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=os.environ.get(ENGINE_ENV, "auto"),
        help="docker: the compose file's Kafka and registry containers; jvm: local Java processes; "
        f"auto: a running JVM stack, else Docker when an engine answers, else jvm [env: {ENGINE_ENV}, default: auto]",
    )


def jvm_running(settings: StackSettings) -> bool:
    """True when any process of this folder's JVM stack runs."""
    return any(server.pid() is not None for server in (*kafka_servers(settings), registry_server(settings, "java")))


def resolve_engine(requested: str, settings: StackSettings, jvm_is_running: bool, for_up: bool = True) -> str:
    """Which engine serves this command: ``docker`` or ``jvm``.

    Args:
        requested: ``docker``, ``jvm`` or ``auto``.
        settings: the stack's settings (Docker runs the compose file's single Kafka node only).
        jvm_is_running: whether the JVM stack of this state folder runs now.
        for_up: ``up`` may start containers; the other commands pick Docker only where ours exist.

    Raises:
        StackError: an unknown engine, or ``docker`` asked for where no engine answers or with N brokers.
    """
    if requested not in ENGINES:
        raise StackError(f"unknown stack engine {requested!r}: choose docker, jvm or auto ({ENGINE_ENV})")
    if requested == "jvm":
        return "jvm"
    if requested == "docker":
        if settings.brokers != 1:
            raise StackError("the Docker engine runs the compose file's one Kafka node: use --engine jvm for N brokers")
        if docker_engine.docker_client() is None:
            raise StackError(
                "no Docker engine answers (DOCKER_HOST or /var/run/docker.sock): start Docker, or use --engine jvm"
            )
        return "docker"
    if jvm_is_running or settings.brokers != 1:
        return "jvm"
    client = docker_engine.docker_client()
    if client is None:
        return "jvm"
    return "docker" if for_up or docker_engine.running(client, settings) else "jvm"


def dispatch(action: str, args: argparse.Namespace, settings: StackSettings) -> int | None:
    """Run ``action`` (up, down, status, env) on Docker and return its exit status; None when jvm serves it."""
    requested = getattr(args, "engine", None) or os.environ.get(ENGINE_ENV, "auto")
    if requested == "jvm":
        return None  # no engine probe at all: the JVM stack is the default path and must stay fast
    engine = resolve_engine(requested, settings, jvm_running(settings), for_up=action == "up")
    if engine == "jvm":
        return None
    if action == "up":
        return _up(args, settings)
    if action == "down":
        removed = docker_engine.down(settings)
        console.print(f"removed {', '.join(removed)}" if removed else "no stack containers were running")
        return 0
    if action == "status":
        return _status(settings)
    print(f"export KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}")
    print(f"export SCHEMA_REGISTRY_URL={docker_engine.registry_url(settings)}")
    return 0


def _up(args: argparse.Namespace, settings: StackSettings) -> int:
    from anomstream.topics import ensure_topics, system_topics

    with console.status("starting the compose file's kafka and schema-registry containers..."):
        started = docker_engine.up(settings)
    for name in started:
        console.print(f"[green]started[/] container {name}")
    kafka = KafkaSettings(bootstrap_servers=settings.bootstrap_servers)
    ensure_topics(kafka, system_topics(settings_from_args(TopicSettings, args)))
    console.print(
        f"stack up (docker): Kafka {settings.bootstrap_servers}, registry {docker_engine.registry_url(settings)}"
    )
    return 0


def _status(settings: StackSettings) -> int:
    rows = docker_engine.status(settings)
    table = Table(title=f"anomstream stack (docker, label {settings.stack_dir})")
    for column in ("container", "image", "state", "address"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    healthy = sum("healthy" in state and "unhealthy" not in state for _, _, state, _ in rows)
    return 0 if healthy == len(docker_engine.STACK_SERVICES) else 3
