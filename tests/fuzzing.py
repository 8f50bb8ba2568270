"""The bad-input fuzzer of issue 15: mutate real frames, check what riskmon makes of them.

Shared by the short run in CI (tests/test_fuzz_input.py, hypothesis) and the long one
(tests/long/fuzz_input.py). The seeds are real: the lines of examples/story.jsonl (the
bundled recording, public and private frames and REST bodies) and the OKX payloads of
tests/fixtures/okx (REST bodies and websocket pushes captured from OKX or its docs).

A mutation takes one seed and changes it the way bad input comes: a value replaced by
another type, a different magnitude, a NaN / inf / exponent / padded spelling, unicode or a
NUL byte; a key removed or given twice (JSON allows duplicates, the last one wins); a value
nested deep; a time moved by seconds to centuries (``ts``, ``uTime``, ``recv_ts``); or the
bytes of the line cut, doubled or garbled.

Two checks (:func:`check_decoder`, :func:`check_line`):

- the decoder raises nothing but BadInput, whatever it is given;
- a mutated line of the story, replayed in place of the original: when it is quarantined
  (by the decoder or the engine), the engine's state and the alerts are identical to those of
  the run without the line at all; when it is accepted, every event it gave is plausible by
  the documented bounds (adapters/okx/decode.py, monitor/core/engine.py), and it moved the clock
  at most ``bounds.max_ahead_s``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from adapters.okx.decode import OkxDecoder, RestPath
from monitor.app.config import load_config
from monitor.core.engine import MarginEngine
from monitor.core.errors import BadInput
from monitor.core.events import (
    BalanceUpdate,
    Event,
    IndexPrice,
    MarkPrice,
    OrdersSnapshot,
    OrderUpdate,
    PositionSnapshot,
    PositionUpdate,
    identifier_problem,
)
from monitor.core.settings import Config
from monitor.runtime.pipeline import LineProcessor

ROOT = Path(__file__).resolve().parent.parent
STORY = ROOT / "examples" / "story.jsonl"
STORY_CONFIG = ROOT / "examples" / "riskmon.toml"
FIXTURES = ROOT / "tests" / "fixtures" / "okx"

# The decoder's documented limits (adapters/okx/decode.py, module docstring).
PRICE_MIN, PRICE_MAX = 1e-12, 1e12
MAGNITUDE_LIMIT = 1e18
HOUR_MS = 3_600_000
YEAR_MS = 365 * 24 * HOUR_MS

# Replacement values, by what they try.
TYPE_CHANGES: list[Any] = [None, True, False, 0, -1, 1.5, [], {}, [1], {"a": 1}, "", "x"]
MAGNITUDES = ["1e308", "1e-320", "10000000000000000000", "1e3", "-1", "0", "0.0",
              "0.000000000000001", "99999999999999999999999", "-0", "1e15", "5e-324"]
SPELLINGS = [" 1 ", "1_000", "+1", "1e3", "1E3", "inf", "-inf", "Infinity", "nan", "NaN",
             "0x10", "1.", ".5", "١٢٣", "1\x00", "", " ", "1,5", "--1", "1e", "0b1"]
TEXTS = ["BTC\x00-USDT-SWAP", "\x00", "BTC-USDT-SWAP\n", "\u202eBTC", "é", "\uff22\uff34\uff23",
         "A" * 65, "A" * 5000, "\ud800", "BTC USDT", " BTC-USDT-SWAP", "\x7f", "\t"]
TIME_SHIFTS_MS = [-HOUR_MS, -1_000, 1, 59_000, 61_000, HOUR_MS, YEAR_MS, 100 * YEAR_MS]
TIMESTAMPS: list[Any] = [2**63, 2**63 - 1, 2**64, -1, "9223372036854775808",
                         "99999999999999999999", "-1", "1e12", "1767225600000.5",
                         # 1767225600000 in fullwidth digits
                         "".join(chr(0xFF10 + int(d)) for d in "1767225600000"),
                         "+1767225600000", " 1767225600000", 0, "0"]
TIME_KEYS = frozenset({"ts", "uTime", "pTime", "cTime", "recv_ts"})


@dataclass(frozen=True)
class Seed:
    """A payload to mutate: a line of the story, or a fixture with how to decode it."""

    name: str
    value: Any  # the parsed JSON
    kind: str  # "line", "frame" or "rest"
    path: str = ""  # the REST path of a "rest" seed


def story_lines() -> list[bytes]:
    return STORY.read_bytes().splitlines(keepends=True)


def story_config() -> Config:
    return load_config(STORY_CONFIG)


def fixture_seeds() -> list[Seed]:
    """The OKX payloads of tests/fixtures/okx, each with the way it is decoded."""
    paths = [("account_config", RestPath.ACCOUNT_CONFIG), ("discount_rate", RestPath.DISCOUNT_RATE),
             ("instruments", RestPath.INSTRUMENTS),
             ("position_tiers_margin", f"{RestPath.POSITION_TIERS}?instType=MARGIN&ccy=BTC"),
             ("balance", RestPath.BALANCE), ("positions", RestPath.POSITIONS),
             ("position_", RestPath.POSITIONS)]
    seeds = []
    for file in sorted(FIXTURES.glob("*.json")):
        value = json.loads(file.read_text())
        if "_ws_" in file.name:
            seeds.append(Seed(file.name, value, "frame"))
            continue
        path = next((p for key, p in paths if key in file.name), RestPath.BALANCE)
        seeds.append(Seed(file.name, value, "rest", path))
    return seeds


# --- mutations ------------------------------------------------------------------------------


def _places(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) in a JSON value, containers included."""
    yield path, value
    if type(value) is dict:
        for key, item in value.items():
            yield from _places(item, (*path, key))
    elif type(value) is list:
        for index, item in enumerate(value):
            yield from _places(item, (*path, index))


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if type(value) is dict:
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(value[head], rest, new)
    return copy


