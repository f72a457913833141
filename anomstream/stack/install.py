"""Installing the stack's servers: Maven resolves Kafka's jars and Apicurio's Quarkus distribution from
Maven Central into the state folder, once. The pom lives beside this module."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
from pathlib import Path

from rich.console import Console

from anomstream.errors import StackError
from anomstream.stack.settings import APICURIO_VERSION, KAFKA_VERSION, StackSettings

logger = logging.getLogger(__name__)
POM = Path(__file__).with_name("pom.xml")


def kafka_libs(settings: StackSettings) -> Path:
    return settings.stack_dir / "kafka" / "libs"


def registry_home(settings: StackSettings) -> Path:
    return settings.stack_dir / "registry"


def _stamp(settings: StackSettings) -> Path:
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    return settings.stack_dir / f".installed-{digest}"


def is_installed(settings: StackSettings) -> bool:
    """True when the jars of the pinned releases are in the state folder."""
    return (
        _stamp(settings).exists()
        and (kafka_libs(settings) / f"kafka_2.13-{KAFKA_VERSION}.jar").exists()
        and (registry_home(settings) / "quarkus-run.jar").exists()
    )


def install(settings: StackSettings, console: Console) -> None:
    """Resolve the servers with Maven unless already installed; raise StackError saying why it failed."""
    if is_installed(settings):
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) is not on PATH: install it (e.g. apt-get install maven) and run again")
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    # Maven runs on a copy of the pom in the state folder, so the package directory stays untouched.
    pom = settings.stack_dir / "pom.xml"
    shutil.copyfile(POM, pom)
    command = [mvn, "-B", "-q", "-f", str(pom), "package", f"-Dstack.dir={settings.stack_dir}"]
    what = f"Kafka {KAFKA_VERSION} and Apicurio Registry {APICURIO_VERSION}"
    with console.status(f"Downloading {what} from Maven Central (first run only, about 200 MB)..."):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise StackError(f"Maven could not resolve {what}: {_maven_reason(output)}\n{output[-2000:]}")
    for old in settings.stack_dir.glob(".installed-*"):
        old.unlink()
    _stamp(settings).touch()
    console.print(f"[green]installed[/] {what} into {settings.stack_dir}")


def _maven_reason(output: str) -> str:
    if "UnknownHostException" in output or "Unknown host" in output:
        return "Maven Central is unreachable (unknown host): check the network or a mirror in ~/.m2/settings.xml"
    match = re.search(r"(Could not (?:resolve|transfer|find)[^\n]*)", output)
    return match.group(1) if match else "see Maven's output below"
