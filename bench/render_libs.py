#!/usr/bin/env python3
"""Benchmark image-rendering libraries for the image service: Pillow vs pyvips.

Usage:  python bench/render_libs.py [--seconds N]

Depends only on Pillow, psutil and (optionally) pyvips.  If pyvips is not
importable, only Pillow is measured.  The optional blurhash micro-benchmark
uses the ``blurhash`` (pure Python) and/or ``blurhash-python`` (C) packages
when they are installed and is skipped otherwise.

What it does:
  1. Builds a photo-like 12 MP JPEG (4000x3000, q90) in memory with EXIF
     Orientation=6, a GPS IFD and an embedded sRGB ICC profile.
  2. For each library/mode and two tasks (fit 256 -> JPEG q82, fit 1024 ->
     WebP q80) measures renders/s with 1 and 2 threads and the peak RSS growth.
     Every measurement runs in a fresh subprocess so the peak RSS of one does
     not hide another's.  Each output is decoded with Pillow and checked for
     size (auto-rotated => portrait), absence of EXIF/GPS and an sRGB profile.
  3. Times blurhash (4x3) on a ~32 px thumbnail and a 1/8-scale draft decode to
     compute a dominant colour.
  4. Prints Markdown tables, ratios and versions.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import psutil
from PIL import ExifTags, Image, ImageChops, ImageCms, ImageOps, features

try:
    import pyvips

    HAVE_VIPS = True
    VIPS_IMPORT_ERROR = ""
except Exception as exc:  # ImportError or OSError when libvips is missing
    pyvips = None
    HAVE_VIPS = False
    VIPS_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

SRC_W, SRC_H = 4000, 3000
TASKS = {
    # name: (box, format, quality, expected output size after auto-rotation)
    "fit256-jpeg-q82": (256, "JPEG", 82, (192, 256)),
    "fit1024-webp-q80": (1024, "WEBP", 80, (768, 1024)),
}
IMPLS = {
    "pillow-nodraft": "Pillow, no draft",
    "pillow-draft": "Pillow + draft (>=2x target)",
    "pillow-draft1x": "Pillow + draft (>=1x target)",
    "pyvips": "pyvips (default concurrency)",
    "pyvips-c1": "pyvips VIPS_CONCURRENCY=1",
}
GPS_IFD = 0x8825
ORIENTATION = 0x0112

SRGB_PROFILE = ImageCms.createProfile("sRGB")
SRGB_ICC = ImageCms.ImageCmsProfile(SRGB_PROFILE).tobytes()


# --------------------------------------------------------------------------
# Source image
# --------------------------------------------------------------------------
def make_source_jpeg() -> bytes:
    """A photo-like 12 MP JPEG: gradients + fractal edges + grain, ~3-6 MB."""
    size = (SRC_W, SRC_H)
    r = Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)
    g = Image.radial_gradient("L").resize(size, Image.Resampling.BILINEAR)
    m = Image.effect_mandelbrot((1000, 750), (-2.2, -1.2, 1.0, 1.2), 100).resize(
        size, Image.Resampling.BICUBIC
    )
    b = Image.blend(m, r.transpose(Image.Transpose.ROTATE_180), 0.5)
    base = Image.merge("RGB", (Image.blend(r, m, 0.3), Image.blend(g, m, 0.5), b))
    noise = Image.merge("RGB", [Image.effect_noise(size, 10) for _ in range(3)])
    img = ImageChops.add(base, noise, 1.0, -128)  # zero-mean sensor-like grain

    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "BenchCam"
    exif[ExifTags.Base.Model] = "RenderBench 1"
    exif[ExifTags.Base.Orientation] = 6  # stored landscape, displayed portrait
    exif[ExifTags.Base.DateTime] = "2024:05:01 12:00:00"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 22.0, 12.5)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (4.0, 53.0, 42.0)

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes(), icc_profile=SRGB_ICC)
    return buf.getvalue()


# --------------------------------------------------------------------------
# Helpers shared by both libraries
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def is_srgb_icc(icc: bytes) -> bool:
    if icc == SRGB_ICC:
        return True
    try:
        prof = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return "srgb" in ImageCms.getProfileDescription(prof).lower()
    except Exception:
        return False


def fit(w: int, h: int, box: int) -> tuple[int, int]:
    scale = min(box / w, box / h, 1.0)
    return max(1, round(w * scale)), max(1, round(h * scale))


def verify(out: bytes, expected: tuple[int, int], fmt: str) -> dict:
    """Decode an output with Pillow and check size, metadata and profile."""
    with Image.open(io.BytesIO(out)) as im:
        im.load()
        exif = im.getexif()
        icc = im.info.get("icc_profile")
        res = {
            "format": im.format,
            "size": list(im.size),
            "exif_tags": len(exif),
            "gps": GPS_IFD in exif,
            "orientation_tag": exif.get(ORIENTATION),
            "xmp": bool(im.info.get("xmp")),
            "icc": bool(icc),
            "icc_srgb": bool(icc) and is_srgb_icc(icc),
            "bytes": len(out),
        }
    # "keep/convert to sRGB": an sRGB profile, or no profile (untagged == sRGB).
    res["ok"] = (
        res["format"] == fmt
        and tuple(res["size"]) == tuple(expected)
        and not res["gps"]
        and res["orientation_tag"] is None
        and (res["icc_srgb"] or not res["icc"])
    )
    return res


# --------------------------------------------------------------------------
# Renderers
# --------------------------------------------------------------------------
def render_pillow(data: bytes, box: int, fmt: str, quality: int, draft: int) -> bytes:
    """draft=0: full decode; draft=N: JPEG DCT-scaled decode to >= N x the final size."""
    with Image.open(io.BytesIO(data)) as src:
        if draft:
            # JPEG DCT scaling: ask for >= draft x the final size (2 ~ reducing_gap=2,
            # the same margin libvips' shrink-on-load leaves) in *stored*
            # orientation, i.e. before exif_transpose.
            orient = src.getexif().get(ORIENTATION, 1)
            sw, sh = src.size
            rotated = orient in (5, 6, 7, 8)
            dw, dh = fit(sh, sw, box) if rotated else fit(sw, sh, box)
            if rotated:
                dw, dh = dh, dw
            src.draft("RGB", (dw * draft, dh * draft))
        im = ImageOps.exif_transpose(src)  # decodes; returns a new image
    if im.mode != "RGB":
        im = im.convert("RGB")
    im.thumbnail((box, box), Image.Resampling.LANCZOS, reducing_gap=2.0)
    icc = im.info.get("icc_profile")
    if icc and not is_srgb_icc(icc):
        im = ImageCms.profileToProfile(
            im, ImageCms.ImageCmsProfile(io.BytesIO(icc)), SRGB_PROFILE, outputMode="RGB"
        )
        icc = SRGB_ICC
    out = io.BytesIO()
    # No exif= argument: Pillow only writes EXIF when asked to. Keep the ICC.
    im.save(out, fmt, quality=quality, icc_profile=icc or None)
    return out.getvalue()


def vips_suffix(fmt: str, quality: int, keep_icc: bool = True) -> str:
    ext = ".jpg" if fmt == "JPEG" else ".webp"
    if keep_icc and pyvips.at_least_libvips(8, 15):
        return f"{ext}[Q={quality},keep=icc]"  # drop EXIF/XMP/IPTC, keep ICC
    return f"{ext}[Q={quality},strip]"


def render_vips(data: bytes, box: int, fmt: str, quality: int, keep_icc: bool = True) -> bytes:
    im = pyvips.Image.thumbnail_buffer(data, box, height=box, size="down", no_rotate=False)
    if im.get_typeof("icc-profile-data"):
        icc = im.get("icc-profile-data")
        if not is_srgb_icc(bytes(icc)):
            im = im.icc_transform("srgb", embedded=True)
    return im.write_to_buffer(vips_suffix(fmt, quality, keep_icc))


def make_renderer(impl: str, task: str):
    box, fmt, q, _ = TASKS[task]
    if impl == "pillow-nodraft":
        return lambda d: render_pillow(d, box, fmt, q, draft=0)
    if impl == "pillow-draft":
        return lambda d: render_pillow(d, box, fmt, q, draft=2)
    if impl == "pillow-draft1x":
        return lambda d: render_pillow(d, box, fmt, q, draft=1)
    if impl in ("pyvips", "pyvips-c1"):
        return lambda d: render_vips(d, box, fmt, q)
    raise ValueError(impl)


# --------------------------------------------------------------------------
# Worker (one measurement per fresh process)
# --------------------------------------------------------------------------
def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> None:
    try:  # Linux >= 4.0: reset the peak-RSS high-water mark
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    hwm = _vm_hwm_bytes()
    if hwm is not None:
        return hwm
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def run_worker(impl: str, task: str, threads: int, seconds: float, path: str) -> dict:
    if impl.startswith("pyvips"):
        if not HAVE_VIPS:
            raise SystemExit("pyvips not importable")
        pyvips.cache_set_max(0)  # no operation cache: honest timings, low memory
        if impl == "pyvips-c1":
            pyvips.concurrency_set(1)
    with open(path, "rb") as fh:
        data = fh.read()
    render = make_renderer(impl, task)
    proc = psutil.Process()
    _reset_hwm()
    rss0 = proc.memory_info().rss

    outs = [render(data) for _ in range(2)]  # warm-up
    check = verify(outs[-1], TASKS[task][3], TASKS[task][1])
    del outs

    def loop(deadline: float) -> int:
        n = 0
        while time.perf_counter() < deadline:
            render(data)
            n += 1
        return n

    cpu0 = proc.cpu_times()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    if threads == 1:
        count = loop(deadline)
    else:
        with ThreadPoolExecutor(threads) as ex:
            count = sum(f.result() for f in [ex.submit(loop, deadline) for _ in range(threads)])
    elapsed = time.perf_counter() - t0
    cpu1 = proc.cpu_times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "impl": impl,
        "task": task,
        "threads": threads,
        "renders": count,
        "elapsed": elapsed,
        "rps": count / elapsed,
        "cpu_ms_per_render": 1000 * cpu / max(count, 1),
        "peak_growth_mb": (_peak_rss_bytes() - rss0) / 2**20,
        "check": check,
    }


def spawn_worker(impl: str, task: str, threads: int, seconds: float, path: str) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--impl",
        impl,
        "--task",
        task,
        "--threads",
        str(threads),
        "--seconds",
        str(seconds),
        "--input",
        path,
    ]
    env = dict(os.environ)
    if impl == "pyvips-c1":
        env["VIPS_CONCURRENCY"] = "1"
    else:
        env.pop("VIPS_CONCURRENCY", None)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return {"impl": impl, "task": task, "threads": threads, "error": res.stderr.strip()[-500:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------
# Micro-benchmarks: blurhash and dominant colour
# --------------------------------------------------------------------------
def timeit(fn, budget: float, min_runs: int = 3) -> float:
    """Seconds per call, repeated for ~budget seconds after one warm-up."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n < min_runs or time.perf_counter() - t0 < budget:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def blurhash_impls() -> dict:
    """Returns {label: encode(PIL.Image) -> str}.

    Note: `blurhash` (pure Python) and `blurhash-python` (C/cffi) install the
    same import package `blurhash`; with both installed, blurhash-python's
    __init__ wins and the pure implementation survives as `blurhash.blurhash`.
    """
    impls = {}
    try:
        import blurhash as bh
    except ImportError:
        return impls

    def to_rows(img):  # pure version wants rows of (r, g, b) tuples
        w, h = img.size
        px = img.load()
        return [[px[x, y] for x in range(w)] for y in range(h)]

    if hasattr(bh, "_lib"):  # blurhash-python (C)
        # blurhash-python's encode() closes the image it is given: pass a copy.
        impls["blurhash-python (C)"] = lambda img: bh.encode(img.copy(), 4, 3)
        try:
            from blurhash.blurhash import blurhash_encode as pure
        except ImportError:
            pure = None
    else:
        pure = getattr(bh, "encode", None)
    if pure is not None:
        impls["blurhash (pure Python)"] = lambda img: pure(to_rows(img), 4, 3)
    return impls


