"""anomstream: real-time anomaly detection for telemetry streams on Apache Kafka."""
__version__ = "0.1.0"
