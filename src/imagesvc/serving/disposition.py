"""`Content-Disposition` from a client's filename, safe whatever the name holds (SPEC §9).

The filename is the client's: after `images/filenames.py` it has no control characters, but
it may still hold quotes, backslashes, `;`, `%` and any non-ASCII. Nothing of it reaches the
header as written: the `filename=` fallback keeps a conservative ASCII subset (everything
else becomes `_`), and `filename*=` (RFC 8187/6266) carries the exact name, percent-encoded
UTF-8, where only RFC 8187's attr-chars stay as they are. A CR, LF, quote or `;` can
therefore never end the value or start another parameter or header.
"""

from __future__ import annotations

import unicodedata
from typing import Literal
from urllib.parse import quote

from imagesvc.imaging.formats import extension_for

# Plain ASCII kept in the quoted fallback. Not `"`, `\\` (quoted-string escapes), `%` (some
# browsers percent-decode the fallback), `;`, `/`, controls.
_FALLBACK_SAFE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,_-+=()[]{}!#$&'@~^"
)
# RFC 8187 attr-char beyond ALPHA / DIGIT (quote() keeps those and `_.-~` anyway).
_ATTR_CHAR_EXTRA = "!#$&+^`|"


def download_name(filename: str | None, image_id: str, content_type: str) -> str:
    """What a download of an original is called: the image's filename, else `<id>.<ext>`."""
    return filename or f"{image_id}.{extension_for(content_type)}"


def variant_download_name(
    filename: str | None, image_id: str, box: tuple[int, int], content_type: str
) -> str:
    """A rendition's name: the original's stem, the box and the rendition's own extension
    (a WebP thumbnail of `holiday.jpg` is `holiday-256x256.webp`, never `.jpg`)."""
    stem = (filename.rpartition(".")[0] or filename) if filename else image_id
    return f"{stem}-{box[0]}x{box[1]}.{extension_for(content_type)}"


def ascii_fallback(name: str) -> str:
    # Accents come off (é -> e) before anything is replaced.
    decomposed = unicodedata.normalize("NFKD", name)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    fallback = "".join(ch if ch in _FALLBACK_SAFE else "_" for ch in plain).strip(" .")
    return fallback or "download"


def content_disposition(kind: Literal["inline", "attachment"], name: str) -> str:
    encoded = quote(unicodedata.normalize("NFC", name), safe=_ATTR_CHAR_EXTRA)
    return f"{kind}; filename=\"{ascii_fallback(name)}\"; filename*=UTF-8''{encoded}"