def draft_decode(data: bytes, scale: int = 8) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    if scale > 1:
        im.draft("RGB", (im.width // scale, im.height // scale))
    im = ImageOps.exif_transpose(im)
    return im if im.mode == "RGB" else im.convert("RGB")


def mean_colour(data: bytes, scale: int = 8) -> tuple:
    return draft_decode(data, scale).resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))


def dominant_colour(data: bytes) -> tuple:
    im = draft_decode(data, 8)
    im.thumbnail((64, 64), Image.Resampling.BOX)
    q = im.quantize(5, method=Image.Quantize.MEDIANCUT)
    _, idx = max(q.getcolors())
    pal = q.getpalette()
    return tuple(pal[idx * 3 : idx * 3 + 3])


def micro_benchmarks(data: bytes, budget: float) -> list[str]:
    import warnings

    lines = []
    thumb = draft_decode(data, 8)
    thumb.thumbnail((32, 32), Image.Resampling.LANCZOS)
    lines.append(f"Blurhash 4x3 on a {thumb.width}x{thumb.height} RGB thumbnail:")
    lines.append("")
    lines.append("| encoder | µs/encode | hash |")
    lines.append("|---|---:|---|")
    impls = blurhash_impls()
    if not impls:
        lines.append("| (blurhash / blurhash-python not installed) | - | - |")
    res = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for label, enc in impls.items():
            sec = timeit(lambda enc=enc: enc(thumb), budget)
            res[label] = sec
            lines.append(f"| {label} | {sec * 1e6:,.0f} | `{enc(thumb)}` |")
    if len(res) == 2:
        vals = list(res.values())
        lines.append(f"| ratio pure/C | {max(vals) / min(vals):,.0f}x | |")
    dep = {
        str(w.message).split(" and ")[0]
        for w in caught
        if issubclass(w.category, DeprecationWarning)
    }
    for msg in sorted(dep):
        lines.append(f"\nNote: blurhash encode raised DeprecationWarning: {msg}")

    lines.append("")
    lines.append("Dominant colour of the 12 MP JPEG (single thread):")
    lines.append("")
    lines.append("| method | ms/image | colour |")
    lines.append("|---|---:|---|")
    rows = [
        ("draft 1/8 (500x375) → resize 1x1 BOX (mean)", lambda: mean_colour(data, 8)),
        ("draft 1/8 → 64px → quantize(5) top colour", lambda: dominant_colour(data)),
        ("no draft (full 12 MP) → resize 1x1 BOX", lambda: mean_colour(data, 1)),
    ]
    t = {}
    for label, fn in rows:
        t[label] = timeit(fn, budget)
        lines.append(f"| {label} | {t[label] * 1e3:,.1f} | {fn()} |")
    lines.append(f"| ratio no-draft/draft (mean) | {t[rows[2][0]] / t[rows[0][0]]:,.1f}x | |")
    return lines


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
def versions() -> list[str]:
    def v(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    out = [
        f"Python {platform.python_version()} on {platform.platform()}",
        f"nproc={len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}"
        f" (psutil: {psutil.cpu_count()} logical), RAM {psutil.virtual_memory().total / 2**30:.1f} GiB",
        f"Pillow {v('pillow')} (libjpeg-turbo {features.version_feature('libjpeg_turbo')}, libwebp {features.version('webp')},"
        f" littlecms {features.version('littlecms2')})",
        f"psutil {v('psutil')}; blurhash {v('blurhash')}; blurhash-python {v('blurhash-python')}",
    ]
    if HAVE_VIPS:
        out.append(
            f"pyvips {v('pyvips')} (API mode: {pyvips.API_mode}); libvips "
            f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}; pyvips-binary {v('pyvips-binary')};"
            f" default vips concurrency {pyvips.concurrency_get()}"
        )
    else:
        out.append(f"pyvips not importable ({VIPS_IMPORT_ERROR}): measuring Pillow only")
    return out


