"""Settings as flags: environment defaults, switches and choices, one-line errors (pure, no broker)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from anomstream.config import KafkaSettings, add_settings_arguments, mask_secrets, masked, parse_settings
from anomstream.errors import ConfigError
from anomstream.trainer import TrainSettings


def parser_for(*classes: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x")
    for cls in classes:
        add_settings_arguments(parser, cls)
    return parser


def test_flags_win_over_the_environment_which_wins_over_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "env-host:1")
    monkeypatch.setenv("SCHEMA_REGISTRY_TIMEOUT_S", "3.5")
    parser = parser_for(KafkaSettings)
    (from_env,) = parse_settings(parser.parse_args([]), "test", KafkaSettings)
    assert (from_env.bootstrap_servers, from_env.schema_registry_timeout_s) == ("env-host:1", 3.5)
    (from_flag,) = parse_settings(parser.parse_args(["--bootstrap-servers", "flag-host:2"]), "test", KafkaSettings)
    assert from_flag.bootstrap_servers == "flag-host:2"
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    (default,) = parse_settings(parser.parse_args([]), "test", KafkaSettings)
    assert default.bootstrap_servers == "127.0.0.1:9092"


def test_help_names_each_variable_and_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_BASIC_AUTH", "user:hunter2")
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps help at the terminal's width
    text = parser_for(KafkaSettings).format_help()
    assert "[env: KAFKA_BOOTSTRAP_SERVERS, default: 127.0.0.1:9092]" in text
    assert "hunter2" not in text and "[env: SCHEMA_REGISTRY_BASIC_AUTH, default: ***]" in text


def test_booleans_are_switches_and_literals_are_choices(capsys: pytest.CaptureFixture[str]) -> None:
    parser = parser_for(TrainSettings)
    window = ["--train-records", "10"]
    (settings,) = parse_settings(parser.parse_args([*window, "--per-device", "--model", "pca"]), "x", TrainSettings)
    assert settings.per_device is True and settings.model == "pca"
    (settings,) = parse_settings(parser.parse_args([*window, "--no-per-device"]), "x", TrainSettings)
    assert settings.per_device is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "random-forest"])
    assert "invalid choice: 'random-forest'" in capsys.readouterr().err


def test_an_invalid_value_is_one_line_naming_command_and_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_TIMEOUT_S", "soon")
    monkeypatch.setenv("COLUMNS", "400")
    parser = parser_for(KafkaSettings)  # --help must still work with a bad environment
    assert "default: soon" in parser.format_help()
    with pytest.raises(ConfigError, match=r"^invalid tail settings: SCHEMA_REGISTRY_TIMEOUT_S: .*number") as caught:
        parse_settings(parser.parse_args([]), "tail", KafkaSettings)
    assert "\n" not in str(caught.value)


SECRETS = {
    "ANOMSTREAM_KAFKA_EXTRA_CONFIG": json.dumps({
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc",
        "sasl.password": "hunter2-sasl", "ssl.key.password": "hunter2-key",
        "sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required password="hunter2-jaas";',
        "ssl.key.pem": "-----BEGIN PRIVATE KEY----- hunter2-pem", "sasl.oauthbearer.client.secret": "hunter2-oauth",
    }),  # fmt: skip
    "SCHEMA_REGISTRY_URL": "https://reader:hunter2-url@registry.example:8081/apis/ccompat/v7",
    "SCHEMA_REGISTRY_BASIC_AUTH": "reader:hunter2-basic",
    "KAFKA_BOOTSTRAP_SERVERS": "broker.example:9093",
}
COMMANDS = [["produce"], ["train"], ["score"], ["tail"], ["alert"], ["models", "list"], ["eval", "skab"],
            ["eval", "nab"], ["stack", "up"], ["stack", "env"]]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_no_help_prints_a_secret_from_the_environment(command: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "anomstream", *command, "--help"], capture_output=True,
                            text=True, env=os.environ | SECRETS, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    if command[0] in ("produce", "score", "tail", "alert"):  # the settings are shown, masked
        assert "sasl.username" in result.stdout and "***" in result.stdout


def test_logged_settings_mask_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    shown = json.dumps(masked(KafkaSettings()), default=str)
    assert "hunter2" not in shown
    assert "reader:***@registry.example" in shown and '"sasl.username": "svc"' in shown
    assert mask_secrets("not a url") == "not a url" and mask_secrets('{"broken": ') == '{"broken": '
