"""`make bench`: imagesvc against its baselines, measured in the same run, on this machine.

Starts its own MariaDB and rclone `serve s3` on loopback (the test suite's helpers), then
measures issue #19's targets:
1. upload throughput: a 100 MiB body through imagesvc vs the same bytes uploaded directly
   with aioboto3 (same part size, same concurrency) to the same S3 server (≥ 0.9x);
2. memory: imagesvc's RSS growth during a 400 MiB upload (≤ 64 MiB);
3. request path under wrk (c=64, 2 server workers): `GET /v1/images/{id}/content`
   (redirect) vs a bare ASGI 302, the ceiling (≥ 50 %); the signed-link redirect vs the
   keyed one (≥ 0.90x); p99 of content, metadata and signed link (≤ 10 ms); the tutorial
   app (Flask + Flask-SQLAlchemy + boto3 under gunicorn) for reference;
4. small uploads: 200 KB JPEGs at concurrency 16, imagesvc vs the tutorial app (≥ 1.5x),
   with the server CPU (user + system, all workers) per upload for both;
5. renders (bench/thumbor_compare.py, when present): imagesvc over HTTP vs thumbor (≥ 2x
   in every cell) and vs imagesvc's `render()` in-process (≥ 0.9x in every cell);
7. tus uploads (bench/tus.py, same MariaDB and S3): 8 MiB chunks vs direct aioboto3
   (≥ 0.85x) and RSS growth during a 400 MiB tus upload (≤ 64 MiB).
Ratios are taken within each round (the paths of a round run minutes apart at most) and
the median over rounds is reported, with the rounds' values beside it.
Writes BENCHMARKS.md: numbers, machine, and ratios against the baselines (absolute times
drift on shared machines; ratios measured side by side hold).

    .venv/bin/python bench/run.py [--quick] [--out BENCHMARKS.md]
        [--skip uploads,requests,tus,renders]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aioboto3
import httpx
import psutil
from aiobotocore.config import AioConfig
from boto3.s3.transfer import TransferConfig
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from variants import PeakRss  # noqa: E402  (bench/, the script's own directory)

from tests.services import (  # noqa: E402
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    MariaDB,
    Process,
    create_key,
    free_port,
    http_answers,
    s3_env,
    start_imagesvc,
    start_rclone,
    throwaway_mariadb,
)

MIB = 1024 * 1024
PART = 8 * MIB
BUCKET = "bench"
TUTORIAL_VENV = Path("/tmp/imagesvc-bench-tutorial-venv")
TUTORIAL_PACKAGES = ["flask", "flask-sqlalchemy", "gunicorn", "pymysql", "boto3"]


@dataclass
class Report:
    quick: bool
    sections: list[str] = field(default_factory=list)
    verdicts: list[tuple[str, str, str, bool]] = field(default_factory=list)
    # Sections written between `<!-- name:begin/end -->` markers (as bench/tus.py writes
    # its own when run alone): they replace the previous BENCHMARKS.md's block of that name.
    marked: dict[str, str] = field(default_factory=dict)

    def add(self, text: str) -> None:
        print(text, flush=True)
        self.sections.append(text)

    def add_marked(self, name: str, text: str) -> None:
        print(text, flush=True)
        self.marked[name] = text

    def target(self, what: str, measured: str, goal: str, ok: bool) -> None:
        self.verdicts.append((what, measured, goal, ok))


# --- environment -------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


def tutorial_python() -> Path:
    python = TUTORIAL_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TUTORIAL_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *TUTORIAL_PACKAGES],
        check=True,
        capture_output=True,
    )
    return python


@contextmanager
def services(work: Path) -> Iterator[tuple[MariaDB, str]]:
    """The test suite's throwaway MariaDB (migrated) and rclone S3, on loopback."""
    with throwaway_mariadb() as database:
        database.sql("CREATE DATABASE tutorial")
        rclone, endpoint = start_rclone(work, work / "s3", BUCKET)
        try:
            yield database, endpoint
        finally:
            rclone.stop()


