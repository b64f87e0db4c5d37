"""ISOBMFF (HEIF, AVIF) boxes: the `meta` items and the track facts the header probe
needs, read from box bodies already in memory (the probe bounds what it buffers)."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Generator, Iterable
from dataclasses import dataclass

from imagesvc.imaging.formats import NotAnImage


def boxes(data: bytes) -> Generator[tuple[bytes, bytes], None, None]:
    """Iterate (type, body) of the ISOBMFF boxes laid end to end in data."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1 and pos + 16 <= len(data):
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
            header = 16
        elif size == 0:
            size = len(data) - pos
        if size < header or pos + size > len(data):
            return
        yield kind, data[pos + header : pos + size]
        pos += size


def find(data: bytes, *path: bytes) -> list[bytes]:
    """Bodies of every box at the given path below data (containers only, no full boxes)."""
    found = [body for kind, body in boxes(data) if kind == path[0]]
    if len(path) == 1:
        return found
    return [deeper for body in found for deeper in find(body, *path[1:])]


# Item types libheif treats as images; the ones pi-heif's decoder (libde265) can render.
_IMAGE_ITEMS = frozenset(
    {b"hvc1", b"av01", b"grid", b"tili", b"iden", b"iovl", b"avc1", b"unci", b"vvc1", b"jpeg"}
    | {b"j2k1", b"mski"}
)
HEVC_ITEMS = frozenset({None, b"hvc1", b"grid", b"iden", b"iovl"})  # None: infe v0/v1
# Items, properties or references one file may have: libheif refuses files with more than
# 1,000 items, and the bound keeps a hostile 4 MiB `meta` from costing the event loop a
# fraction of a second per upload.
MAX_ITEMS = 4096


@dataclass(frozen=True, slots=True)
class MetaItems:
    size: tuple[int, int] | None  # the primary image's output size
    coded_pixels: int  # the largest `ispe` of any item
    images: int  # top-level images: not hidden, not a thumbnail, aux image or tile
    primary_type: bytes | None


def meta_items(meta_body: bytes, *, transformed: bool) -> MetaItems:
    """The facts of a HEIF/AVIF `meta` box: which item is primary (pitm), what each item is
    (iinf), how they refer to each other (iref), and their properties (iprp: ipco + ipma).
    A file whose structure cannot be followed falls back to its largest `ispe`, one image."""
    meta = _bounded(boxes(meta_body))
    iprp = _bounded(box for kind, body in meta if kind == b"iprp" for box in boxes(body))
    ipco = _bounded(box for kind, body in iprp if kind == b"ipco" for box in boxes(body))
    sizes = [size for kind, body in ipco if kind == b"ispe" and (size := _ispe(body))]
    coded = max((w * h for w, h in sizes), default=0)
    try:
        primary = _pitm(meta)
        items = _iinf(meta)
        refs = _iref(meta)
        associations = _ipma(iprp)
    except (struct.error, IndexError):
        primary, items, refs, associations = None, {}, [], {}
    chain = [ipco[i - 1] for i in associations.get(primary or 0, []) if 0 < i <= len(ipco)]
    size = next((s for kind, body in chain if kind == b"ispe" and (s := _ispe(body))), None)
    if primary is None or size is None:
        largest = max(sizes, key=lambda wh: wh[0] * wh[1], default=None)
        return MetaItems(largest, coded, 1, None)
    if transformed:
        size = _transformed(size, chain)
    # Not top level: thumbnails (thmb from them), auxiliary images such as alpha, depth or
    # gain maps (auxl from them), and the inputs of derived images such as grid tiles (dimg
    # to them). Hidden items are not shown on their own either.
    dependent = {source for kind, source, _ in refs if kind in (b"thmb", b"auxl")}
    dependent |= {item for kind, _, targets in refs if kind == b"dimg" for item in targets}
    top_level = {
        item
        for item, (item_type, hidden) in items.items()
        if item_type in _IMAGE_ITEMS and not hidden and item not in dependent
    }
    return MetaItems(size, coded, len(top_level | {primary}), items.get(primary, (None,))[0])


