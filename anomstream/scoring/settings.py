"""The scorer's settings: one frozen object, every field a flag with an environment default."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from anomstream.config import env

Guarantee = Literal["exactly-once", "at-least-once"]
Device = Literal["auto", "cpu", "cuda"]


class ScorerSettings(BaseSettings):
    """How `anomstream score` consumes, scores and reports."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    model: str = env("ANOMSTREAM_MODEL_NAME", "", "model to serve from the store (empty: the latest published)")
    group_id: str = env("ANOMSTREAM_SCORER_GROUP", "anomstream-scorer", "consumer group of the scorers")
    client_id: str = env("ANOMSTREAM_SCORER_CLIENT_ID", "anomstream-scorer", "Kafka client.id")
    guarantee: Guarantee = env(
        "ANOMSTREAM_GUARANTEE", "exactly-once", "exactly-once (transactions) or at-least-once (commit after flush)"
    )
    transactional_id: str = env(
        "ANOMSTREAM_TRANSACTIONAL_ID", "", "transactional.id (empty: <group>-<host>-<pid>, unique per process)"
    )
    batch_size: int = env("ANOMSTREAM_SCORER_BATCH_SIZE", 20_000, "most records consumed and scored at once", ge=1)
    batch_per_device: int = env(
        "ANOMSTREAM_SCORER_BATCH_PER_DEVICE",
        16,
        "with many devices a batch grows to this many records per device held (at most 10 x batch size): each "
        "batch makes one pass over its devices' history, so a few records per device amortise it (0: never)",
        ge=0,
    )
    history_mb: float = env(
        "ANOMSTREAM_SCORER_HISTORY_MB",
        512.0,
        "memory budget (MB) of device history: beyond it the devices seen least recently are dropped, and read "
        "back from the topic if they return",
        gt=0,
    )
    batch_timeout: float = env(
        "ANOMSTREAM_SCORER_BATCH_TIMEOUT", 0.02, "longest wait (s) to fill a batch: bounds added latency", gt=0
    )
    device: Device = env("ANOMSTREAM_DEVICE", "auto", "auto (CUDA when present), cpu or cuda")
    metrics_host: str = env("ANOMSTREAM_METRICS_HOST", "127.0.0.1", "address of /metrics, /healthz, /readyz")
    metrics_port: int = env("ANOMSTREAM_METRICS_PORT", 0, "port of /metrics, /healthz, /readyz (0: a free one)", ge=0)
    idle_exit: float | None = env(
        "ANOMSTREAM_IDLE_EXIT", None, "leave the group and exit 0 after this many seconds without records", gt=0
    )
    incident_quiet: float = env(
        "ANOMSTREAM_INCIDENT_QUIET_S",
        300.0,
        "seconds of event time without a flagged reading that close an incident",
        gt=0,
    )
    suppression_file: Path | None = env(
        "ANOMSTREAM_SUPPRESSION_FILE", None, "JSON rules that mute incidents (reloaded when it changes)"
    )
    model_poll: float = env(
        "ANOMSTREAM_MODEL_POLL", 2.0, "how often to look in the store while no model exists yet", gt=0
    )
