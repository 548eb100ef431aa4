"""Cursors: opaque, tamper-evident positions in the change log.

A cursor is ``base64url(version ‖ epoch ‖ seq ‖ mac)`` where ``mac`` is a truncated
HMAC-SHA256 over the rest with the database's own secret. Clients may only compare cursors for
equality. Decoding distinguishes three failures:

* malformed or forged (bad encoding, wrong length, unknown version, MAC mismatch) → 400;
* genuine but from an earlier epoch (the database was restored from a backup) → 410;
* well-formed but compacted past → 410 (checked by the change log, which knows the mark).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

from opstwin.kit.errors import CursorExpired, InvalidCursor

_VERSION = 1
_HEADER = struct.Struct(">B8sQ")  # version, epoch (8 bytes), sequence
_MAC_BYTES = 12  # 96-bit tag: forging one is out of reach, and cursors stay short
_ENCODED_LEN = len(base64.urlsafe_b64encode(b"\0" * (_HEADER.size + _MAC_BYTES)).rstrip(b"="))
_SHAPE = re.compile(rf"[A-Za-z0-9_-]{{{_ENCODED_LEN}}}")


@dataclass(frozen=True, slots=True)
class Position:
    """A decoded cursor: which log (epoch) and how far (sequence, exclusive lower bound)."""

    epoch: str
    seq: int


class CursorCodec:
    """Encodes and verifies cursors for one database's change log."""

    def __init__(self, epoch: str, secret: str) -> None:
        self.epoch = epoch
        self._epoch_bytes = bytes.fromhex(epoch)
        if len(self._epoch_bytes) != 8:
            raise ValueError("the log epoch must be 8 bytes of hex")
        self._key = bytes.fromhex(secret)

    def encode(self, seq: int) -> str:
        header = _HEADER.pack(_VERSION, self._epoch_bytes, seq)
        mac = hmac.new(self._key, header, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(header + mac).rstrip(b"=").decode("ascii")

    def decode(self, cursor: str) -> Position:
        """Verify and decode; raises InvalidCursor (400) or CursorExpired (410)."""
        if _SHAPE.fullmatch(cursor) is None:
            raise InvalidCursor(
                "the cursor is malformed: use a cursor exactly as the service returned it"
            )
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError) as exc:  # unreachable after the shape check
            raise InvalidCursor("the cursor is not valid base64url") from exc
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != cursor:
            # Same bytes, other spelling (the last character's unused bits): not a cursor we issued.
            raise InvalidCursor("the cursor failed verification: it was altered or not issued here")
        header, mac = raw[: _HEADER.size], raw[_HEADER.size :]
        version, epoch_bytes, seq = _HEADER.unpack(header)
        expected = hmac.new(self._key, header, hashlib.sha256).digest()[:_MAC_BYTES]
        if version != _VERSION or not hmac.compare_digest(mac, expected):
            # Altered, or signed with another database's secret: either way not ours to honour.
            raise InvalidCursor("the cursor failed verification: it was altered or not issued here")
        if epoch_bytes != self._epoch_bytes:
            # Genuinely ours, from before the epoch was rotated (a backup was restored): the
            # positions after it may now name different changes.
            raise CursorExpired(
                "the cursor belongs to an earlier epoch of this log (the database was restored)",
                extensions={"reason": "epoch"},
            )
        return Position(epoch=epoch_bytes.hex(), seq=seq)
