"""The ceiling: a bare ASGI app answering every request with a fixed 302 (no framework, no
database, no store). Whatever uvicorn can do with this is the most any ASGI app can do.

With `CEILING_HEADERS` (a JSON file of [name, value] pairs) it answers with those headers
instead: bench/run.py gives it the headers of a real imagesvc content redirect (the signed
`Location`, `ETag`, `Cache-Control`, `X-Request-ID`), so that the same exchange costs
uvicorn what it costs it under imagesvc, and nothing else runs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_HEADERS = (
    [(name.encode(), value.encode()) for name, value in json.loads(Path(path).read_text())]
    if (path := os.environ.get("CEILING_HEADERS"))
    else [(b"location", b"http://127.0.0.1:9/object"), (b"content-length", b"0")]
)
_START = {"type": "http.response.start", "status": 302, "headers": _HEADERS}
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
