"""Structured logs with structlog: one JSON object per line (or readable console lines),
for our own loggers and for everything that logs through the standard library (uvicorn,
SQLAlchemy, botocore), so an operator gets one format.

What is never logged: API keys, signed URLs, S3 secrets, database passwords. The code only
logs ids, codes and exception *type names*; `redact` below is the second line of defence
for anything a library puts in a message.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson
import structlog

# Anything that looks like one of our keys, a presigned query, a password in a URL, or the
# secret of a local direct-upload URL (its image id stays, for correlation).
_SECRETS = re.compile(
    r"isk_[0-9a-f]{16}_[A-Za-z0-9_-]{20,}"
    r"|(?<=direct-uploads/img_[0-9A-Z]{26}\.)[A-Za-z0-9_-]+"
    r"|X-Amz-(?:Signature|Credential|Security-Token)=[^&\s\"']+"
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"
)


def _may_hold_secret(text: str) -> bool:
    # Every secret the pattern knows contains one of these markers: checking for them first
    # keeps the regular expression off the (many) values that cannot match.
    return "isk_" in text or "X-Amz-" in text or "://" in text or "direct-uploads/" in text


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str) and _may_hold_secret(value) and _SECRETS.search(value):
            event[key] = _SECRETS.sub("[redacted]", value)
    return event


def drop_color(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.pop("color_message", None)  # uvicorn's ANSI-coloured copy of the message
    return event


# The request line (observability.middleware). Until configure_logging runs (an app built
# in-process, as the tests do), it goes through the standard library like everything else.
REQUEST_LOGGER = "imagesvc.request"
_stdlib_request_log = structlog.get_logger(REQUEST_LOGGER)


def _through_stdlib(fields: dict[str, Any]) -> None:
    _stdlib_request_log.info("request", **fields)


log_request: Callable[[dict[str, Any]], None] = _through_stdlib


def _nothing_pending() -> None:
    pass


_flush_request_lines: Callable[[], None] = _nothing_pending


@atexit.register
def _flush_at_exit() -> None:
    _flush_request_lines()  # the last turn's lines, if the loop stopped before it ended


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        drop_color,
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Uvicorn installs its own handlers; route them through ours instead. Its access log
    # is replaced by our request log line (which knows the route template and owner).
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Unreachable, not just disabled: uvicorn decides per connection with `hasHandlers()`,
    # and while the logger can reach a handler it formats the client address and quotes the
    # path of every response before the disabled logger drops the line (~3 µs a request).
    # uvicorn's `access_log=False` does this too, but this function runs after it (in the
    # app factory) and used to let the logger propagate to the root handler again.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    access.disabled = True
    for noisy in ("botocore", "aiobotocore", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _direct_request_log(renderer, level)


_second: tuple[int, str] = (0, "")


def _utc_timestamp() -> str:
    """structlog's `TimeStamper(fmt="iso", utc=True)` format (2026-01-02T03:04:05.678901Z)
    for a fifth of its cost: the date and time are formatted once per second."""
    global _second
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((now - whole) * 1_000_000):06d}Z"


def _direct_request_log(renderer: Any, level: int) -> None:
    """Every request writes one line, so that line skips the standard library (LogRecord,
    handler lock, formatter) and structlog's bound-logger machinery: the same fields,
    redaction, timestamp and renderer, written straight to stderr. Measured on a cached
    redirect: the stdlib route cost a third of the request's CPU.

    The lines of one event-loop turn are written together when the turn ends: under load a
    turn finishes many requests, and a write (a system call) cost as much as the rest of
    the line. Lines of the last turn are written at exit; a SIGKILL loses at most them."""
    global log_request, _flush_request_lines
    stream = sys.stderr

    # orjson renders the same JSON (without the spaces) in a tenth of json.dumps' time.
    # The console renderer takes its columns out of the dict it is given: give it a copy.
    render = (
        (lambda event: orjson.dumps(event).decode())
        if isinstance(renderer, structlog.processors.JSONRenderer)
        else (lambda event: renderer(None, "info", dict(event)))
    )
    pending: list[str] = []
    # The loop a flush is scheduled on; another loop (tests run several) schedules its own.
    scheduled_on: list[asyncio.AbstractEventLoop | None] = [None]

    def write(text: str) -> None:
        try:
            stream.write(text)
            stream.flush()
        except Exception:  # as logging.Handler.emit does: a log line never fails a request
            logging.getLogger(REQUEST_LOGGER).debug("request line not written", exc_info=True)

    def flush() -> None:
        scheduled_on[0] = None
        if pending:
            text = "".join(pending)
            pending.clear()
            write(text)

    def direct(fields: dict[str, Any]) -> None:
        event: dict[str, Any] = {"event": "request", **fields}
        event["level"] = "info"
        event["logger"] = REQUEST_LOGGER
        event["timestamp"] = _utc_timestamp()
        try:
            line = render(event) + "\n"
            if _may_hold_secret(line):  # one scan of the line instead of one per field
                line = render(redact(None, "info", event)) + "\n"
        except Exception:  # an unrenderable value: lose the line, never the request
            logging.getLogger(REQUEST_LOGGER).debug("request line not rendered", exc_info=True)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop: nothing to batch with
            write(line)
            return
        pending.append(line)
        if scheduled_on[0] is not loop:
            scheduled_on[0] = loop
            loop.call_soon(flush)

    def silent(fields: dict[str, Any]) -> None:
        pass

    _flush_request_lines = flush
    log_request = direct if level <= logging.INFO else silent
