"""Direct uploads (issue #17): what they save the API host, measured against uploads through
the API in the same run, on this machine.

Starts the suite's throwaway MariaDB and rclone `serve s3` and a real `imagesvc serve`
process (one worker, so one process does all the work), then, interleaved over rounds:
- API process CPU seconds per 5 MiB image (psutil `cpu_times` of the server, user +
  system): through `POST /v1/images` vs direct (`POST /v1/images/direct`, the PUT straight
  to rclone, `POST /v1/images/{id}/complete`);
- wall time of `complete` for a 5 MiB and a 25 MiB image, next to the wall time of uploading
  the same bytes through `POST /v1/images`.
Writes its section of BENCHMARKS.md (between `<!-- direct:begin -->` and
`<!-- direct:end -->`, leaving the rest alone).

    .venv/bin/python bench/direct.py [--quick] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import io
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import imagesvc_env, machine, services  # noqa: E402  (bench/run.py)

from tests.services import create_key, start_imagesvc  # noqa: E402

MIB = 1024 * 1024
BEGIN, END = "<!-- direct:begin -->", "<!-- direct:end -->"


def jpeg_of_about(target: int) -> bytes:
    """A real JPEG (noise, so it does not compress) of at least `target` bytes."""
    side = 1024
    while True:
        buffer = io.BytesIO()
        Image.effect_noise((side, side), 60).convert("RGB").save(buffer, "JPEG", quality=95)
        if buffer.tell() >= target:
            return buffer.getvalue()
        side = int(side * (target / buffer.tell()) ** 0.5) + 64


class Api:
    def __init__(self, url: str, auth: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=300, headers={"Authorization": auth})
        self.outside = httpx.Client(timeout=300)  # to the store: no API key

    def through(self, data: bytes) -> str:
        response = self.client.post(
            "/v1/images", content=data, headers={"Content-Type": "image/jpeg"}
        )
        response.raise_for_status()
        image_id: str = response.json()["id"]
        return image_id

    def start_and_put(self, data: bytes) -> str:
        created = self.client.post(
            "/v1/images/direct", json={"byte_size": len(data), "content_type": "image/jpeg"}
        )
        created.raise_for_status()
        upload = created.json()["upload"]
        self.outside.put(upload["url"], content=data, headers=upload["headers"]).raise_for_status()
        image_id: str = created.json()["id"]
        return image_id

    def complete(self, image_id: str) -> None:
        response = self.client.post(f"/v1/images/{image_id}/complete")
        response.raise_for_status()
        assert response.json()["status"] == "ready"

    def direct(self, data: bytes) -> str:
        image_id = self.start_and_put(data)
        self.complete(image_id)
        return image_id

    def delete(self, image_id: str) -> None:
        self.client.delete(f"/v1/images/{image_id}").raise_for_status()


def placeholder_cpu(data: bytes) -> float:
    from imagesvc.imaging import render

    render.configure(100_000_000)
    started = time.process_time()
    for _ in range(5):
        render.placeholder(data)
    return (time.process_time() - started) / 5


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def cpu_per_image(
    server: psutil.Process, api: Api, upload: Callable[[bytes], str], data: bytes, count: int
) -> float:
    made = []
    before = cpu_seconds(server)
    for _ in range(count):
        made.append(upload(data))
    spent = cpu_seconds(server) - before
    for image_id in made:  # outside the measurement
        api.delete(image_id)
    return spent / count


def wall(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(quick: bool) -> str:
    work = Path(tempfile.mkdtemp(prefix="imagesvc-bench-direct-"))
    rounds, per_round, timings = (1, 3, 2) if quick else (3, 8, 5)
    five, twenty_five = jpeg_of_about(5 * MIB), jpeg_of_about(25 * MIB - 64 * 1024)
    with services(work) as (database, endpoint):
        env = imagesvc_env(database, endpoint)
        process, url = start_imagesvc(work, env)
        try:
            server = psutil.Process(process.pid)
            api = Api(url, f"Bearer {create_key(env, 'bench-direct')}")
            api.delete(api.through(five))  # warm both paths up (imports, pools, first key)
            api.delete(api.direct(five))
            through_cpu, create_cpu, complete_cpu, ratios = [], [], [], []
            for _ in range(rounds):  # interleaved: drift hits both alike
                ours = cpu_per_image(server, api, api.through, five, per_round)
                before = cpu_seconds(server)
                started = [api.start_and_put(five) for _ in range(per_round)]
                middle = cpu_seconds(server)  # the PUTs go to rclone: no API CPU
                for image_id in started:
                    api.complete(image_id)
                after = cpu_seconds(server)
                for image_id in started:
                    api.delete(image_id)
                through_cpu.append(ours)
                create_cpu.append((middle - before) / per_round)
                complete_cpu.append((after - middle) / per_round)
                ratios.append((after - before) / per_round / ours)
            rows = []
            for label, data in (("5 MiB", five), ("25 MiB", twenty_five)):
                completes, uploads = [], []
                for _ in range(timings):
                    image_id = api.start_and_put(data)
                    completes.append(wall(lambda image_id=image_id: api.complete(image_id)))
                    api.delete(image_id)
                    started = time.perf_counter()
                    made = api.through(data)
                    uploads.append(time.perf_counter() - started)
                    api.delete(made)
                complete_s, upload_s = statistics.median(completes), statistics.median(uploads)
                rows.append(
                    f"| {label} ({len(data) / MIB:.1f} MiB JPEG) | {complete_s * 1000:.0f} ms | "
                    f"{upload_s * 1000:.0f} ms | {complete_s / upload_s:.2f}x |"
                )
        finally:
            process.stop()
    ratio = statistics.median(ratios)
    decode = placeholder_cpu(five)
    spread = f"{min(ratios):.2f} to {max(ratios):.2f}x per round"
    return (
        f"{BEGIN}\n"
        "## 6. Direct uploads (bench/direct.py)\n\n"
        f"rclone `serve s3`, MariaDB, one `imagesvc serve` process; {rounds} interleaved "
        f"rounds of {per_round} images. Machine: {machine()}\n\n"
        "API process CPU seconds per 5 MiB image (psutil `cpu_times`, user + system, of the "
        "server process):\n\n"
        f"| path | CPU s / image (median of {rounds} rounds) |\n|---|---:|\n"
        f"| through `POST /v1/images` | {statistics.median(through_cpu):.3f} |\n"
        f"| direct: `POST /v1/images/direct` (the PUT goes to the store) | {statistics.median(create_cpu):.3f} |\n"
        f"| direct: `complete` | {statistics.median(complete_cpu):.3f} |\n\n"
        f"**direct / through = {ratio:.2f}x** ({spread}). Both paths decode the image for "
        f"its placeholder: {decode * 1000:.0f} ms of CPU for this one, measured alone "
        "(psutil's clock ticks are 10 ms: each figure is a round's total over its images).\n\n"
        "Wall time of `complete` (HEAD, server-side copy, one streamed read with probe and "
        "sha256, placeholder, mark ready, delete the landing key), next to uploading the same "
        f"bytes through `POST /v1/images` (median of {timings}):\n\n"
        "| image | complete | POST /v1/images | complete / upload |\n|---|---:|---:|---:|\n"
        + "\n".join(rows)
        + "\n\n"
        "Reading: `complete` still reads every byte once, from the store (which is not "
        "trusted: type, pixels and sha256 come from the bytes), hashes it and decodes it for "
        "the placeholder, as an upload through the API does. Direct uploads remove receiving "
        "the body from the client and the PutObject, and add the store calls of `complete` "
        "(HEAD, CopyObject, GET, DELETE) and its database steps, so the API's CPU per image "
        "stays about the same. What they save is the API's inbound bandwidth and its time: "
        "the client's transfer (seconds to minutes on a mobile network) never holds an API "
        "request or connection; `complete` holds one for the times above.\n"
        f"{END}"
    )


def write_section(out: Path, section: str) -> None:
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    elif "\n## What was profiled" in text:  # before the notes bench/run.py appends
        head, _, tail = text.partition("\n## What was profiled")
        text = f"{head.rstrip()}\n\n{section}\n\n## What was profiled{tail}"
    else:
        text = f"{text.rstrip()}\n\n{section}\n"
    out.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer images, one round")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    section = measure(args.quick)
    print(section)
    write_section(Path(args.out), section)
    print(f"wrote its section of {args.out}")


if __name__ == "__main__":
    main()