def _remove(value: Any, path: tuple[Any, ...]) -> Any:
    head, rest = path[0], path[1:]
    if rest:
        return _replace(value, (head,), _remove(value[head], rest))
    if type(value) is dict:
        return {key: item for key, item in value.items() if key != head}
    return [item for index, item in enumerate(value) if index != head]


def _emit(value: Any, duplicate: tuple[tuple[Any, ...], str, Any] | None = None,
          path: tuple[Any, ...] = ()) -> str:
    """JSON text of ``value``; with ``duplicate`` (object path, key, value) that object gets
    the key a second time, after its own."""
    if type(value) is dict:
        pairs = [f"{json.dumps(key)}:{_emit(item, duplicate, (*path, key))}"
                 for key, item in value.items()]
        if duplicate is not None and duplicate[0] == path:
            pairs.append(f"{json.dumps(duplicate[1])}:{_emit(duplicate[2])}")
        return "{" + ",".join(pairs) + "}"
    if type(value) is list:
        return "[" + ",".join(_emit(item, duplicate, (*path, index))
                              for index, item in enumerate(value)) + "]"
    return json.dumps(value)


def _shift_time(raw: Any, shift_ms: int) -> Any:
    if type(raw) is int:
        return raw + shift_ms
    if type(raw) is str and raw.isdecimal():
        return str(int(raw) + shift_ms)
    return raw


