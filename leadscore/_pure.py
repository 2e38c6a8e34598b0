"""Cython's class decorators as plain Python, for when Cython is not installed.

``leadscore/events.py`` marks ``Event`` with ``@cython.cclass`` and ``@cython.no_gc``, which
only the compiled build reads. Interpreted, Cython's own shadow module makes them do nothing;
a plain ``pip install`` without Cython has no such module, so this one stands in for it.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def cclass(cls: T) -> T:
    return cls


def no_gc(cls: T) -> T:
    return cls
