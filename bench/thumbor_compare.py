"""imagesvc vs thumbor on the same 12-megapixel JPEG and machine: renders per second and peak
RSS growth for -> 256 px JPEG and -> 1024 px WebP, 1 and 2 concurrent clients. The ratio
imagesvc/thumbor is the headline (absolute numbers drift on a noisy machine).

    python bench/thumbor_compare.py [--seconds 5] [--thumbor-python PATH]

thumbor (PyPI; it pins Pillow < 13) lives in its own venv, never in the repo's: by default
/tmp/imagesvc-bench-thumbor-venv, created with `python3 -m venv` + `pip install thumbor` when
missing. Three things are measured, each case in a fresh process:

- thumbor's real server (default PIL engine, file loader, no storage, no result storage,
  RESPECT_ORIENTATION=True), driven over HTTP on 127.0.0.1 with keep-alive clients;
- imagesvc's real server (`python -m imagesvc serve`, SQLite + local storage) over HTTP,
  every request for a box it has not rendered yet: variants are render-once, so this is the
  cold path (read source, render, store the variant, record it, serve it), counted as fresh
  renders by the server's own imagesvc_renders_total;
- imagesvc's render function in-process, exactly as bench/variants.py measures it.

Every response is checked to decode to the expected size and format. The last lines are one
per cell for bench/run.py to read (the table is for people):

    RESULT case=1024-webp clients=2 thumbor=6.900 http=13.200 render=15.500
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import io
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from PIL import Image

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = Path("/tmp/imagesvc-bench-thumbor-venv")
# Oriented (EXIF orientation 6 applied) output of the 4000x3000 source.
EXPECTED = {"256-jpeg": ((192, 256), "JPEG"), "1024-webp": ((768, 1024), "WEBP")}
MAX_BOX = 16384  # IMAGESVC_VARIANT_MAX_DIMENSION for the run: room for distinct boxes
THUMBOR_MAIN = "import sys; from thumbor.server import main; sys.exit(main(sys.argv[1:]))"
PROBE = (
    "import json, sys, PIL, thumbor; from PIL import features; print(json.dumps({"
    "'python': sys.version.split()[0], 'thumbor': thumbor.__version__, "
    "'pillow': PIL.__version__, 'libjpeg_turbo': features.version('libjpeg_turbo'), "
    "'webp': features.version('webp')}))"
)


def load_variants() -> ModuleType:
    """bench/variants.py as a module (source_image, CASES, run), unmodified."""
    spec = importlib.util.spec_from_file_location("bench_variants", HERE / "variants.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


variants = load_variants()


# --- the thumbor environment ---------------------------------------------------------------


def probe(python: str) -> dict[str, str] | None:
    try:
        result = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=120)
    except OSError:
        return None
    if result.returncode != 0:
        return None
    info: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return info


def thumbor_python(given: str | None) -> tuple[str, dict[str, str]]:
    if given:
        info = probe(given)
        if info is None:
            raise SystemExit(f"--thumbor-python {given}: cannot import thumbor there")
        return given, info
    python = str(DEFAULT_VENV / "bin" / "python")
    info = probe(python)
    if info is None:
        base = shutil.which("python3") or sys.executable
        print(f"creating {DEFAULT_VENV} and installing thumbor from PyPI ...", file=sys.stderr)
        if not Path(python).exists():
            subprocess.run([base, "-m", "venv", str(DEFAULT_VENV)], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "thumbor"], check=True)
        info = probe(python)
        if info is None:
            raise SystemExit(f"thumbor does not import in {DEFAULT_VENV}")
    return python, info


def local_versions() -> dict[str, str]:
    import PIL
    from PIL import features

    return {
        "python": sys.version.split()[0],
        "pillow": PIL.__version__,
        "libjpeg_turbo": str(features.version("libjpeg_turbo")),
        "webp": str(features.version("webp")),
    }


# --- servers and load ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(process: subprocess.Popen[bytes]) -> None:
    """The whole process group (the server runs in its own session): TERM, then KILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int