def mutate_value(value: Any, rng: random.Random) -> tuple[str, str]:
    """One mutation of a JSON value: (what was done, the JSON text)."""
    places = list(_places(value))
    leaves = [(path, item) for path, item in places
              if path and type(item) is not dict and type(item) is not list]
    keyed = [(path, item) for path, item in places if path and type(path[-1]) is str]
    kind = rng.choice(["type", "magnitude", "spelling", "text", "scale", "time", "timestamp",
                       "remove", "duplicate", "nest", "shift_all"])
    if kind in ("type", "magnitude", "spelling", "text", "scale", "timestamp") and leaves:
        path, item = rng.choice(leaves)
        if kind == "type":
            new: Any = rng.choice(TYPE_CHANGES)
        elif kind == "magnitude":
            new = rng.choice(MAGNITUDES)
        elif kind == "spelling":
            new = rng.choice(SPELLINGS)
        elif kind == "text":
            new = rng.choice(TEXTS)
        elif kind == "timestamp":
            new = rng.choice(TIMESTAMPS)
        else:
            try:
                number = float(item)
            except (TypeError, ValueError):
                number = 1.0
            factor = rng.choice([1e-9, 1e-3, 0.1, 0.45, 0.99, 1.001, 1.9, 2.5, 10.0, 1e3, 1e9])
            new = f"{number * factor:.10f}".rstrip("0").rstrip(".")
        return f"{kind} {path[-1]}", _emit(_replace(value, path, new))
    if kind == "time":
        times = [(path, item) for path, item in places if path and path[-1] in TIME_KEYS]
        if times:
            path, item = rng.choice(times)
            shift = rng.choice(TIME_SHIFTS_MS)
            shifted = _replace(value, path, _shift_time(item, shift))
            return f"time {path[-1]} {shift:+}", _emit(shifted)
    if kind == "shift_all":
        # A time jump of the whole line: receive time and event times together.
        shift = rng.choice(TIME_SHIFTS_MS)
        shifted = value
        for path, item in places:
            if path and path[-1] in TIME_KEYS:
                shifted = _replace(shifted, path, _shift_time(item, shift))
        return f"shift_all {shift:+}", _emit(shifted)
    if kind == "remove" and keyed:
        path, _ = rng.choice(keyed)
        return f"remove {path[-1]}", _emit(_remove(value, path))
    if kind == "duplicate" and keyed:
        path, item = rng.choice(keyed)
        new = rng.choice([*TYPE_CHANGES, *MAGNITUDES, *TEXTS[:4]])
        return f"duplicate {path[-1]}", _emit(value, (path[:-1], path[-1], new))
    # Nesting: a value wrapped in lists, up to beyond what orjson reads (1024) or writes (255).
    path, item = rng.choice(places)
    depth = rng.choice([2, 100, 254, 256, 600, 1023, 1025, 5000])
    marker = "\x00nest\x00"
    text = _emit(_replace(value, path, marker))
    nested = "[" * depth + _emit(item) + "]" * depth
    return f"nest {depth}", text.replace(json.dumps(marker), nested, 1)


def mutate_bytes(line: bytes, rng: random.Random) -> tuple[str, bytes]:
    """A mutation of the bytes of a line: cut, doubled, a byte changed or inserted."""
    kind = rng.choice(["cut", "double", "byte", "nul", "utf8"])
    at = rng.randrange(max(1, len(line)))
    if kind == "cut":
        return "bytes cut", line[:at]
    if kind == "double":
        return "bytes doubled", line.rstrip(b"\n") + line
    if kind == "nul":
        return "bytes nul", line[:at] + b"\x00" + line[at:]
    if kind == "utf8":
        return "bytes utf8", line[:at] + b"\xff\xfe" + line[at:]
    return "bytes changed", line[:at] + bytes([rng.randrange(256)]) + line[at + 1:]


