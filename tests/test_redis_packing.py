"""Checkpoint calls are packed into the Redis protocol by hiredis in C
(``state.redis_store._packed``): the bytes must be those redis-py's own serializers write, for
every kind of argument a checkpoint passes (str keys and ids, bytes values, int counts, float
times), so Redis receives exactly what it received before."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.connection import Connection, Encoder, PythonRespSerializer

from state.redis_store import _packed

# Text Redis can carry: redis-py refuses lone surrogates (UTF-8), and so would the flow.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
arguments = st.one_of(
    texts,
    st.binary(max_size=200),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
commands = st.lists(
    st.tuples(st.sampled_from(["EVALSHA", "EVAL", "MGET"]), st.lists(arguments, max_size=30)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(commands)
def test_hiredis_packs_the_bytes_redis_py_packs(calls: list[tuple[str, list[Any]]]) -> None:
    conn = Connection()
    python_resp = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)
    cmds = [(name, *args) for name, args in calls]
    expected = b"".join(chunk for cmd in cmds for chunk in python_resp.pack(*cmd))
    assert _packed(conn, cmds) == expected
    assert _packed(conn, cmds) == b"".join(conn.pack_commands(cmds))
