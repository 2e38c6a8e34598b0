"""``state.resp.pack_command`` makes the bytes hiredis makes for every argument the store
sends (checkpoint script calls: bytes, str, int, float), compiled or interpreted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from state.resp import pack_command

hiredis = pytest.importorskip("hiredis")

ARGUMENTS = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=4090, max_size=4200),  # around the end of the cached length headers
    st.text(max_size=40),
    st.integers(),
    st.floats(),
)


@given(st.lists(ARGUMENTS, min_size=1, max_size=40))
def test_same_bytes_as_hiredis(args: list[object]) -> None:
    assert pack_command(args) == hiredis.pack_command(tuple(args))


def test_a_checkpoint_shaped_call() -> None:
    args = [
        "EVALSHA",
        "ab" * 20,
        11,
        "ls:{3}:ckpt",
        "ls:{3}:s:jané@acme.com",
        7,
        0,
        "",
        1764500000.123,
        b"\x93\x03\x80",
        b"{}",
        -1.5e-7,
        10**20,
    ]
    assert pack_command(args) == hiredis.pack_command(tuple(args))


@pytest.mark.parametrize("arg", [True, None, bytearray(b"x"), [b"x"]])
def test_other_types_are_refused(arg: object) -> None:
    # the store then packs the call with hiredis or redis-py, which decide what they accept
    with pytest.raises(TypeError):
        pack_command([b"SET", arg])
