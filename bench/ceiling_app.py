"""The ceiling: a bare ASGI app answering every request with a fixed 302 (no framework, no
database, no store). Whatever uvicorn can do with this is the most any ASGI app can do."""

from __future__ import annotations

from typing import Any

_START = {
    "type": "http.response.start",
    "status": 302,
    "headers": [(b"location", b"http://127.0.0.1:9/object"), (b"content-length", b"0")],
}
_BODY = {"type": "http.response.body", "body": b""}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(_START)
    await send(_BODY)
