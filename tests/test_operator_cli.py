"""The commands a person runs (issue "Operators"): ``alerts`` as a table or JSON with validated
filters, ``--version``, ``check-config``, ``status`` from a replay, a database and a running
daemon, ``report`` (HTML, and a PNG rendered by headless Chromium), and the replay's progress
bar and summary on a terminal. Real subprocesses on real databases; terminals are real
pseudo-terminals."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.report import ALERT_COLOURS, LEVEL_COLOURS, find_chromium
from monitor.app.status import status_document
from monitor.app.tables import ProgressBar, replay_summary
from monitor.core.settings import RiskConfig
from monitor.runtime.pipeline import Stats
from tests.live_harness import (
    EXAMPLE_CONFIG,
    LIVE_ENV,
    ROOT,
    STORY,
    live_config,
    running,
)

STORY_CONFIG = EXAMPLE_CONFIG


def riskmon(*args: str | Path, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "monitor", *map(str, args)], cwd=ROOT,
                          capture_output=True, check=check, timeout=120,
                          env={**os.environ, **(env or {})})


def on_a_terminal(*args: str | Path) -> tuple[int, str]:
    """Run riskmon with its standard output and error on a pseudo-terminal; what it wrote."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "monitor", *map(str, args)], cwd=ROOT,
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return process.wait(timeout=120), b"".join(chunks).decode()


@pytest.fixture(scope="module")
def story_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("story") / "story.db"
    riskmon("replay", STORY, "--config", STORY_CONFIG, "--alerts-out", os.devnull, "--db", db)
    return db


def json_lines(output: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in output.splitlines()]


# -- alerts --------------------------------------------------------------------------------


def test_alerts_filters_by_level_time_kind_and_limit(story_db: Path) -> None:
    every = json_lines(riskmon("alerts", "--db", story_db).stdout)
    assert len(every) == 10
    worse = json_lines(riskmon("alerts", "--db", story_db, "--level", "deleverage").stdout)
    assert [a["level"] for a in worse] == ["deleverage", "deleverage", "liquidation",
                                          "liquidation"]
    # Event times 00:07:00 to 00:07:35 UTC: the warning, the lock and the deleverage pair.
    window = json_lines(riskmon("alerts", "--db", story_db, "--from", "2026-01-01T00:07:00",
                                "--to", "2026-01-01T00:07:35").stdout)
    assert [a["kind"] for a in window] == ["level_changed", "level_changed", "level_changed",
                                           "deleverage_plan"]
    by_ms = json_lines(riskmon("alerts", "--db", story_db, "--from", str(window[0]["ts"]),
                               "--to", str(window[-1]["ts"])).stdout)
    assert by_ms == window
    two = json_lines(riskmon("alerts", "--db", story_db, "--kind", "level_changed",
                             "--kind", "reminder", "--limit", "2").stdout)
    assert [a["kind"] for a in two] == ["level_changed", "level_changed"]


@pytest.mark.parametrize(("args", "named"), [
    (["--kind", "stoploss"], b"stop_loss"),   # the error lists the real kinds
    (["--level", "panic"], b"liquidation"),
    (["--from", "yesterday"], b"--from"),
    (["--since", "nope"], b"nope"),
])
def test_alerts_refuses_bad_filters_with_a_clear_error(story_db: Path, args: list[str],
                                                       named: bytes) -> None:
    result = riskmon("alerts", "--db", story_db, *args, check=False)
    assert result.returncode == 2
    assert result.stdout == b""
    assert named in result.stderr


def test_alerts_are_a_table_on_a_terminal_and_json_when_asked(story_db: Path) -> None:
    code, text = on_a_terminal("alerts", "--db", story_db, "--kind", "level_changed")
    assert code == 0
    lines = text.strip().splitlines()
    assert lines[0].split() == ["event", "time", "(UTC)", "account", "kind", "level", "MR",
                                "detail"]
    assert len(lines) == 1 + 5 and "normal -> warning" in lines[1]
    code, text = on_a_terminal("alerts", "--db", story_db, "--kind", "level_changed", "--json")
    assert [json.loads(line)["kind"] for line in text.strip().splitlines()] == [
        "level_changed"] * 5


def test_version() -> None:
    assert re.fullmatch(rb"riskmon \d+\.\d+\.\d+\n", riskmon("--version").stdout)


# -- check-config ------------------------------------------------------------------------


def test_check_config_reports_every_error_at_once(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[risk]\nwarning = "high"\n[collateral]\nBTC = 7\n'
                      '[accounts.main]\nmode = "spot"\n[stream]\nport = 99999\n')
    result = riskmon("check-config", config, check=False)
    assert result.returncode == 2
    keys = re.findall(rb": ([\w.\[\]]+): ", result.stderr)
    assert keys == [b"risk.warning", b"collateral.BTC", b"accounts.main.mode", b"stream.port"]
    assert b"4 errors" in result.stderr


