"""CRM exports as tables: read a CSV, type its columns, turn its rows into traits or events.

Shared by `leadscore train --table` (columns become model features) and `leadscore import`
(rows become `identify` events), so a CRM's leads reach the live flow with exactly the
values the model was trained on: numbers as numbers, categories as text, blanks and
placeholders ("Select") left out as missing. Plain Python: no scikit-learn here.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zlib import crc32

import orjson

from leadscore.model import category_key, number_value

ID_LIKE_SHARE = 0.5  # a category with more distinct values than this share of rows is an id


class TableError(Exception):
    """A table that cannot be used, said so the user knows what to change."""


@dataclass(slots=True)
class Column:
    """A table column as a feature: its name and whether it is a number or a category."""

    name: str
    kind: str  # "number" | "category"
    source: str = "trait"  # a model feature source: trait, score, rule_hits
    key: str = ""  # the trait path, group or rule id; "" means the same as name

    def __post_init__(self) -> None:
        if not self.key:
            self.key = self.name


# --------------------------------------------------------------------------- tables


@dataclass(slots=True)
class Table:
    path: str
    columns: list[str]
    rows: list[dict[str, str]]


def read_table(path: str | Path) -> Table:
    """A CSV export with a header row (UTF-8, a BOM is fine)."""
    source = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            rows = [r for r in reader if any((v or "").strip() for v in r.values())]
    except FileNotFoundError:
        raise TableError(f"table not found: {source}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TableError(f"cannot read the table {source}: {exc}") from None
    if not columns:
        raise TableError(f"{source}: no header row; the first line must name the columns")
    dupes = [c for c, n in Counter(columns).items() if n > 1]
    if dupes:
        raise TableError(f"{source}: column {dupes[0]!r} appears twice in the header")
    return Table(source, columns, rows)


def infer_columns(
    table: Table, skip: Iterable[str], missing: frozenset[str]
) -> tuple[list[Column], list[tuple[str, str]]]:
    """Which columns become features and how: numbers stay numbers, the rest are categories.

    Returns the usable columns and the dropped ones with why (empty, one value, an id).
    """
    skipped = set(skip)
    columns: list[Column] = []
    dropped: list[tuple[str, str]] = []
    n = len(table.rows)
    for name in table.columns:
        if name in skipped:
            continue
        raw = [r.get(name) for r in table.rows]
        present = [v for v in raw if category_key(v, missing) is not None]
        if not present:
            dropped.append((name, "always blank"))
            continue
        numbers = [number_value(v) for v in present]
        if all(x is not None for x in numbers):
            distinct = len(set(numbers))
            if distinct == 1:
                dropped.append((name, "one value only"))
            elif distinct == n and all(float(x).is_integer() for x in numbers):  # type: ignore[arg-type]
                dropped.append((name, "a distinct integer per row: an identifier"))
            else:
                columns.append(Column(name, "number"))
            continue
        distinct = len(set(present))
        if distinct == 1:
            dropped.append((name, "one value only"))
        elif distinct > max(50, ID_LIKE_SHARE * n):
            dropped.append((name, f"{distinct} distinct values in {n} rows: an identifier"))
        else:
            columns.append(Column(name, "category"))
    return columns, dropped


def parse_label(value: Any) -> int | None:
    """1/0, true/false, yes/no (any case) -> 1/0; anything else -> None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    text = str(value).strip().lower() if value is not None else ""
    if text in ("1", "1.0", "true", "yes", "y", "converted"):
        return 1
    if text in ("0", "0.0", "false", "no", "n"):
        return 0
    return None


def table_traits(
    table: Table, columns: Sequence[Column], missing: frozenset[str]
) -> Iterator[dict[str, Any]]:
    """Each row's traits as events carry them: numbers as numbers, categories as text.

    Missing values (blank, placeholders) are left out, so they stay missing live too.
    """
    for row in table.rows:
        traits: dict[str, Any] = {}
        for col in columns:
            value = row.get(col.name)
            if col.kind == "number":
                x = number_value(value, missing)
                if x is not None:
                    traits[col.name] = int(x) if x.is_integer() and abs(x) < 2**53 else x
            else:
                key = category_key(value, missing)
                if key is not None:
                    traits[col.name] = key
        yield traits


# --------------------------------------------------------------------------- import


@dataclass(slots=True)
class Imported:
    """`leadscore import`: one identify event per usable row, and the rows left out, with why."""

    events: list[dict[str, Any]]
    columns: list[Column]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # columns not imported


def import_table(
    path: str | Path,
    id_column: str,
    at: float,
    exclude: Sequence[str] = (),
    missing_values: Iterable[str] = (),
    action: str = "identify",
) -> Imported:
    """Turn a CRM export into events: the id column is the contact, the others its traits.

    ``at`` is the events' time (epoch seconds). Each event's id hashes the row, so sending the
    same export twice scores it once, while a changed row comes through.
    """
    from leadscore.model import DEFAULT_MISSING

    table = read_table(path)
    for name in (id_column, *exclude):
        if name not in table.columns:
            raise TableError(
                f"{table.path}: no column {name!r}; columns are: "
                + ", ".join(repr(c) for c in table.columns[:40])
            )
    missing = frozenset(m.strip().lower() for m in (*DEFAULT_MISSING, *missing_values))
    columns, dropped = infer_columns(table, [id_column, *exclude], missing)
    # Constant columns still say something about a lead: import them; ids are left out.
    columns += [Column(n, "category") for n, why in dropped if why == "one value only"]
    dropped = [(n, why) for n, why in dropped if why != "one value only"]
    order = {name: i for i, name in enumerate(table.columns)}
    columns.sort(key=lambda c: order[c.name])
    events: list[dict[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    for line, (row, traits) in enumerate(
        zip(table.rows, table_traits(table, columns, missing), strict=True), start=2
    ):
        contact = (row.get(id_column) or "").strip()
        if not contact:
            skipped.append((line, f"no {id_column!r}: a row needs a contact id"))
            continue
        body = orjson.dumps([contact, traits], option=orjson.OPT_SORT_KEYS)
        events.append(
            {
                "contact": contact,
                "action": action,
                "ts": at,
                "id": f"import-{crc32(body):08x}",
                "traits": traits,
            }
        )
    return Imported(events, columns, skipped, dropped)
