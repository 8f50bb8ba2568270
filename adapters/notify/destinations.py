"""The five destinations: what each request looks like and how each answer reads.

- ``webhook``: POST the alert's JSON (SPEC 2, :meth:`monitor.core.alerts.Alert.to_json`) to
  ``url``. Headers: ``Content-Type: application/json``; ``Idempotency-Key`` (the alert's
  id; a summary's ``summary:<first id>:<last id>``); ``X-Riskmon-Message`` (``alert`` or
  ``summary``); ``X-Riskmon-Timestamp`` (Unix seconds of this attempt); and, with
  ``secret_env``, ``X-Riskmon-Signature: sha256=<hex>``, the HMAC-SHA256 under the secret
  of ``<X-Riskmon-Timestamp> + "." + <body bytes>`` (so a receiver can also refuse old
  timestamps: a replayed request). A summary's body is ``{"summary": {count, by_kind,
  by_account, worst_level, first_id, last_id, from_ts, to_ts}, "alerts": [alert, ...]}``.
- ``telegram``: Bot API ``POST <url>/bot<token>/sendMessage`` with ``chat_id`` and a
  plain-text ``text`` (no parse mode, so nothing needs escaping); an answer whose ``ok``
  is not true fails, waiting ``parameters.retry_after`` when Telegram says so.
- ``slack``: an incoming webhook, ``{"text": ...}`` (``&``, ``<``, ``>`` escaped as Slack
  asks).
- ``discord``: a webhook, ``{"content": ..., "allowed_mentions": {"parse": []}}`` (no
  @-mention can ping anyone; Markdown characters escaped), at most 2,000 characters.
- ``alertmanager``: ``POST <url>/api/v2/alerts`` with a list of alerts, see
  :class:`Alertmanager`; with ``bearer_token_env`` or basic auth, an ``Authorization``
  header.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
import orjson

from adapters.notify.core import (
    DeliveryFailed,
    Message,
    Request,
    StorageNotice,
    default_response_check,
    retry_after_header,
)
from adapters.notify.text import (
    alert_text,
    storage_text,
    summary_counts,
    summary_text,
    truncate,
)
from monitor.core.alerts import LEVEL_RANK, LEVELS, Alert
from monitor.core.settings import NotifierConfig

TELEGRAM_TEXT_LIMIT: Final = 4096
SLACK_TEXT_LIMIT: Final = 3000
DISCORD_CONTENT_LIMIT: Final = 2000
JSON: Final = {"Content-Type": "application/json"}


def message_text(message: Message) -> str:
    alerts = [stored.alert for stored in message.alerts]
    return summary_text(alerts) if message.mode == "summary" else alert_text(alerts[0])


class ChatDestination:
    """Shared by Telegram, Slack and Discord: one text per message."""

    batches = False
    refresh_interval_s: float | None = None

    def __init__(self, url: str, secrets: tuple[str, ...]) -> None:
        self.url = url
        self.secrets = secrets

    def text(self, message: Message) -> str:
        return message_text(message)

    def body(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def build(self, message: Message, now_s: float) -> Request:
        return Request(self.url, orjson.dumps(self.body(self.text(message))), JSON)

    def notice(self, notice: StorageNotice, now_s: float) -> Request:
        return Request(self.url, orjson.dumps(self.body(storage_text(notice))), JSON)

    def check(self, response: httpx.Response) -> None:
        default_response_check(response)

    def delivered(self, message: Message) -> None:
        return None

    def refresh(self, now_s: float) -> Request | None:
        return None


class Telegram(ChatDestination):
    def __init__(self, base_url: str, token: str, chat_id: str) -> None:
        super().__init__(f"{base_url.rstrip('/')}/bot{token}/sendMessage", (token,))
        self.chat_id = chat_id

    def body(self, text: str) -> dict[str, Any]:
        return {"chat_id": self.chat_id, "text": truncate(text, TELEGRAM_TEXT_LIMIT),
                "link_preview_options": {"is_disabled": True}}

    def check(self, response: httpx.Response) -> None:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if 200 <= response.status_code < 300 and isinstance(answer, dict) and answer.get("ok"):
            return
        retry_after = None
        description = ""
        if isinstance(answer, dict):
            parameters = answer.get("parameters")
            if isinstance(parameters, dict) and isinstance(parameters.get("retry_after"),
                                                           int | float):
                retry_after = float(parameters["retry_after"])
            description = str(answer.get("description", ""))[:120]
        raise DeliveryFailed(f"HTTP {response.status_code} {description}".strip(),
                             retry_after or retry_after_header(response))


class Slack(ChatDestination):
    def body(self, text: str) -> dict[str, Any]:
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return {"text": truncate(escaped, SLACK_TEXT_LIMIT)}


_DISCORD_MARKDOWN = re.compile(r"([\\*_~`|>#\[\]()-])")


class Discord(ChatDestination):
    def body(self, text: str) -> dict[str, Any]:
        escaped = _DISCORD_MARKDOWN.sub(r"\\\1", text)
        return {"content": truncate(escaped, DISCORD_CONTENT_LIMIT),
                "allowed_mentions": {"parse": []}}

    def check(self, response: httpx.Response) -> None:
        if response.status_code == 429:
            retry_after = retry_after_header(response)
            try:
                answer = response.json()
                if isinstance(answer, dict) and isinstance(answer.get("retry_after"),
                                                           int | float):
                    retry_after = float(answer["retry_after"])
            except ValueError:
                pass
            raise DeliveryFailed("HTTP 429", retry_after)
        default_response_check(response)


class Webhook:
    """The generic webhook (module docstring)."""

    batches = False
    refresh_interval_s: float | None = None

    def __init__(self, url: str, secret: str | None) -> None:
        self.url = url
        self.secret = secret
        self.secrets: tuple[str, ...] = (secret,) if secret else ()

    def body(self, message: Message) -> bytes:
        """The alert's JSON, or ``{"summary": ..., "alerts": [...]}``: each alert's part is
        its JSON as encoded once for every follower (StoredAlert.json), spliced in, byte
        for byte what encoding the whole object would give."""
        if message.mode == "alert":
            return message.alerts[0].json
        counts = orjson.dumps(summary_counts([stored.alert for stored in message.alerts]))
        return b"".join([b'{"summary":', counts, b',"alerts":[',
                         b",".join([stored.json for stored in message.alerts]), b"]}"])

    def build(self, message: Message, now_s: float) -> Request:
        return self._request(self.body(message), message.key,
                             "alert" if message.mode == "alert" else "summary", now_s)

    def notice(self, notice: StorageNotice, now_s: float) -> Request:
        """``{"notice": {kind, since_ts, ts, error, waiting_records}}``, ``X-Riskmon-Message:
        notice``."""
        return self._request(orjson.dumps({"notice": notice.to_dict()}), notice.key, "notice",
                             now_s)

    def _request(self, body: bytes, key: str, kind: str, now_s: float) -> Request:
        timestamp = str(int(now_s))
        headers = {**JSON, "Idempotency-Key": key, "X-Riskmon-Message": kind,
                   "X-Riskmon-Timestamp": timestamp}
        if self.secret:
            headers["X-Riskmon-Signature"] = "sha256=" + signature(self.secret, timestamp,
                                                                   body)
        return Request(self.url, body, headers)

    def check(self, response: httpx.Response) -> None:
        default_response_check(response)

    def delivered(self, message: Message) -> None:
        return None

    def refresh(self, now_s: float) -> Request | None:
        return None


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``timestamp + "." + body`` under ``secret``."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body,
                    hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class _Firing:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str


class Alertmanager:
    """Prometheus Alertmanager, API v2 (``POST /api/v2/alerts``, a JSON list).

    Labels: ``alertname``, ``account``, ``level``, ``pool`` (``account``, a currency, or
    ``isolated:INST:SIDE``), and ``subject`` where one account can have several.

    - ``RiskmonLevel``: one alert per level below ``normal`` (``level`` label). Level L
      fires while the pool is at L or worse, from the ``level_changed`` that reached it
      (``startsAt`` its event time), and is resolved (``endsAt`` the event time) by the
      ``level_changed`` that leaves it for a better level. A jump over several levels
      fires or resolves each of them.
    - ``RiskmonFeedStale`` (``subject`` the missing item, ``mark:INST`` for a mark
      price) fires with ``feed_stale`` and is resolved by ``feed_recovered``;
      ``RiskmonFeedDisconnected`` (``subject`` the feed) fires with
      ``feed_disconnected`` and is resolved by ``feed_connected``.
    - Every other kind is one event: ``Riskmon`` + its kind in CamelCase
      (``RiskmonStopLoss``, ...), ``startsAt`` its event time and ``endsAt``
      ``event_duration_s`` later.
    - Firing alerts carry ``endsAt`` four resend intervals ahead and are sent again every
      ``resend_interval_s`` (Alertmanager's clients are expected to re-send what is still
      active), so they resolve by themselves if riskmon stops sending.

    Annotations: ``summary`` (the chat text of the alert), ``alert_id``, ``margin_ratio``.
    """

    batches = True

    def __init__(self, base_url: str, config: NotifierConfig,
                 authorization: str | None = None) -> None:
        self.url = f"{base_url.rstrip('/')}/api/v2/alerts"
        self.headers: Mapping[str, str] = JSON if authorization is None else {
            **JSON, "Authorization": authorization}
        # The header's value, and the credential in it, are scrubbed from any error text.
        self.secrets: tuple[str, ...] = () if authorization is None else (
            authorization, authorization.split(" ", 1)[1])
        self.refresh_interval_s: float | None = config.resend_interval_s
        self.event_duration_s = config.event_duration_s
        self.firing: dict[tuple[str, ...], _Firing] = {}

    def build(self, message: Message, now_s: float) -> Request:
        state = dict(self.firing)
        posts = []
        for stored in message.alerts:
            posts.extend(self._translate(stored.alert, state, now_s))
        return Request(self.url, orjson.dumps(posts), self.headers)

    def delivered(self, message: Message) -> None:
        for stored in message.alerts:
            self._translate(stored.alert, self.firing, 0.0)

    def restore(self, alert: Alert) -> None:
        """Fold an alert delivered before this start into what is firing."""
        self._translate(alert, self.firing, 0.0)

    def refresh(self, now_s: float) -> Request | None:
        if not self.firing:
            return None
        ends = _rfc3339(now_s + 4 * (self.refresh_interval_s or 0.0))
        posts = [{"labels": dict(f.labels), "annotations": dict(f.annotations),
                  "startsAt": f.starts_at, "endsAt": ends} for f in self.firing.values()]
        return Request(self.url, orjson.dumps(posts), self.headers)

    def check(self, response: httpx.Response) -> None:
        default_response_check(response)

    def notice(self, notice: StorageNotice, now_s: float) -> Request:
        """``RiskmonStorageFailing`` fires while riskmon's writes fail (re-sent with what
        fires) and is resolved when they work again."""
        key = ("RiskmonStorageFailing",)
        labels = {"alertname": "RiskmonStorageFailing"}
        annotations = {"summary": storage_text(notice), "error": notice.error,
                       "waiting_records": str(notice.waiting)}
        starts = _rfc3339(notice.since_s)
        if notice.failing:
            self.firing[key] = _Firing(labels, annotations, starts)
            ends = _rfc3339(now_s + 4 * (self.refresh_interval_s or 0.0))
        else:
            self.firing.pop(key, None)
            ends = _rfc3339(notice.at_s)
        return Request(self.url, orjson.dumps([{"labels": labels, "annotations": annotations,
                                                "startsAt": starts, "endsAt": ends}]),
                       self.headers)

    def _translate(self, alert: Alert, firing: dict[tuple[str, ...], _Firing],
                   now_s: float) -> list[dict[str, Any]]:
        """The Alertmanager alerts for one riskmon alert; updates ``firing``."""
        pool = _pool_label(alert)
        annotations = {"summary": alert_text(alert), "alert_id": alert.id,
                       "margin_ratio": "n/a" if alert.margin_ratio is None
                       else f"{alert.margin_ratio:.6g}"}
        at = _rfc3339(alert.ts / 1000)
        firing_ends = _rfc3339(now_s + 4 * (self.refresh_interval_s or 0.0))
        posts: list[dict[str, Any]] = []

        def fire(key: tuple[str, ...], labels: dict[str, str]) -> None:
            firing[key] = _Firing(labels, annotations, at)
            posts.append({"labels": labels, "annotations": annotations, "startsAt": at,
                          "endsAt": firing_ends})

        def resolve(key: tuple[str, ...], labels: dict[str, str]) -> None:
            known = firing.pop(key, None)
            if known is not None:
                labels, starts = dict(known.labels), known.starts_at
            else:
                starts = at
            posts.append({"labels": labels, "annotations": annotations, "startsAt": starts,
                          "endsAt": at})

        match alert.kind:
            case "level_changed":
                before = LEVEL_RANK[alert.from_level or "normal"]
                after = LEVEL_RANK[alert.level]
                for level in LEVELS[1:]:
                    rank = LEVEL_RANK[level]
                    key: tuple[str, ...] = ("RiskmonLevel", alert.account, pool, level)
                    labels = {"alertname": "RiskmonLevel", "account": alert.account,
                              "level": level, "pool": pool}
                    if before < rank <= after:
                        fire(key, labels)
                    elif after < rank <= before:
                        resolve(key, labels)
            case "feed_stale" | "feed_recovered":
                for item in _stale_subjects(alert):
                    key = ("RiskmonFeedStale", alert.account, item)
                    labels = {"alertname": "RiskmonFeedStale", "account": alert.account,
                              "level": alert.level, "pool": pool, "subject": item}
                    if alert.kind == "feed_stale":
                        fire(key, labels)
                    else:
                        resolve(key, labels)
            case "feed_disconnected" | "feed_connected":
                feed = str(alert.payload.get("feed", "feed"))
                key = ("RiskmonFeedDisconnected", alert.account, feed)
                labels = {"alertname": "RiskmonFeedDisconnected", "account": alert.account,
                          "level": alert.level, "pool": pool, "subject": feed}
                if alert.kind == "feed_disconnected":
                    fire(key, labels)
                else:
                    resolve(key, labels)
            case _:
                name = "Riskmon" + "".join(part.title() for part in alert.kind.split("_"))
                posts.append({
                    "labels": {"alertname": name, "account": alert.account,
                               "level": alert.level, "pool": pool},
                    "annotations": annotations, "startsAt": at,
                    "endsAt": _rfc3339(alert.ts / 1000 + self.event_duration_s)})
        return posts


STATEFUL_KINDS: Final = ("level_changed", "feed_stale", "feed_recovered", "feed_disconnected",
                         "feed_connected")
"""The kinds whose alerts change what is firing in Alertmanager (restored at start)."""


def _pool_label(alert: Alert) -> str:
    payload = alert.payload
    if payload.get("margin_mode") == "isolated":
        return f"isolated:{payload.get('inst_id') or alert.inst_id}:{payload.get('side', 'net')}"
    if isinstance(payload.get("pool"), str):
        return str(payload["pool"])
    return "account"


def _stale_subjects(alert: Alert) -> list[str]:
    """What a feed_stale names as missing, or what a feed_recovered says is back."""
    payload = alert.payload
    if isinstance(payload.get("inst_id"), str):
        return [f"mark:{payload['inst_id']}"]
    if alert.kind == "feed_recovered":
        recovered = payload.get("recovered")
        return [str(recovered)] if recovered is not None else []
    missing = payload.get("missing")
    return [str(item) for item in missing] if isinstance(missing, list) else []


def _rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
