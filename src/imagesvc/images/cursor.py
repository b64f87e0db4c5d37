"""Opaque list cursors: base64url of the last id seen. Clients must not parse them; the
encoding lets us change what a cursor holds without breaking the API."""

from __future__ import annotations

import base64
import binascii

from imagesvc.errors import InvalidParameter
from imagesvc.ids import is_image_id

_VERSION = "1:"


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode((_VERSION + last_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
    except (ValueError, binascii.Error, UnicodeError):
        raise InvalidParameter("cursor: not a cursor returned by this API") from None
    last_id = text.removeprefix(_VERSION)
    if not text.startswith(_VERSION) or not is_image_id(last_id):
        raise InvalidParameter("cursor: not a cursor returned by this API")
    return last_id
