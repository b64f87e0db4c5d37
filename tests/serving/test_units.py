"""Unit tests of range requests."""

from __future__ import annotations

import pytest

from imagesvc.serving.content import RangeRequest
from imagesvc.serving.http import parse_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", RangeRequest(0, 9)),
        ("bytes=5-", RangeRequest(5, None)),
        ("bytes=-5", RangeRequest(None, 5)),
        ("bytes=9-0", None),
        ("bytes=0-1,3-4", None),
        ("bytes=-", None),
        ("bytes=\u00b2-3", None),
        ("lines=0-9", None),
        (None, None),
    ],
)
def test_parse_range(header: str | None, expected: RangeRequest | None) -> None:
    assert parse_range(header) == expected


def test_range_resolution() -> None:
    assert RangeRequest(None, 500).resolve(100).start == 0
    assert RangeRequest(10, None).resolve(100).end == 99
