"""Cursor codec properties: round trip, tamper evidence, epochs."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opstwin.aiw.cursor import CursorCodec
from opstwin.kit.errors import CursorExpired, InvalidCursor

EPOCH = "0123456789abcdef"
SECRET = "ab" * 32
codec = CursorCodec(EPOCH, SECRET)
seqs = st.integers(min_value=0, max_value=2**63 - 1)


@given(seqs)
def test_round_trip(seq: int) -> None:
    assert codec.decode(codec.encode(seq)).seq == seq


@given(seqs, seqs)
def test_distinct_positions_give_distinct_cursors(a: int, b: int) -> None:
    assert (codec.encode(a) == codec.encode(b)) == (a == b)


@given(seqs, st.data())
def test_any_single_character_change_is_rejected(seq: int, data: st.DataObject) -> None:
    cursor = codec.encode(seq)
    index = data.draw(st.integers(min_value=0, max_value=len(cursor) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    replacement = data.draw(st.sampled_from(alphabet).filter(lambda c: c != cursor[index]))
    tampered = cursor[:index] + replacement + cursor[index + 1 :]
    with pytest.raises(InvalidCursor):
        codec.decode(tampered)


@given(st.text(max_size=80))
def test_garbage_is_a_bad_request_never_a_crash(text: str) -> None:
    with pytest.raises(InvalidCursor):
        codec.decode(text)


def test_cursor_of_another_database_is_rejected() -> None:
    other = CursorCodec(EPOCH, secrets.token_hex(32))
    with pytest.raises(InvalidCursor):
        codec.decode(other.encode(5))


def test_cursor_from_an_earlier_epoch_is_gone() -> None:
    rotated = CursorCodec("fedcba9876543210", SECRET)
    with pytest.raises(CursorExpired):
        rotated.decode(codec.encode(5))