def imagesvc_env(database: MariaDB, endpoint: str, **extra: str) -> dict[str, str]:
    env = {
        **s3_env(database.url, endpoint, BUCKET),
        "IMAGESVC_S3_PART_SIZE": str(PART),
        "IMAGESVC_MAX_UPLOAD_BYTES": str(512 * MIB),
        "IMAGESVC_MAX_PIXELS": "100000000",
        "IMAGESVC_LOG_FORMAT": "json",
    }
    env.update(extra)
    return env


def jpeg(size: tuple[int, int], quality: int = 85) -> bytes:
    picture = Image.effect_mandelbrot(size, (-2.2, -1.2, 1.0, 1.2), 60).convert("RGB")
    noise = Image.effect_noise(size, 40).convert("RGB")
    buffer = io.BytesIO()
    Image.blend(picture, noise, 0.2).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def rounds_text(values: list[float], fmt: str) -> str:
    """The per-round values behind a median, when there was more than one round."""
    if len(values) == 1:
        return ""
    return f" (rounds: {', '.join(format(v, fmt) for v in values)})"


# --- 1 and 2: big uploads ------------------------------------------------------------------


async def body(head: bytes, block: bytes, blocks: int) -> AsyncIterator[bytes]:
    yield head
    for _ in range(blocks):
        yield block


async def upload_through_service(
    url: str, auth: str, head: bytes, block: bytes, blocks: int
) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        response = await client.post(
            "/v1/images",
            content=body(head, block, blocks),
            headers={"Authorization": auth, "Content-Type": "image/jpeg"},
        )
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        await client.delete(response.json()["links"]["self"], headers={"Authorization": auth})
    return elapsed


async def upload_direct(endpoint: str, payload: bytes, *, concurrency: int = 2) -> float:
    """The baseline: the same bytes uploaded with aioboto3's `upload_fileobj`. imagesvc
    keeps one part filling while one is in flight: concurrency 2. A tus client's PATCHes
    allow no overlap at all: concurrency 1 (bench/tus.py)."""
    config = AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = aioboto3.Session()
    async with session.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        config=config,
    ) as s3:
        transfer = TransferConfig(
            multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=concurrency
        )
        key = f"direct/object-{concurrency}"
        started = time.perf_counter()
        await s3.upload_fileobj(io.BytesIO(payload), BUCKET, key, Config=transfer)
        elapsed = time.perf_counter() - started
        await s3.delete_object(Bucket=BUCKET, Key=key)
    return elapsed


def big_uploads(report: Report, env: dict[str, str], endpoint: str, work: Path) -> None:
    server, url = start_imagesvc(work, env)
    auth = f"Bearer {create_key(env, 'bench')}"
    head = jpeg((640, 480))
    block = os.urandom(MIB)
    try:
        rounds = 1 if report.quick else 3
        service_times: list[float] = []
        direct_times: list[float] = []
        payload = head + block * 100
        for _ in range(rounds):
            direct_times.append(asyncio.run(upload_direct(endpoint, payload)))
            service_times.append(asyncio.run(upload_through_service(url, auth, head, block, 100)))
        size_mb = len(payload) / MIB
        direct = size_mb / statistics.median(direct_times)
        ours = size_mb / statistics.median(service_times)
        # Same bytes in both: the throughput ratio of a round is the inverse ratio of times.
        ratios = [d / s for d, s in zip(direct_times, service_times, strict=True)]
        ratio = statistics.median(ratios)
        report.add(
            "## 1. Upload throughput (100 MiB, 8 MiB parts, concurrency 2, rclone serve s3)\n\n"
            f"| path | MiB/s (median of {rounds}) |\n|---|---:|\n"
            f"| direct aioboto3 `upload_fileobj` | {direct:.1f} |\n"
            f"| through imagesvc (HTTP in, S3 out) | {ours:.1f} |\n\n"
            f"**imagesvc / direct = {ratio:.2f}x**{rounds_text(ratios, '.2f')} "
            "(target ≥ 0.9x)\n"
        )
        report.target(
            "upload throughput vs direct aioboto3 (100 MiB)",
            f"{ratio:.2f}x{rounds_text(ratios, '.2f')}",
            "≥ 0.9x",
            ratio >= 0.9,
        )

        sampler = PeakRss(server.pid)
        sampler.start()
        asyncio.run(upload_through_service(url, auth, head, block, 400))
        sampler.stop.set()
        sampler.join()
        growth = (sampler.peak - sampler.baseline) / MIB
        report.add(
            "## 2. Memory during a 400 MiB upload\n\n"
            f"server RSS before {sampler.baseline / MIB:.0f} MiB, peak {sampler.peak / MIB:.0f} MiB: "
            f"**growth {growth:.1f} MiB** (target ≤ 64 MiB)\n"
        )
        report.target("RSS growth, 400 MiB upload", f"{growth:.1f} MiB", "≤ 64 MiB", growth <= 64)
    finally:
        server.stop()


