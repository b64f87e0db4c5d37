"""Variant rendering as the service does it (imagesvc.imaging.render), on a 12-megapixel
JPEG and the same picture as an iPhone-style HEIC: renders per second and peak RSS growth for
-> 256 px JPEG and -> 1024 px WebP, and the upload-time placeholder cost. The baseline,
measured in the same run, is the naive Pillow path (full decode, then resize): ratios hold
on a noisy machine where absolute times drift.

    python bench/variants.py [--seconds 5]

Each case runs in a fresh process so that peak RSS belongs to that case alone.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psutil
from PIL import Image, ImageCms, ImageOps

CASES = {
    "256-jpeg": ((256, 256), "jpeg"),
    "1024-webp": ((1024, 1024), "webp"),
}


def _picture() -> tuple[Image.Image, bytes, bytes]:
    """4000x3000 with detail; EXIF with orientation 6 and GPS; an sRGB profile."""
    base = Image.effect_mandelbrot((4000, 3000), (-2.2, -1.2, 1.0, 1.2), 80).convert("RGB")
    noise = Image.effect_noise((4000, 3000), 24).convert("RGB")
    picture = Image.blend(base, noise, 0.15)
    exif = Image.Exif()
    exif[0x0112] = 6
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (52.0, 31.0, 12.0)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return picture, exif.tobytes(), srgb


def source_image() -> bytes:
    """4000x3000 JPEG q90 with detail, EXIF orientation 6, GPS and an sRGB profile."""
    picture, exif, srgb = _picture()
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90, exif=exif, icc_profile=srgb)
    return buffer.getvalue()


def heic_source() -> bytes:
    """The same picture as an iPhone writes it: HEVC in 512 px grid tiles, 8 bits, the
    rotation in irot and in EXIF (orientation 6), GPS, an ICC profile. Encoded with
    pillow-heif (dev extra: it bundles x265); the service decodes with pi-heif."""
    import pillow_heif

    picture, exif, srgb = _picture()
    buffer = io.BytesIO()
    pillow_heif.encode(
        "RGB",
        picture.size,
        picture.tobytes(),
        buffer,
        quality=50,  # about the JPEG's bytes (2.4 MB) and an iPhone's (2-3 MB)
        tile_size=512,
        exif=exif,
        icc_profile=srgb,
    )
    return buffer.getvalue()


def naive(source: bytes, box: tuple[int, int], fmt: str) -> bytes:
    """What a tutorial does: decode everything, orient, thumbnail, save."""
    with Image.open(io.BytesIO(source)) as image:
        picture = ImageOps.exif_transpose(image).convert("RGB")
        picture.thumbnail(box, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        picture.save(out, fmt.upper(), quality=82 if fmt == "jpeg" else 80)
        return out.getvalue()


def service(source: bytes, box: tuple[int, int], fmt: str) -> bytes:
    from imagesvc.imaging.render import Fit, OutputFormat, render

    return render(source, box, Fit.CONTAIN, OutputFormat(fmt)).data


def measure(func: Callable[[], object], seconds: float, threads: int) -> float:
    func()
    func()
    done = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        while time.perf_counter() < deadline:
            list(pool.map(lambda _: func(), range(threads)))
            done += threads
    return done / (time.perf_counter() - start)


class PeakRss(threading.Thread):
    """Samples a process's RSS (this one by default) every 5 ms: ru_maxrss misses
    short-lived peaks allocated and freed between reads, and counts import-time peaks.
    The other benchmarks use it too."""

    def __init__(self, pid: int | None = None) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            with contextlib.suppress(psutil.Error):  # the process may exit first
                self.peak = max(self.peak, self.process.memory_info().rss)


def worker(kind: str, case: str, threads: int, seconds: float, path: str) -> None:
    with open(path, "rb") as handle:
        source = handle.read()
    if kind == "naive" and path.endswith(".heic"):
        import pi_heif  # the decoder the service uses, registered the plain way

        pi_heif.register_heif_opener()
    sampler = PeakRss()
    sampler.start()
    if kind == "placeholder":
        from imagesvc.imaging.render import placeholder

        rate = measure(lambda: placeholder(source), seconds, threads)
    else:
        box, fmt = CASES[case]
        func = naive if kind == "naive" else service
        rate = measure(lambda: func(source, box, fmt), seconds, threads)
    sampler.stop.set()
    sampler.join()
    growth = (sampler.peak - sampler.baseline) / 2**20
    print(json.dumps({"rate": rate, "rss_growth_mb": growth}))


def run(kind: str, case: str, threads: int, seconds: float, path: str) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--worker", kind, case, str(threads), str(seconds), path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--worker", nargs=5)
    args = parser.parse_args()
    if args.worker:
        kind, case, threads, seconds, path = args.worker
        worker(kind, case, int(threads), float(seconds), path)
        return
    sources = {
        "JPEG": ("/tmp/imagesvc-bench-12mp.jpg", source_image, "q90"),
        "HEIC": ("/tmp/imagesvc-bench-12mp.heic", heic_source, "x265 q50, 512 px grid, 8-bit"),
    }
    for path, make, _ in sources.values():
        with open(path, "wb") as handle:
            handle.write(make())
    for name, (path, _, how) in sources.items():
        size = os.path.getsize(path)
        print(
            f"source: 4000x3000 {name} ({how}), {size / 1e6:.1f} MB, orientation 6; "
            f"nproc={os.cpu_count()}"
        )
    print(
        "\n| source | case | threads | naive renders/s | imagesvc renders/s | ratio | naive RSS MB | imagesvc RSS MB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, (path, _, _) in sources.items():
        for case in CASES:
            for threads in (1, 2):
                base = run("naive", case, threads, args.seconds, path)
                ours = run("service", case, threads, args.seconds, path)
                print(
                    f"| {name} | {case} | {threads} | {base['rate']:.1f} | {ours['rate']:.1f} | "
                    f"{ours['rate'] / base['rate']:.2f}x | {base['rss_growth_mb']:.0f} | "
                    f"{ours['rss_growth_mb']:.0f} |"
                )
    print()
    for name, (path, _, _) in sources.items():
        placeholder = run("placeholder", "", 1, args.seconds, path)
        print(
            f"placeholder (blurhash + dominant colour) on the 12 MP {name}: "
            f"{1000 / placeholder['rate']:.1f} ms each, RSS growth {placeholder['rss_growth_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