def test_check_config_also_checks_what_run_needs(tmp_path: Path) -> None:
    config = tmp_path / "live.toml"
    config.write_text(STORY_CONFIG.read_text() + '\n[stream]\nhost = "0.0.0.0"\n')
    result = riskmon("check-config", config, check=False,
                     env={name: "" for name in LIVE_ENV})
    assert result.returncode == 2
    assert b"accounts.main.api_key_env: environment variable RISKMON_MAIN_API_KEY" in (
        result.stderr)
    assert b"stream.host" in result.stderr
    assert riskmon("check-config", "--offline", config).returncode == 0
    assert riskmon("check-config", STORY_CONFIG, env=LIVE_ENV).stdout.endswith(b": ok\n")


# -- status --------------------------------------------------------------------------------


def test_status_of_a_replay_is_its_end_state(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    riskmon("replay", STORY, "--config", STORY_CONFIG, "--alerts-out", os.devnull,
            "--state-out", state)
    document = orjson.loads(riskmon("status", "--recording", STORY, "--config",
                                    STORY_CONFIG).stdout)
    expected = orjson.loads(state.read_bytes())["accounts"]["main"]
    main = document["accounts"]["main"]
    assert document["source"] == "replay"
    assert {key: main[key] for key in expected} == expected
    # MR 33.82 at normal: 32.32 above the warning threshold, 32.97 above liquidation.
    assert main["next_level"] == "warning" and main["next_threshold"] == 1.5
    assert main["distance_to_next"] == pytest.approx(expected["margin_ratio"] - 1.5)
    assert main["distance_to_liquidation"] == pytest.approx(expected["margin_ratio"] - 0.85)


def test_status_gives_no_distances_for_an_account_whose_risk_is_unknown() -> None:
    known = {"level": "warning", "margin_ratio": 1.3, "risk_known": True}
    unknown = {**known, "risk_known": False, "missing": ["mark:BTC-USDT-SWAP"]}
    document = status_document("daemon", 1, {"a": known, "b": unknown}, RiskConfig())
    a, b = document["accounts"]["a"], document["accounts"]["b"]
    assert a["distance_to_next"] == pytest.approx(1.3 - 1.2)
    assert a["distance_to_liquidation"] == pytest.approx(1.3 - 0.85)
    assert b["next_level"] == "withdrawal_lock"  # from the last level known
    assert b["distance_to_next"] is None and b["distance_to_liquidation"] is None
    assert b["missing"] == ["mark:BTC-USDT-SWAP"]


def test_status_of_a_database_is_its_latest_margin_sample(story_db: Path) -> None:
    document = orjson.loads(riskmon("status", "--db", story_db).stdout)
    main = document["accounts"]["main"]
    assert document["source"] == "database" and main["level"] == "normal"
    assert main["as_of"] == document["as_of"] and main["positions"] == []


def test_status_table_on_a_terminal() -> None:
    code, text = on_a_terminal("status", "--recording", STORY, "--config", STORY_CONFIG)
    assert code == 0
    assert "to liquidation" in text and "BTC-USDT-SWAP" in text and "45,569.05" in text


def test_status_of_a_running_daemon_is_scoped_by_its_token(tmp_path: Path) -> None:
    with running(["replay-server", str(STORY), "--port", "0", "--speed", "0"]) as server:
        port = server.wait_status("listening")["port"]
        config = live_config(tmp_path, port)
        config.write_text(config.read_text().replace(
            "port = 0\n", 'port = 0\ntokens = [ { token_env = "RISKMON_TOKEN_DESK", '
                          'accounts = ["main"] }, { token_env = "RISKMON_TOKEN_OTHER", '
                          'accounts = ["other"] } ]\n', 1))
        env = {**LIVE_ENV, "RISKMON_TOKEN_DESK": "desk-token", "RISKMON_TOKEN_OTHER": "o-token"}
        with running(["run", "--config", str(config)], env=env) as daemon:
            http = daemon.wait_status("listening")["http"]
            server.wait_status("finished", timeout=120)
            url = f"{http}/v1/status"
            refused = riskmon("status", "--url", http, check=False,
                              env={"RISKMON_STREAM_TOKEN": ""})
            assert refused.returncode == 1 and b"HTTP 401" in refused.stderr
            desk = orjson.loads(riskmon("status", "--url", url, "--token", "desk-token").stdout)
            assert desk["source"] == "daemon" and list(desk["accounts"]) == ["main"]
            assert desk["accounts"]["main"]["risk_known"] is True
            other = orjson.loads(riskmon("status", "--url", http,
                                         env={"RISKMON_STREAM_TOKEN": "o-token"}).stdout)
            assert other["accounts"] == {}
            assert daemon.terminate() == 0


# -- report --------------------------------------------------------------------------------


def test_report_from_a_recording_draws_thresholds_and_alerts(tmp_path: Path) -> None:
    result = riskmon("report", "--recording", STORY, "--config", STORY_CONFIG, "--out",
                     tmp_path, "--no-png")
    [line] = json_lines(result.stdout)
    page = Path(line["files"][0])
    text = page.read_text()
    assert page.name == "report-main.html"
    assert sorted(re.findall(r'class="threshold" data-level="(\w+)"', text)) == sorted(
        LEVEL_COLOURS)
    markers = re.findall(r'class="alert-marker" data-kind="(\w+)"', text)
    assert len(markers) == 10 and markers.count("level_changed") == 5
    # Self-contained: nothing to fetch.
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in text


def test_report_from_a_database(story_db: Path, tmp_path: Path) -> None:
    result = riskmon("report", "--db", story_db, "--out", tmp_path, "--no-png")
    [line] = json_lines(result.stdout)
    text = Path(line["files"][0]).read_text()
    assert len(re.findall(r'class="alert-marker"', text)) == 10
    assert 'class="ratio"' in text


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) pixels of an 8-bit, non-interlaced PNG (what
    Chromium writes), decoded with the standard library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, [], b""
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour, interlace = header[8], header[9], header[12]
    assert depth == 8 and colour in (2, 6) and interlace == 0
    size = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * size
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        row_filter, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for x in range(stride):
            left = line[x - size] if x >= size else 0
            up = previous[x]
            corner = previous[x - size] if x >= size else 0
            if row_filter == 1:
                line[x] = (line[x] + left) & 0xFF
            elif row_filter == 2:
                line[x] = (line[x] + up) & 0xFF
            elif row_filter == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif row_filter == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                nearest = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                line[x] = (line[x] + nearest) & 0xFF
        rows.append(bytes(line) if size == 3 else bytes(
            b for i in range(0, stride, 4) for b in line[i:i + 3]))
        previous = line
    return width, height, rows


