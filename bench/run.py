"""`make bench`: imagesvc against its baselines, measured in the same run, on this machine.

Starts its own MariaDB and rclone `serve s3` on loopback (the test suite's helpers), then:
1. upload throughput: a 100 MiB body through imagesvc vs the same bytes uploaded directly
   with aioboto3 (same part size, same concurrency) to the same S3 server;
2. memory: imagesvc's RSS growth during a 400 MiB upload;
3. request path under wrk (c=64, 2 server workers): `GET /v1/images/{id}/content`
   (redirect) and `GET /v1/images/{id}` vs the tutorial app (Flask + Flask-SQLAlchemy +
   boto3 under gunicorn) and vs a bare ASGI 302 (the ceiling);
4. small uploads: 200 KB JPEGs at concurrency 16, imagesvc vs the tutorial app;
5. renders vs thumbor (bench/thumbor_compare.py), when present.
Writes BENCHMARKS.md: numbers, machine, and ratios against the baselines (absolute times
drift on shared machines; ratios measured side by side hold).

    .venv/bin/python bench/run.py [--quick] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import io
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

    def add(self, text: str) -> None:
        print(text, flush=True)
        self.sections.append(text)

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
        service_times, direct_times = [], []
        payload = head + block * 100
        for _ in range(rounds):
            direct_times.append(asyncio.run(upload_direct(endpoint, payload)))
            service_times.append(asyncio.run(upload_through_service(url, auth, head, block, 100)))
        size_mb = len(payload) / MIB
        direct = size_mb / statistics.median(direct_times)
        ours = size_mb / statistics.median(service_times)
        ratio = ours / direct
        report.add(
            "## 1. Upload throughput (100 MiB, 8 MiB parts, concurrency 2, rclone serve s3)\n\n"
            f"| path | MiB/s (median of {rounds}) |\n|---|---:|\n"
            f"| direct aioboto3 `upload_fileobj` | {direct:.1f} |\n"
            f"| through imagesvc (HTTP in, S3 out) | {ours:.1f} |\n\n"
            f"**imagesvc / direct = {ratio:.2f}x** (target ≥ 0.85x)\n"
        )
        report.target(
            "upload throughput vs direct aioboto3", f"{ratio:.2f}x", "≥ 0.85x", ratio >= 0.85
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
    return WrkResult(rps, latency("50"), latency("99"), failed)


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


def start_ceiling(work: Path) -> tuple[Process, str]:
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
    )
    process.start()
    return process, url


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
            "imagesvc small upload": lambda: wrk(
                wrk_bin, f"{url}/v1/images", connections=16, seconds=seconds, script=ours_upload
            ),
            "tutorial small upload": lambda: wrk(
                wrk_bin,
                f"{tutorial_url}/upload",
                connections=16,
                seconds=seconds,
                script=tutorial_upload,
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

    def spread(values: list[float], fmt: str) -> str:
        if len(values) == 1:
            return ""
        return f" (rounds: {', '.join(format(v, fmt) for v in values)})"

    rows = "\n".join(
        f"| {name} | {median_of(name, lambda r: r.rps):,.0f} | "
        f"{median_of(name, lambda r: r.p50_ms):.1f} | {median_of(name, lambda r: r.p99_ms):.1f} | "
        f"{sum(r.errors for r in results[name])} |"
        for name in runs
    )
    vs_tutorial_all = ratios("imagesvc content (302)", "tutorial GET /image/1 (302)")
    vs_ceiling_all = ratios("imagesvc content (302)", "bare ASGI 302 (ceiling)")
    uploads_all = ratios("imagesvc small upload", "tutorial small upload")
    metadata_all = ratios("imagesvc metadata", "tutorial GET /image/1 (302)")
    link_all = ratios("imagesvc signed link (302)", "imagesvc content (302)")
    vs_tutorial, vs_ceiling = statistics.median(vs_tutorial_all), statistics.median(vs_ceiling_all)
    upload_ratio = statistics.median(uploads_all)
    content_p99 = median_of("imagesvc content (302)", lambda r: r.p99_ms)
    metadata_p99 = median_of("imagesvc metadata", lambda r: r.p99_ms)
    report.add(
        f"## 3 and 4. Request path (wrk -t2 -c64) and small uploads ({len(small) // 1024} KB "
        f"JPEG, multipart, wrk -c16)\n\n"
        f"All servers up at once (2 workers each), {rounds} interleaved round(s) of {seconds} s "
        "per path; medians over the rounds, ratios taken within each round.\n\n"
        "| run | requests/s | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|\n"
        f"{rows}\n\n"
        f"- content redirect vs tutorial redirect: **{vs_tutorial:.2f}x**"
        f"{spread(vs_tutorial_all, '.2f')} (target ≥ 3x)\n"
        f"- content redirect vs bare ASGI ceiling: **{vs_ceiling:.0%}**"
        f"{spread(vs_ceiling_all, '.0%')} (target ≥ 40 %)\n"
        f"- signed link redirect vs keyed content redirect: "
        f"{statistics.median(link_all):.2f}x{spread(link_all, '.2f')}\n"
        f"- metadata vs tutorial redirect: {statistics.median(metadata_all):.2f}x\n"
        f"- p99 content {content_p99:.1f} ms, metadata {metadata_p99:.1f} ms (target ≤ 50 ms)\n"
        f"- small uploads vs tutorial: **{upload_ratio:.2f}x**"
        f"{spread(uploads_all, '.2f')} (target ≥ 2x)\n"
    )
    report.target("content 302 vs tutorial", f"{vs_tutorial:.2f}x", "≥ 3x", vs_tutorial >= 3)
    report.target("content 302 vs ASGI ceiling", f"{vs_ceiling:.0%}", "≥ 40 %", vs_ceiling >= 0.4)
    worst_p99 = max(content_p99, metadata_p99)
    report.target("p99 (content, metadata)", f"{worst_p99:.1f} ms", "≤ 50 ms", worst_p99 <= 50)
    report.target("small uploads vs tutorial", f"{upload_ratio:.2f}x", "≥ 2x", upload_ratio >= 2)


def renders(report: Report) -> None:
    script = ROOT / "bench" / "thumbor_compare.py"
    if not script.exists():
        report.add("## 5. Renders vs thumbor\n\n(bench/thumbor_compare.py is not present)\n")
        return
    seconds = "3" if report.quick else "8"
    result = subprocess.run(
        [sys.executable, str(script), "--seconds", seconds], capture_output=True, text=True
    )
    report.add(
        "## 5. Renders vs thumbor\n\n" + (result.stdout.strip() or result.stderr[-3000:]) + "\n"
    )
    # The HTTP-to-HTTP ratios (bold in the table): thumbor's server vs imagesvc's.
    ratios = [float(m) for m in re.findall(r"\*\*([\d.]+)x\*\*", result.stdout)]
    if ratios:
        worst = min(ratios)
        report.target("renders vs thumbor (worst case)", f"{worst:.2f}x", "≥ 2x", worst >= 2)


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
    parser.add_argument("--skip", default="", help="comma list of: uploads,requests,renders")
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
    if "renders" not in skip:
        renders(report)
    verdicts = "\n".join(
        f"| {what} | {measured} | {goal} | {'met' if ok else '**not met**'} |"
        for what, measured, goal, ok in report.verdicts
    )
    document = (
        "# Benchmarks\n\n"
        "Written by `make bench` (bench/run.py). Every ratio compares runs made minutes apart "
        "on the same machine; absolute numbers drift on shared machines, ratios hold.\n\n"
        f"Machine: {machine()}\n\n"
        "| target | measured | goal | |\n|---|---|---|---|\n"
        f"{verdicts}\n\n" + "\n".join(report.sections) + "\n"
    )
    # Sections other bench scripts write (bench/direct.py, bench/tus.py) stay, between their markers.
    previous = Path(args.out).read_text() if Path(args.out).exists() else ""
    for kept in re.findall(r"<!-- (\w+):begin -->.*?<!-- \1:end -->", previous, re.S):
        block = re.search(f"<!-- {kept}:begin -->.*?<!-- {kept}:end -->", previous, re.S)
        assert block is not None
        document += "\n" + block.group(0) + "\n"
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        document += "\n" + notes.read_text()
    Path(args.out).write_text(document)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