def mutate_line(line: bytes, rng: random.Random) -> tuple[str, bytes]:
    """A mutation of one recording line (its JSON, mostly; sometimes its bytes)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        value = None
    if value is None or rng.random() < 0.1:
        return mutate_bytes(line, rng)
    what, text = mutate_value(value, rng)
    return what, text.encode("utf-8", "surrogatepass") + b"\n"


# --- checks ---------------------------------------------------------------------------------


class Failure(AssertionError):
    """A fuzz trial found a defect: the message says which and with what input."""


def decode_any(decoder: OkxDecoder, seed: Seed, text: str) -> list[Event]:
    """Decode mutated text the way its seed is decoded; BadInput passes through."""
    if seed.kind == "line":
        return decoder.decode_line(text.encode("utf-8", "surrogatepass"))
    if seed.kind == "frame":
        try:
            frame = orjson.loads(text.encode("utf-8", "surrogatepass"))
        except orjson.JSONDecodeError:
            return decoder.decode_message(text, "main", 1_767_225_600_000)
        return decoder.decode_frame(frame, "main", 1_767_225_600_000)
    try:
        body = orjson.loads(text.encode("utf-8", "surrogatepass"))
    except orjson.JSONDecodeError:
        body = text
    return decoder.decode_rest(seed.path, body, "main", 1_767_225_600_000)


def check_decoder(seed: Seed, rng: random.Random) -> str:
    """Mutate a seed, decode it: anything but BadInput escaping is a failure. Returns
    "accepted" or the quarantine reason."""
    what, text = mutate_value(seed.value, rng)
    decoder = OkxDecoder()
    try:
        decode_any(decoder, seed, text)
    except BadInput as e:
        return e.reason
    except Exception as e:  # the point of the check
        raise Failure(f"{type(e).__name__}: {e} escaped the decoder on {seed.name} "
                      f"({what}): {text[:300]!r}") from e
    return "accepted"


@dataclass
class Run:
    """One replay of the story: its final state, alerts and what the mutated line did."""

    state: dict[str, Any]
    alerts: list[bytes]
    quarantined: list[str] = field(default_factory=list)
    accepted_events: list[Event] = field(default_factory=list)
    clock_before: int = 0
    clock_after: int = 0
    marks_before: dict[str, float] = field(default_factory=dict)
    index_before: dict[tuple[str, str], float] = field(default_factory=dict)


def replay(lines: list[bytes], config: Config, watched: int | None = None) -> Run:
    """Replay ``lines`` through the replay's own LineProcessor; note what line ``watched``
    (an index into ``lines``) gave and did."""
    engine = MarginEngine(config)
    decoder = OkxDecoder()
    seen: list[Event] = []

    def decode(line: bytes) -> list[Event]:
        events = decoder.decode_line(line)
        seen.extend(events)
        return events

    processor = LineProcessor(engine, decode, "fuzz")
    run = Run({}, [])
    reasons: list[str] = []
    quarantine = processor.quarantine

    def note(source: str, reason: str, raw: bytes | str, recv_ms: int | None = None) -> None:
        reasons.append(reason)
        quarantine(source, reason, raw, recv_ms)

    processor.quarantine = note  # type: ignore[method-assign]
    alerts: list[bytes] = []
    for index, line in enumerate(lines):
        if index == watched:
            run.clock_before = engine.now_ms
            run.marks_before = dict(engine.marks)
            run.index_before = dict(engine.index_prices)
            seen.clear()
            reasons.clear()
            processor.feed_chunk([line], index + 1)
            run.clock_after = engine.now_ms
            if reasons:
                run.quarantined = list(reasons)
            else:
                run.accepted_events = list(seen)
        else:
            processor.feed_chunk([line], index + 1)
    processor.finish()
    alerts.extend(processor.take().alert_json)
    run.alerts = alerts
    run.state = engine.state()
    return run


def _implausible(event: Event, run: Run, config: Config) -> str | None:
    """Why an accepted event breaks a documented bound, or None."""
    bounds = config.bounds
    ahead_ms = int(bounds.max_ahead_s * 1000)
    if event.event_ms - event.recv_ms > ahead_ms:
        return f"event time {event.event_ms} is beyond its receive time {event.recv_ms}"
    identifiers: list[str] = []
    numbers: list[float | None] = []
    if isinstance(event, MarkPrice | IndexPrice):
        if not PRICE_MIN <= event.price <= PRICE_MAX:
            return f"price {event.price!r} outside [{PRICE_MIN}, {PRICE_MAX}]"
        if isinstance(event, MarkPrice):
            identifiers.append(event.inst_id)
            reference = run.marks_before.get(event.inst_id)
        else:
            identifiers += [event.base, event.quote]
            reference = run.index_before.get((event.base, event.quote))
        if reference is not None and not (reference / bounds.price_band <= event.price
                                          <= reference * bounds.price_band):
            return f"price {event.price!r} out of the band around {reference!r}"
    elif isinstance(event, OrderUpdate):
        order = event.order
        identifiers += [event.account, order.order_id, order.inst_id]
        numbers += [order.size, order.filled, order.leverage, order.price]
        if order.price is not None and not PRICE_MIN <= order.price <= PRICE_MAX:
            return f"order price {order.price!r} outside the price bounds"
    elif isinstance(event, OrdersSnapshot):
        identifiers.append(event.account)
        for order in event.orders:
            identifiers += [order.order_id, order.inst_id]
            numbers += [order.size, order.filled, order.price]
    elif isinstance(event, PositionUpdate | PositionSnapshot):
        identifiers.append(event.account)
        for position in event.positions:
            identifiers.append(position.inst_id)
            numbers += [position.contracts, position.avg_price, position.leverage,
                        position.margin]
    elif isinstance(event, BalanceUpdate):
        identifiers.append(event.account)
        for balance in event.balances:
            identifiers.append(balance.currency)
            numbers += [balance.cash, balance.liability, balance.interest]
    for identifier in identifiers:
        problem = identifier_problem(identifier)
        if problem is not None:
            return f"identifier {identifier!r} {problem}"
    for number in numbers:
        if number is not None and not -MAGNITUDE_LIMIT <= number <= MAGNITUDE_LIMIT:
            return f"number {number!r} beyond the magnitude limit"
    return None


@dataclass
class Outcome:
    """What one line trial found: "accepted", or the quarantine reason."""

    what: str
    verdict: str


def check_line(lines: list[bytes], config: Config, baseline: Run, index: int,
               rng: random.Random) -> Outcome:
    """Mutate line ``index`` of ``lines`` and replay: see the module docstring.
    ``baseline`` is the replay of ``lines`` without line ``index`` (:class:`Baselines`)."""
    what, mutated = mutate_line(lines[index], rng)
    trial = [*lines[:index], mutated, *lines[index + 1:]]
    try:
        run = replay(trial, config, watched=index)
    except Exception as e:  # the point of the check
        raise Failure(f"{type(e).__name__}: {e} escaped the replay on line {index + 1} "
                      f"({what}): {mutated[:300]!r}") from e
    if run.quarantined:
        if run.state != baseline.state or run.alerts != baseline.alerts:
            raise Failure(f"quarantined line {index + 1} ({what}: {run.quarantined[0]}) "
                          f"changed the state or the alerts: {mutated[:300]!r}")
        return Outcome(what, run.quarantined[0])
    for event in run.accepted_events:
        problem = _implausible(event, run, config)
        if problem is not None:
            raise Failure(f"accepted line {index + 1} ({what}) is implausible: {problem}: "
                          f"{mutated[:300]!r}")
    ahead_ms = int(config.bounds.max_ahead_s * 1000)
    if run.clock_before > 0 and run.clock_after - run.clock_before > ahead_ms:
        raise Failure(f"accepted line {index + 1} ({what}) moved the clock "
                      f"{run.clock_after - run.clock_before} ms: {mutated[:300]!r}")
    return Outcome(what, "accepted")


class Baselines:
    """The replay of the story without each line, computed once per line index."""

    def __init__(self, lines: list[bytes], config: Config) -> None:
        self.lines = lines
        self.config = config
        self._runs: dict[int, Run] = {}

    def without(self, index: int) -> Run:
        run = self._runs.get(index)
        if run is None:
            run = replay([*self.lines[:index], *self.lines[index + 1:]], self.config)
            self._runs[index] = run
        return run


