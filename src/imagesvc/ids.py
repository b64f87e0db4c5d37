"""Public identifiers: opaque, unguessable, URL-safe, and sortable by creation time.

`img_` + a ULID: 48 bits of millisecond timestamp (so keyset pagination by id is newest
first) and 80 random bits (so ids cannot be guessed or enumerated).
"""

from __future__ import annotations

import re
from datetime import datetime

from ulid import ULID

IMAGE_PREFIX = "img_"
IMAGE_ID_LENGTH = len(IMAGE_PREFIX) + 26
_IMAGE_ID = re.compile(r"img_[0-9A-HJKMNP-TV-Z]{26}")


def new_image_id() -> tuple[str, datetime]:
    """A fresh id and the creation instant it encodes."""
    value = ULID()
    return IMAGE_PREFIX + str(value), value.datetime


def is_image_id(value: str) -> bool:
    return _IMAGE_ID.fullmatch(value) is not None
