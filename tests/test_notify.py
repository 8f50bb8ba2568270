"""Notifiers (adapters/notify) against real HTTP servers on 127.0.0.1 standing in for each
API (tests/http_fakes.py), behind a real SQLite sink as ``riskmon run`` builds them: what
each destination receives, signatures, retries, the rate limit's summary, isolation of a
stuck destination, and delivery across a restart from the cursor."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import sqlite3
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters.notify import Notifiers
from adapters.notify.core import NotifyFilter, TokenBucket
from adapters.notify.text import alert_text
from adapters.sinks import SqliteSink
from adapters.sqlite_store import SqliteStore
from monitor.app.config import parse_config
from monitor.core.alerts import Alert, AlertKind, Level
from monitor.core.batch import Batch
from monitor.core.errors import ConfigError
from monitor.runtime.metrics import Metrics
from monitor.runtime.pipeline import Retrying, SinkTask
from monitor.runtime.stream import AlertFilter
from tests.builders import make_alert
from tests.http_fakes import FakeHttpServer, Received, Reply

TOKEN = "123456:telegram-Token-never-shown"
SECRET = "webhook-Secret-never-shown"
FAST = "backoff_initial_s = 0.05\nbackoff_max_s = 0.2\n"


def alert(n: int, *, kind: AlertKind = "level_changed", level: Level = "warning",
          from_level: Level | None = "normal", account: str = "main",
          payload: Mapping[str, Any] | None = None,
          margin_ratio: float | None = 1.42) -> Alert:
    base = make_alert(n, account=account, kind=kind, level=level, payload=payload,
                      margin_ratio=margin_ratio)
    fields = {slot: getattr(base, slot) for slot in Alert.__slots__}
    fields["from_level"] = from_level if kind == "level_changed" else None
    if payload is None and kind == "level_changed":
        fields["payload"] = {"from": from_level, "to": level, "threshold": 1.5}
    return Alert(**fields)


class Rig:
    """The SQLite sink followed by the configured notifiers, on a file in tmp_path."""

    def __init__(self, db: Path, notifiers: Notifiers, store: SqliteStore) -> None:
        self.closed = False
        self.db = db
        self.notifiers = notifiers
        self.store = store
        self.head = SinkTask(SqliteSink(store), followers=[
            SinkTask(notifier) for notifier in notifiers.notifiers])
        notifiers.start()
        self.head.start()

    async def publish(self, alerts: Sequence[Alert]) -> None:
        await self.head.put(Batch.of(alerts=alerts))

    async def close(self, grace_s: float = 2.0) -> None:
        if self.closed:
            return
        self.closed = True
        await self.head.drain_and_close()
        await self.notifiers.stop(grace_s)

    def notifier(self, name: str) -> Any:
        return next(n for n in self.notifiers.notifiers if n.config.name == name)


@asynccontextmanager
async def rig(tmp_path: Path, notify_toml: str,
              env: Mapping[str, str] | None = None) -> AsyncIterator[Rig]:
    db = tmp_path / "notify.db"
    config = parse_config(tomllib.loads(notify_toml))
    notifiers = await Notifiers.open(config.notify, db, environ=env or {})
    store = await SqliteStore.open(db)
    running = Rig(db, notifiers, store)
    try:
        yield running
    finally:
        await running.close()


def webhook_toml(url: str, name: str = "hook", extra: str = "") -> str:
    return (f'[notify.{name}]\ntype = "webhook"\nurl = "{url}/riskmon"\n'
            f'secret_env = "HOOK_SECRET"\n{FAST}{extra}')


def telegram_toml(url: str, name: str = "phone", extra: str = "") -> str:
    return (f'[notify.{name}]\ntype = "telegram"\nurl = "{url}"\n'
            f'bot_token_env = "TG_TOKEN"\nchat_id = -1001234\n{FAST}{extra}')


ENV = {"HOOK_SECRET": SECRET, "TG_TOKEN": TOKEN}


# -- content of each destination's requests ----------------------------------------------


async def test_webhook_posts_each_alert_as_spec_json_signed_with_hmac(tmp_path: Path) -> None:
    sent = [alert(1), alert(2, kind="stop_loss", level="normal",
                             payload={"rule": "guard", "orders": []})]
    async with FakeHttpServer() as server, \
            rig(tmp_path, webhook_toml(server.url), ENV) as running:
        await running.publish(sent)
        await server.wait_for(lambda r: len(r) == 2)
    for request, expected in zip(server.requests, sent, strict=True):
        assert (request.method, request.path) == ("POST", "/riskmon")
        assert request.body == expected.to_json()
        assert request.json() == expected.to_dict()
        assert request.headers["content-type"] == "application/json"
        assert request.headers["idempotency-key"] == expected.id
        assert request.headers["x-riskmon-message"] == "alert"
        timestamp = request.headers["x-riskmon-timestamp"]
        assert abs(int(timestamp) - time.time()) < 60
        mac = hmac.new(SECRET.encode(), timestamp.encode() + b"." + request.body,
                       hashlib.sha256).hexdigest()
        assert request.headers["x-riskmon-signature"] == f"sha256={mac}"


async def test_telegram_sends_a_short_text_per_alert_to_the_bot_api(tmp_path: Path) -> None:
    plan = alert(2, kind="deleverage_plan", level="deleverage", margin_ratio=0.987,
                 payload={"orders": [{"inst_id": "BTC-USDT-SWAP", "side": "sell", "size": 6.0,
                                      "reduce_only": True, "ord_type": "market",
                                      "pos_side": "net", "margin_mode": "cross"}],
                          "projected_margin_ratio": 1.021})
    isolated = alert(3, level="withdrawal_lock", from_level="warning", margin_ratio=1.19,
                     payload={"from": "warning", "to": "withdrawal_lock", "threshold": 1.2,
                              "margin_mode": "isolated", "side": "long",
                              "inst_id": "ETH-USDT-SWAP"})
    pool = alert(4, kind="reminder", level="liquidation", payload={"since_level":
                                                                   "liquidation",
                                                                   "pool": "USDT"})
    ok = Reply.json({"ok": True, "result": {"message_id": 1}})
    async with FakeHttpServer(lambda r: ok) as server, \
            rig(tmp_path, telegram_toml(server.url, extra="rate_per_s = 0\n"), ENV) as running:
        await running.publish([alert(1), plan, isolated, pool])
        await server.wait_for(lambda r: len(r) == 4)
    assert {r.path for r in server.requests} == {f"/bot{TOKEN}/sendMessage"}
    bodies = [r.json() for r in server.requests]
    assert all(b["chat_id"] == "-1001234" for b in bodies)
    texts = [b["text"] for b in bodies]
    assert "main: normal \u2192 warning, margin ratio 1.420 (threshold 1.50)" in texts[0]
    assert "deleverage plan at margin ratio 0.987: sell 6 BTC-USDT-SWAP (reduce-only" \
           " market); projected margin ratio 1.021" in texts[1]
    assert "main isolated ETH-USDT-SWAP (long): warning \u2192 withdrawal lock" in texts[2]
    assert texts[3].startswith("\U0001f6a8 main USDT pool: still in liquidation")
    assert all(len(t) < 300 and "\n" not in t for t in texts)


async def test_slack_and_discord_get_their_webhook_shapes(tmp_path: Path) -> None:
    stop = alert(1, kind="stop_loss", level="normal", payload={
        "rule": "guard_110", "metric": "im_coverage", "value": 1.0998, "below": 1.1,
        "dry_run": True, "orders": [{"inst_id": "BTC-USDT-SWAP", "side": "sell",
                                     "size": 100.0}, {"inst_id": "ETH-USDT-SWAP",
                                                      "side": "sell", "size": 100.0}]})
    async with FakeHttpServer(lambda r: Reply(200, b"ok")) as slack, \
            FakeHttpServer(lambda r: Reply(204)) as discord:
        toml = (f'[notify.team]\ntype = "slack"\nwebhook_url_env = "SLACK_URL"\n{FAST}'
                f'[notify.guild]\ntype = "discord"\nwebhook_url_env = "DISCORD_URL"\n{FAST}')
        env = {"SLACK_URL": f"{slack.url}/services/T0/B0/xyz",
               "DISCORD_URL": f"{discord.url}/api/webhooks/1/abc"}
        async with rig(tmp_path, toml, env) as running:
            await running.publish([stop])
            await slack.wait_for(lambda r: len(r) == 1)
            await discord.wait_for(lambda r: len(r) == 1)
    assert slack.requests[0].path == "/services/T0/B0/xyz"
    slack_body = slack.requests[0].json()
    assert list(slack_body) == ["text"]
    assert ("main: stop-loss guard_110 fired (im_coverage 1.100 below 1.1), dry run: sell 100"
            " BTC-USDT-SWAP, sell 100 ETH-USDT-SWAP (reduce-only market)") in slack_body["text"]
    discord_body = discord.requests[0].json()
    assert discord.requests[0].path == "/api/webhooks/1/abc"
    assert discord_body["allowed_mentions"] == {"parse": []}
    assert r"stop\-loss guard\_110 fired \(im\_coverage" in discord_body["content"]
    assert len(discord_body["content"]) <= 2000


async def test_alertmanager_fires_each_level_and_resolves_it_when_the_account_leaves_it(
        tmp_path: Path) -> None:
    down = alert(1, level="withdrawal_lock", from_level="normal")
    partly = alert(2, level="warning", from_level="withdrawal_lock")
    back = alert(3, level="normal", from_level="warning")
    stop = alert(4, kind="stop_loss", level="normal", payload={"rule": "guard", "orders": []})
    async with FakeHttpServer() as server:
        toml = f'[notify.oncall]\ntype = "alertmanager"\nurl = "{server.url}"\n{FAST}'
        async with rig(tmp_path, toml) as running:
            for item in (down, partly, back, stop):
                await running.publish([item])
                await server.wait_for(mentions(item))
    assert {r.path for r in server.requests} == {"/api/v2/alerts"}
    posted = [a for r in server.requests for a in r.json()]
    levels = [a for a in posted if a["labels"]["alertname"] == "RiskmonLevel"]
    by_level: dict[str, list[dict[str, Any]]] = {}
    for item in levels:
        assert item["labels"]["account"] == "main" and item["labels"]["pool"] == "account"
        by_level.setdefault(item["labels"]["level"], []).append(item)
    # normal -> withdrawal_lock fires both levels below normal at the change's event time.
    for level in ("warning", "withdrawal_lock"):
        fired = by_level[level][0]
        assert fired["startsAt"] == iso(down.ts)
        assert fired["endsAt"] > iso(time.time() * 1000)  # firing: ends in the future
    # Leaving withdrawal_lock for warning resolves it; leaving warning resolves that.
    assert by_level["withdrawal_lock"][1]["endsAt"] == iso(partly.ts)
    assert by_level["withdrawal_lock"][1]["startsAt"] == iso(down.ts)
    assert by_level["warning"][1]["endsAt"] == iso(back.ts)
    assert len(by_level["warning"]) == 2 and "deleverage" not in by_level
    event = next(a for a in posted if a["labels"]["alertname"] == "RiskmonStopLoss")
    assert event["labels"] == {"alertname": "RiskmonStopLoss", "account": "main",
                               "level": "normal", "pool": "account"}
    assert event["annotations"]["alert_id"] == stop.id
    assert "stop-loss guard" in event["annotations"]["summary"]


def mentions(item: Alert) -> Callable[[list[Received]], bool]:
    """A request has been received whose body names the alert's id."""
    return lambda requests: any(item.id in r.body.decode() for r in requests)


