"""Turn the RetailRocket events CSV into leadscore events (JSON lines), as an example.

    python examples/retailrocket.py events.csv > retailrocket.jsonl
    leadscore calibrate -r examples/retailrocket.yaml -e retailrocket.jsonl \\
        --conversion purchase --window 30d

Columns: ``timestamp`` (epoch ms), ``visitorid``, ``event`` (view | addtocart |
transaction), ``itemid``, ``transactionid``. A view becomes ``page.hit``, an add-to-cart
``cart.add`` and a transaction ``purchase``. The event id is built from the row, so a row
repeated word for word is dropped as a producer retry, as leadscore drops any.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable, Iterator
from typing import Any

ACTIONS = {"view": "page.hit", "addtocart": "cart.add", "transaction": "purchase"}


def convert(rows: Iterable[dict[str, str]]) -> Iterator[dict[str, Any]]:
    """CSV rows (as csv.DictReader gives them) -> event objects; unknown kinds are kept raw
    so leadscore dead-letters them instead of this script hiding them."""
    for row in rows:
        item = row.get("itemid", "")
        props: dict[str, Any] = {"url": f"https://shop.example/item/{item}", "item": item}
        if row.get("transactionid"):
            props["order"] = row["transactionid"]
        ts: int | str = (
            int(row["timestamp"])
            if row.get("timestamp", "").isdigit()
            else row.get("timestamp", "")
        )
        yield {
            "contact": f"v-{row.get('visitorid', '')}",
            "action": ACTIONS.get(row.get("event", ""), row.get("event", "")),
            "ts": ts,
            "id": f"rr-{row.get('timestamp')}-{row.get('visitorid')}-{row.get('event')}-{item}",
            "props": props,
        }


def main(argv: list[str]) -> int:
    import json

    if len(argv) != 2:
        print("usage: python examples/retailrocket.py events.csv > events.jsonl", file=sys.stderr)
        return 2
    with open(argv[1], newline="", encoding="utf-8") as fh:
        for event in convert(csv.DictReader(fh)):
            sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
