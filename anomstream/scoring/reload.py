"""Which model serves: found in the store at start-up, replaced when the store's CURRENT names another.

:class:`ModelSource` loads the current version of the configured model (or, when no name is configured, of
the store's most recently published one, which it then sticks to) and waits, without consuming, while
there is none. A background thread then reads the compacted ``models`` topic from its beginning with its
own consumer (``assign()``, no group) and also looks at the store every few seconds. An announcement only
prompts a look at the store: the version to serve is always the one CURRENT names (anyone who can write the
topic could announce a version the promotion gate refused). When it differs from the one serving, the
watcher loads it in the background (checksums verified by
:meth:`ModelStore.load` before anything is read) and hands it to the scoring loop, which swaps it in between
two batches (:meth:`ModelSource.take_pending`). A version that fails to load is logged, counted
(``anomstream_scorer_model_load_failures_total``) and not tried again, unless the failure was the disk's
(an ``OSError``: a full temporary folder, a lost mount), which is tried again at the next look; the previous
model keeps serving.
A scorer that starts while the current version is damaged serves the newest version that was current
before it (what ``anomstream models rollback`` would restore) rather than nothing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from anomstream.config import KafkaSettings
from anomstream.errors import AnomstreamError
from anomstream.kafka_config import consumer_config
from anomstream.model import AnomalyModel
from anomstream.model_store import LoadedModel, ModelStore
from anomstream.scoring.metrics import ScorerMetrics
from anomstream.telemetry import NO_LABEL, TelemetryBatch

logger = logging.getLogger(__name__)

STORE_CHECK_S = 5.0  # how often the watcher also reads CURRENT from the store (announcements can be lost)


def serving_device(setting: str) -> str:
    """``cpu`` or ``cuda`` for a device setting; ``auto`` imports torch only where an NVIDIA driver exists."""
    if setting != "auto":
        return setting
    if "torch" not in sys.modules and not Path("/proc/driver/nvidia/version").exists():
        return "cpu"  # no driver: no need to pay for importing torch (a tree model's scorer stays lean)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def warm_up(model: AnomalyModel) -> None:
    """Score a few made-up readings of every device with its own detector (and of an unknown one).

    Detectors build their scoring structures on first use (compiled trees, tables, CUDA kernels); doing it
    here, off the scoring loop, keeps the first batch after a start or a swap as fast as the others.
    """
    devices = [*model.device_detectors, "anomstream-warm-up"]
    rows = 2 * len(devices)
    batch = TelemetryBatch(
        device_id=np.array([d for d in devices for _ in range(2)], dtype=object),
        event_time_ms=np.zeros(rows, dtype=np.int64),
        seq=np.tile(np.arange(2, dtype=np.int64), len(devices)),
        channels=model.channels,
        values=np.zeros((rows, len(model.channels))),
        label=np.full(rows, NO_LABEL, dtype=np.int8),
    )
    model.score(batch, explain="all")


class ModelSource:
    """The serving model and its replacements (see the module docstring).

    Args:
        store: the model store.
        name: the model to serve; empty for the store's latest.
        device: ``cpu`` or ``cuda``.
        kafka: broker settings, for the announcement consumer.
        models_topic: the compacted announcement topic.
        metrics: where load failures and swaps are counted.
    """

    def __init__(
        self,
        store: ModelStore,
        name: str,
        device: str,
        kafka: KafkaSettings,
        models_topic: str,
        metrics: ScorerMetrics,
    ) -> None:
        self.store, self.name, self.device = store, name, device
        self.kafka, self.models_topic, self.metrics = kafka, models_topic, metrics
        self.serving: LoadedModel | None = None
        self._pending: LoadedModel | None = None
        self._refused: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wait_for_first(self, stop: threading.Event, poll_s: float, give_up_s: float | None) -> LoadedModel | None:
        """Load the model to serve, waiting while the store has none; ``None`` if stopped or given up."""
        started = time.monotonic()
        announced_at = 0.0
        while not stop.is_set():
            loaded = self._load_current() or self._load_previous()
            if loaded is not None:
                self.serving = loaded
                return loaded
            if time.monotonic() - announced_at > 30.0:
                logger.info("no model %s in %s yet: waiting for one", self.name or "(any)", self.store.root)
                announced_at = time.monotonic()
            if give_up_s is not None and time.monotonic() - started >= give_up_s:
                return None
            stop.wait(poll_s)
        return None

    def start_watching(self) -> None:
        """Follow announcements (and the store) in a background thread."""
        self._thread = threading.Thread(target=self._watch, name="model-watch", daemon=True)
        self._thread.start()

    def take_pending(self) -> LoadedModel | None:
        """The model to swap in now, if a new one was loaded since the last call."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self.serving = pending
        return pending

    def close(self) -> None:
        """Stop the watcher."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def on_announcement(self, name: str, announced: int | None) -> LoadedModel | None:
        """An announcement of ``name`` (saying ``announced`` is current): look at the store, whose CURRENT
        alone says what to serve; the announced version is only logged when it differs."""
        loaded = self._load_current(name)
        current = self._current_version(name) if announced is not None else None
        if announced is not None and current != announced:
            logger.warning("announcement of %s version %s, but CURRENT names %s: serving what CURRENT names",
                           name, announced, current)  # fmt: skip
        return loaded

    def _load_current(self, name: str | None = None) -> LoadedModel | None:
        """Load the version CURRENT names if it is not the one serving (nor one refused before)."""
        name = name or self.name or self.store.latest_name()
        if not name or (self.name and name != self.name):
            return None
        version = self._current_version(name)
        if version is None:
            return None
        serving = self._pending or self.serving
        if serving is not None and (serving.name, serving.version) == (name, version):
            return None
        return self._load(name, version)

    def _load_previous(self) -> LoadedModel | None:
        """At start-up, when the current version is refused: the newest version current before it that loads.

        A running scorer keeps serving what it has; one starting while CURRENT names a damaged version has
        nothing, so it serves the version a rollback would restore (without changing the store, which it
        may only read) until a good version is made current.
        """
        name = self.name or self.store.latest_name()
        if not name or self.serving is not None:
            return None
        previous = self.store.previous_versions(name)  # none when CURRENT is unreadable
        current = self._current_version(name) if previous else None
        for version in previous:
            if version != current:
                loaded = self._load(name, version)
                if loaded is not None:
                    logger.warning("serving model %s version %d, current before the refused version %s, until a "
                                   "good version is made current", name, version, current)  # fmt: skip
                    return loaded
        return None

    def _current_version(self, name: str) -> int | None:
        """The version CURRENT names; ``None`` when there is none or it cannot be read (logged: look again later)."""
        try:
            return self.store.current_version(name)
        except AnomstreamError as exc:
            logger.error("cannot tell which version of %s is current, keeping the one serving: %s", name, exc)
            return None

    def _load(self, name: str, version: int) -> LoadedModel | None:
        """Verify and load one version, warmed up; ``None`` (logged, counted, not tried again) if it fails."""
        if (name, version) in self._refused:
            return None
        try:
            loaded = self.store.load(name, version, device=self.device)
            warm_up(loaded.model)  # a crafted artifact that loads but cannot score is refused here, not in a batch
        except OSError as exc:  # the disk, not the version: a full or missing temporary folder, a lost mount
            self.metrics.model_load_failures.labels(name).inc()
            logger.error("cannot load model %s version %d now (%s); trying again later", name, version, exc)
            return None
        except (AnomstreamError, ValueError, IndexError, TypeError, RuntimeError) as exc:
            self._refused.add((name, version))
            self.metrics.model_load_failures.labels(name).inc()
            logger.error("refusing model %s version %d, keeping the one serving: %s", name, version, exc)
            return None
        self.name = name  # stick to it: a later model of another name does not replace it
        logger.info("loaded model %s version %d (%s) on %s", name, version, loaded.model.detector_name, self.device)
        return loaded

    def _watch(self) -> None:
        consumer: Consumer | None = None
        last_store_check = last_connect = 0.0
        try:
            while not self._stop.is_set():
                if consumer is None and time.monotonic() - last_connect >= STORE_CHECK_S:
                    last_connect = time.monotonic()
                    consumer = self._announcement_consumer()
                announced = self._next_announcement(consumer) if consumer is not None else None
                if consumer is None:
                    self._stop.wait(0.5)
                due = time.monotonic() - last_store_check >= STORE_CHECK_S
                if announced is None and not due:
                    continue
                if due:
                    last_store_check = time.monotonic()
                loaded = self.on_announcement(*announced) if announced is not None else self._load_current()
                if loaded is not None:
                    with self._lock:
                        self._pending = loaded
        except Exception:  # the watcher must never take the scorer down
            logger.exception("model watcher failed; hot reload is off until restart")
        finally:
            if consumer is not None:
                consumer.close()

    def _announcement_consumer(self) -> Consumer | None:
        """A consumer assigned to every partition of the models topic from its beginning (None: no topic)."""
        config = consumer_config(self.kafka, f"anomstream-models-{uuid.uuid4().hex[:8]}", f"model-watch-{os.getpid()}")
        consumer = Consumer(config)
        try:
            topic = consumer.list_topics(self.models_topic, timeout=10.0).topics.get(self.models_topic)
            partitions = sorted(topic.partitions) if topic is not None and topic.error is None else []
        except KafkaException as exc:
            logger.warning("cannot read %s yet: %s", self.models_topic, exc)
            partitions = []
        if not partitions:
            consumer.close()
            return None
        consumer.assign([TopicPartition(self.models_topic, p, OFFSET_BEGINNING) for p in partitions])
        return consumer

    def _next_announcement(self, consumer: Consumer) -> tuple[str, int | None] | None:
        """``(name, version to serve)`` from the next announcement (version ``None``: ask the store)."""
        message = consumer.poll(0.5)
        value = message.value() if message is not None and message.error() is None else None
        if message is None or value is None:
            return None
        name = (message.key() or b"").decode(errors="replace")
        if self.name and name != self.name:
            return None
        try:
            version = json.loads(value).get("current_version")
        except (ValueError, AttributeError):
            logger.warning("ignoring an unreadable announcement on %s: %r", self.models_topic, value[:200])
            return None
        logger.info("announcement: model %s, version to serve %s", name, version)
        return name, int(version) if isinstance(version, int) else None
