"""The live OKX adapter's parts: signing, credentials, backoff, instrument families, the
inbox, the REST client (against the real replay server) and the metrics text."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from adapters.okx.auth import Credentials, load_credentials, login_request, rest_headers, sign
from adapters.okx.live import backoff_delay, instrument_family
from adapters.okx.replay_server import ReplayServer
from adapters.okx.rest import OkxRest
from monitor.config import AccountConfig
from monitor.errors import ConfigError, FeedError
from monitor.feed import FeedItem, Frame, Inbox, LinkChange, RestBody
from monitor.metrics import Metrics

# The secret the OKX docs use in their examples. The expected signatures were computed
# outside Python, from the documented formula:
#   printf '1538054050GET/users/self/verify' | openssl dgst -sha256 -hmac SECRET -binary | base64
DOC_SECRET = "22582BD0CFF14C41EDBF1AB98506286D"
LOGIN_SIGN = "+LdIr8lkkvhr5hoA3g9TMC0+uQJ849ftAcocA/ouu4M="
REST_SIGN = "YZhzoPmYJFBjWZSpmnhQtt8Hn+AKBMsU1fibj/UndWY="
CREDS = Credentials("key-1", DOC_SECRET, "phrase-1")


def test_login_signature_matches_the_documented_formula() -> None:
    assert sign(DOC_SECRET, "1538054050GET/users/self/verify") == LOGIN_SIGN
    assert login_request(CREDS, 1538054050) == {
        "op": "login",
        "args": [{"apiKey": "key-1", "passphrase": "phrase-1", "timestamp": "1538054050",
                  "sign": LOGIN_SIGN}],
    }


def test_rest_headers_sign_the_iso_timestamp_method_and_path_with_query() -> None:
    now = datetime(2020, 12, 8, 9, 8, 57, 715_000, tzinfo=UTC)
    headers = rest_headers(CREDS, "get", "/api/v5/trade/orders-pending?limit=100", "", now)
    assert headers == {"OK-ACCESS-KEY": "key-1", "OK-ACCESS-SIGN": REST_SIGN,
                       "OK-ACCESS-TIMESTAMP": "2020-12-08T09:08:57.715Z",
                       "OK-ACCESS-PASSPHRASE": "phrase-1"}


def test_credentials_never_show_their_values() -> None:
    assert DOC_SECRET not in repr(CREDS) and "phrase-1" not in str(CREDS)
    assert "key-1" not in f"{CREDS}"


def account(**names: str) -> AccountConfig:
    return AccountConfig(name="main", **names)  # type: ignore[arg-type]


ENV_NAMES = {"api_key_env": "K", "api_secret_env": "S", "passphrase_env": "P"}


def test_credentials_from_the_environment() -> None:
    creds = load_credentials(account(**ENV_NAMES), {"K": "k", "S": "s", "P": "p"})
    assert (creds.api_key, creds.secret, creds.passphrase) == ("k", "s", "p")


def test_a_missing_variable_is_named_and_no_value_is_shown() -> None:
    with pytest.raises(ConfigError) as raised:
        load_credentials(account(**ENV_NAMES), {"K": "k-value", "S": "", "P": "p-value"})
    assert raised.value.key == "accounts.main.api_secret_env"
    assert "S is not set" in raised.value.message
    assert "k-value" not in str(raised.value) and "p-value" not in str(raised.value)
    with pytest.raises(ConfigError, match="api_key_env"):
        load_credentials(account(), {})


def test_credentials_file_must_be_owner_only(tmp_path: Path) -> None:
    file = tmp_path / "okx.toml"
    file.write_text('api_key = "k"\napi_secret = "very-secret"\npassphrase = "p"\n')
    file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as raised:
        load_credentials(account(credentials_file=str(file)), {})
    assert raised.value.key == "accounts.main.credentials_file"
    file.chmod(0o600)
    assert load_credentials(account(credentials_file=str(file)), {}).secret == "very-secret"


def test_a_bad_credentials_file_does_not_echo_its_content(tmp_path: Path) -> None:
    file = tmp_path / "okx.toml"
    file.write_text('api_key = "k"\napi_secret = "very-secret\n')
    os.chmod(file, 0o600)
    with pytest.raises(ConfigError) as raised:
        load_credentials(account(credentials_file=str(file)), {})
    assert "very-secret" not in str(raised.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_credentials(account(credentials_file=str(tmp_path / "absent.toml")), {})


def test_backoff_doubles_within_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for failures, cap in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 30.0), (60, 30.0)]:
        for _ in range(50):
            assert cap / 2 <= backoff_delay(failures, 1.0, 30.0, rng) <= cap


@pytest.mark.parametrize(("inst_id", "family"), [
    ("BTC-USDT-SWAP", ("SWAP", "BTC-USDT")),
    ("BTC-USD-250328", ("FUTURES", "BTC-USD")),
    ("BTC-USDT", None),
    ("BTC-USD-250328-50000-C", None),
])
def test_instrument_family(inst_id: str, family: tuple[str, str] | None) -> None:
    assert instrument_family(inst_id) == family


def mark_frame(inst_id: str, n: int) -> Frame:
    return Frame(n, None, {"n": n}, None, inst_id)


def test_inbox_keeps_everything_in_order_without_pressure() -> None:
    inbox = Inbox(conflate_after=100)
    items: list[FeedItem] = [mark_frame("BTC", 1), mark_frame("BTC", 2),
                             RestBody(3, "a", "/p", {}),
             LinkChange(4, None, True, "up"), mark_frame("ETH", 5)]
    for item in items:
        inbox.put(item)
    assert inbox.take() == items and inbox.conflated == 0 and len(inbox) == 0


def test_inbox_conflates_only_marks_under_pressure() -> None:
    inbox = Inbox(conflate_after=3)
    order_frame = Frame(2, "a", {"arg": {"channel": "orders"}})
    items: list[FeedItem] = [mark_frame("BTC", 1), order_frame, mark_frame("ETH", 3),
                 mark_frame("BTC", 4), Frame(5, "a", {"x": 1}), mark_frame("BTC", 6)]
    for item in items:
        inbox.put(item)
    # BTC 1 and BTC 4 were replaced by the newer BTC mark, which takes the newer place.
    assert inbox.take() == [order_frame, mark_frame("ETH", 3), Frame(5, "a", {"x": 1}),
                            mark_frame("BTC", 6)]
    assert inbox.conflated == 2


def orders(count: int) -> list[dict[str, str]]:
    return [{"instType": "SWAP", "instId": "BTC-USDT-SWAP", "ordId": str(1000 + n),
             "clOrdId": "", "side": "buy", "ordType": "limit", "px": "100", "sz": "1",
             "accFillSz": "0", "state": "live", "reduceOnly": "false", "lever": "10",
             "tdMode": "cross", "cTime": str(1_700_000_000_000 + n),
             "uTime": str(1_700_000_000_000 + n)} for n in range(count)]


async def test_orders_pending_merges_every_page(tmp_path: Path) -> None:
    recording = tmp_path / "rec.jsonl"
    rows = orders(250)
    body = {"code": "0", "msg": "", "data": rows}
    recording.write_bytes(orjson.dumps(
        {"recv_ts": 1, "account": "main", "rest": "/api/v5/trade/orders-pending", "body": body})
        + b"\n")
    server = ReplayServer(recording, speed=None)
    port = await server.start("127.0.0.1", 0)
    try:
        rest = OkxRest(f"http://127.0.0.1:{port}")
        path, merged = await rest.orders_pending(Credentials("main", "s", "p"))
        assert path == "/api/v5/trade/orders-pending"
        assert sorted(row["ordId"] for row in merged["data"]) == sorted(
            row["ordId"] for row in rows)
        with pytest.raises(FeedError, match="HTTP 404"):
            await rest.get("/api/v5/no/such/path")
    finally:
        await server.close()


async def test_rest_errors_name_the_path_not_the_headers() -> None:
    rest = OkxRest("http://127.0.0.1:9", timeout_s=2)  # port 9: nothing listens
    with pytest.raises(FeedError) as raised:
        await rest.orders_pending(Credentials("key-1", DOC_SECRET, "phrase-1"))
    assert "/api/v5/trade/orders-pending" in str(raised.value)
    assert DOC_SECRET not in str(raised.value) and "phrase-1" not in str(raised.value)
    with pytest.raises(ConfigError, match=r"okx\.rest_url"):
        OkxRest("ftp://example.invalid")


def test_metrics_render_in_prometheus_text_format() -> None:
    metrics = Metrics(frames=12, events=10, alerts_by_kind={"stop_loss": 2},
                      margin_ratio={"main": 1.25, "idle": None},
                      feeds_connected={"public": True, "private:main": False}, started_s=100)
    text = metrics.render(now_s=160)
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert samples["riskmon_frames_total"] == "12"
    assert samples['riskmon_alerts_total{kind="stop_loss"}'] == "2"
    assert samples['riskmon_margin_ratio{account="main"}'] == "1.25"
    assert 'riskmon_margin_ratio{account="idle"}' not in samples
    assert samples['riskmon_feed_connected{feed="private:main"}'] == "0"
    assert samples["riskmon_uptime_seconds"] == "60"
    assert "# TYPE riskmon_events_total counter" in text
