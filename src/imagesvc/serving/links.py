"""Signed links (SPEC §9): a URL that shows one image (or one rendition of it) without a key,
until it expires, so that an `<img>` tag can show a private image.

    /v1/images/{id}/content?exp=1767225600&sig=...
    /v1/images/{id}/variants/256x256?download=1&exp=...&fit=cover&format=webp&sig=...

The signature is HMAC-SHA256 over `path?query`, where the query is canonical: its
parameters sorted by name, each once, values from a small alphabet, and `sig` is the last
parameter. A link is verified by position, never by editing the URL: the signed message is
exactly the raw query before the final `&sig=` (thumbor's CVE-2026-53501 came from stripping
the signature out with a string replace, which let other parameters ride along), and the
raw query must be in canonical form itself, so there is exactly one URL for one resource and
options (a reordered, repeated or extra parameter is a 403, and a CDN keys on one URL). The
path is the raw path as sent. Any change of path, size, fit, format, expiry or download
therefore fails the HMAC; the comparison is constant-time and runs for every key.

Keys: `IMAGESVC_URL_SIGNING_KEYS` (the first signs, all verify: put the new key first,
keep the old one until its links expired). Unset: one key generated once and kept in the
database (`url_signing_keys`), created race-safely by whichever replica needs it first, so
every replica agrees. `exp` is rounded up to `IMAGESVC_LINK_WINDOW`, so the same request
gives the same URL within a window and browsers and CDNs can cache it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imagesvc.cache import SingleFlight
from imagesvc.db import Database, DuplicateKey, utcnow
from imagesvc.errors import InvalidParameter, ProblemError
from imagesvc.images.models import UrlSigningKey
from imagesvc.serving.content import LinkGrant
from imagesvc.serving.repository import SigningKeyRepository

if TYPE_CHECKING:
    from imagesvc.images.service import ImageService
    from imagesvc.variants.policy import VariantPolicy

DATABASE_KEY_ID = "default"
DEFAULT_EXPIRES_IN = 3600
SIGNATURE_LENGTH = 43  # 32 bytes of HMAC-SHA256, URL-safe base64 without padding
# Parameter names a link may carry besides `sig`, and the values they may take: what we
# sign is all we accept, so nothing needs escaping and nothing can be smuggled in.
_CONTENT_NAMES = frozenset({"download", "exp"})
_VARIANT_NAMES = frozenset({"download", "exp", "fit", "format"})
_VALUE = re.compile(r"[a-z0-9]{1,16}")
_EXP = re.compile(r"[0-9]{1,12}")
# Cheap test before any parsing: a request that is not a link costs one `in`.
LINK_MARKERS = (b"sig=", b"exp=")


class LinkInvalid(ProblemError):
    status, code, title = 403, "link_invalid", "Link invalid"


class LinkExpired(ProblemError):
    status, code, title = 403, "link_expired", "Link expired"


def _signature(key: bytes, message: bytes) -> str:
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def canonical_query(params: Mapping[str, str]) -> str:
    return "&".join(f"{name}={params[name]}" for name in sorted(params))


@dataclass(frozen=True, slots=True)
class LinkSigner:
    keys: Sequence[bytes]  # the first signs, every one verifies
    window: int
    max_ttl: int

    def expiry(self, expires_in: int, now: float | None = None) -> int:
        """`now + expires_in`, rounded up to the window: the same for every request of
        a window, so the URL is too."""
        if not 1 <= expires_in <= self.max_ttl:
            raise InvalidParameter(
                f"expires_in: must be between 1 and {self.max_ttl} seconds (IMAGESVC_LINK_MAX_TTL)"
            )
        deadline = int(time.time() if now is None else now) + expires_in
        return -(-deadline // self.window) * self.window

    def sign(self, path: str, params: Mapping[str, str]) -> str:
        """`path?query&sig=...` for these parameters (which must include `exp`)."""
        query = canonical_query(params)
        signature = _signature(self.keys[0], f"{path}?{query}".encode())
        return f"{path}?{query}&sig={signature}"

    def verify(
        self, path: str, query: str, *, variant: bool, now: float | None = None
    ) -> LinkGrant:
        """The grant of a link whose path and raw query are these; LinkInvalid for
        anything we did not sign exactly so, LinkExpired once it expired."""
        head, separator, signature = query.rpartition("&sig=")
        # By position: `sig` is the last parameter and the message is what precedes it.
        if not separator or len(signature) != SIGNATURE_LENGTH:
            raise LinkInvalid("this link is not a signed link of this service")
        names: list[str] = []
        expires_at: int | None = None
        for part in head.split("&"):
            name, equals, value = part.partition("=")
            if not equals:
                raise LinkInvalid("this link was changed after it was signed")
            if name == "exp":
                if not _EXP.fullmatch(value):
                    raise LinkInvalid("this link was changed after it was signed")
                expires_at = int(value)
            elif not _VALUE.fullmatch(value):
                raise LinkInvalid("this link was changed after it was signed")
            names.append(name)
        allowed = _VARIANT_NAMES if variant else _CONTENT_NAMES
        canonical = names == sorted(set(names)) and set(names) <= allowed
        if not canonical or expires_at is None:
            raise LinkInvalid("this link was changed after it was signed")
        message = f"{path}?{head}".encode()
        valid = False
        for key in self.keys:  # every key, without stopping early: timing says nothing
            valid |= hmac.compare_digest(_signature(key, message), signature)
        if not valid:
            raise LinkInvalid("this link was changed after it was signed, or its key retired")
        if expires_at <= (time.time() if now is None else now):
            raise LinkExpired("this link has expired; ask for a new one")
        return LinkGrant(expires_at=expires_at)


@dataclass(frozen=True, slots=True)
class SignedLink:
    url: str
    expires_at: int


class LinkKeys:
    """The signer, with its keys: configured ones, or the database's (loaded once per
    process, created by the first replica that needs it)."""

    def __init__(
        self, db: Database, *, configured: Sequence[bytes], window: int, max_ttl: int
    ) -> None:
        self.db = db
        self.window = window
        self.max_ttl = max_ttl
        self._signer = LinkSigner(tuple(configured), window, max_ttl) if configured else None
        self._loading: SingleFlight[str, LinkSigner] = SingleFlight()

    async def signer(self) -> LinkSigner:
        if self._signer is not None:
            return self._signer
        return await self._loading.do(DATABASE_KEY_ID, self._load)

    async def _load(self) -> LinkSigner:
        row = await self.db.read(lambda tx: SigningKeyRepository(tx).get(DATABASE_KEY_ID))
        if row is None:
            candidate = UrlSigningKey(
                id=DATABASE_KEY_ID, secret=secrets.token_urlsafe(32), created_at=utcnow()
            )
            # Another replica may create it first (DuplicateKey): then theirs is used.
            with contextlib.suppress(DuplicateKey):
                await self.db.run(lambda tx: SigningKeyRepository(tx).add(candidate))
            row = await self.db.read(lambda tx: SigningKeyRepository(tx).get(DATABASE_KEY_ID))
            assert row is not None
        self._signer = LinkSigner((row.secret.encode(),), self.window, self.max_ttl)
        return self._signer


@dataclass(frozen=True, slots=True)
class LinkTarget:
    """What a link shows: the original (`box` None) or one rendition."""

    box: tuple[int, int] | None = None
    fit: str = "contain"
    format: str = "auto"
    download: bool = False

    def path_and_params(self, image_id: str) -> tuple[str, dict[str, str]]:
        params: dict[str, str] = {"download": "1"} if self.download else {}
        if self.box is None:
            return f"/v1/images/{image_id}/content", params
        params.update(fit=self.fit, format=self.format)
        return f"/v1/images/{image_id}/variants/{self.box[0]}x{self.box[1]}", params


class LinkService:
    """Mints links for an owner's images; verification is `LinkSigner.verify`, called by
    the serving routes' `request_delivery` dependency (serving/http.py)."""

    def __init__(self, keys: LinkKeys, images: ImageService, policy: VariantPolicy) -> None:
        self.keys = keys
        self.images = images
        self.policy = policy

    def check_box(self, box: tuple[int, int]) -> None:
        """A link to a size the variants route would refuse is refused now (422)."""
        self.policy.box(*box)

    async def mint(
        self, *, owner: str, image_id: str, target: LinkTarget, expires_in: int | None
    ) -> SignedLink:
        """`expires_in` None: the default hour, or IMAGESVC_LINK_MAX_TTL when that is
        shorter (a request that asks for nothing must not be refused for asking too much)."""
        await self.images.get(owner=owner, image_id=image_id)  # the owner's, or 404
        if target.box is not None:
            self.check_box(target.box)
        signer = await self.keys.signer()
        if expires_in is None:
            expires_in = min(DEFAULT_EXPIRES_IN, signer.max_ttl)
        expires_at = signer.expiry(expires_in)
        path, params = target.path_and_params(image_id)
        return SignedLink(signer.sign(path, {**params, "exp": str(expires_at)}), expires_at)

    async def gallery(
        self, image_ids: Sequence[str], box: tuple[int, int]
    ) -> dict[str, tuple[str, str]]:
        """For `?links=WxH` of images the caller already read as their own: each id's
        signed content link and signed link to that size (default fit and format)."""
        signer = await self.keys.signer()
        expires_at = signer.expiry(min(DEFAULT_EXPIRES_IN, signer.max_ttl))
        exp = {"exp": str(expires_at)}
        content, variant = LinkTarget(), LinkTarget(box=box)
        links = {}
        for image_id in image_ids:
            content_path, content_params = content.path_and_params(image_id)
            variant_path, variant_params = variant.path_and_params(image_id)
            links[image_id] = (
                signer.sign(content_path, {**content_params, **exp}),
                signer.sign(variant_path, {**variant_params, **exp}),
            )
        return links
