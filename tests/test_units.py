"""Unit tests of small pure pieces: filenames, cursors, ranges, configuration."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from imagesvc.config import ConfigurationError, load_settings
from imagesvc.errors import InvalidParameter
from imagesvc.images.cursor import decode_cursor, encode_cursor
from imagesvc.images.filenames import sanitise_filename
from imagesvc.images.http_content import parse_range
from imagesvc.images.serving import RangeRequest


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
    ("env", "message"),
    [
        ({"IMAGESVC_STORAGE_BACKEND": "s3"}, "IMAGESVC_S3_BUCKET is required"),
        ({"IMAGESVC_DATABASE_URL": "not a url"}, "IMAGESVC_DATABASE_URL"),
        ({"IMAGESVC_DATABASE_URL": "mysql://u:secretpw@h/db"}, "not supported"),
        ({"IMAGESVC_STORAGE_BACKEND": "ftp"}, "IMAGESVC_STORAGE_BACKEND"),
        ({"IMAGESVC_S3_PART_SIZE": "1024"}, "IMAGESVC_S3_PART_SIZE"),
        ({"IMAGESVC_MAX_UPLOAD_BYTES": "lots"}, "IMAGESVC_MAX_UPLOAD_BYTES"),
        ({"IMAGESVC_S3_ENDPOINT_URL": "localhost:9000"}, "IMAGESVC_S3_ENDPOINT_URL"),
    ],
)
def test_invalid_configuration_exits_2_with_one_line(env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imagesvc", "serve"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "secretpw" not in result.stderr


def test_key_prefix_gets_its_slash() -> None:
    assert load_settings(s3_key_prefix="tenant-a").s3_key_prefix == "tenant-a/"
    assert load_settings(s3_key_prefix="").s3_key_prefix == ""


def test_access_key_without_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="IMAGESVC_S3_SECRET_ACCESS_KEY"):
        load_settings(s3_access_key_id="AKIA")


def test_gc_tells_variants_by_key_structure_not_by_substring() -> None:
    from typing import Any, cast

    from imagesvc.images.reconcile import Reconciler

    nothing = cast(Any, None)
    gc = Reconciler(nothing, nothing, nothing, key_prefix="prod/v/", lease_seconds=60)
    image_id = "img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S"
    assert not gc._is_variant(f"prod/v/img/{image_id}/original")
    assert gc._is_variant(f"prod/v/img/{image_id}/v/64x64-cover-ab12.webp")
    assert gc._image_id(f"prod/v/img/{image_id}/original") == image_id


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


def test_request_line_timestamp_has_structlogs_format() -> None:
    import re
    from datetime import UTC, datetime

    from imagesvc.observability.logs import _utc_timestamp

    stamp = _utc_timestamp()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 5


def _request_lines_to(
    monkeypatch: pytest.MonkeyPatch, stream: object, renderer: object | None = None
) -> None:
    """The request-line writer, as configure_logging installs it, writing to `stream`
    (log_request is restored after the test)."""
    import logging

    import structlog

    from imagesvc.observability import logs

    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(logs, "log_request", logs.log_request)
    logs._direct_request_log(renderer or structlog.processors.JSONRenderer(), logging.INFO)


def test_a_request_line_that_cannot_be_written_does_not_fail_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from imagesvc.observability import logs

    class Broken:
        def write(self, _: str) -> int:
            raise BrokenPipeError

        def flush(self) -> None:
            raise BrokenPipeError

    _request_lines_to(monkeypatch, Broken())
    logs.log_request({"method": "GET", "path": "/", "status": 200})  # must not raise


def test_request_lines_of_one_event_loop_turn_are_written_together_and_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    import io
    import json

    from imagesvc.observability import logs

    class Recording(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    stream = Recording()
    _request_lines_to(monkeypatch, stream)

    async def requests() -> None:
        for index in range(3):
            logs.log_request({"method": "GET", "path": f"/{index}", "status": 200})
        assert stream.getvalue() == ""  # not yet: at the end of this turn
        await asyncio.sleep(0)
        logs.log_request({"method": "GET", "path": "/isk_0123456789abcdef_" + "s" * 30})
        await asyncio.sleep(0)

    asyncio.run(requests())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["path"] for line in lines] == ["/0", "/1", "/2", "/[redacted]"]
    assert stream.writes == 2


def test_uvicorn_access_logger_is_unreachable_so_uvicorn_skips_it() -> None:
    # uvicorn formats an access line for every response while this logger can reach a
    # handler (it asks hasHandlers()); our request line replaces it. In a subprocess: the
    # logging configuration is process-wide.
    code = (
        "import logging; from imagesvc.observability.logs import configure_logging; "
        "configure_logging('json'); "
        "print(logging.getLogger('uvicorn.access').hasHandlers(), "
        "logging.getLogger('uvicorn.error').hasHandlers())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["False", "True"]


def test_request_lines_are_not_stranded_by_a_loop_that_closed_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    import io
    import json

    from imagesvc.observability import logs

    stream = io.StringIO()
    _request_lines_to(monkeypatch, stream)

    async def one(path: str) -> None:
        logs.log_request({"method": "GET", "path": path, "status": 200})

    first = asyncio.new_event_loop()
    first.run_until_complete(one("/first"))  # stops before the scheduled write runs
    first.close()
    asyncio.run(one("/second"))  # another loop: schedules its own write, for both lines
    assert [json.loads(line)["path"] for line in stream.getvalue().splitlines()] == [
        "/first",
        "/second",
    ]
    logs.log_request({"method": "GET", "path": "/x", "status": 200, "odd": object()})
    assert len(stream.getvalue().splitlines()) == 2  # unrenderable: the line, not the request


def test_console_request_lines_keep_their_columns_when_a_secret_is_redacted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io
    import re

    import structlog

    from imagesvc.observability import logs

    stream = io.StringIO()
    _request_lines_to(monkeypatch, stream, structlog.dev.ConsoleRenderer(colors=False))
    secret = "isk_0123456789abcdef_" + "s" * 30
    logs.log_request({"method": "GET", "path": f"/{secret}", "status": 200})
    line = stream.getvalue()
    assert secret not in line
    assert "path=/[redacted]" in line
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z \[info\s*\] request ", line), line
    assert "imagesvc.request" in line