def describe_check(c: dict) -> str:
    meta = (
        "no EXIF"
        if c["exif_tags"] == 0
        else f"EXIF {c['exif_tags']} tags{' +GPS' if c['gps'] else ''}"
    )
    icc = "sRGB ICC" if c["icc_srgb"] else ("ICC (not sRGB)" if c["icc"] else "no ICC")
    return f"{'OK' if c['ok'] else 'FAIL'} {c['size'][0]}x{c['size'][1]}, {meta}, {icc}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement time per case")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--task", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(run_worker(args.impl, args.task, args.threads, args.seconds, args.input)))
        return

    print("## Render library benchmark\n")
    for line in versions():
        print(f"- {line}")
    if not HAVE_VIPS:
        print(f"\npyvips is not importable ({VIPS_IMPORT_ERROR}); measuring Pillow only.")

    t0 = time.perf_counter()
    data = make_source_jpeg()
    with Image.open(io.BytesIO(data)) as src:
        sexif = src.getexif()
        print(
            f"- source: {src.width}x{src.height} JPEG q90, {len(data) / 1e6:.2f} MB, "
            f"Orientation={sexif.get(ORIENTATION)}, GPS IFD={'yes' if GPS_IFD in sexif else 'no'}, "
            f"ICC={'sRGB' if is_srgb_icc(src.info.get('icc_profile', b'')) else 'no'} "
            f"(built in {time.perf_counter() - t0:.1f} s)"
        )

    impls = [i for i in IMPLS if HAVE_VIPS or not i.startswith("pyvips")]
    results: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory(prefix="renderbench-") as tmp:
        path = os.path.join(tmp, "source.jpg")
        with open(path, "wb") as fh:
            fh.write(data)
        for task in TASKS:
            for impl in impls:
                for threads in (1, 2):
                    print(
                        f"  measuring {task} / {impl} / {threads} thread(s)...",
                        file=sys.stderr,
                        flush=True,
                    )
                    results[(task, impl, threads)] = spawn_worker(
                        impl, task, threads, args.seconds, path
                    )

    print(
        f"\n### Renders ({args.seconds:g} s per case after 2 warm-ups; each case in a fresh process)\n"
    )
    print(
        "| task | library | threads | renders/s | ms/render per thread | CPU ms/render | peak RSS growth MB | out KB | output check |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for (task, impl, threads), r in results.items():
        if "error" in r:
            print(f"| {task} | {IMPLS[impl]} | {threads} | ERROR | | | | | {r['error'][-120:]} |")
            continue
        c = r["check"]
        print(
            f"| {task} | {IMPLS[impl]} | {threads} | {r['rps']:.1f} | {1000 / r['rps'] * threads:.1f} | "
            f"{r['cpu_ms_per_render']:.1f} | {r['peak_growth_mb']:.1f} | {c['bytes'] / 1024:.0f} | {describe_check(c)} |"
        )

    def rps(task, impl, threads):
        r = results.get((task, impl, threads), {})
        return r.get("rps")

    print("\n### Ratios (throughput)\n")
    print(
        "| task | draft2x / no-draft (1 thr) | draft1x / no-draft (1 thr) | pyvips / Pillow+draft2x (1 thr) | pyvips / Pillow+draft2x (2 thr) "
        "| pyvips-c1 / Pillow+draft2x (2 thr) | 2-thr scaling: Pillow+draft2x | pyvips | pyvips-c1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "n/a"

    for task in TASKS:
        print(
            f"| {task} | {ratio(rps(task, 'pillow-draft', 1), rps(task, 'pillow-nodraft', 1))} "
            f"| {ratio(rps(task, 'pillow-draft1x', 1), rps(task, 'pillow-nodraft', 1))} "
            f"| {ratio(rps(task, 'pyvips', 1), rps(task, 'pillow-draft', 1))} "
            f"| {ratio(rps(task, 'pyvips', 2), rps(task, 'pillow-draft', 2))} "
            f"| {ratio(rps(task, 'pyvips-c1', 2), rps(task, 'pillow-draft', 2))} "
            f"| {ratio(rps(task, 'pillow-draft', 2), rps(task, 'pillow-draft', 1))} "
            f"| {ratio(rps(task, 'pyvips', 2), rps(task, 'pyvips', 1))} "
            f"| {ratio(rps(task, 'pyvips-c1', 2), rps(task, 'pyvips-c1', 1))} |"
        )

    if HAVE_VIPS:
        print("\n### pyvips metadata options (single render each, checked with Pillow)\n")
        for task, (box, fmt, q, exp) in TASKS.items():
            for keep_icc in (True, False):
                out = render_vips(data, box, fmt, q, keep_icc=keep_icc)
                print(
                    f"- {task} `{vips_suffix(fmt, q, keep_icc)}`: {describe_check(verify(out, exp, fmt))}"
                )

    print("\n### Small-image work\n")
    for line in micro_benchmarks(data, budget=min(2.0, max(0.5, args.seconds / 2))):
        print(line)


if __name__ == "__main__":
    main()
