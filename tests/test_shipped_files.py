"""The configurations and the recording shipped in the repository stay valid."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from monitor.app.cli import build_parser
from monitor.app.config import load_config, parse_config
from monitor.core.settings import HealthConfig, QuarantineConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", ["deploy/riskmon.toml", "examples/riskmon.toml"])
def test_configuration_loads(path: str) -> None:
    config = load_config(ROOT / path)
    assert "main" in config.accounts
    assert config.accounts["main"].stop_loss[0].name == "guard-110"


def test_the_deployment_configuration_shows_the_defaults_of_the_operational_tables() -> None:
    config = load_config(ROOT / "deploy" / "riskmon.toml")
    assert config.quarantine == QuarantineConfig()
    assert config.health == HealthConfig()


def test_example_recording_is_what_its_generator_writes(tmp_path: Path) -> None:
    # The generator writes examples/story.jsonl relative to the working directory.
    (tmp_path / "examples").mkdir()
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_story.py")], cwd=tmp_path,
                   check=True, timeout=60)
    generated = (tmp_path / "examples" / "story.jsonl").read_bytes()
    assert generated == (ROOT / "examples" / "story.jsonl").read_bytes()


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_unit_runs_the_daemon_with_a_valid_command_line() -> None:
    settings = unit_settings((ROOT / "deploy" / "riskmon.service").read_text())
    [exec_start] = settings["ExecStart"]
    program, *arguments = shlex.split(exec_start)
    assert program.endswith("/riskmon")
    args = build_parser().parse_args(arguments)
    assert args.command == "run" and str(args.config) == "/etc/riskmon/riskmon.toml"
    assert settings["Restart"] == ["on-failure"]
    assert settings["KillSignal"] == ["SIGTERM"]
    assert settings["NoNewPrivileges"] == ["yes"] and settings["ProtectSystem"] == ["strict"]
    # Secrets come from a root-only environment file, never the command line.
    assert settings["EnvironmentFile"] == ["/etc/riskmon/riskmon.env"]


def test_container_file_runs_the_daemon_with_a_valid_command_line() -> None:
    text = (ROOT / "deploy" / "Containerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M)[1])  # type: ignore[index]
    command = json.loads(re.search(r"^CMD (.+)$", text, re.M)[1])  # type: ignore[index]
    args = build_parser().parse_args(entrypoint[1:] + command)
    assert args.command == "run"
    assert "USER riskmon" in text and "STOPSIGNAL SIGTERM" in text


def test_the_deploy_configurations_notifier_examples_are_valid() -> None:
    text = (ROOT / "deploy" / "riskmon.toml").read_text()
    start = text.index("# [notify.phone]")
    uncommented = "\n".join(line.removeprefix("#").removeprefix(" ")
                            for line in text[start:].splitlines())
    config = parse_config(tomllib.loads(uncommented))
    assert {name: n.type for name, n in config.notify.items()} == {
        "phone": "telegram", "desk": "slack", "hook": "webhook", "oncall": "alertmanager"}
    assert config.notify["phone"].min_level == "warning"