@contextlib.contextmanager
def server(
    argv: Callable[[int], list[str]], env: dict[str, str], health: str, log: Path, cwd: Path
) -> Iterator[Server]:
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv(port),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{argv(port)[0]} exited at start:\n{tail(log)}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", health)
                if conn.getresponse().status == 200:
                    conn.close()
                    break
                conn.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready within 60 s:\n{tail(log)}")
            time.sleep(0.1)
        yield Server(process, port)
    except BaseException:
        print(f"--- last lines of {log}:\n{tail(log)}", file=sys.stderr)
        raise
    finally:
        stop(process)


@dataclass
class Load:
    rate: float
    rss_growth_mb: float
    requests: int
    sample: bytes


def fetch(
    conn: http.client.HTTPConnection, path: str, headers: dict[str, str], expect: tuple
) -> bytes:
    """One request; the body must be an image of the expected size and format."""
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
    with Image.open(io.BytesIO(body)) as image:  # parses the header only
        if (image.size, image.format) != expect:
            raise RuntimeError(f"GET {path}: {image.format} {image.size}, expected {expect}")
    return body


def drive(
    port: int,
    pid: int,
    paths: Callable[[], str],
    headers: dict[str, str],
    clients: int,
    seconds: float,
    expect: tuple,
) -> Load:
    """Like variants.measure: baseline RSS, two warm-up requests, then `clients` keep-alive
    connections requesting back to back until the deadline."""
    sampler = variants.PeakRss(pid)
    sampler.start()
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=300) for _ in range(clients)]
    done = [0] * clients
    errors: list[BaseException] = []
    try:
        sample = fetch(conns[0], paths(), headers, expect)
        fetch(conns[0], paths(), headers, expect)
        deadline = time.perf_counter() + seconds

        def loop(index: int) -> None:
            try:
                while time.perf_counter() < deadline:
                    fetch(conns[index], paths(), headers, expect)
                    done[index] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
    finally:
        sampler.stop.set()
        sampler.join()
        for conn in conns:
            conn.close()
    if errors:
        raise errors[0]
    growth = (sampler.peak - sampler.baseline) / 2**20
    return Load(sum(done) / elapsed, growth, sum(done) + 2, sample)


# --- thumbor ---------------------------------------------------------------------------------


def thumbor_conf(path: Path, root: Path, threads: int, orient: bool) -> None:
    path.write_text(
        f"LOADER = 'thumbor.loaders.file_loader'\n"
        f"FILE_LOADER_ROOT_PATH = {str(root)!r}\n"
        "STORAGE = 'thumbor.storages.no_storage'  # no cached originals either\n"
        "RESULT_STORAGE = None  # every request renders\n"
        "ENGINE = 'thumbor.engines.pil'\n"
        f"ENGINE_THREADPOOL_SIZE = {threads}  # default 0: all work on the IOLoop thread\n"
        "ALLOW_UNSAFE_URL = True\n"
        "AUTO_WEBP = False\n"
        "QUALITY = 82\n"
        "WEBP_QUALITY = 80\n"
        "PRESERVE_EXIF_INFO = False\n"
        f"RESPECT_ORIENTATION = {orient}\n"
        "MAX_AGE = 0  # no Cache-Control\n"
    )


