"""Cython's decorators and types as plain Python, for when Cython is not installed.

``leadscore/events.py`` marks ``Event`` with ``@cython.cclass`` and ``@cython.no_gc``, and
``flows/parse.py``, ``flows/shards.py`` and ``flows/redis_flow.py`` type a few locals with
``@cython.locals`` (the names they use are defined here too): only the
compiled build reads them. Interpreted, Cython's own shadow module makes them do nothing; a
plain ``pip install`` without Cython has no such module, so this one stands in for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
double = float
bint = bool
Py_ssize_t = int
compiled = False  # what Cython's shadow module says when nothing is compiled


def cclass(cls: T) -> T:
    return cls


def no_gc(cls: T) -> T:
    return cls


def locals(**types: object) -> Callable[[T], T]:  # Cython's name for it
    return lambda function: function
