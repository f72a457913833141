"""Print every setting (environment variable, flag, default, help) as Markdown tables, for the README.

Run ``.venv/bin/python scripts/settings_doc.py`` with no ANOMSTREAM_* variables set; the README's settings
section is this output, so the two cannot drift apart silently.
"""

from __future__ import annotations

import json

from pydantic_settings import BaseSettings

from anomstream.alerting import AlertSettings
from anomstream.config import PROJECT_ROOT, KafkaSettings, ModelStoreSettings, TopicSettings, _env_name
from anomstream.producer import ProducerSettings
from anomstream.scoring.settings import ScorerSettings
from anomstream.stack.settings import StackSettings
from anomstream.trainer import TrainSettings

SECTIONS: list[tuple[str, type[BaseSettings]]] = [
    ("connection (every command)", KafkaSettings),
    ("topics", TopicSettings),
    ("model store", ModelStoreSettings),
    ("producer (`anomstream produce`)", ProducerSettings),
    ("trainer (`anomstream train`)", TrainSettings),
    ("scorer (`anomstream score`)", ScorerSettings),
    ("alerting (`anomstream alert`)", AlertSettings),
    ("local stack (`anomstream stack`)", StackSettings),
]


def main() -> None:
    for title, settings_cls in SECTIONS:
        print(f"\n**{title}**\n\n| variable | flag | default | what |\n|---|---|---|---|")
        for name, field in settings_cls.model_fields.items():
            default = field.default
            if default is None or default == "":
                shown = "—"
            else:
                shown = json.dumps(default) if isinstance(default, dict) else str(default)
            shown = shown.replace(str(PROJECT_ROOT) + "/", "")
            description = (field.description or "").replace("|", "\\|")
            flag = "--" + name.replace("_", "-")
            print(f"| `{_env_name(field.validation_alias, name)}` | `{flag}` | `{shown}` | {description} |")


if __name__ == "__main__":
    main()