def _bounded(boxes: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    found = list(itertools.islice(boxes, MAX_ITEMS + 1))
    _check_count(len(found))
    return found


def _check_count(count: int) -> None:
    if count > MAX_ITEMS:
        raise NotAnImage("the image container has too many items")


def _ispe(body: bytes) -> tuple[int, int] | None:
    if len(body) < 12:
        return None
    width, height = struct.unpack(">II", body[4:12])  # after version/flags
    return (width, height) if width and height else None


def _transformed(size: tuple[int, int], chain: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """The size after the transformative properties, in their order as libheif applies
    them: a clean aperture (clap) crops, a rotation (irot) by 90 or 270 degrees swaps."""
    width, height = size
    for kind, body in chain:
        if kind == b"clap" and len(body) >= 16:
            wn, wd, hn, hd = struct.unpack(">IIII", body[:16])
            if wd and hd and 0 < wn // wd <= width and 0 < hn // hd <= height:
                width, height = (wn + wd // 2) // wd, (hn + hd // 2) // hd
        elif kind == b"irot" and body and body[0] & 0x03 in (1, 3):
            width, height = height, width
    return width, height


def _full_box(boxes: list[tuple[bytes, bytes]], kind: bytes) -> tuple[int, bytes] | None:
    """(version, body after version and flags) of the first box of this kind."""
    body = next((body for found, body in boxes if found == kind), None)
    if body is None or len(body) < 4:
        return None
    return body[0], body[4:]


def _pitm(meta: list[tuple[bytes, bytes]]) -> int | None:
    box = _full_box(meta, b"pitm")
    if box is None:
        return None
    version, body = box
    return int(struct.unpack_from(">H" if version == 0 else ">I", body)[0])


def _iinf(meta: list[tuple[bytes, bytes]]) -> dict[int, tuple[bytes | None, bool]]:
    """Item id -> (item type, hidden); infe versions 0 and 1 carry no type."""
    box = _full_box(meta, b"iinf")
    if box is None:
        return {}
    version, body = box
    items: dict[int, tuple[bytes | None, bool]] = {}
    for kind, infe in _bounded(boxes(body[2 if version == 0 else 4 :])):
        if kind != b"infe" or len(infe) < 4:
            continue
        infe_version, hidden = infe[0], bool(infe[3] & 0x01)
        if infe_version >= 3:
            item, item_type = struct.unpack_from(">I2x4s", infe, 4)
        elif infe_version == 2:
            item, item_type = struct.unpack_from(">H2x4s", infe, 4)
        else:
            item, item_type = struct.unpack_from(">H", infe, 4)[0], None
        items[item] = (item_type, hidden)
    return items


def _iref(meta: list[tuple[bytes, bytes]]) -> list[tuple[bytes, int, list[int]]]:
    """(reference type, from item, to items) of every item reference."""
    box = _full_box(meta, b"iref")
    if box is None:
        return []
    version, body = box
    width, code = (2, ">H") if version == 0 else (4, ">I")
    refs = []
    total = 0
    for kind, ref in _bounded(boxes(body)):
        source = struct.unpack_from(code, ref)[0]
        count = struct.unpack_from(">H", ref, width)[0]
        total += count
        _check_count(total)
        targets = [struct.unpack_from(code, ref, width + 2 + i * width)[0] for i in range(count)]
        refs.append((kind, int(source), [int(t) for t in targets]))
    return refs


def _ipma(iprp: list[tuple[bytes, bytes]]) -> dict[int, list[int]]:
    """Item id -> the 1-based ipco indexes of its properties, in their order."""
    associations: dict[int, list[int]] = {}
    total = 0
    for kind, ipma in iprp:
        if kind != b"ipma":
            continue
        version, flags = ipma[0], ipma[3]
        pos, (count,) = 8, struct.unpack_from(">I", ipma, 4)
        total += count
        _check_count(total)
        for _ in range(count):
            if version < 1:
                item = struct.unpack_from(">H", ipma, pos)[0]
                pos += 2
            else:
                item = struct.unpack_from(">I", ipma, pos)[0]
                pos += 4
            indexes = associations.setdefault(int(item), [])
            entries, pos = ipma[pos], pos + 1
            for _ in range(entries):  # the top bit of each says "essential"
                if flags & 0x01:
                    indexes.append(struct.unpack_from(">H", ipma, pos)[0] & 0x7FFF)
                    pos += 2
                else:
                    indexes.append(ipma[pos] & 0x7F)
                    pos += 1
    return associations


def track_facts(moov_body: bytes) -> tuple[int, tuple[int, int] | None]:
    """Largest sample count and largest display size among the tracks."""
    frames = 0
    size: tuple[int, int] | None = None
    for trak in find(moov_body, b"trak"):
        for stsz in find(trak, b"mdia", b"minf", b"stbl", b"stsz"):
            if len(stsz) >= 12:
                frames = max(frames, struct.unpack(">I", stsz[8:12])[0])
        for tkhd in find(trak, b"tkhd"):
            offset = 88 if tkhd and tkhd[0] == 1 else 76  # version 1 has 64-bit times
            if len(tkhd) >= offset + 8:
                width, height = struct.unpack(">II", tkhd[offset : offset + 8])
                width, height = width >> 16, height >> 16  # 16.16 fixed point
                if size is None or width * height > size[0] * size[1]:
                    size = (width, height)
    return frames, size
