"""Binance as a venue: its configuration table, keys and request signing
(adapters/binance/config.py, auth.py), and the asset index it values collateral by."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.binance.auth import (
    Credentials,
    load_credentials,
    load_trade_credentials,
    sign,
    signed_query,
)
from adapters.binance.config import TESTNET_REST_URL, TESTNET_STREAM_URL, BinanceConfig
from adapters.binance.decode import BinanceDecoder, RestPath
from adapters.venues import VENUES
from monitor.app.config import parse_config
from monitor.core.errors import ConfigError
from monitor.core.events import CollateralTiersUpdate, IndexPrice
from monitor.core.settings import AccountConfig
from monitor.runtime.venues import account_venues, resolve_venues, venue_config


def settings_of(text: str) -> BinanceConfig:
    [use] = resolve_venues(parse_config(tomllib.loads(text)), VENUES).values()
    assert isinstance(use.settings, BinanceConfig)
    return use.settings


def test_the_signature_is_hex_hmac_sha256() -> None:
    # RFC 4231, test case 2: Binance's signature is this function, in lower-case hex.
    assert sign("Jefe", "what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_a_signed_query_ends_with_the_signature_of_the_rest() -> None:
    query = signed_query(Credentials("key", "secret"), {"symbol": "BTCUSDT"}, 1_700_000_000_000,
                         5000)
    head, signature = query.rsplit("&signature=", 1)
    assert head == "symbol=BTCUSDT&timestamp=1700000000000&recvWindow=5000"
    assert signature == sign("secret", head)


def test_keys_come_from_the_environment_without_a_passphrase() -> None:
    account = AccountConfig("main", api_key_env="K", api_secret_env="S",
                            trade_api_key_env="TK", trade_api_secret_env="TS")
    environ = {"K": "read-key", "S": "read-secret", "TK": "trade-key", "TS": "trade-secret"}
    assert load_credentials(account, environ) == Credentials("read-key", "read-secret")
    assert load_trade_credentials(account, environ) == Credentials("trade-key", "trade-secret")
    assert "read-secret" not in repr(load_credentials(account, environ))
    with pytest.raises(ConfigError) as raised:
        load_credentials(AccountConfig("main", api_key_env="K", api_secret_env="S",
                                       passphrase_env="P"), environ)
    assert raised.value.key == "accounts.main.passphrase_env"
    with pytest.raises(ConfigError) as missing:
        load_credentials(AccountConfig("main", api_key_env="K", api_secret_env="S"), {"K": "x"})
    assert missing.value.key == "accounts.main.api_secret_env"
    assert "x" not in missing.value.message


def test_a_key_file_needs_only_key_and_secret(tmp_path: Path) -> None:
    file = tmp_path / "binance.toml"
    file.write_text('api_key = "k"\napi_secret = "s"\n')
    file.chmod(0o600)
    assert load_credentials(AccountConfig("main", credentials_file=str(file))) == (
        Credentials("k", "s"))
    file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_credentials(AccountConfig("main", credentials_file=str(file)))


def test_the_venue_table_and_its_testnet_switch() -> None:
    assert settings_of('[venues.binance]\n[accounts.main]\n') == BinanceConfig()
    testnet = settings_of('[venues.binance]\ntestnet = true\n')
    assert (testnet.rest_url, testnet.stream_url) == (TESTNET_REST_URL, TESTNET_STREAM_URL)
    local = settings_of('[venues.binance]\nrest_url = "http://127.0.0.1:9"\n'
                        'stream_url = "ws://127.0.0.1:9"\n')
    assert local.rest_url == "http://127.0.0.1:9"
    config = parse_config(tomllib.loads('[venues.binance]\n[accounts.main]\n'))
    assert account_venues(config, VENUES) == {"main": "binance"}


@pytest.mark.parametrize(("text", "key"), [
    ('[venues.binance]\ntestnet = true\nrest_url = "https://fapi.binance.com"\n',
     "venues.binance.rest_url"),
    ("[venues.binance]\nlisten_key_keepalive_s = 3600\n",
     "venues.binance.listen_key_keepalive_s"),
    ("[venues.binance]\nreconnect_after_s = 90000\n", "venues.binance.reconnect_after_s"),
    ("[venues.binance]\nrecv_window_ms = 70000\n", "venues.binance.recv_window_ms"),
    ("[venues.binance]\npassphrase = 1\n", "venues.binance.passphrase"),
    ("[binance]\nping_after_s = 0\n", "binance.ping_after_s"),
])
def test_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_venues(parse_config(tomllib.loads(text)), VENUES)
    assert raised.value.key == key


def test_binance_accounts_are_judged_without_a_closing_fee() -> None:
    # Binance's margin ratio has no closing fee in it: riskmon's on a Binance account must
    # not either, whatever [risk] says for the other venues.
    text = ('[risk]\nclosing_fee_rate = 0.001\n[venues.okx]\n[venues.binance]\n'
            '[accounts.main]\nvenue = "okx"\n[accounts.futures]\nvenue = "binance"\n')
    config = parse_config(tomllib.loads(text))
    uses = resolve_venues(config, VENUES)
    binance = venue_config(config, uses["binance"])
    okx = venue_config(config, uses["okx"])
    assert binance.risk.closing_fee_rate == 0.0 and list(binance.accounts) == ["futures"]
    assert okx.risk.closing_fee_rate == 0.001 and list(okx.accounts) == ["main"]
    assert binance.risk.warning == okx.risk.warning == config.risk.warning


def test_execution_on_binance_is_refused_at_start() -> None:
    venue = VENUES.venues["binance"]
    with pytest.raises(ConfigError, match="not available on Binance") as raised:
        venue.trader(BinanceConfig(), "main", Credentials("k", "s"), timeout_s=1.0)
    assert raised.value.key == "accounts.main.execute"


def test_the_asset_index_values_a_margin_asset() -> None:
    # docs: "Websocket Market Streams > Multi-Assets Mode Asset Index", the USDTUSD
    # element of its example: bid rate 0.99977692 = index 0.99987691 x (1 - 0.0001).
    frame: dict[str, Any] = {"e": "assetIndexUpdate", "E": 1686749230000, "s": "USDTUSD",
             "i": "0.99987691", "b": "0.00010000", "a": "0.00010000", "B": "0.99977692",
             "A": "0.99997689", "q": "0.00010000", "g": "0.00010000", "Q": "0.99977692",
             "G": "0.99997689"}
    index, factor = BinanceDecoder().decode_rest(RestPath.ASSET_INDEX, {
        "symbol": "USDTUSD", "time": frame["E"], "index": frame["i"],
        "bidBuffer": frame["b"]}, None, 1)
    assert isinstance(index, IndexPrice) and isinstance(factor, CollateralTiersUpdate)
    assert (index.base, index.quote, index.price) == ("USDT", "USD", 0.99987691)
    flat = factor.tiers.flat_factor
    assert flat is not None
    assert index.price * flat == pytest.approx(float(frame["B"]), rel=1e-8)
    pushed = BinanceDecoder().decode_message(
        orjson.dumps({"stream": "usdtusd@assetIndex", "data": frame}).decode(), None, 1)
    assert pushed == [index, factor]
