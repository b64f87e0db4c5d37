"""The key layout: every key the service writes, and how gc recognises them."""

from __future__ import annotations

from imagesvc.storage.layout import KeyLayout

IMAGE_ID = "img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S"


def test_keys_are_told_apart_by_structure_not_by_substring() -> None:
    layout = KeyLayout("prod/v/")  # a prefix that itself looks like a variant directory
    original = layout.parse(f"prod/v/img/{IMAGE_ID}/original")
    assert original is not None
    assert (original.image_id, original.is_variant) == (IMAGE_ID, False)
    variant = layout.parse(f"prod/v/img/{IMAGE_ID}/v/64x64-cover-ab12.webp")
    assert variant is not None
    assert variant.is_variant
    assert layout.parse(f"other/img/{IMAGE_ID}/original") is None
    assert layout.parse("prod/v/img/not-an-id/original") is None


def test_every_key_of_an_image_is_under_its_prefix() -> None:
    layout = KeyLayout("svc/")
    prefix = layout.image(IMAGE_ID)
    assert layout.original(IMAGE_ID).startswith(prefix)
    first = layout.variant(IMAGE_ID, (64, 64), "cover", "webp")
    second = layout.variant(IMAGE_ID, (64, 64), "cover", "webp")
    assert first.startswith(prefix)
    assert first != second  # a fresh key per render
    parsed = layout.parse(first)
    assert parsed is not None
    assert parsed.is_variant


def test_a_direct_uploads_landing_key_is_told_apart_from_the_original() -> None:
    layout = KeyLayout("svc/")
    landing = layout.parse(layout.direct_upload(IMAGE_ID))
    assert landing is not None
    assert (landing.image_id, landing.is_direct_upload, landing.is_variant) == (
        IMAGE_ID,
        True,
        False,
    )
    original = layout.parse(layout.original(IMAGE_ID))
    assert original is not None
    assert not original.is_direct_upload
    assert layout.direct_upload(IMAGE_ID).startswith(layout.image(IMAGE_ID))


def test_parked_tails_are_keys_of_their_image() -> None:
    layout = KeyLayout("svc/")
    first, second = layout.tail(IMAGE_ID), layout.tail(IMAGE_ID)
    assert first != second  # a fresh key per PATCH
    assert first.startswith(layout.image(IMAGE_ID) + "tus/")
    parsed = layout.parse(first)
    assert parsed is not None
    assert (parsed.image_id, parsed.is_tail, parsed.is_variant) == (IMAGE_ID, True, False)
    original = layout.parse(layout.original(IMAGE_ID))
    assert original is not None
    assert not original.is_tail
