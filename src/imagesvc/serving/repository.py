"""Every statement on `url_signing_keys` (the database-kept key of signed links)."""

from __future__ import annotations

from imagesvc.db import Tx
from imagesvc.images.models import UrlSigningKey


class SigningKeyRepository:
    def __init__(self, session: Tx) -> None:
        self.session = session

    async def get(self, key_id: str) -> UrlSigningKey | None:
        return await self.session.get(UrlSigningKey, key_id)

    async def add(self, key: UrlSigningKey) -> None:
        """Raises DuplicateKey (at commit) when another replica created it first."""
        self.session.add(key)
