"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) in test_openapi.py: how to send a tus chunk,
a body of `application/offset+octet-stream` (raw bytes, like `application/octet-stream`)."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.serializer("application/offset+octet-stream")
def tus_chunk(context: Any, value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")