def colour_count(rows: list[bytes], colour: str) -> int:
    wanted = bytes.fromhex(colour.lstrip("#"))
    return sum(row.count(wanted) for row in rows if wanted in row)


def test_report_png_in_headless_chromium_shows_thresholds_and_alert_markers(
        tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("no Chromium here (Debian package chromium; ./dev test installs it where"
                    " it can)")
    result = riskmon("report", "--recording", STORY, "--config", STORY_CONFIG, "--out",
                     tmp_path)
    [line] = json_lines(result.stdout)
    assert [Path(f).suffix for f in line["files"]] == [".html", ".png"]
    width, height, rows = png_pixels(Path(line["files"][1]).read_bytes())
    assert width > 900 and height > 900
    # Every threshold line is drawn in its colour, dashed across the chart (hundreds of
    # pixels each), and the alert markers of each kind in theirs.
    for level, colour in LEVEL_COLOURS.items():
        assert colour_count(rows, colour) > 300, level
    for kind in ("level_changed", "stop_loss", "reminder"):
        assert colour_count(rows, ALERT_COLOURS[kind]) > 50, kind


# -- the replay on a terminal ----------------------------------------------------------------


def test_progress_bar_starts_late_and_redraws_in_place() -> None:
    clock = [0.0]
    out = io.StringIO()
    bar = ProgressBar(out, 1000, after_s=2.0, every_s=0.5, clock=lambda: clock[0])
    stats = Stats(lines=10, alerts=1)
    bar.update(100, stats)
    clock[0] = 1.9
    bar.update(200, stats)
    assert out.getvalue() == ""  # a short replay prints nothing
    clock[0] = 2.0
    bar.update(500, stats)
    clock[0] = 2.1
    bar.update(600, stats)  # too soon to redraw
    clock[0] = 2.6
    bar.update(1000, stats)
    bar.finish()
    draws = out.getvalue().split("\r")[1:]
    assert [draw.split("]")[1].split()[0] for draw in draws] == ["50.0%", "100.0%"]
    assert out.getvalue().endswith("\n")


def test_replay_prints_a_summary_on_a_terminal() -> None:
    code, text = on_a_terminal("replay", STORY, "--config", STORY_CONFIG,
                               "--alerts-out", os.devnull)
    assert code == 0
    summary = replay_summary(STORY, Stats(lines=1447, events=1444, quarantined=2, alerts=10),
                             {"main": "normal"})
    assert summary.splitlines()[0].split(":")[0] in text
    assert "1,444 events, 2 quarantined, 10 alerts" in text
    assert "main: ends at normal" in text
