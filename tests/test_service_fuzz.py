"""Schemathesis fuzzes the live service against its own /openapi.json.

Every check runs (no 5xx, documented status codes, content types, headers and response
schemas, valid data accepted, auth honoured, undeclared methods refused) except
``negative_data_rejection``: per-item acceptance is the contract here, so a batch or event
array with one bad item is a 200 listing that item in ``errors`` rather than a 4xx for all.
The seed is fixed so CI is reproducible; set LEADSCORE_FUZZ_SEED to explore other inputs.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from leadscore.events import MAX_DEPTH
from state.keys import Keys

KEYS = Keys("ls", 16)
SEED = os.environ.get("LEADSCORE_FUZZ_SEED", "20261122")
MAX_EXAMPLES = os.environ.get("LEADSCORE_FUZZ_EXAMPLES", "15")


def test_openapi_contract_holds_under_fuzzing(
    serve: Callable[..., Any], redis_url: str, tmp_path: Path
) -> None:
    pytest.importorskip("schemathesis", reason="pip install schemathesis (dev extras)")
    live = serve()
    # Seed contacts the generator tends to ask for, so the 200 paths (and explain) are fuzzed.
    r = redis.Redis.from_url(redis_url)
    for contact in ("0", "00", "a", "A", "AAA", "x"):
        view = {"contact": contact, "scores": {"engagement": 5}, "total": 5, "segments": []}
        r.set(KEYS.contact_read_model(contact), orjson.dumps(view))
        change = {"contact": contact, "rule": "pricing", "delta": 5}
        r.xadd(KEYS.changes(KEYS.partition(contact)), {"c": orjson.dumps(change)})
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{live.url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "negative_data_rejection",
        "--auth",
        "test-key:",
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        SEED,
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--max-failures",
        "20",
        "--no-color",
    ]
    # Dates in the past only (tests/fuzz_hooks.py): future ones are refused by design.
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "fuzz_hooks",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False, env=env
    )
    report = done.stdout[-8000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert "generated" in done.stdout and " passed" in done.stdout, report


# --------------------------------------------------------------------------- hostile bodies

json_leaf = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=8)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


def nest(levels: int, leaf: bytes = b"1") -> bytes:
    """Text of ``levels`` arrays and objects one inside the other (orjson writes 254 at most)."""
    opens = "".join('{"k":' if i % 3 else "[" for i in range(levels))
    closes = "".join("}" if i % 3 else "]" for i in reversed(range(levels)))
    return opens.encode() + leaf + closes.encode()


@st.composite
def native_item(draw: st.DrawFn) -> tuple[bytes, bool]:
    """One item of a /v1/events body, and whether it is a valid event."""
    kind = draw(st.sampled_from(["good", "deep", "junk", "value"]))
    if kind == "good":
        contact = draw(st.text("abcxyz-0123", min_size=1, max_size=8))
        return orjson.dumps({"contact": contact, "action": "page.hit"}), True
    if kind == "deep":
        levels = draw(st.sampled_from([MAX_DEPTH, 253, 254, 255, 1023, 1024, 1025, 3000]))
        inner = nest(levels)
        return b'{"contact":"d","action":"page.hit","props":{"p":' + inner + b"}}", False
    if kind == "junk":  # not JSON; "#" first, so it cannot change how the body is framed
        return b"#" + draw(st.binary(max_size=12)).replace(b"\n", b" "), False
    # JSON, but not an event (no contact): framing stays one item per line or element
    return orjson.dumps(draw(st.dictionaries(st.text(max_size=4), json_value))), False


@settings(max_examples=int(MAX_EXAMPLES) * 4, deadline=None)
@given(
    items=st.lists(native_item(), min_size=1, max_size=5),
    form=st.sampled_from(["array", "lines", "gzip", "gzip-members", "batch"]),
)
def test_any_body_is_answered_below_500_and_good_items_survive(
    live_fuzz: tuple[str, redis.Redis], items: list[tuple[bytes, bool]], form: str
) -> None:
    url, r = live_fuzz
    r.flushall()
    raws = [raw for raw, _ok in items]
    good = sum(ok for _raw, ok in items)
    headers = {"Authorization": "Bearer test-key"}
    if form == "batch":
        path = "/v1/batch"
        messages = [
            raw.replace(b'"contact"', b'"type":"track","event":"x","userId"', 1) for raw in raws
        ]
        body = b'{"batch":[' + b",".join(messages) + b"]}"
    else:
        path = "/v1/events"
        lines = b"\n".join(raws)
        body = b"[" + b",".join(raws) + b"]" if form == "array" else lines
        if form == "gzip":
            body, headers = gzip.compress(lines), {**headers, "Content-Encoding": "gzip"}
        elif form == "gzip-members":
            body = b"".join(gzip.compress(raw + b"\n") for raw in raws)
            headers = {**headers, "Content-Encoding": "gzip"}
    answer = httpx.post(url + path, content=body, headers=headers, timeout=30)
    assert answer.status_code < 500, answer.text
    if answer.status_code != 200:
        # A body that is not JSON as a whole (junk inside an array or a batch) is refused
        # whole; JSON lines never are.
        assert form in ("array", "batch"), answer.text
        assert answer.json()["code"] == "invalid_json"
        return
    outcome = answer.json()
    assert outcome["accepted"] + outcome["rejected"] == len(items)
    assert outcome["accepted"] == good
    stored = sum(
        len(fields[b"e"].split(b"\n")) for p in range(16) for _id, fields in r.xrange(KEYS.input(p))
    )
    assert stored == good


@pytest.fixture(scope="module")
def live_fuzz(redis_server: Any) -> Iterator[tuple[str, redis.Redis]]:
    """One live service for every hypothesis example (a server per example would cost more
    than the examples do)."""
    from conftest import LiveService

    from leadscore.service import ServiceConfig, create_app

    config = ServiceConfig(redis_url=redis_server.url, partitions=16, write_keys=("test-key",))
    live = LiveService(create_app(config)).start()
    client = redis.Redis.from_url(redis_server.url)
    yield live.url, client
    client.close()
    live.stop()
