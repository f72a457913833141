"""The scorer's parts, one concern per module; :mod:`anomstream.scorer` runs them.

- :mod:`~anomstream.scoring.settings`: ``ScorerSettings`` (flags with ``ANOMSTREAM_*`` environment defaults).
- :mod:`~anomstream.scoring.decode`: columnar decoding of a batch of telemetry values (serde as fallback).
- :mod:`~anomstream.scoring.state`: per-device history for models that look back (windows, smoothing).
- :mod:`~anomstream.scoring.rebuild`: history rebuilt on assignment by reading back before the committed offset.
- :mod:`~anomstream.scoring.anomalies`: scoring a decoded batch into anomaly rows (pure).
- :mod:`~anomstream.scoring.commit`: exactly-once (one transaction per batch) or at-least-once commits.
- :mod:`~anomstream.scoring.dlq`: dead-letter records with Kafka Connect's headers and a ``reason``.
- :mod:`~anomstream.scoring.reload`: the serving model, from the store and the ``models`` topic.
- :mod:`~anomstream.scoring.metrics`: Prometheus metrics, ``/healthz`` and ``/readyz``.
"""
