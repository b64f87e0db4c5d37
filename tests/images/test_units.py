"""Unit tests of the Image resource's small pure pieces: filenames and cursors."""

from __future__ import annotations

import pytest

from imagesvc.errors import InvalidParameter
from imagesvc.images.cursor import decode_cursor, encode_cursor
from imagesvc.images.filenames import sanitise_filename


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("photo.jpg", "photo.jpg"),
        ("/abs/path/photo.jpg", "photo.jpg"),
        ("C:\\Users\\me\\photo.jpg", "photo.jpg"),
        ("a\x00b\r\n.jpg", "ab.jpg"),
        ("  .hidden  ", "hidden"),
        ("", None),
        (None, None),
        ("../..", None),
        ("e\u0301.jpg", "\u00e9.jpg"),  # NFC
        ("x" * 300, "x" * 255),
        ("y" * 300 + ".jpeg", "y" * 250 + ".jpeg"),
    ],
)
def test_sanitise_filename(raw: str | None, expected: str | None) -> None:
    assert sanitise_filename(raw) == expected


def test_cursor_round_trip_and_refusals() -> None:
    image_id = "img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S"
    assert decode_cursor(encode_cursor(image_id)) == image_id
    for bad in ["", "abc", encode_cursor("img_short"), "////", "\u00e9"]:
        with pytest.raises(InvalidParameter):
            decode_cursor(bad)
