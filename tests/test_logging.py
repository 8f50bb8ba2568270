"""structlog configuration, the alert and quarantine log events, and secret redaction."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
import structlog

from adapters.logging import (
    REDACTED,
    configure_logging,
    get_logger,
    is_secret_key,
    log_alert,
    log_quarantine,
)
from monitor.core.alerts import Alert
from monitor.core.records import QuarantineRecord


class TtyStream(io.StringIO):
    """An in-memory stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def make_alert(**changes: Any) -> Alert:
    """A deleverage-plan alert; keyword arguments replace fields."""
    fields: dict[str, Any] = {
        "id": "0001700000000000-0123456789abcdef",
        "ts": 1_700_000_000_000,
        "emitted_ms": 1_700_000_000_012,
        "account": "main",
        "kind": "deleverage_plan",
        "level": "deleverage",
        "from_level": None,
        "margin_ratio": 0.97,
        "equity_usd": 9_700.0,
        "maint_margin_usd": 10_000.0,
        "init_margin_usd": 12_500.0,
        "inst_id": "BTC-USDT-SWAP",
        "mark": 36_500.5,
        "payload": {
            "orders": [
                {
                    "inst_id": "BTC-USDT-SWAP",
                    "side": "sell",
                    "size": 3.0,
                    "reduce_only": True,
                    "ord_type": "market",
                }
            ],
            "target_margin_ratio": 1.02,
        },
    }
    fields.update(changes)
    return Alert(**fields)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every output line, parsed."""
    parsed = []
    for line in stream.getvalue().splitlines():
        value = orjson.loads(line)
        assert isinstance(value, dict)
        parsed.append(value)
    return parsed


def test_log_alert_writes_every_field_as_json() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    alert = make_alert()

    log_alert(get_logger("sinks"), alert)

    [line] = json_lines(stream)
    expected = alert.to_dict()
    expected["alert_level"] = expected.pop("level")
    assert {key: line[key] for key in expected} == expected
    assert line["payload"]["orders"][0]["size"] == 3.0
    assert line["event"] == "alert"
    assert line["level"] == "warning"
    assert line["logger_name"] == "sinks"
    timestamp = datetime.fromisoformat(line["timestamp"])
    assert timestamp.utcoffset() == timedelta(0)


def test_a_quiet_alert_is_info_and_keeps_null_fields() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)

    log_alert(
        get_logger(),
        make_alert(kind="feed_connected", level="normal", margin_ratio=None, inst_id=None),
    )

    [line] = json_lines(stream)
    assert line["level"] == "info"
    assert line["alert_level"] == "normal"
    assert line["margin_ratio"] is None
    assert line["inst_id"] is None


def test_log_quarantine() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)

    log_quarantine(get_logger(), QuarantineRecord("replay.jsonl:7", None, "not JSON", "{x"))

    [line] = json_lines(stream)
    assert line["event"] == "quarantine"
    assert line["level"] == "warning"
    assert (line["source"], line["recv_ts"], line["reason"], line["raw"]) == (
        "replay.jsonl:7",
        None,
        "not JSON",
        "{x",
    )


def test_secrets_are_redacted_at_any_depth() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)

    get_logger().info(
        "login",
        api_key="AK-1111",
        args=[{"apiKey": "AK-2222", "passphrase": "PP-3333", "sign": "SG-4444", "op": "x"}],
        config={"api_secret_env": "ENV-5555", "nested": {"Password": "PW-6666"}},
        headers={"OK-ACCESS-SIGN": "SG-7777", "OK-ACCESS-KEY": "AK-8888"},
        token="TK-9999",
        signal="kept",
        key="kept too",
    )

    output = stream.getvalue()
    for secret in ("1111", "2222", "3333", "4444", "5555", "6666", "7777", "8888", "9999"):
        assert secret not in output
    [line] = json_lines(stream)
    assert line["api_key"] == REDACTED
    assert line["args"] == [
        {"apiKey": REDACTED, "passphrase": REDACTED, "sign": REDACTED, "op": "x"}
    ]
    assert line["config"] == {"api_secret_env": REDACTED, "nested": {"Password": REDACTED}}
    assert line["token"] == REDACTED
    assert (line["signal"], line["key"]) == ("kept", "kept too")


def test_secrets_are_redacted_in_console_output() -> None:
    stream = TtyStream()
    configure_logging(stream=stream)

    get_logger().info("login", secret="S3CR3T-VALUE", args={"passphrase": "PASS-VALUE"})

    output = stream.getvalue()
    assert "login" in output
    assert "S3CR3T-VALUE" not in output
    assert "PASS-VALUE" not in output


def test_tracebacks_carry_no_local_variables() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)

    def login(api_secret: str) -> None:
        raise RuntimeError("login refused")

    try:
        login("LOCAL-SECRET-0000")
    except RuntimeError:
        get_logger().exception("login failed")

    assert "LOCAL-SECRET-0000" not in stream.getvalue()
    [line] = json_lines(stream)
    assert line["level"] == "error"
    [exception] = line["exception"]
    assert (exception["exc_type"], exception["exc_value"]) == ("RuntimeError", "login refused")


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("api_key", True),
        ("apiKey", True),
        ("API_KEY", True),
        ("OK-ACCESS-KEY", True),
        ("OK-ACCESS-PASSPHRASE", True),
        ("secret", True),
        ("api_secret_env", True),
        ("passphrase", True),
        ("token", True),
        ("sign", True),
        ("password", True),
        ("private_key", True),
        ("signal", False),
        ("design", False),
        ("key", False),
        ("account", False),
        ("margin_ratio", False),
    ],
)
def test_is_secret_key(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_a_terminal_gets_console_rendering() -> None:
    stream = TtyStream()
    configure_logging(stream=stream)

    log_alert(get_logger(), make_alert())

    output = stream.getvalue()
    assert output.strip()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(output.splitlines()[0])


def test_json_is_the_default_off_a_terminal_and_can_be_forced_either_way() -> None:
    plain = io.StringIO()
    configure_logging(stream=plain)
    get_logger().info("started", port=8765)
    assert json_lines(plain)[0]["port"] == 8765

    forced_json = TtyStream()
    configure_logging(json=True, stream=forced_json)
    get_logger().info("started", port=8765)
    assert json_lines(forced_json)[0]["port"] == 8765

    forced_console = io.StringIO()
    configure_logging(json=False, stream=forced_console)
    get_logger().info("started", port=8765)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(forced_console.getvalue().splitlines()[0])


def test_default_stream_is_standard_error(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)

    get_logger().info("started")

    captured = capsys.readouterr()
    assert captured.out == ""
    assert orjson.loads(captured.err.splitlines()[0])["event"] == "started"


def test_events_below_the_level_are_dropped() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream, level="WARNING")

    logger = get_logger()
    logger.info("ignored")
    logger.warning("kept")

    assert [line["event"] for line in json_lines(stream)] == ["kept"]


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="verbose"):
        configure_logging(level="verbose")


def test_a_logger_made_before_configuration_follows_it() -> None:
    logger = get_logger("early")
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)

    logger.info("late")

    [line] = json_lines(stream)
    assert (line["event"], line["logger_name"]) == ("late", "early")


def test_a_value_orjson_refuses_is_still_logged() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)

    get_logger().info("huge", contracts=2**70)

    [line] = json_lines(stream)
    assert line["contracts"] == 2**70
