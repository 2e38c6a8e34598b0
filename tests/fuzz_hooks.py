"""Schemathesis hooks for tests/test_service_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

``date-time`` values are drawn from the past (1970 to 2025), as a client's clock gives them.
A time past the service's clock plus ``max_future`` is refused on purpose (bad_ts: it would
move the flow's clock), and JSON Schema cannot say "not after now", so the fuzzer's schema-valid
dates must not include the future.
"""

from __future__ import annotations

from datetime import UTC, datetime

import schemathesis
from hypothesis import strategies as st

schemathesis.openapi.format(
    "date-time",
    st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(2025, 12, 31),
        timezones=st.just(UTC),
    ).map(lambda dt: dt.isoformat().replace("+00:00", "Z")),
)
