"""Operational routes: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from imagesvc.errors import problem_response
from imagesvc.observability.metrics import DB_POOL_IN_USE, DB_POOL_SIZE, render_latest
from imagesvc.openapi import problem_response as problem_doc
from imagesvc.runtime import Runtime

READY_TIMEOUT = 2.0

router = APIRouter()


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, Literal["ok", "down"]] = Field(
        description="Each dependency: `database`, `storage`."
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    usage = runtime.db.pool_usage()
    if usage is not None:
        DB_POOL_IN_USE.set(usage[0])
        DB_POOL_SIZE.set(usage[1])
    body, content_type = render_latest()
    return Response(body, media_type=content_type)


@router.get(
    "/healthz",
    tags=["operations"],
    operation_id="healthz",
    summary="Liveness",
    description="200 while the process runs; touches nothing else.",
)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    tags=["operations"],
    operation_id="readyz",
    summary="Readiness: database and object store reachable",
    description="Checks both with a 2 s timeout each; 503 names what is down.",
    response_model=Readiness,
    responses={503: problem_doc("A dependency is down; `detail` names it.")},
)
async def readyz(request: Request) -> Any:
    runtime: Runtime = request.app.state.runtime
    checks = await _check_dependencies(runtime)
    down = [name for name, ok in checks.items() if not ok]
    if down:
        return problem_response(
            request,
            status=503,
            code="dependency_unavailable",
            title="Service unavailable",
            detail=f"unavailable: {', '.join(down)}",
            headers={"Retry-After": "5"},
            extra={"checks": {k: "ok" if v else "down" for k, v in checks.items()}},
        )
    return JSONResponse({"status": "ready", "checks": dict.fromkeys(checks, "ok")})


async def _check_dependencies(runtime: Runtime) -> dict[str, bool]:
    async def ok(check: Callable[[], Awaitable[None]]) -> bool:
        try:
            await asyncio.wait_for(check(), READY_TIMEOUT)
        except Exception:
            return False
        return True

    db_ok, store_ok = await asyncio.gather(ok(runtime.db.ping), ok(runtime.store.ping))
    return {"database": db_ok, "storage": store_ok}
