"""Durations as marketing ops write them: ``30s``, ``15m``, ``2h``, ``1d``, ``2w``."""

from __future__ import annotations

import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
# The longest duration a rule may give (522 weeks, about 10 years). Why a bound: a timer armed
# past the year 9999 cannot be written as a date, and nothing meant decades ahead is a lead
# score. A whole number of every unit, so the JSON Schema can state it exactly.
MAX_WEEKS = 522
MAX_DURATION = MAX_WEEKS * _UNITS["w"]


def parse_duration(text: object) -> float:
    """Seconds in ``text``; raises ValueError with the accepted forms when it is not one."""
    if isinstance(text, str):
        m = _DURATION.match(text)
        if m:
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
            if seconds > MAX_DURATION:
                raise ValueError(
                    f"{text.strip()!r} is too long: durations are at most {MAX_WEEKS}w "
                    f"({MAX_WEEKS * 7}d, about 10 years)"
                )
            if seconds > 0:
                return seconds
    raise ValueError(f"expected a positive duration like 30s, 15m, 2h, 1d or 2w, got {text!r}")


def max_in(unit: str) -> int:
    """The longest duration in ``unit`` (a whole number for every unit)."""
    return int(MAX_DURATION // _UNITS[unit])


def parse_seconds(text: str) -> float:
    """A tolerance or interval option: a duration (``5m``) or plain seconds (``300``, ``0``)."""
    try:
        seconds = float(text)
    except ValueError:
        return parse_duration(text)
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"expected a duration like 5m or a number of seconds, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling, for summaries and error messages."""
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
