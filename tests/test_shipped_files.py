"""The configurations and the recording shipped in the repository stay valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", ["deploy/riskmon.toml", "examples/riskmon.toml"])
def test_configuration_loads(path: str) -> None:
    config = load_config(ROOT / path)
    assert "main" in config.accounts
    assert config.accounts["main"].stop_loss[0].name == "guard-110"


def test_example_recording_is_what_its_generator_writes(tmp_path: Path) -> None:
    # The generator writes examples/story.jsonl relative to the working directory.
    (tmp_path / "examples").mkdir()
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_story.py")], cwd=tmp_path,
                   check=True, timeout=60)
    generated = (tmp_path / "examples" / "story.jsonl").read_bytes()
    assert generated == (ROOT / "examples" / "story.jsonl").read_bytes()
