"""The package's exceptions: one root, one-line subclasses.

Every message says what was wrong, with which input, and what to do about it.
"""

from __future__ import annotations


class AnomstreamError(Exception):
    """Root of every error raised by anomstream."""


class ConfigError(AnomstreamError):
    """A setting is missing or invalid."""


class StackError(AnomstreamError):
    """The local Kafka/registry stack could not be installed, started or stopped."""


class SourceError(AnomstreamError):
    """An input data set (CSV file or folder) cannot be read."""


class BadRowError(SourceError):
    """A CSV row cannot be parsed; carries the file and line number."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason} (use --on-bad-row skip to count and skip such rows)")
        self.path, self.line, self.reason = path, line, reason


class ModelError(AnomstreamError):
    """A model cannot be fitted, saved or loaded."""


class ModelIntegrityError(ModelError):
    """A model artifact does not match its manifest (tampered, truncated or missing file)."""


class KafkaClientError(AnomstreamError):
    """A Kafka operation failed; ``retriable`` says whether trying again may help."""

    def __init__(self, message: str, code: str = "", retriable: bool = False) -> None:
        super().__init__(f"{message} [{code}{', retriable' if retriable else ''}]" if code else message)
        self.code, self.retriable = code, retriable
