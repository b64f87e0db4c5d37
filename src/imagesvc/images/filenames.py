"""Client filenames are metadata only: cleaned, capped, never part of a storage key."""

from __future__ import annotations

import unicodedata

from imagesvc.images.models import FILENAME_MAX


def sanitise_filename(raw: str | None) -> str | None:
    """The last path component, NFC-normalised, without control or format characters,
    trimmed of dots and spaces at the edges, at most FILENAME_MAX characters (the extension
    is kept when truncating). None when nothing usable is left."""
    if raw is None:
        return None
    name = unicodedata.normalize("NFC", raw)
    # Both separators: Windows clients send C:\\Users\\me\\photo.jpg.
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    # Cc: control (NUL, newlines, escapes); Cf: format (bidi overrides that disguise an
    # extension, zero-width characters); Cs/Co: surrogates and private use.
    name = "".join(ch for ch in name if unicodedata.category(ch) not in {"Cc", "Cf", "Cs", "Co"})
    name = name.strip(" .")
    if not name:
        return None
    if len(name) > FILENAME_MAX:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: FILENAME_MAX - len(ext) - 1].rstrip(" .") + "." + ext
        else:
            name = name[:FILENAME_MAX].rstrip(" .")
    return name or None
