"""Notifiers in the real daemon: ``riskmon run`` against ``riskmon replay-server`` on the
bundled story, with a webhook receiver, a Telegram-shaped API and a stuck Alertmanager on
loopback (tests/http_fakes.py). The daemon is killed with SIGKILL mid-story and started
again on the same database: every stored alert reaches the webhook, in store order, and a
duplicate is only the message that was in flight at the kill, with the same key."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from pathlib import Path

from monitor.core.alerts import LEVEL_RANK
from tests.http_fakes import FakeHttpServer, Received, Reply
from tests.live_harness import (
    LIVE_ENV,
    PASSPHRASE,
    SECRET,
    STORY,
    Process,
    delivered_when_done,
    engine_alerts,
    http_get,
    live_config,
    replay_outputs,
    running,
)

HOOK_SECRET = "hook-Secret-never-in-a-log"
TG_TOKEN = "987654:tg-Token-never-in-a-log"
ENV = {**LIVE_ENV, "RISKMON_HOOK_SECRET": HOOK_SECRET, "RISKMON_TG_TOKEN": TG_TOKEN}
SPEED = "50"


def notify_config(tmp_path: Path, server_port: int, hook: str, telegram: str,
                  alertmanager: str) -> Path:
    path = live_config(tmp_path, server_port)
    # Keep alerts of any age: the story is older than the default retention, and the
    # restarted daemon would prune what the first one stored.
    text = path.read_text().replace("[storage]\n", "[storage]\nretention_days = 36500\n")
    text += f"""
[notify.hook]
type = "webhook"
url = "{hook}/riskmon"
secret_env = "RISKMON_HOOK_SECRET"
backoff_initial_s = 0.1
backoff_max_s = 0.5

[notify.phone]
type = "telegram"
url = "{telegram}"
bot_token_env = "RISKMON_TG_TOKEN"
chat_id = 42
min_level = "warning"

[notify.oncall]
type = "alertmanager"
url = "{alertmanager}"
timeout_s = 1
"""
    path.write_text(text)
    return path


def covered(request: Received) -> int:
    """How many alerts a Telegram message stands for (a summary says how many)."""
    found = re.match(r"\S+ (\d+) alerts from ", request.json()["text"])
    return int(found.group(1)) if found else 1


async def test_every_stored_alert_is_delivered_across_a_kill_and_restart(
        tmp_path: Path) -> None:
    expected, _ = await asyncio.to_thread(replay_outputs, tmp_path)
    slow_ok = Reply(delay_s=0.3)  # a message is in flight most of the time
    telegram_ok = Reply.json({"ok": True, "result": {"message_id": 1}})
    db = tmp_path / "daemon.db"
    logs: list[str] = []
    async with FakeHttpServer(lambda r: slow_ok) as hook, \
            FakeHttpServer(lambda r: telegram_ok) as telegram, \
            FakeHttpServer(lambda r: Reply(hang=True)) as alertmanager:

        def start(server_port: int) -> Process:
            config = notify_config(tmp_path, server_port, hook.url, telegram.url,
                                   alertmanager.url)
            return Process(["run", "--config", str(config)], env=ENV)

        with running(["replay-server", str(STORY), "--port", "0", "--speed", SPEED]) as server:
            port = (await asyncio.to_thread(server.wait_status, "listening"))["port"]
            daemon = start(port)
            try:
                await asyncio.to_thread(daemon.wait_status, "listening")
                await hook.wait_for(lambda r: len(r) >= 4, within_s=60)
            finally:
                daemon.popen.kill()  # SIGKILL: no drain, no cursor saved at exit
                await asyncio.to_thread(daemon.popen.wait)
                daemon.close()
                logs += daemon.stderr_lines
        before_restart = len(hook.requests)
        with running(["replay-server", str(STORY), "--port", "0", "--speed", SPEED]) as server:
            port = (await asyncio.to_thread(server.wait_status, "listening"))["port"]
            daemon = start(port)
            try:
                http_port = (await asyncio.to_thread(daemon.wait_status, "listening"))["port"]
                stored = await delivered_when_done(hook, server, http_port, db)
                await asyncio.sleep(1.5)  # Telegram's rate limit: the last summary
                _, metrics = await asyncio.to_thread(http_get, http_port, "/metrics")
                assert await asyncio.to_thread(daemon.terminate) == 0
            finally:
                if daemon.popen.poll() is None:
                    daemon.popen.kill()
                daemon.close()
                logs += daemon.stderr_lines

    # The pipeline stored everything while Alertmanager never answered.
    assert engine_alerts(stored) == engine_alerts(expected)
    assert alertmanager.requests  # it was tried (and retried)

    # The webhook: every stored alert, as stored, in store order, each signed.
    keys = [r.headers["idempotency-key"] for r in hook.requests]
    assert list(dict.fromkeys(keys)) == [a["id"] for a in stored]
    by_id = {a["id"]: a for a in stored}
    for request in hook.requests:
        assert request.json() == by_id[request.headers["idempotency-key"]]
        mac = hmac.new(HOOK_SECRET.encode(), request.headers["x-riskmon-timestamp"].encode()
                       + b"." + request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-riskmon-signature"] == f"sha256={mac}"
    duplicates = len(keys) - len(set(keys))
    assert duplicates <= 1  # only the message in flight at the kill
    assert 4 <= before_restart < len(hook.requests)

    # Telegram: every alert at warning or worse (and the way back) in a message or summary.
    wanted = [a for a in stored if LEVEL_RANK[a["level"]] >= LEVEL_RANK["warning"]
              or (a["kind"] == "level_changed" and a["from_level"] is not None
                  and LEVEL_RANK[a["from_level"]] >= LEVEL_RANK["warning"])]
    assert wanted
    assert sum(covered(r) for r in telegram.requests) >= len(wanted)
    assert all(r.path == f"/bot{TG_TOKEN}/sendMessage" for r in telegram.requests)
    assert all(r.json()["chat_id"] == "42" for r in telegram.requests)
    assert any("liquidation \u2192 normal" in r.json()["text"] for r in telegram.requests)

    text = metrics.decode()
    assert re.search(r'riskmon_notifier_deliveries_total\{notifier="hook"\} [1-9]', text)
    assert re.search(r'riskmon_notifier_failures_total\{notifier="oncall"\} [1-9]', text)
    assert re.search(r'riskmon_notifier_lag_seconds\{notifier="hook"\} 0\n', text)

    # No secret in any log line or in the database.
    secrets = (HOOK_SECRET, TG_TOKEN, SECRET, PASSPHRASE)
    everything = "\n".join(logs)
    database = await asyncio.to_thread(
        lambda: b"".join(p.read_bytes() for p in tmp_path.glob("daemon.db*")))
    for secret in secrets:
        assert secret not in everything
        assert secret.encode() not in database
