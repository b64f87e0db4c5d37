"""The request-line writer: format, batching per event-loop turn, redaction, failures."""

from __future__ import annotations

import subprocess
import sys

import pytest


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


def test_the_secret_of_a_local_upload_url_is_redacted_and_its_image_id_kept() -> None:
    from imagesvc.observability.logs import redact

    image_id, secret = (
        "img_01JDQ3Y4X9T8ZK5W2N6M7P0R1S",
        "FMxCHuQyca0YHaHCOS0ysLGK7U5NOgRgJ5ZJKR48meQ",
    )
    event = redact(None, "info", {"path": f"/v1/direct-uploads/{image_id}.{secret}"})
    assert event["path"] == f"/v1/direct-uploads/{image_id}.[redacted]"
    untouched = {"path": f"/v1/images/{image_id}/complete"}
    assert redact(None, "info", dict(untouched)) == untouched
