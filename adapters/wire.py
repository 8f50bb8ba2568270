"""Reading numbers, timestamps and identifiers off the wire: the field readers the venues'
decoders share (adapters/<venue>/decode.py; issue 15, "bad input never moves state").

Every reader raises :class:`BadInput` with a reason that names the field and shows the bad
value cut short (:func:`show`), never the whole frame.

- Numbers are read only from their canonical decimal spelling, as the venues write them
  (``"42133.7"``, ``"-0.5"``, ``"0"``): no spaces, signs other than a leading ``-``,
  underscores, exponents, ``inf`` or ``nan``, at most :data:`NUMBER_LENGTH` characters.
  JSON numbers are taken as parsed. Every number is finite with a magnitude of at most
  :data:`MAGNITUDE_LIMIT` (1e18).
- Prices lie in [:data:`PRICE_MIN`, :data:`PRICE_MAX`] = [1e-12, 1e12].
- Timestamps are whole milliseconds in [0, :data:`TIMESTAMP_MAX_MS`] (the year 2200),
  written with ASCII digits or as a JSON integer.
- Identifiers are printable ASCII, at most :data:`IDENTIFIER_LENGTH_LIMIT` characters.

Pure: no I/O, no clock (compiled with the decoders, setup.py).
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import fields
from typing import Any, Final, Literal

from monitor.core.errors import BadInput
from monitor.core.events import IDENTIFIER_LENGTH, MarkPrice, identifier_problem

Bound = Literal["any", "non_negative", "positive", "price"]

PRICE_MIN: Final = 1e-12
PRICE_MAX: Final = 1e12
MAGNITUDE_LIMIT: Final = 1e18
NUMBER_LENGTH: Final = 40
TIMESTAMP_MAX_MS: Final = 7_258_118_400_000  # 2200-01-01T00:00:00Z
TIMESTAMP_DIGITS: Final = 13
IDENTIFIER_LENGTH_LIMIT: Final = IDENTIFIER_LENGTH
CANONICAL_NUMBER: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_INFINITY: Final = float("inf")
_DECIMAL_CHARACTERS: Final = "0123456789."
_ZERO: Final = ord("0")
_NINE: Final = ord("9")
_DOT: Final = ord(".")
_short_repr: Final = reprlib.Repr()
_short_repr.maxlevel = 3


def check_recv_ms(recv_ms: Any) -> None:
    if type(recv_ms) is not int or not 0 <= recv_ms <= TIMESTAMP_MAX_MS:
        raise BadInput(f"recv_ms {show(recv_ms)} is not a millisecond timestamp")


def account_of(record: dict[str, Any]) -> str | None:
    account = record.get("account")
    if account is None:
        return None
    if type(account) is not str or identifier_problem(account) is not None:
        raise BadInput(f"line account {show(account)} is not an account name")
    return account


def check_account(account: Any) -> None:
    """The account an entry point was given: None (public) or an identifier."""
    if account is not None and (type(account) is not str
                                or identifier_problem(account) is not None):
        raise BadInput(f"account {show(account)} is not an account name")


def require_account(account: str | None, context: str) -> str:
    if account is None:
        raise BadInput(f"{context} is private data but no account was given")
    return account


def rows_of(data: Any, context: str) -> list[dict[str, Any]]:
    """``data`` as a list of objects."""
    if type(data) is not list:
        raise BadInput(f"{context} data {show(data)} is not an array")
    for row in data:
        if type(row) is not dict:
            raise BadInput(f"{context} data row {show(row)} is not an object")
    return data


def text_field(row: dict[str, Any], name: str, context: str) -> str:
    """A required identifier or code: a non-empty string of printable ASCII, at most
    :data:`IDENTIFIER_LENGTH_LIMIT` characters."""
    value = row.get(name)
    if type(value) is not str or not value:
        if value is None:
            raise BadInput(f"{context} {name} is missing")
        raise BadInput(f"{context} {name} {show(value)} is not a non-empty string")
    problem = identifier_problem(value)
    if problem is not None:
        raise BadInput(f"{context} {name} {show(value)} {problem}")
    return value


def optional_text_field(row: dict[str, Any], name: str, context: str) -> str:
    """An identifier or code that may be absent or "" (returned as "")."""
    value = row.get(name, "")
    if type(value) is not str:
        raise BadInput(f"{context} {name} {show(value)} is not a string")
    if value:
        problem = identifier_problem(value)
        if problem is not None:
            raise BadInput(f"{context} {name} {show(value)} {problem}")
    return value


def flag_field(row: dict[str, Any], name: str, context: str) -> bool:
    """A boolean sent as "true" / "false" ("" or absent: false)."""
    value = row.get(name, "")
    if value == "true" or value is True:
        return True
    if value == "false" or value is False or value == "":
        return False
    raise BadInput(f"{context} {name} {show(value)} is not true or false")


def parse_float(raw: Any, name: str, context: str) -> float:
    """A finite number of magnitude at most 1e18, from a canonical decimal string (or a
    JSON number); see the module docstring."""
    if type(raw) is str:
        if len(raw) > NUMBER_LENGTH or CANONICAL_NUMBER.fullmatch(raw) is None:
            raise BadInput(number_reason(context, name, raw, "any"))
        value = float(raw)
    elif type(raw) is float or type(raw) is int:
        try:
            value = float(raw)
        except OverflowError:  # a JSON integer beyond the range of a float
            raise BadInput(f"{context} {name} {show(raw)} is not a finite number") from None
    else:
        raise BadInput(f"{context} {name} {show(raw)} is not a number")
    if not -MAGNITUDE_LIMIT <= value <= MAGNITUDE_LIMIT:
        raise BadInput(number_reason(context, name, raw, "any"))
    return value


def bounded(value: float, bound: Bound, name: str, context: str, raw: Any) -> float:
    if ((bound == "positive" and not value > 0.0) or (bound == "non_negative" and value < 0.0)
            or (bound == "price" and not PRICE_MIN <= value <= PRICE_MAX)):
        raise BadInput(number_reason(context, name, raw, bound))
    return value


def number_reason(context: str, name: str, raw: Any, bound: Bound) -> str:
    """Why ``raw`` is not a number within ``bound`` (off the hot path: only for a reason)."""
    where = f"{context} {name} {show(raw)}"
    value: float | None = None
    if type(raw) is float or type(raw) is int:
        try:
            value = float(raw)
        except OverflowError:
            return f"{where} is not a finite number"
    elif type(raw) is str:
        try:
            value = float(raw)
        except ValueError:
            return f"{where} is not a number"
    if value is None:
        return f"{where} is not a number"
    if value != value or value in (_INFINITY, -_INFINITY):
        return f"{where} is not a finite number"
    if type(raw) is str and (len(raw) > NUMBER_LENGTH
                             or CANONICAL_NUMBER.fullmatch(raw) is None):
        return f"{where} is not a plain decimal (as the venues write numbers)"
    if bound in ("positive", "price") and not value > 0.0:
        return f"{where} must be > 0"
    if bound == "non_negative" and value < 0.0:
        return f"{where} must not be negative"
    if bound == "price" and not PRICE_MIN <= value <= PRICE_MAX:
        return f"{where} is outside the plausible prices [{PRICE_MIN:g}, {PRICE_MAX:g}]"
    return f"{where} is beyond the plausible magnitude {MAGNITUDE_LIMIT:g}"


def timestamp_reason(context: str, name: str, raw: Any) -> str:
    return (f"{context} {name} {show(raw)} is not a millisecond timestamp "
            f"(ASCII digits, at most the year 2200)")


def number_field(row: dict[str, Any], name: str, context: str, bound: Bound) -> float:
    """A required number: absent, "" or anything but a finite number is bad input."""
    raw = row.get(name)
    if raw is None:
        raise BadInput(f"{context} {name} is missing")
    if raw == "":
        raise BadInput(f"{context} {name} is empty")
    return bounded(parse_float(raw, name, context), bound, name, context, raw)


def optional_number_field(row: dict[str, Any], name: str, context: str,
                          bound: Bound) -> float | None:
    """A number that may be absent or "" (a venue's "not applicable"), returned as None."""
    raw = row.get(name, "")
    if raw == "":
        return None
    return bounded(parse_float(raw, name, context), bound, name, context, raw)


def timestamp_field(row: dict[str, Any], name: str, context: str) -> int:
    """A required millisecond timestamp: a string of digits (or a JSON integer), >= 0."""
    raw = row.get(name)
    if (type(raw) is str and raw.isascii() and raw.isdecimal()
            and len(raw) <= TIMESTAMP_DIGITS):
        value = int(raw)
    elif type(raw) is int:
        value = raw
    elif raw is None:
        raise BadInput(f"{context} {name} is missing")
    else:
        value = -1
    if not 0 <= value <= TIMESTAMP_MAX_MS:
        raise BadInput(timestamp_reason(context, name, raw))
    return value


def optional_timestamp_field(row: dict[str, Any], name: str, context: str) -> int | None:
    if row.get(name, "") == "":
        return None
    return timestamp_field(row, name, context)


def json_kind(value: Any) -> str:
    if type(value) is list:
        return "array"
    if type(value) is str:
        return "string"
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    if type(value) is dict:
        return "object"
    return "number"


def show(value: Any) -> str:
    """``repr(value)``, cut short: a reason names the bad value, it does not copy the frame.

    A container is shown from a bounded copy (never the repr of a megabyte, nor a
    RecursionError for one nested a thousand deep)."""
    if type(value) is list or type(value) is dict:
        text = _short_repr.repr(value)
    else:
        text = repr(value if type(value) is not str else value[:80])
    return text if len(text) <= 60 else text[:57] + "..."


# --- the mark-price hot path ------------------------------------------------------------------


def plain_price(raw: Any, name: str, kind: str, subject: str) -> float:
    """A price from a canonical decimal string (or a JSON number) within [PRICE_MIN,
    PRICE_MAX], at the cost the mark-price path can afford: digits and dots checked,
    ``float()``, one comparison (it also rejects NaN, infinity, <= 0 and subnormals).
    The reason of a refusal names ``kind subject name`` (built only then)."""
    if type(raw) is str:
        # Only digits and dots (float() would also take spaces, "_", "+" and exponents).
        # Compiled, a loop over the code points (read in place by mypyc, nothing
        # allocated) costs a third of str.strip; interpreted, the loop would cost more
        # than strip, which leaves "" (shared, nothing allocated) unless the spelling has
        # anything else.
        if COMPILED:
            for index in range(len(raw)):
                code = ord(raw[index])
                if code > _NINE or (code < _ZERO and code != _DOT):
                    raise BadInput(number_reason(f"{kind} {subject}", name, raw, "price"))
        elif raw.strip(_DECIMAL_CHARACTERS):
            raise BadInput(number_reason(f"{kind} {subject}", name, raw, "price"))
        try:
            price = float(raw)
        except ValueError:
            raise BadInput(f"{kind} {subject} {name} {show(raw)} is not a number") from None
    elif type(raw) is float or type(raw) is int:
        price = float(raw)
    else:
        raise BadInput(f"{kind} {subject} {name} {show(raw)} is not a number")
    if not PRICE_MIN <= price <= PRICE_MAX:
        raise BadInput(number_reason(f"{kind} {subject}", name, raw, "price"))
    return price


def plain_timestamp(raw: Any, name: str, kind: str, subject: str) -> int:
    """A millisecond timestamp, checked by value only (``int()`` of a string, or a JSON
    integer): the hot path spends no scan on its spelling."""
    if type(raw) is str:
        try:
            value = int(raw)
        except ValueError:
            value = -1
    elif type(raw) is int:
        value = raw
    else:
        value = -1
    if not 0 <= value <= TIMESTAMP_MAX_MS:
        raise BadInput(timestamp_reason(f"{kind} {subject}", name, raw))
    return value


def new_mark_price(inst_id: str, price: float, event_ms: int, recv_ms: int) -> MarkPrice:
    """``MarkPrice(inst_id, price, event_ms, recv_ms)`` without the frozen dataclass
    ``__init__``, which goes through ``object.__setattr__`` per field and costs two thirds of
    an ``orjson.loads``: compiled by mypyc, plain stores into the new object; interpreted,
    the slot descriptors, which set the same fields (both checked at import below)."""
    mark = _new_object(MarkPrice)
    if COMPILED:
        mark.inst_id = inst_id  # type: ignore[misc]
        mark.price = price  # type: ignore[misc]
        mark.event_ms = event_ms  # type: ignore[misc]
        mark.recv_ms = recv_ms  # type: ignore[misc]
    else:
        _set_mark_inst_id(mark, inst_id)
        _set_mark_price(mark, price)
        _set_mark_event_ms(mark, event_ms)
        _set_mark_recv_ms(mark, recv_ms)
    return mark


def _can_assign_mark_fields() -> bool:
    """Whether this module can assign the fields of a new MarkPrice: only when mypyc
    compiled it together with monitor.core.events (an assignment is then a store into the native
    object; interpreted, the frozen dataclass refuses it)."""
    mark = _new_object(MarkPrice)
    try:
        mark.inst_id = ""  # type: ignore[misc]
    except AttributeError:  # dataclasses.FrozenInstanceError
        return False
    return True


# MarkPrice.__new__ is object.__new__ for the interpreted class, and the only allocator a
# class compiled by mypyc accepts.
_new_object: Final = MarkPrice.__new__
_set_mark_inst_id: Final = vars(MarkPrice)["inst_id"].__set__
_set_mark_price: Final = vars(MarkPrice)["price"].__set__
_set_mark_event_ms: Final = vars(MarkPrice)["event_ms"].__set__
_set_mark_recv_ms: Final = vars(MarkPrice)["recv_ms"].__set__
# The shortcut above is only equivalent to MarkPrice(...) while these are its only fields and
# nothing runs after __init__: fail at import, not with half-built events, if that changes.
if [item.name for item in fields(MarkPrice)] != ["inst_id", "price", "event_ms", "recv_ms"] or (
    hasattr(MarkPrice, "__post_init__")
):
    raise ImportError("monitor.core.events.MarkPrice changed: update adapters.wire.new_mark_price")
COMPILED: Final = _can_assign_mark_fields()
"""True exactly when mypyc compiled this module (with monitor.core.events)."""