# --- 3 and 4: wrk ------------------------------------------------------------------------------


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int  # completed in the run ("N requests in"), errors included
    cpu_ms: float | None = None  # server CPU per request, when sampled (cpu_per_request)


def wrk(
    wrk_bin: str,
    url: str,
    *,
    connections: int,
    seconds: int,
    script: Path | None = None,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    command = [wrk_bin, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)", output, re.M)
        assert match, output
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    failed = int(errors.group(1)) if errors else 0
    if socket_errors:
        failed += sum(int(n) for n in socket_errors.groups())
    requests = re.search(r"(\d+) requests in", output)
    assert requests, output
    return WrkResult(rps, latency("50"), latency("99"), failed, int(requests.group(1)))


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU used so far by a server and all its children (the workers do the
    work; the parent only supervises). A child that exits between two samples takes its
    share with it, so a worker restart mid-run would read low: none happens in these runs."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def cpu_per_request(pid: int, run: Callable[[], WrkResult]) -> Callable[[], WrkResult]:
    """`run`, with the server's CPU sampled right before and after it, per request done."""

    def measured() -> WrkResult:
        before = tree_cpu_seconds(pid)
        result = run()
        used = tree_cpu_seconds(pid) - before
        return dataclasses.replace(result, cpu_ms=used * 1000 / max(result.requests, 1))

    return measured


def start_tutorial(
    python: Path, database: MariaDB, endpoint: str, work: Path
) -> tuple[Process, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "TUTORIAL_DATABASE_URL": f"mysql+pymysql://root@127.0.0.1:{database.port}/tutorial",
        "TUTORIAL_S3_ENDPOINT": endpoint,
        "TUTORIAL_S3_BUCKET": BUCKET,
        "TUTORIAL_S3_KEY": S3_ACCESS_KEY,
        "TUTORIAL_S3_SECRET": S3_SECRET_KEY,
        "PYTHONPATH": str(ROOT / "bench"),
    }
    process = Process(
        f"tutorial-{port}",
        [str(python.parent / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", "tutorial_app:app"],
        work,
        ready=http_answers(f"{url}/image/0"),
        env=env,
    )
    process.start()
    return process, url


def start_ceiling(work: Path, headers: Path | None = None) -> tuple[Process, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = Process(
        f"ceiling-{port}",
        [
            str(Path(sys.executable).parent / "uvicorn"),
            "--workers",
            "2",
            "--port",
            str(port),
            "--no-access-log",
            "--app-dir",
            str(ROOT / "bench"),
            "ceiling_app:app",
        ],
        work,
        ready=http_answers(url),
        env={"CEILING_HEADERS": str(headers)} if headers else {},
    )
    process.start()
    return process, url


def redirect_headers(response: httpx.Response, work: Path) -> Path:
    """A content redirect's headers, as the ceiling's second instance sends them (uvicorn
    adds `date` itself; `server` is off in imagesvc)."""
    kept = [
        (name.decode(), value.decode())
        for name, value in response.headers.raw
        if name.lower() not in (b"date", b"server")
    ]
    path = work / "redirect-headers.json"
    path.write_text(json.dumps(kept))
    return path


def multipart_script(path: Path, data: bytes, auth: str | None) -> Path:
    boundary = "imagesvcbench"
    payload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    body_file = path.with_suffix(".body")
    body_file.write_bytes(payload)
    lines = [
        'wrk.method = "POST"',
        f'local f = io.open("{body_file}", "rb"); wrk.body = f:read("*all"); f:close()',
        f'wrk.headers["Content-Type"] = "multipart/form-data; boundary={boundary}"',
    ]
    if auth:
        lines.append(f'wrk.headers["Authorization"] = "{auth}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def request_paths(
    report: Report,
    wrk_bin: str,
    tutorial: Path,
    database: MariaDB,
    env: dict[str, str],
    endpoint: str,
    work: Path,
) -> None:
    """All three servers stay up while the runs are interleaved (imagesvc, tutorial,
    ceiling, and again): each round measures every path minutes apart at most, and the
    ratios are computed within a round, then the median over rounds is reported. One long
    run per server, minutes apart, let the machine's drift move the ratios by ±15 %."""
    seconds = 5 if report.quick else 10
    rounds = 1 if report.quick else 3
    photo = jpeg((640, 480))
    small = jpeg((700, 525), quality=96)  # a real ~200 KB JPEG (the issue's size)
    servers: list[Process] = []
    try:
        server, url = start_imagesvc(work, {**env, "IMAGESVC_WORKERS": "2"}, workers=2)
        servers.append(server)
        tutorial_server, tutorial_url = start_tutorial(tutorial, database, endpoint, work)
        servers.append(tutorial_server)
        ceiling_server, ceiling_url = start_ceiling(work)
        servers.append(ceiling_server)

        auth = f"Bearer {create_key(env, 'bench-wrk')}"
        created = httpx.post(
            f"{url}/v1/images",
            content=photo,
            headers={"Authorization": auth, "Content-Type": "image/jpeg"},
        )
        image_id = created.json()["id"]
        redirect = httpx.get(f"{url}/v1/images/{image_id}/content", headers={"Authorization": auth})
        assert redirect.status_code == 302, redirect.text
        exchange_server, exchange_url = start_ceiling(work, redirect_headers(redirect, work))
        servers.append(exchange_server)
        # A signed link (SPEC §9) to the same image, as an <img> would fetch it: no key.
        link = httpx.post(
            f"{url}/v1/images/{image_id}/links",
            json={"expires_in": 7 * 24 * 3600},
            headers={"Authorization": auth},
        ).json()["url"]
        httpx.post(
            f"{tutorial_url}/upload", files={"file": ("photo.jpg", photo, "image/jpeg")}
        ).raise_for_status()
        ours_upload = multipart_script(work / "imagesvc-upload.lua", small, auth)
        tutorial_upload = multipart_script(work / "tutorial-upload.lua", small, None)
        headers = {"Authorization": auth}
        runs: dict[str, Callable[[], WrkResult]] = {
            "imagesvc content (302)": lambda: wrk(
                wrk_bin,
                f"{url}/v1/images/{image_id}/content",
                connections=64,
                seconds=seconds,
                headers=headers,
            ),
            "imagesvc signed link (302)": lambda: wrk(
                wrk_bin, f"{url}{link}", connections=64, seconds=seconds
            ),
            "imagesvc metadata": lambda: wrk(
                wrk_bin,
                f"{url}/v1/images/{image_id}",
                connections=64,
                seconds=seconds,
                headers=headers,
            ),
            "tutorial GET /image/1 (302)": lambda: wrk(
                wrk_bin, f"{tutorial_url}/image/1", connections=64, seconds=seconds
            ),
            "bare ASGI 302 (ceiling)": lambda: wrk(
                wrk_bin, ceiling_url, connections=64, seconds=seconds
            ),
            "bare ASGI 302, imagesvc's headers": lambda: wrk(
                wrk_bin, exchange_url, connections=64, seconds=seconds, headers=headers
            ),
            "imagesvc small upload": cpu_per_request(
                server.pid,
                lambda: wrk(
                    wrk_bin,
                    f"{url}/v1/images",
                    connections=16,
                    seconds=seconds,
                    script=ours_upload,
                ),
            ),
            "tutorial small upload": cpu_per_request(
                tutorial_server.pid,
                lambda: wrk(
                    wrk_bin,
                    f"{tutorial_url}/upload",
                    connections=16,
                    seconds=seconds,
                    script=tutorial_upload,
                ),
            ),
        }
        results: dict[str, list[WrkResult]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                results[name].append(run())
    finally:
        for process in servers:
            process.stop()

    def median_of(name: str, value: Callable[[WrkResult], float]) -> float:
        return statistics.median(value(result) for result in results[name])

    def ratios(numerator: str, denominator: str) -> list[float]:
        return [
            ours.rps / theirs.rps
            for ours, theirs in zip(results[numerator], results[denominator], strict=True)
        ]

    def cpu_ms(name: str) -> list[float]:
        return [r.cpu_ms for r in results[name] if r.cpu_ms is not None]

    rows = "\n".join(
        f"| {name} | {median_of(name, lambda r: r.rps):,.0f} | "
        f"{median_of(name, lambda r: r.p50_ms):.1f} | {median_of(name, lambda r: r.p99_ms):.1f} | "
        f"{sum(r.errors for r in results[name])} |"
        for name in runs
    )
    vs_tutorial_all = ratios("imagesvc content (302)", "tutorial GET /image/1 (302)")
    vs_ceiling_all = ratios("imagesvc content (302)", "bare ASGI 302 (ceiling)")
    exchange_all = ratios("bare ASGI 302, imagesvc's headers", "bare ASGI 302 (ceiling)")
    vs_exchange_all = ratios("imagesvc content (302)", "bare ASGI 302, imagesvc's headers")
    uploads_all = ratios("imagesvc small upload", "tutorial small upload")
    metadata_all = ratios("imagesvc metadata", "tutorial GET /image/1 (302)")
    link_all = ratios("imagesvc signed link (302)", "imagesvc content (302)")
    vs_tutorial, vs_ceiling = statistics.median(vs_tutorial_all), statistics.median(vs_ceiling_all)
    link_ratio = statistics.median(link_all)
    upload_ratio = statistics.median(uploads_all)
    ours_cpu_all, tutorial_cpu_all = (
        cpu_ms("imagesvc small upload"),
        cpu_ms("tutorial small upload"),
    )
    ours_cpu, tutorial_cpu = statistics.median(ours_cpu_all), statistics.median(tutorial_cpu_all)
    p99 = {
        path: median_of(f"imagesvc {path}", lambda r: r.p99_ms)
        for path in ("content (302)", "metadata", "signed link (302)")
    }
    worst_path = max(p99, key=p99.__getitem__)
    report.add(
        f"## 3 and 4. Request path (wrk -t2 -c64) and small uploads ({len(small) // 1024} KB "
        f"JPEG, multipart, wrk -c16)\n\n"
        f"All servers up at once (2 workers each), {rounds} interleaved round(s) of {seconds} s "
        "per path; medians over the rounds, ratios taken within each round.\n\n"
        "| run | requests/s | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|\n"
        f"{rows}\n\n"
        f"- content redirect vs bare ASGI ceiling: **{vs_ceiling:.0%}**"
        f"{rounds_text(vs_ceiling_all, '.0%')} (target ≥ 50 %)\n"
        f"- for reference (not a target): the same bare app answering with a real content "
        f"redirect's headers (signed `Location`, `ETag`, `Cache-Control`, `X-Request-ID`) to "
        f"requests carrying the `Authorization` header: "
        f"{statistics.median(exchange_all):.0%}{rounds_text(exchange_all, '.0%')} of the "
        f"ceiling, so uvicorn's own work for this exchange caps the content redirect there; "
        f"content redirect vs it {statistics.median(vs_exchange_all):.0%}"
        f"{rounds_text(vs_exchange_all, '.0%')}\n"
        f"- signed link redirect vs keyed content redirect: **{link_ratio:.2f}x**"
        f"{rounds_text(link_all, '.2f')} (target ≥ 0.90x)\n"
        f"- p99 content {p99['content (302)']:.1f} ms, metadata {p99['metadata']:.1f} ms, "
        f"signed link {p99['signed link (302)']:.1f} ms (target ≤ 10 ms each)\n"
        f"- small uploads vs tutorial: **{upload_ratio:.2f}x**"
        f"{rounds_text(uploads_all, '.2f')} (target ≥ 1.5x)\n"
        f"- server CPU per small upload (user + system of the server and its workers, sampled "
        f"around each wrk run, per request wrk completed): imagesvc **{ours_cpu:.1f} ms**"
        f"{rounds_text(ours_cpu_all, '.1f')}, tutorial **{tutorial_cpu:.1f} ms**"
        f"{rounds_text(tutorial_cpu_all, '.1f')}\n"
        f"- for reference (not a target): content redirect vs tutorial redirect "
        f"{vs_tutorial:.2f}x{rounds_text(vs_tutorial_all, '.2f')}, metadata vs tutorial "
        f"redirect {statistics.median(metadata_all):.2f}x{rounds_text(metadata_all, '.2f')}\n"
    )
    report.target(
        "small uploads vs tutorial (c=16)",
        f"{upload_ratio:.2f}x{rounds_text(uploads_all, '.2f')} (imagesvc {ours_cpu:.1f} ms "
        f"CPU/upload, tutorial {tutorial_cpu:.1f} ms)",
        "≥ 1.5x",
        upload_ratio >= 1.5,
    )
    report.target(
        "content 302 vs ASGI ceiling",
        f"{vs_ceiling:.0%}{rounds_text(vs_ceiling_all, '.0%')}",
        "≥ 50 %",
        vs_ceiling >= 0.5,
    )
    report.target(
        "signed link 302 vs content 302",
        f"{link_ratio:.2f}x{rounds_text(link_all, '.2f')}",
        "≥ 0.90x",
        link_ratio >= 0.9,
    )
    report.target(
        "p99 (worst of content, metadata, signed link)",
        f"{p99[worst_path]:.1f} ms ({worst_path.removesuffix(' (302)')})",
        "≤ 10 ms",
        p99[worst_path] <= 10,
    )


# One line per cell at the end of bench/thumbor_compare.py's output, for this script to read
# (the markdown table above it is for people): "RESULT case=... clients=... thumbor=...".
RESULT_LINE = re.compile(r"^RESULT (.*)$\n?", re.M)


def renders(report: Report) -> None:
    script = ROOT / "bench" / "thumbor_compare.py"
    title = (
        "## 5. Renders vs thumbor and vs render() in-process "
        "(target ≥ 2x thumbor and ≥ 0.9x render() in every cell)\n\n"
    )
    if not script.exists():
        report.add(title + "(bench/thumbor_compare.py is not present)\n")
        return
    seconds = "3" if report.quick else "8"
    result = subprocess.run(
        [sys.executable, str(script), "--seconds", seconds], capture_output=True, text=True
    )
    cells = [
        dict(item.split("=", 1) for item in line.split())
        for line in RESULT_LINE.findall(result.stdout)
    ]
    text = RESULT_LINE.sub("", result.stdout).strip()
    if result.returncode != 0 or not cells:
        # Said in the table too: a failed comparison must not read as a met target.
        report.add(title + (text + "\n\n" if text else "") + result.stderr[-3000:] + "\n")
        for what, goal in (("thumbor", "≥ 2x"), ("render() in-process", "≥ 0.9x")):
            report.target(f"HTTP renders vs {what} (worst cell)", "not measured", goal, False)
        return
    vs_thumbor = [float(c["http"]) / float(c["thumbor"]) for c in cells]
    vs_render = [float(c["http"]) / float(c["render"]) for c in cells]
    rows = "\n".join(
        f"| {c['case']} | {c['clients']} | {t:.2f}x | {r:.2f}x |"
        for c, t, r in zip(cells, vs_thumbor, vs_render, strict=True)
    )
    report.add(
        title + text + "\n\n"
        "imagesvc over HTTP per cell (renders/s ratios, same cell's runs):\n\n"
        "| case | clients | HTTP / thumbor (≥ 2x) | HTTP / render() (≥ 0.9x) |\n"
        f"|---|---:|---:|---:|\n{rows}\n"
    )

    def worst(values: list[float]) -> tuple[float, str]:
        index = values.index(min(values))
        clients = cells[index]["clients"]
        return values[
            index
        ], f"{cells[index]['case']}, {clients} client{'' if clients == '1' else 's'}"

    low, where = worst(vs_thumbor)
    report.target("HTTP renders vs thumbor (worst cell)", f"{low:.2f}x ({where})", "≥ 2x", low >= 2)
    low, where = worst(vs_render)
    report.target(
        "HTTP renders vs render() in-process (worst cell)",
        f"{low:.2f}x ({where})",
        "≥ 0.9x",
        low >= 0.9,
    )


def tus_uploads(report: Report, env: dict[str, str], endpoint: str, work: Path) -> None:
    # Imported here: bench/tus.py imports this module for its helpers.
    from tus import BEGIN, END, measure

    result = measure(1 if report.quick else 3, env, endpoint, work)
    report.add_marked("tus", f"{BEGIN}\n{result.section.rstrip()}\n{END}")
    report.target(
        "tus 8 MiB chunks vs direct aioboto3 (100 MiB)",
        f"{result.ratio:.2f}x{rounds_text(result.ratios, '.2f')}",
        "≥ 0.85x",
        result.ratio >= 0.85,
    )
    report.target(
        "RSS growth, 400 MiB tus upload",
        f"{result.rss_growth_mb:.1f} MiB",
        "≤ 64 MiB",
        result.rss_growth_mb <= 64,
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.platform()}, "
        f"Python {platform.python_version()}; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter runs, one round")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--skip", default="", help="comma list of: uploads,requests,tus,renders")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    report = Report(quick=args.quick)
    wrk_bin = ensure_wrk()
    tutorial = tutorial_python()
    work = Path(tempfile.mkdtemp(prefix="imagesvc-bench-"))
    with services(work) as (database, endpoint):
        env = imagesvc_env(database, endpoint)
        if "uploads" not in skip:
            big_uploads(report, env, endpoint, work)
        if "requests" not in skip:
            request_paths(report, wrk_bin, tutorial, database, env, endpoint, work)
        if "tus" not in skip:
            tus_uploads(report, env, endpoint, work)
    if "renders" not in skip:
        renders(report)
    verdicts = "\n".join(
        f"| {what} | {measured} | {goal} | {'met' if ok else '**not met**'} |"
        for what, measured, goal, ok in report.verdicts
    )
    document = (
        "# Benchmarks\n\n"
        "Written by `make bench` (bench/run.py). Every ratio compares runs made minutes apart "
        "on the same machine; absolute numbers drift on shared machines, ratios hold. "
        "Targets are issue #19's.\n\n"
        f"Machine: {machine()}\n\n"
        "| target | measured | goal | |\n|---|---|---|---|\n"
        f"{verdicts}\n\n" + "\n".join(report.sections) + "\n"
    )
    # Sections other bench scripts write (bench/direct.py, bench/tus.py) stay, between their
    # markers, in their order; one measured in this run replaces its old block.
    previous = Path(args.out).read_text() if Path(args.out).exists() else ""
    blocks = {
        match.group(1): match.group(0)
        for match in re.finditer(r"<!-- (\w+):begin -->.*?<!-- \1:end -->", previous, re.S)
    }
    blocks.update(report.marked)
    for block in blocks.values():
        document += "\n" + block + "\n"
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        document += "\n" + notes.read_text()
    Path(args.out).write_text(document)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
