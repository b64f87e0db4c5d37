"""Unit tests of range requests and of Content-Disposition."""

from __future__ import annotations

import unicodedata

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


@pytest.mark.parametrize(
    "name",
    [
        "plain.jpg",
        'quote"d.jpg',
        "semi;colon=1.jpg",
        "cr\rlf\n.jpg",
        "back\\slash.jpg",
        "percent%22.jpg",
        "Ünïcödé 写真 🙂.png",
        "  ..  ",
        "\x00\x1f\x7f",
    ],
)
def test_content_disposition_is_safe_for_any_name(name: str) -> None:
    from urllib.parse import unquote

    from imagesvc.serving.disposition import content_disposition

    header = content_disposition("attachment", name)
    header.encode("ascii")  # always ASCII, whatever the name
    assert not any(ch in header for ch in "\r\n\x00")
    prefix = 'attachment; filename="'
    assert header.startswith(prefix)
    fallback, rest = header[len(prefix) :].split('"', 1)
    assert not any(ch in fallback for ch in '"\\;%')
    assert fallback
    assert rest.startswith("; filename*=UTF-8''")
    encoded = rest.removeprefix("; filename*=UTF-8''")
    assert not any(ch in encoded for ch in "\"';, \\")
    assert unquote(encoded, errors="strict") == unicodedata.normalize("NFC", name)


def test_a_link_is_verified_as_sent_and_by_position() -> None:
    from imagesvc.serving.links import LinkExpired, LinkInvalid, LinkSigner

    signer = LinkSigner((b"k" * 32, b"old" * 11), window=300, max_ttl=3600)
    path = "/v1/images/img_x/variants/64x64"
    url = signer.sign(path, {"exp": "2000000000", "fit": "cover", "format": "auto"})
    query = url.split("?", 1)[1]
    assert query.startswith("exp=2000000000&fit=cover&format=auto&sig=")
    signer.verify(path, query, variant=True, now=0)
    old_only = LinkSigner((b"old" * 11,), window=300, max_ttl=3600)
    with pytest.raises(LinkInvalid):  # signed by the first key only
        old_only.verify(path, query, variant=True, now=0)
    for changed_path in ("/v1/images/%69mg_x/variants/64x64", "/v1/images/img_x/variants/64x64/"):
        with pytest.raises(LinkInvalid):
            signer.verify(changed_path, query, variant=True, now=0)
    with pytest.raises(LinkInvalid):  # a variant's options on the original
        signer.verify("/v1/images/img_x/content", query, variant=False, now=0)
    with pytest.raises(LinkExpired):
        signer.verify(path, query, variant=True, now=2000000000)
    assert signer.expiry(1, now=1000) == 1200  # rounded up to the window
    assert signer.expiry(300, now=1200) == 1500
