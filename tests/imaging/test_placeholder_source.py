"""Placeholders decode an upload's chunks in place (imaging/render.py): the same answer as
from the joined bytes, for every format and for chunks cut anywhere."""

from __future__ import annotations

import pytest

from imagesvc.imaging.render import placeholder
from tests.samples import encode, jpeg


def cut(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize(
    "data",
    [
        jpeg((640, 480)),
        encode("PNG", (300, 200), color=(10, 200, 90)),
        encode("GIF", (120, 90), frames=3),
        encode("WEBP", (200, 100)),
    ],
    ids=["jpeg", "png", "gif", "webp"],
)
@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_chunks_give_the_placeholder_of_the_bytes(data: bytes, size: int) -> None:
    assert placeholder(cut(data, size)) == placeholder(data)