def iso(ms: float) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- retries ------------------------------------------------------------------------------


def script(*replies: Reply, then: Reply | None = None) -> Callable[[Received], Reply]:
    """The given replies in turn, then ``then`` (200 OK) for ever."""
    pending = list(replies)
    return lambda request: pending.pop(0) if pending else (then or Reply())


async def test_5xx_and_timeouts_are_retried_with_the_same_idempotency_key(
        tmp_path: Path) -> None:
    replies = script(Reply(503), Reply(500), Reply(delay_s=2.0), Reply(502))
    async with FakeHttpServer(replies) as server, \
            rig(tmp_path, webhook_toml(server.url, extra="timeout_s = 0.3\n"), ENV) as running:
        await running.publish([alert(1), alert(2)])
        await server.wait_for(lambda r: len(r) == 6)
        hook = running.notifier("hook")
        await wait_until(lambda: hook.deliveries == 2)
        assert hook.failures == 4
    keys = [r.headers["idempotency-key"] for r in server.requests]
    assert keys == [alert(1).id] * 5 + [alert(2).id]
    assert all(r.body == alert(1).to_json() for r in server.requests[:5])
    gaps = [b.at_s - a.at_s for a, b in zip(server.requests, server.requests[1:4], strict=False)]
    assert all(gap >= 0.02 for gap in gaps)  # backoff between attempts