def run_thumbor(
    python: str, work: Path, case: str, clients: int, seconds: float, *, orient: bool = True
) -> Load:
    box, fmt = variants.CASES[case]
    conf = work / f"thumbor-{case}-{clients}-{orient}.conf"
    thumbor_conf(conf, work / "source", os.cpu_count() or 1, orient)
    size, pil_format = EXPECTED[case]
    expect = (size if orient else (size[1], size[0]), pil_format)
    base = f"/unsafe/fit-in/{box[0]}x{box[1]}/filters:format({fmt})/img.jpg"
    counter = itertools.count()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}

    def argv(port: int) -> list[str]:
        listen = ["--ip", "127.0.0.1", "--port", str(port)]
        return [python, "-c", THUMBOR_MAIN, *listen, "--conf", str(conf), "--log-level", "warning"]

    def path() -> str:
        # A unique query string per request: nothing on the way can serve a cached copy.
        return f"{base}?n={next(counter)}"

    with server(argv, env, "/healthcheck", work / "thumbor.log", work) as srv:
        return drive(srv.port, srv.process.pid, path, {}, clients, seconds, expect)


# --- imagesvc over HTTP ----------------------------------------------------------------------


class Imagesvc:
    """A SQLite + local-storage deployment in `work`, one uploaded copy of the source."""

    def __init__(self, work: Path, source: bytes) -> None:
        self.work = work / "imagesvc"
        self.work.mkdir()
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("IMAGESVC_") and k != "PROMETHEUS_MULTIPROC_DIR"
        }
        self.env.update(
            IMAGESVC_DATABASE_URL=f"sqlite+aiosqlite:///{self.work}/imagesvc.db",
            IMAGESVC_STORAGE_LOCAL_ROOT=str(self.work / "objects"),
            IMAGESVC_SERVE_MODE="proxy",
            IMAGESVC_VARIANT_MAX_DIMENSION=str(MAX_BOX),
            IMAGESVC_SHUTDOWN_GRACE_SECONDS="1",
        )
        self.cli([sys.executable, "-m", "imagesvc", "migrate"])
        created = self.cli([sys.executable, "-m", "imagesvc", "keys", "create", "--owner", "bench"])
        self.headers = {"Authorization": f"Bearer {created.strip().splitlines()[-1]}"}
        # Boxes W x H with W from the box's own width up all give the same oriented output
        # (the height limits), yet each is a variant never rendered before.
        self.widths = {case: itertools.count(box[0]) for case, (box, _) in variants.CASES.items()}
        with self.server() as srv:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
            headers = {**self.headers, "Content-Type": "image/jpeg"}
            conn.request("POST", "/v1/images", body=source, headers=headers)
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status != 201:
                raise RuntimeError(f"upload: {response.status} {body[:300]!r}")
            self.image_id = json.loads(body)["id"]

    def cli(self, argv: list[str]) -> str:
        result = subprocess.run(argv, env=self.env, cwd=self.work, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[2:])}: {result.stdout}{result.stderr}")
        return result.stdout

    def server(self) -> contextlib.AbstractContextManager[Server]:
        def argv(port: int) -> list[str]:
            return [sys.executable, "-m", "imagesvc", "serve", "--port", str(port)]

        return server(argv, self.env, "/healthz", self.work / "imagesvc.log", self.work)

    def rendered(self, port: int, fmt: str) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        pattern = rf'^imagesvc_renders_total\{{format="{fmt}",outcome="rendered"\}} (\S+)$'
        found = re.search(pattern, text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def run(self, case: str, clients: int, seconds: float) -> Load:
        box, fmt = variants.CASES[case]
        widths = self.widths[case]

        def path() -> str:
            width = next(widths)
            if width > MAX_BOX:
                raise RuntimeError("out of distinct variant boxes: use fewer --seconds")
            return f"/v1/images/{self.image_id}/variants/{width}x{box[1]}?format={fmt}"

        with self.server() as srv:
            before = self.rendered(srv.port, fmt)
            load = drive(
                srv.port, srv.process.pid, path, self.headers, clients, seconds, EXPECTED[case]
            )
            renders = self.rendered(srv.port, fmt) - before
        if renders != load.requests:
            raise RuntimeError(f"{load.requests} requests but {renders:.0f} fresh renders")
        return load


# --- report ----------------------------------------------------------------------------------


def describe(body: bytes) -> str:
    with Image.open(io.BytesIO(body)) as image:
        exif = dict(image.getexif())
        icc = "ICC" if image.info.get("icc_profile") else "no ICC"
        meta = f"EXIF tags {sorted(exif)}" if exif else "no EXIF"
        return f"{image.width}x{image.height} {image.format} {len(body)} B, {meta}, {icc}"


def versions(label: str, info: dict[str, str]) -> str:
    extra = f"thumbor {info['thumbor']}, " if "thumbor" in info else ""
    return (
        f"{label}: {extra}Python {info['python']}, Pillow {info['pillow']} "
        f"(libjpeg-turbo {info['libjpeg_turbo']}, libwebp {info['webp']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--thumbor-python", help=f"an interpreter with thumbor installed (default: {DEFAULT_VENV})"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that servers are stopped

    python, thumbor_info = thumbor_python(args.thumbor_python)
    work = Path(tempfile.mkdtemp(prefix="imagesvc-bench-thumbor-"))
    try:
        (work / "source").mkdir()
        source = variants.source_image()
        source_path = work / "source" / "img.jpg"
        source_path.write_bytes(source)
        print(
            f"source: 4000x3000 JPEG, {len(source) / 1e6:.1f} MB, EXIF orientation 6 + GPS, "
            f"sRGB ICC; nproc={os.cpu_count()}; {args.seconds:g} s per cell"
        )
        print(versions("thumbor venv", thumbor_info))
        print(versions("imagesvc venv", local_versions()))
        service = Imagesvc(work, source)
        print(
            "\n| case | clients (threads) | thumbor HTTP renders/s | imagesvc HTTP renders/s "
            "| ratio HTTP | imagesvc render() renders/s | ratio render() | thumbor RSS MB "
            "| imagesvc HTTP RSS MB | imagesvc render() RSS MB |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        samples: dict[str, tuple[bytes, bytes]] = {}
        results: list[str] = []
        for case in variants.CASES:
            for clients in (1, 2):
                theirs = run_thumbor(python, work, case, clients, args.seconds)
                ours = service.run(case, clients, args.seconds)
                func = variants.run("service", case, clients, args.seconds, str(source_path))
                samples[case] = (theirs.sample, ours.sample)
                print(
                    f"| {case} | {clients} | {theirs.rate:.1f} | {ours.rate:.1f} | "
                    f"**{ours.rate / theirs.rate:.2f}x** | {func['rate']:.1f} | "
                    f"{func['rate'] / theirs.rate:.2f}x | {theirs.rss_growth_mb:.0f} | "
                    f"{ours.rss_growth_mb:.0f} | {func['rss_growth_mb']:.0f} |",
                    flush=True,
                )
                results.append(
                    f"RESULT case={case} clients={clients} thumbor={theirs.rate:.3f} "
                    f"http={ours.rate:.3f} render={func['rate']:.3f}"
                )
        print("\nthumbor with RESPECT_ORIENTATION=False (sideways output; for reference only):")
        for case in variants.CASES:
            raw = run_thumbor(python, work, case, 1, args.seconds, orient=False)
            print(f"- {case}, 1 client: {raw.rate:.1f} renders/s, RSS {raw.rss_growth_mb:.0f} MB")
        print("\noutputs (every response was checked for size and format):")
        for case, (theirs_body, ours_body) in samples.items():
            print(f"- {case}: thumbor {describe(theirs_body)}")
            print(f"- {case}: imagesvc {describe(ours_body)}")
        print(
            "\nthumbor: its real server, 1 process, ENGINE_THREADPOOL_SIZE=nproc, file loader, "
            "no storage/result storage.\nimagesvc HTTP: `imagesvc serve` (1 worker, render "
            "pool of nproc threads), SQLite + local storage, each request a variant never "
            "rendered before\n(read source, render, store, record, serve), verified against "
            "imagesvc_renders_total. imagesvc render(): in-process, as bench/variants.py."
        )
        print("\n" + "\n".join(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
