"""Our BlurHash encoder gives the reference package's hashes, byte for byte."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("seed", range(60))
def test_blurhash_matches_the_reference_encoder(seed: int) -> None:
    """Our table-driven encoder gives the reference package's hash, byte for byte."""
    import random

    import blurhash as reference

    from imagesvc.imaging.blurhash import encode

    rnd = random.Random(seed)
    width, height = rnd.randint(1, 24), rnd.randint(1, 24)
    if seed % 2:
        data = bytes(rnd.randrange(256) for _ in range(width * height * 3))
    else:  # smooth gradients, like a photograph's thumbnail
        data = bytes(
            (x * 11 + y * 7 + channel * 60) % 256
            for y in range(height)
            for x in range(width)
            for channel in range(3)
        )
    rows = [
        [tuple(data[(y * width + x) * 3 : (y * width + x) * 3 + 3]) for x in range(width)]
        for y in range(height)
    ]
    components = rnd.randint(1, 9), rnd.randint(1, 9)
    expected = reference.encode(rows, components_x=components[0], components_y=components[1])
    assert encode(data, width, height, *components) == expected
