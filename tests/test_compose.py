"""docker-compose.yml's application services, run as written against the local stack.

No Docker engine runs here, so each application service's command runs as a local process with the
environment the compose file gives it, translated: the service addresses (``kafka:9092``,
``http://schema-registry:8081``) become the local stack's, named volumes become folders under a tmp dir,
and the names of shared things (topics, the scorer group) become fresh test names. Everything else is taken
from the file unchanged, apart from the few sizes in :data:`BOUNDED` that make the run finish by itself.
init-topics, producer, trainer and two scorers run in the order their ``depends_on`` gives; the anomalies
are read back with ``anomstream tail --json``. A misspelt variable, a command that does not exist, or a
service that cannot reach the next one fails here, so the compose file and the local mode cannot drift.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, Stack, anomstream, run_command

COMPOSE_PATH = PROJECT_ROOT / "docker-compose.yml"
GPU_OVERRIDE_PATH = PROJECT_ROOT / "docker-compose.gpu.yml"
PROMETHEUS_PATH = PROJECT_ROOT / "deploy" / "prometheus.yml"
APP_SERVICES = ("init-topics", "producer", "trainer", "scorer")
TOPICS = ("telemetry", "anomalies", "telemetry.dlq", "models")
# Sizes changed so the run ends by itself, and soon, on a shared 2-core machine.
BOUNDED: dict[str, dict[str, str]] = {
    "producer": {"ANOMSTREAM_SYNTHETIC_RECORDS": "30000"},
    # two scorers share this machine's loopback (in compose each has its own network namespace)
    "scorer": {"ANOMSTREAM_IDLE_EXIT": "10", "ANOMSTREAM_METRICS_HOST": "127.0.0.1", "ANOMSTREAM_METRICS_PORT": "0"},
}
# The variables the test environment must not leak into a service: the compose file alone configures it.
OWN_PREFIXES = ("ANOMSTREAM_", "KAFKA_", "SCHEMA_REGISTRY_")


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_PATH.read_text()))


def app_services(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from the project's Dockerfile (the others are official images)."""
    return {name: service for name, service in document["services"].items() if "build" in service}


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment`` with compose's value rules (booleans as true/false, numbers as text)."""
    raw = service.get("environment") or {}
    pairs = (item.partition("=")[::2] for item in raw) if isinstance(raw, list) else raw.items()
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in pairs}


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume, short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
        else:
            source, target, *mode = volume.split(":")
            mounts.append((source, target, mode == ["ro"]))
    return mounts


@dataclass(frozen=True)
class LocalRun:
    """How a compose service runs here: its command as argv, its translated environment."""

    service: str
    argv: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class Translation:
    """From the compose network's names to this machine's: stack addresses, fresh names, tmp folders."""

    stack: Stack
    tag: str
    volume_root: Path

    @property
    def topics(self) -> dict[str, str]:
        return {topic: f"{self.tag}_{topic.replace('.', '_')}" for topic in TOPICS}

    def value(self, key: str, value: str, mounts: list[tuple[str, str, bool]]) -> str:
        if value == "kafka:9092":
            return self.stack.bootstrap_servers
        if value == "http://schema-registry:8081":
            return self.stack.registry_url
        if key.endswith("_TOPIC"):
            assert value in self.topics, f"{key}={value} is not one of the system topics {TOPICS}"
            return self.topics[value]
        if key == "ANOMSTREAM_SCORER_GROUP":
            return f"{self.tag}_{value}"
        for source, target, _ in mounts:
            if value == target or value.startswith(target + "/"):
                return str(self.volume_root / source) + value[len(target) :]
        assert not re.search(r"\b(kafka|schema-registry):\d", value), f"{key}={value}: a compose address not mapped"
        return value

    def local_run(self, name: str, service: dict[str, Any]) -> LocalRun:
        mounts = volume_mounts(service)
        env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
        env |= {key: self.value(key, value, mounts) for key, value in environment(service).items()}
        env |= BOUNDED.get(name, {})
        command = service["command"]
        command = command.split() if isinstance(command, str) else list(command)
        programs = {"anomstream": [sys.executable, "-m", "anomstream"], "python": [sys.executable]}
        assert command[0] in programs, f"{name}: command {command[0]!r} is neither anomstream nor python"
        return LocalRun(name, programs[command[0]] + command[1:], env)


