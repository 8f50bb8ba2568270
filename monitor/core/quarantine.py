"""Quarantine without floods: what is kept of each bad input, and exact counts by reason.

A bad input (a line or frame the decoder refuses, SPEC 4) is data: it is counted and the
stream goes on. A feed or a recording full of garbage must not turn into a log or a table
as large as itself, so :class:`QuarantineBook` decides, per bad input, per run
(``[quarantine]``, monitor.app.config.QuarantineConfig):

- *log*: the first ``log_first`` get a log line each; after that the log gets a
  :class:`~monitor.core.records.QuarantineSummary` (counts by reason class) at most every
  ``log_summary_s`` seconds while bad input keeps coming, and one at the end of the run;
- *store*: the first ``store_first`` are stored whole, then one in ``store_sample_every``
  (marked ``sampled``); the store also caps its table (``store_max_rows``);
- *count*: every one, by reason class, handed to the store as
  :class:`~monitor.core.records.QuarantineCounts` so that its counts are exact.

A reason names the bad value (``markPx 'abc' is not a number``), so reasons are as many as
the values; counts are kept by *reason class*, the reason with every value it quotes
replaced by ``…`` (:func:`reason_class`). Classes are bounded by the decoder's messages
and the instruments they name; beyond :data:`MAX_REASON_CLASSES` in one run the rest are
counted as ``other``, so no input can grow the counts without bound either.

No clock is read here: the caller passes the time (the pipeline's monotonic clock).
"""

from __future__ import annotations

from monitor.core.records import QuarantineCounts, QuarantineSummary
from monitor.core.settings import QuarantineConfig

MAX_REASON_CLASSES = 100
OTHER_CLASS = "other"
VALUE = "…"

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_QUOTES = frozenset("'\"")


def reason_class(reason: str) -> str:
    """``reason`` with every value it quotes replaced by ``…``.

    A value starts at a word boundary with a quote, a bracket, a parenthesis, a digit or
    a minus sign before a digit: what ``repr`` of a value, or an explanation in
    parentheses, looks like (the decoders show bad values with ``repr``, cut to 60
    characters with ``...``). So ``line is not valid JSON (unexpected character: line 1
    column 1 (char 0))`` is ``line is not valid JSON …`` and ``mark-price X markPx 'abc'
    is not a number`` is ``mark-price X markPx … is not a number``.
    """
    out: list[str] = []
    index = 0
    length = len(reason)
    while index < length:
        char = reason[index]
        boundary = index == 0 or reason[index - 1] in " :,="
        if boundary and _starts_value(reason, index):
            index = _value_end(reason, index)
            if not out or out[-1] != VALUE:
                out.append(VALUE)
            continue
        out.append(char)
        index += 1
    return "".join(out).strip()


def _starts_value(text: str, index: int) -> bool:
    char = text[index]
    if char in _QUOTES or char in _OPENERS or char.isdigit():
        return True
    return char == "-" and index + 1 < len(text) and text[index + 1].isdigit()


def _value_end(text: str, index: int) -> int:
    """Where the value starting at ``index`` ends: after its closing quote or bracket
    (nesting and quotes inside followed), or after a ``...`` that cut it short, or at
    the next space for a bare number."""
    length = len(text)
    if not (text[index] in _QUOTES or text[index] in _OPENERS):
        while index < length and text[index] != " ":
            index += 1
        return index
    closers: list[str] = []
    quote = ""
    while index < length:
        if text.startswith("...", index) and (index + 3 == length or text[index + 3] == " "):
            return index + 3  # cut short by the decoder: nothing closes it
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
                if not closers:
                    return index + 1
        elif char in _QUOTES:
            quote = char
        elif char in _OPENERS:
            closers.append(_OPENERS[char])
        elif closers and char == closers[-1]:
            closers.pop()
            if not closers:
                return index + 1
        index += 1
    return length


class QuarantineBook:
    """Decides what is kept of each bad input of a run and counts them all (see the module
    docstring). ``now_s`` is any monotonic clock, the same for every call."""

    def __init__(self, config: QuarantineConfig, now_s: float) -> None:
        self.config = config
        self.total = 0
        self.by_class: dict[str, int] = {}
        self._uncounted: dict[str, int] = {}
        self._window: dict[str, int] = {}
        self._suppressed = 0
        self._window_start_s = now_s

    def admit(self, reason: str) -> tuple[bool, bool, bool]:
        """Count one bad input; ``(log, store, sampled)``: whether it gets a log line of its
        own, whether the store keeps it, and whether as one of a sample."""
        config = self.config
        number = self.total
        self.total += 1
        name = reason_class(reason)
        if name not in self.by_class and len(self.by_class) >= MAX_REASON_CLASSES:
            name = OTHER_CLASS
        self.by_class[name] = self.by_class.get(name, 0) + 1
        self._uncounted[name] = self._uncounted.get(name, 0) + 1
        self._window[name] = self._window.get(name, 0) + 1
        log = number < config.log_first
        if not log:
            self._suppressed += 1
        if number < config.store_first:
            return log, True, False
        every = config.store_sample_every
        sampled = every > 0 and (number - config.store_first) % every == 0
        return log, sampled, sampled

    @property
    def pending(self) -> bool:
        """Whether anything was counted since the last :meth:`take_counts`."""
        return bool(self._uncounted)

    @property
    def summary_pending(self) -> bool:
        """Whether some bad input awaits a summary (it had no log line of its own)."""
        return self._suppressed > 0

    def take_counts(self) -> QuarantineCounts | None:
        """The counts since the last call, for the store (None: nothing new)."""
        if not self._uncounted:
            return None
        counts, self._uncounted = self._uncounted, {}
        return QuarantineCounts(tuple(sorted(counts.items())))

    def summary(self, now_s: float, *, final: bool = False) -> QuarantineSummary | None:
        """The log's summary when one is due: some bad input since the last summary had no
        line of its own, and ``log_summary_s`` has passed since it (or the run ends:
        ``final``). None otherwise."""
        if not self._suppressed:
            return None
        window_s = now_s - self._window_start_s
        if not final and window_s < self.config.log_summary_s:
            return None
        summary = QuarantineSummary(tuple(sorted(self._window.items())), self._suppressed,
                                    self.total, round(max(window_s, 0.0), 3))
        self._window = {}
        self._suppressed = 0
        self._window_start_s = now_s
        return summary