async def test_telegram_flood_control_waits_what_it_asks(tmp_path: Path) -> None:
    flood = Reply.json({"ok": False, "error_code": 429, "description": "Too Many Requests",
                        "parameters": {"retry_after": 1}}, status=429)
    async with FakeHttpServer(script(flood, then=Reply.json({"ok": True}))) as server, \
            rig(tmp_path, telegram_toml(server.url), ENV) as running:
        await running.publish([alert(1)])
        await server.wait_for(lambda r: len(r) == 2)
    first, second = server.requests
    assert second.at_s - first.at_s >= 0.95
    assert first.body == second.body


async def wait_until(condition: Callable[[], bool], within_s: float = 20.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 (polled state of the notifier task)
            await asyncio.sleep(0.02)


# -- rate limit -----------------------------------------------------------------------------


async def test_a_burst_beyond_the_rate_collapses_into_one_summary(tmp_path: Path) -> None:
    burst = [alert(1, level="warning"), alert(2, level="withdrawal_lock", from_level="warning"),
             *(alert(n, kind="feed_stale", level="withdrawal_lock", account="desk",
                     payload={"inst_id": "BTC-USDT-SWAP", "age_ms": 10_500})
               for n in range(3, 9)),
             alert(9, level="liquidation", from_level="withdrawal_lock")]
    ok = Reply.json({"ok": True, "result": {}})
    async with FakeHttpServer(lambda r: ok) as server:
        toml = telegram_toml(server.url, extra="rate_per_s = 1\nburst = 2\n")
        async with rig(tmp_path, toml, ENV) as running:
            await running.publish(burst)
            await server.wait_for(lambda r: len(r) == 2)
            await asyncio.sleep(1.5)  # nothing more comes: the summary covered the rest
            assert len(server.requests) == 2
            await running.publish([alert(10, level="normal", from_level="liquidation")])
            await server.wait_for(lambda r: len(r) == 3)
    texts = [r.json()["text"] for r in server.requests]
    assert "normal \u2192 warning" in texts[0]
    summary = texts[1]
    assert summary.startswith("\u26a0\ufe0f 8 alerts from ")
    assert "worst level: liquidation" in summary
    assert "by kind: feed_stale 6, level_changed 2" in summary
    assert "by account: desk 6, main 2" in summary
    assert "latest: \U0001f6a8 main: withdrawal lock \u2192 liquidation" in summary
    # The summary waited for a token: the bucket held two, then refills at 1/s.
    assert server.requests[1].at_s - server.requests[0].at_s < 0.5
    assert "liquidation \u2192 normal" in texts[2]
    assert server.requests[2].at_s - server.requests[1].at_s >= 0.9


async def test_a_rate_limited_webhook_summary_carries_every_alert(tmp_path: Path) -> None:
    burst = [alert(n) for n in range(1, 6)]
    async with FakeHttpServer() as server:
        toml = webhook_toml(server.url, extra="rate_per_s = 0.5\nburst = 1\n")
        async with rig(tmp_path, toml, ENV) as running:
            await running.publish(burst[:1])
            await server.wait_for(lambda r: len(r) == 1)
            await running.publish(burst[1:])
            await server.wait_for(lambda r: len(r) == 2, within_s=5)
    summary = server.requests[1]
    assert summary.headers["x-riskmon-message"] == "summary"
    assert summary.headers["idempotency-key"] == f"summary:{burst[1].id}:{burst[4].id}"
    body = summary.json()
    assert body["alerts"] == [a.to_dict() for a in burst[1:]]
    assert body["summary"]["count"] == 4 and body["summary"]["worst_level"] == "warning"
    assert body["summary"]["by_kind"] == {"level_changed": 4}


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(2.0, 3, now_s=100.0)
    for _ in range(3):
        assert bucket.wait_s(100.0) == 0
        bucket.take(100.0)
    assert bucket.wait_s(100.0) == pytest.approx(0.5)
    assert bucket.tokens(100.25) == pytest.approx(0.5)
    assert bucket.tokens(200.0) == 3.0


# -- filters -------------------------------------------------------------------------------


def test_filters_keep_what_alertfilter_keeps_and_what_ends_it() -> None:
    keep = NotifyFilter(AlertFilter.of(["main"], ["level_changed", "feed_stale"], "deleverage"))
    assert keep.matches(alert(1, level="deleverage", from_level="withdrawal_lock"))
    assert not keep.matches(alert(1, level="warning"))
    assert not keep.matches(alert(1, level="deleverage", account="other"))
    # Leaving a level the filter keeps: the person told of it hears that it ended.
    assert keep.matches(alert(1, level="normal", from_level="liquidation"))
    assert not keep.matches(alert(1, level="normal", from_level="warning"))
    stale = {"inst_id": "X"}
    assert not keep.matches(alert(1, kind="feed_stale", level="normal", payload=stale))
    assert keep.matches(alert(1, kind="feed_recovered", level="deleverage", payload=stale))
    assert not keep.matches(alert(1, kind="reminder", level="liquidation"))


async def test_each_notifier_gets_only_what_its_filter_keeps(tmp_path: Path) -> None:
    sent = [alert(1, account="main"), alert(2, account="desk"),
            alert(3, kind="reminder", level="liquidation", account="main"),
            alert(4, level="deleverage", from_level="warning", account="main")]
    async with FakeHttpServer() as all_of_it, FakeHttpServer() as severe:
        toml = (webhook_toml(all_of_it.url, "everything")
                + webhook_toml(severe.url, "severe", 'accounts = ["main"]\n'
                               'kinds = ["level_changed"]\nmin_level = "deleverage"\n'))
        async with rig(tmp_path, toml, ENV) as running:
            await running.publish(sent)
            await all_of_it.wait_for(lambda r: len(r) == 4)
            await severe.wait_for(lambda r: len(r) == 1)
            await asyncio.sleep(0.3)
    assert [r.json()["id"] for r in all_of_it.requests] == [a.id for a in sent]
    assert [r.json()["id"] for r in severe.requests] == [sent[3].id]


# -- isolation --------------------------------------------------------------------------------


async def test_a_stuck_destination_delays_neither_the_store_nor_another_notifier(
        tmp_path: Path) -> None:
    stuck = True

    def hanging(request: Received) -> Reply:
        return Reply(hang=True) if stuck else Reply()

    sent = [alert(n) for n in range(1, 401)]
    ok = Reply.json({"ok": True, "result": {}})
    async with FakeHttpServer(hanging) as slow, FakeHttpServer(lambda r: ok) as phone:
        toml = (webhook_toml(slow.url, extra="timeout_s = 30\nqueue_size = 50\n")
                + telegram_toml(phone.url, extra="rate_per_s = 0\n"))
        async with rig(tmp_path, toml, ENV) as running:
            started = time.monotonic()
            for n in range(0, 400, 20):
                await running.publish(sent[n:n + 20])
            await phone.wait_for(lambda r: len(r) == 400)
            # The 400th request has arrived; its answer is counted a moment later.
            await wait_until(lambda: running.notifier("phone").deliveries == 400)
            elapsed = time.monotonic() - started
            assert await running.store.last_alert_seq() == 400  # all stored meanwhile
            assert len(slow.requests) == 1  # still waiting on its first answer
            hook = running.notifier("hook")
            assert hook.deliveries == 0 and hook.queue_depth <= 2 * 50  # queue + a page
            assert hook.lag_s(time.time()) > 0
            metrics = Metrics()
            running.notifiers.update_metrics(metrics, time.time())
            assert metrics.notifier_deliveries == {"hook": 0, "phone": 400}
            text = metrics.render(time.time())
            assert 'riskmon_notifier_deliveries_total{notifier="phone"} 400' in text
            assert 'riskmon_notifier_queue_depth{notifier="hook"}' in text
            # Unstuck: a second connection gets the next attempt (the first still hangs
            # until its timeout, so lower it by closing that connection).
            stuck = False
            await slow.close_connections()
            await slow.wait_for(lambda r: len({q.headers["idempotency-key"] for q in r})
                                == 400, within_s=30)
            await wait_until(lambda: hook.lag_s(time.time()) == 0 and hook.deliveries == 400)
    assert elapsed < 15
    received = [r.json()["id"] for r in slow.requests]
    # In store order; the one cut off mid-request came twice, with the same key and body.
    assert list(dict.fromkeys(received)) == [a.id for a in sent]
    assert len(received) - 400 <= 1


# -- restarts and the cursor ------------------------------------------------------------------


async def test_after_a_restart_what_was_stored_and_not_delivered_is_sent(
        tmp_path: Path) -> None:
    stuck = False

    def reply(request: Received) -> Reply:
        return Reply(hang=True) if stuck else Reply()

    async with FakeHttpServer(reply) as server:
        async with rig(tmp_path, webhook_toml(server.url), ENV) as running:
            await running.publish([alert(1), alert(2)])
            await server.wait_for(lambda r: len(r) == 2)
            stuck = True
            await running.publish([alert(3), alert(4)])
            await server.wait_for(lambda r: len(r) == 3)  # 3 is in flight
            await running.close(grace_s=0.2)  # gives up on 3: it stays in flight
        cursor = sqlite3.connect(tmp_path / "notify.db").execute(
            "SELECT delivered_seq, inflight_first_seq, inflight_last_seq FROM notifier_cursor"
        ).fetchall()
        assert cursor == [(2, 3, 3)]
        stuck = False
        async with rig(tmp_path, webhook_toml(server.url), ENV) as running:
            await server.wait_for(lambda r: len(r) == 5)
            await running.publish([alert(5)])
            await server.wait_for(lambda r: len(r) == 6)
    ids = [r.json()["id"] for r in server.requests]
    assert ids == [alert(n).id for n in (1, 2, 3, 3, 4, 5)]
    assert server.requests[2].body == server.requests[3].body
    assert server.requests[2].headers["idempotency-key"] == server.requests[3].headers[
        "idempotency-key"]


async def test_a_catch_up_reads_no_alert_the_notifier_has_not_been_passed(
        tmp_path: Path) -> None:
    # An urgent batch (adapters/sinks.py) is committed before it is synced and passed on:
    # a notifier catching up meanwhile must leave it to the live path, after the sync.
    db = tmp_path / "notify.db"
    async with FakeHttpServer() as server:
        async with rig(tmp_path, webhook_toml(server.url), ENV) as running:
            await running.publish([alert(1)])
            await server.wait_for(lambda r: len(r) == 1)
        store = await SqliteStore.open(db)
        await store.write_batch(alerts=[alert(2)])  # stored while no notifier ran
        config = parse_config(tomllib.loads(webhook_toml(server.url)))
        notifiers = await Notifiers.open(config.notify, db, environ=ENV)
        [unsynced] = await store.write_batch(alerts=[alert(3)], synced=False)
        notifiers.start()
        try:
            await server.wait_for(lambda r: len(r) == 2)
            await asyncio.sleep(0.3)
            assert [r.json()["id"] for r in server.requests] == [alert(1).id, alert(2).id]
            await store.sync()
            [notifier] = notifiers.notifiers
            await notifier.write(Batch.of(alerts=[alert(3)]).with_stored([unsynced]))
            await server.wait_for(lambda r: len(r) == 3)
            await asyncio.sleep(0.2)
        finally:
            await notifiers.stop(2.0)
            await store.close()
    assert [r.json()["id"] for r in server.requests] == [alert(n).id for n in (1, 2, 3)]


async def test_a_new_notifier_starts_at_the_newest_stored_alert(tmp_path: Path) -> None:
    async with FakeHttpServer() as server:
        async with rig(tmp_path, "", ENV) as running:
            await running.publish([alert(1), alert(2)])
        async with rig(tmp_path, webhook_toml(server.url), ENV) as running:
            await running.publish([alert(3)])
            await server.wait_for(lambda r: len(r) == 1)
            await asyncio.sleep(0.2)
    assert [r.json()["id"] for r in server.requests] == [alert(3).id]


async def test_a_queue_overflow_is_read_back_from_the_store_in_order(tmp_path: Path) -> None:
    gate = asyncio.Event()
    sent = [alert(n) for n in range(1, 121)]

    def reply(request: Received) -> Reply:
        return Reply(delay_s=0 if gate.is_set() else 0.5)

    async with FakeHttpServer(reply) as server, \
            rig(tmp_path, webhook_toml(server.url, extra="queue_size = 5\n"), ENV) as running:
        for n in range(0, 120, 10):
            await running.publish(sent[n:n + 10])
        gate.set()
        await server.wait_for(lambda r: len(r) == 120)
    assert [r.json()["id"] for r in server.requests] == [a.id for a in sent]


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(("toml", "key"), [
    ('[notify.x]\ntype = "pager"\n', "notify.x.type"),
    ('[notify.x]\ntype = "telegram"\nbot_token_env = "T"\n', "notify.x.chat_id"),
    ('[notify.x]\ntype = "telegram"\nbot_token_env = "T"\nchat_id = 1\nsecret_env = "S"\n',
     "notify.x.secret_env"),
    ('[notify.x]\ntype = "webhook"\nurl = "http://example.com/hook"\n', "notify.x.url"),
    ('[notify.x]\ntype = "webhook"\nurl = "https://h/x"\nkinds = ["level_change"]\n',
     "notify.x.kinds[0]"),
    ('[notify.x]\ntype = "webhook"\nurl = "https://h/x"\nmin_level = "bad"\n',
     "notify.x.min_level"),
    ('[notify.x]\ntype = "slack"\nwebhook_url_env = "U"\nrate_per_s = -1\n',
     "notify.x.rate_per_s"),
    ('[notify.x]\ntype = "slack"\nwebhook_url_env = "U"\nburst = 0\n', "notify.x.burst"),
    ('[notify.x]\ntype = "discord"\nwebhook_url_env = "U"\ncolour = 1\n', "notify.x.colour"),
    ('[notify.x]\ntype = "alertmanager"\nresend_interval_s = 0\n',
     "notify.x.resend_interval_s"),
    ('[notify."a b"]\ntype = "alertmanager"\n', "notify.a b"),
])
def test_configuration_errors_name_the_key(toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(toml))
    assert caught.value.key == key


def test_defaults_per_type() -> None:
    config = parse_config(tomllib.loads(
        '[notify.phone]\ntype = "telegram"\nbot_token_env = "T"\nchat_id = "@desk"\n'
        '[notify.oncall]\ntype = "alertmanager"\n'
        '[notify.team]\ntype = "slack"\nwebhook_url_env = "U"\nkinds = ["stop_loss"]\n'))
    phone, oncall, team = (config.notify[n] for n in ("phone", "oncall", "team"))
    assert (phone.url, phone.rate_per_s, phone.burst) == ("https://api.telegram.org", 1.0, 3)
    assert phone.chat_id == "@desk" and phone.min_level == "normal" and phone.kinds is None
    assert (oncall.url, oncall.rate_per_s, oncall.resend_interval_s) == (
        "http://127.0.0.1:9093", 0.0, 60.0)
    assert (team.rate_per_s, team.kinds) == (1.0, ("stop_loss",))


async def test_a_missing_secret_is_an_error_naming_the_key_never_the_value(
        tmp_path: Path) -> None:
    config = parse_config(tomllib.loads(
        '[notify.team]\ntype = "slack"\nwebhook_url_env = "SLACK_URL"\n'))
    with pytest.raises(ConfigError) as caught:
        await Notifiers.open(config.notify, tmp_path / "x.db", environ={})
    assert caught.value.key == "notify.team.webhook_url_env"
    plain = "http://hooks.example.com/services/SECRET-PATH"
    with pytest.raises(ConfigError) as caught:
        await Notifiers.open(config.notify, tmp_path / "x.db", environ={"SLACK_URL": plain})
    assert caught.value.key == "notify.team.webhook_url_env"
    assert "SECRET-PATH" not in str(caught.value)


def test_metrics_announce_the_notifier_families_with_no_notifier() -> None:
    text = Metrics().render(0.0)
    for name, kind in (("riskmon_notifier_deliveries_total", "counter"),
                       ("riskmon_notifier_failures_total", "counter"),
                       ("riskmon_notifier_lag_seconds", "gauge"),
                       ("riskmon_notifier_queue_depth", "gauge")):
        assert f"# TYPE {name} {kind}\n" in text
        assert f"# HELP {name} " in text


async def test_alertmanager_resends_what_fires_and_restores_it_after_a_restart(
        tmp_path: Path) -> None:
    async with FakeHttpServer() as server:
        toml = (f'[notify.oncall]\ntype = "alertmanager"\nurl = "{server.url}"\n'
                f'resend_interval_s = 0.3\n{FAST}')
        async with rig(tmp_path, toml) as running:
            await running.publish([alert(1, level="warning")])
            await server.wait_for(lambda r: len(r) >= 3)  # the alert, then re-sends
        resent = server.requests[-1].json()
        assert [a["labels"]["level"] for a in resent] == ["warning"]
        assert resent[0]["startsAt"] == iso(alert(1).ts)
        before = len(server.requests)
        async with rig(tmp_path, toml) as running:
            # Restored from the store: still firing, so re-sent without a new alert.
            await server.wait_for(lambda r: len(r) >= before + 1)
            assert server.requests[-1].json()[0]["labels"]["level"] == "warning"
            await running.publish([alert(2, level="normal", from_level="warning")])
            await server.wait_for(lambda r: any(alert(2).id in q.body.decode() for q in r))
            resolved = len(server.requests)
            await asyncio.sleep(0.8)
    assert len(server.requests) == resolved  # nothing fires any more: no re-send
    last = server.requests[resolved - 1].json()
    assert last[0]["endsAt"] == iso(alert(2).ts)


def test_a_reminder_while_the_risk_is_unknown_gives_no_ratio_as_the_truth() -> None:
    known = alert(1, kind="reminder", level="deleverage", margin_ratio=0.95,
                  payload={"since_level": "deleverage"})
    unknown = alert(2, kind="reminder", level="deleverage", margin_ratio=13.79,
                    payload={"since_level": "deleverage",
                             "risk_unknown": ["mark:ETH-USDT-SWAP"]})
    assert "still in deleverage, margin ratio 0.950" in alert_text(known)
    text = alert_text(unknown)
    assert "risk unknown, missing mark:ETH-USDT-SWAP" in text
    assert "13.79" not in text and "margin ratio" not in text


def test_an_exchange_margin_call_riskmon_does_not_bear_out_says_why() -> None:
    called = alert(1, kind="exchange_divergence", margin_ratio=10.8, payload={
        "fields": [], "tolerance": 0.05, "ours": 10.8, "theirs": None,
        "relative_difference": None, "margin_call": True,
        "reasons": ["level_normal", "position_unknown"], "positions": []})
    text = alert_text(called)
    assert "the exchange issued a margin call" in text
    assert "riskmon's level is normal; a position riskmon does not hold" in text
    # A pool's divergence still lists its fields.
    pool = alert(2, kind="exchange_divergence", payload={"fields": [
        {"field": "maint_margin", "ours": 1.0, "theirs": 2.0, "relative_difference": 0.5}]})
    assert "maint_margin ours 1 vs exchange 2" in alert_text(pool)


@pytest.mark.parametrize(("auth", "env", "expected"), [
    ('bearer_token_env = "AM_TOKEN"\n', {"AM_TOKEN": "am-Token-never-shown"},
     "Bearer am-Token-never-shown"),
    ('basic_auth_user = "tenant-7"\nbasic_auth_password_env = "AM_PASSWORD"\n',
     {"AM_PASSWORD": "am-Password-never-shown"},
     "Basic " + base64.b64encode(b"tenant-7:am-Password-never-shown").decode()),
], ids=["bearer", "basic"])
async def test_alertmanager_sends_its_credential_and_never_stores_it(
        tmp_path: Path, auth: str, env: dict[str, str], expected: str) -> None:
    down = alert(1, level="warning", from_level="normal")
    secret = next(iter(env.values()))
    # One failure, then delivered: the retry carries the credential as well.
    async with FakeHttpServer(script(Reply(500))) as server:
        toml = f'[notify.oncall]\ntype = "alertmanager"\nurl = "{server.url}"\n{auth}{FAST}'
        async with rig(tmp_path, toml, env) as running:
            await running.publish([down])
            await server.wait_for(lambda r: len(r) >= 2 and mentions(down)(r[1:]))
    assert [r.headers["authorization"] for r in server.requests[:2]] == [expected] * 2
    stored = files_bytes(tmp_path, "notify.db*")
    assert secret.encode() not in stored and expected.encode() not in stored


def files_bytes(directory: Path, pattern: str) -> bytes:
    """The contents of the files matching ``pattern`` (the database and its WAL)."""
    return b"".join(path.read_bytes() for path in sorted(directory.glob(pattern)))


@pytest.mark.parametrize(("toml", "key"), [
    ('bearer_token_env = "T"\nbasic_auth_user = "u"\nbasic_auth_password_env = "P"\n',
     "notify.x.bearer_token_env"),
    ('basic_auth_user = "u"\n', "notify.x.basic_auth_password_env"),
    ('basic_auth_password_env = "P"\n', "notify.x.basic_auth_user"),
    ('url = "http://alertmanager.internal:9093"\nbearer_token_env = "T"\n', "notify.x.url"),
])
def test_alertmanager_credentials_are_checked(toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(f'[notify.x]\ntype = "alertmanager"\n{toml}'))
    assert caught.value.key == key


async def test_an_alertmanager_credential_variable_must_be_set(tmp_path: Path) -> None:
    config = parse_config(tomllib.loads(
        '[notify.x]\ntype = "alertmanager"\nbasic_auth_user = "u"\n'
        'basic_auth_password_env = "AM_PASSWORD"\n'))
    with pytest.raises(ConfigError) as caught:
        await Notifiers.open(config.notify, tmp_path / "x.db", environ={})
    assert caught.value.key == "notify.x.basic_auth_password_env"
    # Without a credential, plain http to a private address stays allowed.
    parse_config(tomllib.loads(
        '[notify.x]\ntype = "alertmanager"\nurl = "http://alertmanager.internal:9093"\n'))


# -- riskmon's own storage failing ------------------------------------------------------------


async def test_a_lasting_storage_fault_and_its_end_are_told_once_to_every_notifier(
        tmp_path: Path) -> None:
    telegram_ok = Reply.json({"ok": True, "result": {"message_id": 1}})
    async with FakeHttpServer() as hook, FakeHttpServer(lambda r: telegram_ok) as phone, \
            FakeHttpServer() as oncall:
        toml = (webhook_toml(hook.url) + telegram_toml(phone.url)
                + f'[notify.oncall]\ntype = "alertmanager"\nurl = "{oncall.url}"\n{FAST}')
        async with rig(tmp_path, toml, ENV) as running:
            notifiers = running.notifiers
            since = time.time() - 5
            # Shorter than notice_after_s: nothing is said.
            notifiers.storage(Retrying(since, "database is locked", 3), 3, since + 1, 2.0)
            await asyncio.sleep(0.3)
            assert hook.requests == phone.requests == oncall.requests == []
            for now in (since + 2, since + 3, since + 4):  # told once, however often seen
                notifiers.storage(Retrying(since, "database is locked", 3), 3, now, 2.0)
            for server in (hook, phone, oncall):
                await server.wait_for(lambda r: len(r) == 1)
            notifiers.storage(None, 0, since + 9, 2.0)
            notifiers.storage(None, 0, since + 10, 2.0)
            for server in (hook, phone, oncall):
                await server.wait_for(lambda r: len(r) == 2)
            await asyncio.sleep(0.3)
    assert (len(hook.requests), len(phone.requests), len(oncall.requests)) == (2, 2, 2)
    failing, recovered = hook.requests
    assert failing.headers["x-riskmon-message"] == "notice"
    assert failing.json() == {"notice": {
        "kind": "storage_failing", "since_ts": int(since * 1000),
        "ts": int((since + 2) * 1000), "error": "database is locked", "waiting_records": 3}}
    assert recovered.json()["notice"]["kind"] == "storage_recovered"
    assert recovered.json()["notice"]["ts"] == int((since + 9) * 1000)
    assert failing.headers["idempotency-key"] != recovered.headers["idempotency-key"]
    mac = hmac.new(SECRET.encode(), failing.headers["x-riskmon-timestamp"].encode() + b"."
                   + failing.body, hashlib.sha256).hexdigest()
    assert failing.headers["x-riskmon-signature"] == f"sha256={mac}"
    texts = [r.json()["text"] for r in phone.requests]
    assert "cannot store alerts since" in texts[0] and "database is locked" in texts[0]
    assert "stores alerts again" in texts[1] and "for 9 s" in texts[1]
    fired, resolved = ([a for a in r.json()] for r in oncall.requests)
    assert fired[0]["labels"] == {"alertname": "RiskmonStorageFailing"}
    assert fired[0]["startsAt"] == iso(since * 1000)
    assert fired[0]["endsAt"] > iso(time.time() * 1000)
    assert resolved[0]["endsAt"] == iso((since + 9) * 1000)


async def test_a_storage_notice_waits_for_a_failing_destination_and_goes_first(
        tmp_path: Path) -> None:
    async with FakeHttpServer(script(Reply(503), Reply(503))) as hook, \
            rig(tmp_path, webhook_toml(hook.url), ENV) as running:
        since = time.time()
        running.notifiers.storage(Retrying(since, "disk I/O error", 1), 1, since + 60,
                                  30.0)
        await running.publish([alert(1)])  # stored meanwhile (say the lock came and went)
        await hook.wait_for(lambda r: len(r) == 4)
    kinds = [r.headers["x-riskmon-message"] for r in hook.requests]
    assert kinds == ["notice", "notice", "notice", "alert"]
