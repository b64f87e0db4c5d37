"""Where the service's objects live in the store: the one place that spells out keys.

    {prefix}img/{image id}/original                      the uploaded bytes
    {prefix}img/{image id}/upload                        a direct upload's landing key: the
                                                         client writes it (presigned PUT);
                                                         `complete` copies it to `original`
    {prefix}img/{image id}/v/{w}x{h}-{fit}-{nonce}.{ext}  a rendered variant
    {prefix}img/{image id}/tus/{nonce}.tail              a tus upload's parked tail

Every object of an image lives under `{prefix}img/{image id}/`, so deleting an image is
"delete the prefix"; gc recognises its own objects by this layout (never by searching a
key for a substring: a configured prefix may itself contain `/v/`). The client's filename
never enters a key.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from imagesvc.ids import is_image_id

ORIGINAL = "original"
VARIANTS = "v"
DIRECT_UPLOAD = "upload"
RESUMABLE = "tus"


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key of ours, parsed."""

    image_id: str
    is_variant: bool
    # A direct upload's landing key: referenced only while its image is `pending`.
    is_direct_upload: bool = False
    # A parked tail of a resumable upload (referenced by its upload's row, if any).
    is_tail: bool = False


@dataclass(frozen=True, slots=True)
class KeyLayout:
    prefix: str = ""  # IMAGESVC_S3_KEY_PREFIX (ends with "/" when set); "" for local

    @property
    def root(self) -> str:
        """Every key the service writes starts with this."""
        return f"{self.prefix}img/"

    def image(self, image_id: str) -> str:
        """The prefix of every object of one image (original and variants)."""
        return f"{self.root}{image_id}/"

    def original(self, image_id: str) -> str:
        return self.image(image_id) + ORIGINAL

    def direct_upload(self, image_id: str) -> str:
        """Where a direct upload's client puts the bytes. Never served: the presigned URL
        stays valid until it expires, so the client could rewrite this key after
        `complete`; the image is served from the copy at `original`, which only we write."""
        return self.image(image_id) + DIRECT_UPLOAD

    def variant(self, image_id: str, box: tuple[int, int], fit: str, extension: str) -> str:
        """A fresh key per render (a nonce in the name): two renderers racing for one
        variant never overwrite each other's object."""
        return (
            f"{self.image(image_id)}{VARIANTS}/{box[0]}x{box[1]}-{fit}"
            f"-{secrets.token_hex(4)}.{extension}"
        )

    def tail(self, image_id: str) -> str:
        """A fresh key per parked tail: the row switches from the old tail to the new one
        in one commit, so a crash between writing and committing never changes the bytes
        under a key the row names."""
        return f"{self.image(image_id)}{RESUMABLE}/{secrets.token_hex(8)}.tail"

    def parse(self, key: str) -> StoredKey | None:
        """The image a key belongs to, or None for a key that is not ours."""
        if not key.startswith(self.root):
            return None
        parts = key[len(self.root) :].split("/")
        if len(parts) < 2 or not is_image_id(parts[0]):
            return None
        nested = len(parts) == 3
        return StoredKey(
            parts[0],
            is_variant=nested and parts[1] == VARIANTS,
            is_direct_upload=parts[1:] == [DIRECT_UPLOAD],
            is_tail=nested and parts[1] == RESUMABLE,
        )
