"""An image's bytes for a viewer: the Image resource says what may be served (images/),
serving/content.py says how (redirect, or proxy with conditions)."""

from __future__ import annotations

from imagesvc.images.service import ImageService
from imagesvc.serving.content import PLAIN, Conditions, Content, Delivery, ServeOptions, serve
from imagesvc.storage.port import ObjectStore


class ContentService:
    def __init__(self, store: ObjectStore, options: ServeOptions, images: ImageService) -> None:
        self.store = store
        self.options = options
        self.images = images

    async def image_content(
        self,
        *,
        viewer: str | None,
        image_id: str,
        conditions: Conditions,
        delivery: Delivery = PLAIN,
    ) -> Content:
        """The original's bytes for `viewer` (an owner, or None without a key): their own
        images, anyone's public ones, and any one a signed link grants."""
        granted = delivery.grant is not None
        readable = await self.images.viewable(viewer=viewer, image_id=image_id, granted=granted)

        async def still_there() -> bool:
            return await self.images.still_viewable(
                viewer=viewer, image_id=image_id, granted=granted
            )

        return await serve(
            self.store,
            self.options,
            readable.blob,
            conditions,
            still_there=still_there,
            delivery=delivery,
        )