def settings_in_help(*command: str) -> set[str]:
    """The environment variables an `anomstream` command reads, as its --help lists them."""
    result = anomstream(*command, "--help", timeout=120)
    assert result.returncode == 0, f"`anomstream {' '.join(command)} --help` failed:\n{result.stderr[-1500:]}"
    return set(re.findall(r"\[env:\s+([A-Z0-9_]+)", result.stdout))


# -- the file's structure: no stack needed ---------------------------------------------------------------


def test_every_application_service_is_run_by_this_test() -> None:
    assert set(app_services(compose())) == set(APP_SERVICES)


def test_every_variable_of_a_service_is_a_setting_of_its_command() -> None:
    """pydantic ignores unknown variables, so a misspelt one would silently fall back to a default."""
    from pydantic import AliasChoices

    from anomstream.config import KafkaSettings, TopicSettings

    general = settings_in_help()  # --log-level and --log-format, shared by every command
    for name, service in app_services(compose()).items():
        command = service["command"]
        if command[0] == "anomstream":
            known = general | settings_in_help(command[1])
        else:  # init-topics runs the library's topic creation with these two settings classes
            fields = [f for cls in (KafkaSettings, TopicSettings) for f in cls.model_fields.values()]
            known = {str(f.validation_alias.choices[0]) for f in fields if isinstance(f.validation_alias, AliasChoices)}
        unknown = set(environment(service)) - known
        assert not unknown, f"{name}: {sorted(unknown)} are not settings of `{' '.join(command[:2])}`"


def test_scorer_scales_and_mounts_the_model_store_read_only() -> None:
    services = compose()["services"]
    scorer, trainer = services["scorer"], services["trainer"]
    assert "container_name" not in scorer and "ports" not in scorer
    assert volume_mounts(scorer) == [("models", "/models", True)]
    assert volume_mounts(trainer) == [("models", "/models", False)]
    assert "models" in compose()["volumes"]
    assert environment(scorer)["ANOMSTREAM_MODEL_DIR"] == environment(trainer)["ANOMSTREAM_MODEL_DIR"] == "/models"
    assert environment(scorer)["ANOMSTREAM_MODEL_NAME"] == environment(trainer)["ANOMSTREAM_MODEL_NAME"]


def test_dependencies_wait_for_health_and_completion() -> None:
    services = compose()["services"]
    for name in APP_SERVICES:
        depends_on = services[name]["depends_on"]
        for dependency, condition in depends_on.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            expected = {"kafka": "service_healthy", "schema-registry": "service_healthy"}.get(dependency)
            if dependency == "init-topics":
                expected = "service_completed_successfully"
            assert expected is None or condition["condition"] == expected, f"{name} -> {dependency}"
    for name in ("kafka", "schema-registry"):
        assert services[name]["healthcheck"]["test"]
        assert all(str(port).startswith("127.0.0.1:") for port in services[name]["ports"])


def test_topic_partitions_cover_the_largest_documented_scale() -> None:
    partitions = int(environment(compose()["services"]["init-topics"])["ANOMSTREAM_TELEMETRY_PARTITIONS"])
    documented = max(int(n) for n in re.findall(r"--scale scorer=(\d+)", COMPOSE_PATH.read_text()))
    assert partitions >= documented


