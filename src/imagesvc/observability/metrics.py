"""Prometheus metrics (prometheus-client). With several worker processes,
`PROMETHEUS_MULTIPROC_DIR` (set by `imagesvc serve --workers N`) makes /metrics sum every
worker's numbers instead of showing whichever worker answered."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("imagesvc_http_requests_total", "HTTP requests.", ["method", "route", "status"])
LATENCY = Histogram(
    "imagesvc_http_request_duration_seconds",
    "Time from request start to the last byte of the response.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPLOADED_BYTES = Counter(
    "imagesvc_uploaded_bytes_total", "Bytes of images stored by successful uploads."
)
UPLOADS = Counter("imagesvc_uploads_total", "Upload outcomes.", ["outcome"])
RESUMABLE_UPLOADS = Counter(
    "imagesvc_resumable_uploads_total",
    "tus uploads by event: started, completed, expired, terminated, refused (415/413).",
    ["event"],
)
RECEIVED_BYTES = Counter(
    "imagesvc_upload_received_bytes_total",
    "Upload bytes received from clients, by protocol (post: POST /v1/images; tus).",
    ["protocol"],
)
RENDERS = Counter("imagesvc_renders_total", "Variant renders.", ["format", "outcome"])
RENDER_SECONDS = Histogram(
    "imagesvc_render_duration_seconds",
    "Time to render one variant (decode, resize, encode).",
    ["format"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
GC_ITEMS = Counter("imagesvc_gc_items_total", "What gc did, by kind.", ["kind"])
DB_POOL_IN_USE = Gauge(
    "imagesvc_db_pool_checked_out",
    "Database connections in use.",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge("imagesvc_db_pool_size", "Database pool size.", multiprocess_mode="livemax")


def render_latest() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
