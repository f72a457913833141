"""Settings of the local stack (ports, folders, Java), all overridable from the environment."""

from __future__ import annotations

from pathlib import Path

from anomstream.config import PROJECT_ROOT, _Settings, env

KAFKA_VERSION = "4.1.1"
APICURIO_VERSION = "3.3.3"
REGISTRY_API_PATH = "/apis/ccompat/v7"


class StackSettings(_Settings):
    """Where the local stack keeps its state and which loopback ports it binds."""

    stack_dir: Path = env("ANOMSTREAM_STACK_DIR", PROJECT_ROOT / ".stack", "state folder (jars, data, logs, pids)")
    kafka_port: int = env("ANOMSTREAM_KAFKA_PORT", 9092, "broker listener port on 127.0.0.1")
    controller_port: int = env("ANOMSTREAM_CONTROLLER_PORT", 9093, "KRaft controller port on 127.0.0.1")
    registry_port: int = env("ANOMSTREAM_REGISTRY_PORT", 8081, "Schema Registry HTTP port on 127.0.0.1")
    registry_management_port: int = env(
        "ANOMSTREAM_REGISTRY_MANAGEMENT_PORT", 9001, "registry health/metrics port on 127.0.0.1"
    )
    brokers: int = env(
        "ANOMSTREAM_BROKERS", 1, "KRaft nodes (broker+controller each); 3 gives replication factor 3, min ISR 2", ge=1
    )
    java: str = env("ANOMSTREAM_JAVA", "java", "Java (17+) that runs Kafka")
    registry_java: str = env("ANOMSTREAM_REGISTRY_JAVA", "", "Java (21+) that runs the registry; empty: search")
    kafka_heap: str = env("ANOMSTREAM_KAFKA_HEAP", "1g", "broker JVM heap (-Xmx)")
    registry_heap: str = env("ANOMSTREAM_REGISTRY_HEAP", "512m", "registry JVM heap (-Xmx)")
    start_timeout_s: float = env("ANOMSTREAM_STACK_TIMEOUT", 120.0, "seconds to wait for a server to answer")

    def broker_port(self, node: int) -> int:
        """Listener port of KRaft node ``node`` (1-based); nodes are two ports apart."""
        return self.kafka_port + 2 * (node - 1)

    def controller_port_of(self, node: int) -> int:
        return self.controller_port + 2 * (node - 1)

    @property
    def replication_factor(self) -> int:
        return min(self.brokers, 3)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{self.broker_port(node)}" for node in range(1, self.brokers + 1))

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}{REGISTRY_API_PATH}"