def test_gpu_override_reserves_nvidia_gpus_for_the_scorer_only_there() -> None:
    override = yaml.safe_load(GPU_OVERRIDE_PATH.read_text())["services"]["scorer"]
    devices = override["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert override["build"]["args"]["TORCH_VARIANT"] == "gpu"
    assert "deploy" not in compose()["services"]["scorer"]  # hosts without a GPU start the base file


def test_prometheus_scrapes_the_scorers_metrics_port() -> None:
    services = compose()["services"]
    scrape = yaml.safe_load(PROMETHEUS_PATH.read_text())["scrape_configs"][0]["dns_sd_configs"][0]
    port = environment(services["scorer"])["ANOMSTREAM_METRICS_PORT"]
    assert scrape["names"] == ["scorer"] and str(scrape["port"]) == port
    assert services["scorer"]["expose"] == [port]
    assert services["prometheus"]["profiles"] == ["monitoring"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1, Debian's package) absent")
def test_docker_compose_v1_validates_the_files() -> None:
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]):
        arguments = [arg for path in files for arg in ("-f", path)]
        result = subprocess.run(
            ["docker-compose", *arguments, "config", "-q"], cwd=PROJECT_ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr


# -- the services, end to end against the local stack --------------------------------------------------------


@pytest.fixture
def translation(stack: Stack, tmp_path: Path) -> Iterator[Translation]:
    """Fresh names for this run; its topics are created by the init service and deleted afterwards."""
    from anomstream.topics import delete_topics

    result = Translation(stack, f"pytest_compose_{uuid.uuid4().hex[:8]}", tmp_path / "volumes")
    for volume in compose().get("volumes", {}):
        (result.volume_root / volume).mkdir(parents=True)
    yield result
    delete_topics(stack.kafka_settings, list(result.topics.values()))


def run(local: LocalRun, timeout: float) -> subprocess.CompletedProcess[str]:
    result = run_command(local.argv, env=local.env, timeout=timeout)
    assert result.returncode == 0, f"{local.service} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_compose_services_find_anomalies_on_the_local_stack(translation: Translation, stack: Stack) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    services = compose()["services"]
    local = {name: translation.local_run(name, services[name]) for name in APP_SERVICES}

    run(local["init-topics"], timeout=120)
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    metadata = admin.list_topics(timeout=10).topics
    topics = translation.topics
    assert len(metadata[topics["telemetry"]].partitions) == 12
    models_config = admin.describe_configs([ConfigResource("topic", topics["models"])])
    assert next(iter(models_config.values())).result()["cleanup.policy"].value == "compact"

    run(local["producer"], timeout=300)
    run(local["trainer"], timeout=400)
    model_dir = translation.volume_root / "models"
    assert any(model_dir.rglob("manifest.json")), f"the trainer published nothing under {model_dir}"

    scorers = [
        subprocess.Popen(
            local["scorer"].argv, env=local["scorer"].env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    summaries = []
    try:
        for scorer in scorers:
            stdout, stderr = scorer.communicate(timeout=400)
            assert scorer.returncode == 0, f"a scorer exited {scorer.returncode}:\n{stderr[-3000:]}"
            summaries.append(stdout)
    finally:
        for scorer in scorers:
            if scorer.poll() is None:
                scorer.kill()
    # the group as a whole scored every record, however the partitions were shared between the two (a batch
    # aborted in a rebalance is scored again by the next owner, so >=; duplicates are checked on the topic)
    scored = [int(n.replace(",", "")) for text in summaries for n in re.findall(r"scored ([\d,]+) of", text)]
    assert len(scored) == 2 and sum(scored) >= int(BOUNDED["producer"]["ANOMSTREAM_SYNTHETIC_RECORDS"]), summaries

    reader_env = local["scorer"].env  # the downstream reader sees the anomaly topic as the scorers wrote it
    tail = anomstream("tail", "--json", "--max", "1000000", "--timeout", "20", env=reader_env, timeout=120)
    assert tail.returncode == 0, tail.stderr[-2000:]
    anomalies = [json.loads(line) for line in tail.stdout.splitlines() if line.startswith("{")]
    assert anomalies, "no anomaly arrived on the anomaly topic"
    model_name = environment(services["scorer"])["ANOMSTREAM_MODEL_NAME"]
    devices = int(environment(services["producer"])["ANOMSTREAM_SYNTHETIC_DEVICES"])
    assert {a["model"] for a in anomalies} == {model_name}
    assert {a["device_id"] for a in anomalies} <= {f"sim-{d:04d}" for d in range(devices)}
    assert all(0 <= a["partition"] < 12 and isinstance(a["score"], float) for a in anomalies)
    # two scorers, exactly once: no source record is reported twice
    sources = [(a["partition"], a["offset"]) for a in anomalies]
    assert len(sources) == len(set(sources))
    assert len(anomalies) < int(BOUNDED["producer"]["ANOMSTREAM_SYNTHETIC_RECORDS"]) // 2
