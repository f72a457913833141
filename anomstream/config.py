"""Settings: frozen pydantic-settings classes, and the flags that expose them.

Every setting is a command-line flag whose default comes from an environment variable, and the flag's help
says which (``[env: KAFKA_BOOTSTRAP_SERVERS]``), as bytewax's ``run.py`` does. librdkafka settings are not
renamed: typed core fields cover the common ones and ``ANOMSTREAM_KAFKA_EXTRA_CONFIG`` (JSON) passes any
other librdkafka property through unchanged, merged last.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from anomstream.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_REGISTRY_URL = "http://127.0.0.1:8081/apis/ccompat/v7"

S = TypeVar("S", bound=BaseSettings)


def env(name: str, default: Any, description: str, **kwargs: Any) -> Any:
    """A settings field read from the environment variable ``name``."""
    return Field(default, validation_alias=AliasChoices(name), description=description, **kwargs)


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class KafkaSettings(_Settings):
    """Where the broker and the registry are, and librdkafka pass-through settings."""

    bootstrap_servers: str = env("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP, "Kafka bootstrap servers")
    schema_registry_url: str = env(
        "SCHEMA_REGISTRY_URL", DEFAULT_REGISTRY_URL, "Schema Registry URL (Confluent REST API, path included)"
    )
    schema_registry_auth: SecretStr | None = env(
        "SCHEMA_REGISTRY_BASIC_AUTH", None, "Registry basic auth as USER:PASSWORD"
    )
    schema_registry_timeout_s: float = env(
        "SCHEMA_REGISTRY_TIMEOUT_S",
        10.0,
        "seconds one registry request may take (the client's own default waits forever on a stalled server)",
        gt=0,
    )
    kafka_extra_config: dict[str, str] = env(
        "ANOMSTREAM_KAFKA_EXTRA_CONFIG", {}, "extra librdkafka properties as JSON, merged last"
    )


class TopicSettings(_Settings):
    """Topic names (docs/design.md) and the partition counts the stack creates them with."""

    telemetry_topic: str = env("ANOMSTREAM_TELEMETRY_TOPIC", "telemetry", "telemetry topic")
    anomaly_topic: str = env("ANOMSTREAM_ANOMALY_TOPIC", "anomalies", "anomaly output topic")
    dlq_topic: str = env("ANOMSTREAM_DLQ_TOPIC", "telemetry.dlq", "dead-letter topic")
    models_topic: str = env("ANOMSTREAM_MODELS_TOPIC", "models", "model announcement topic (compacted)")
    incident_topic: str = env("ANOMSTREAM_INCIDENT_TOPIC", "incidents", "incident topic (open/update/closed events)")
    telemetry_partitions: int = env(
        "ANOMSTREAM_TELEMETRY_PARTITIONS", 6, "partitions of the telemetry and anomaly topics", ge=1
    )


class ModelStoreSettings(_Settings):
    """Where published models live (a shared volume in Docker)."""

    model_dir: Path = env("ANOMSTREAM_MODEL_DIR", PROJECT_ROOT / "models", "model store folder")
    signing_key: SecretStr | None = env(
        "ANOMSTREAM_MODEL_SIGNING_KEY", None, "shared key: the trainer signs versions, scorers refuse unsigned ones"
    )

    def store_key(self) -> bytes | None:
        """The signing key as bytes, or None for an unsigned store."""
        return self.signing_key.get_secret_value().encode() if self.signing_key else None


def add_settings_arguments(
    parser: argparse.ArgumentParser, settings_cls: type[BaseSettings], title: str | None = None
) -> None:
    """Add one flag per field of ``settings_cls``, defaulting from its environment variable.

    The flag is ``--field-name``: a switch pair (``--x/--no-x``) for a boolean, a choice for a ``Literal``,
    a value otherwise; its help ends with ``[env: NAME, default: VALUE]``. Values given on the command line
    win over the environment, which wins over the field default. Nothing is validated here (so ``--help``
    works whatever the environment holds); :func:`parse_settings` validates.
    """
    title = title or (settings_cls.__doc__ or settings_cls.__name__).splitlines()[0].rstrip(".")
    group = parser.add_argument_group(title)
    for name, field in settings_cls.model_fields.items():
        env_name = _env_name(field.validation_alias, name)
        flag = "--" + name.replace("_", "-")
        secret = SecretStr in (field.annotation, *get_args(field.annotation))
        shown = "***" if secret else _shown(os.environ.get(env_name, field.default))
        help_text = f"{field.description} [env: {env_name}, default: {shown}]"
        if field.annotation is bool:
            group.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
            continue
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        group.add_argument(
            flag, dest=name, default=None, choices=choices, metavar=None if choices else env_name, help=help_text
        )


# librdkafka and registry properties that hold secrets (passwords, JAAS configs, inline keys, tokens)
SECRET_KEY = re.compile(r"password|secret|jaas|\.pem$|user\.info|token|credential", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@", re.I)


def mask_secrets(value: Any) -> Any:
    """``value`` with secrets replaced by ``***``: the values of secret-bearing keys of a dict (a JSON
    string of one too), and the password of credentials in URLs (``https://user:***@host``)."""
    if isinstance(value, SecretStr):
        return "***" if value.get_secret_value() else ""
    if isinstance(value, dict):
        return {k: ("***" if SECRET_KEY.search(str(k)) else mask_secrets(v)) for k, v in value.items()}
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("{"):
            try:
                return json.dumps(mask_secrets(json.loads(stripped)))
            except ValueError:
                return "***" if SECRET_KEY.search(stripped) else value  # unparseable: show nothing of it
        return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value)
    return value


def _shown(value: Any) -> Any:
    """A default as ``--help`` shows it: secrets masked, JSON for dicts, ISO 8601 for times."""
    value = mask_secrets(value)
    if isinstance(value, dict):
        return json.dumps(value)
    return value.isoformat() if hasattr(value, "isoformat") else value


def settings_from_args(settings_cls: type[S], args: argparse.Namespace) -> S:
    """Build ``settings_cls`` from parsed flags; fields whose flag was not given come from the environment."""
    given: dict[str, Any] = {}
    for name in settings_cls.model_fields:
        raw = getattr(args, name, None)
        if raw is None:
            continue
        annotation = str(settings_cls.model_fields[name].annotation)
        given[name] = json.loads(raw) if annotation.startswith("dict") and isinstance(raw, str) else raw
    return settings_cls(**given)


def parse_settings(args: argparse.Namespace, command: str, *settings_classes: type[BaseSettings]) -> tuple[Any, ...]:
    """One validated instance per class, from the flags and the environment.

    Raises:
        ConfigError: a value is invalid; the message names the command, each field and what is wrong.
    """
    try:
        return tuple(settings_from_args(cls, args) for cls in settings_classes)
    except ValidationError as error:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"invalid {command} settings: {reasons}") from error
    except ValueError as error:
        raise ConfigError(f"invalid {command} settings: {error}") from error


def _env_name(alias: object, field_name: str) -> str:
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        return first if isinstance(first, str) else field_name.upper()
    return str(alias) if alias else field_name.upper()


def masked(settings: BaseSettings) -> dict[str, Any]:
    """The settings as a dict safe to log: ``SecretStr`` fields, secret-bearing properties and credentials in
    URLs masked (:func:`mask_secrets`)."""
    return {k: (str(v) if isinstance(v, Path) else mask_secrets(v)) for k, v in settings.model_dump().items()}
