"""The benchmark's flow process runs the configuration it is asked for."""

from __future__ import annotations

import pytest

from bench.runner import redis_config
from flows.config import FlowConfig

SPEC = {"mode": "redis", "rules": "examples/rules.yaml", "redis_url": "redis://127.0.0.1:1/0"}


def test_a_redis_specs_flush_ms_reaches_the_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    # The latency benchmark's flow ignored LEADSCORE_FLUSH_MS (and had no other way to be
    # told): every "flush_ms 5" figure measured the default.
    monkeypatch.delenv("LEADSCORE_FLUSH_MS", raising=False)
    default = FlowConfig(rules="r").flush_ms
    assert redis_config(SPEC).flush_ms == default
    assert redis_config({**SPEC, "flush_ms": default + 3}).flush_ms == default + 3
    monkeypatch.setenv("LEADSCORE_FLUSH_MS", str(default + 7))
    assert redis_config(SPEC).flush_ms == default + 7
    assert redis_config({**SPEC, "flush_ms": default + 3}).flush_ms == default + 3
