"""S3 adapter over aioboto3 (with s3_writer.py and s3_calls.py, the only modules that import
aioboto3/botocore).

One client per process (two when bodies must be payload-signed, see `held_client`), opened
and closed by the app lifespan. Every call is SigV4-signed, has connect/read timeouts and
botocore's "standard" retries (exponential backoff on throttling, 5xx and dropped
connections; every call we make is safe to repeat because each upload writes a fresh key).
Failures are translated here into the port's `StorageUnavailable` / `ObjectMissing`, so no
botocore type leaks upward.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from imagesvc.cache import FOREVER, TtlCache
from imagesvc.storage.port import (
    ByteRange,
    ObjectInfo,
    ObjectMissing,
    ObjectStream,
    SignedRequest,
    SignedUrl,
    StorageUnavailable,
    UploadInfo,
)
from imagesvc.storage.s3_calls import TRANSPORT_ERRORS as _TRANSPORT_ERRORS
from imagesvc.storage.s3_calls import call as _call
from imagesvc.storage.s3_calls import error_code as _error_code
from imagesvc.storage.s3_stream import S3PartWriter
from imagesvc.storage.s3_writer import S3Writer, complete_upload

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
# DeleteObjects takes at most 1000 keys per call.
_DELETE_BATCH = 1000
_SIGNED_CACHE_MAX = 50_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class S3Options:
    bucket: str
    region: str = "us-east-1"
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    addressing_style: str = "auto"
    part_size: int = 8 * 1024 * 1024
    upload_concurrency: int = 1
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_pool_connections: int = 64


def transport_protects(endpoint_url: str | None) -> bool:
    """Whether the way to the store protects a body by itself: TLS (https; AWS when no
    endpoint is set) or no wire at all (loopback)."""
    if endpoint_url is None:
        return True
    url = urlsplit(endpoint_url)
    if url.scheme == "https" or url.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(url.hostname or "").is_loopback
    except ValueError:  # a host name other than localhost
        return False


def _without_expect(request: Any, **_: Any) -> None:
    """botocore asks for `Expect: 100-continue` on every body it holds as a file (all of
    ours, bytes included): the body then waits for the store's interim 100 before it is
    sent. A store may instead wait for the body (RFC 9110 lets a server ignore the
    expectation), and both sides wait until the read timeout, 30 s per attempt: rclone
    `serve s3` hung about one run in five of the test that races renders against deletes.
    The body goes at once instead; a refusal before the body would have saved at most one
    part, and every PUT saves a round trip. (`Expect` is not among the signed headers.)"""
    request.headers.pop("Expect", None)


class S3ObjectStore:
    def __init__(self, options: S3Options) -> None:
        self.options = options
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None
        self._held: S3Client | None = None
        # (key, ttl, disposition) -> (the URL, when it was signed); kept for the first
        # quarter of its life.
        self._signed: TtlCache[tuple[str, int, str | None], tuple[str, float]] = TtlCache(
            FOREVER, _SIGNED_CACHE_MAX
        )

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3ObjectStore.start() was not awaited")
        return self._client

    @property
    def held_client(self) -> S3Client:
        """The client for bodies held whole in memory (buffered parts, renditions, small
        objects). A signed payload makes botocore hash the body before sending it, a
        second SHA-256 of every byte on the event loop beside the image's own (~25 % of
        the server's CPU per 100 MiB upload, bench/NOTES.md), and the store check it. That
        check is kept where nothing else protects the body on its way: plain http to
        another host. Over https TLS does (botocore itself stops signing payloads there
        when a checksum is sent), and on loopback there is no wire: there these go
        UNSIGNED-PAYLOAD through `client`, as every streamed body always does (one still
        arriving cannot be hashed before it is sent)."""
        if self._held is None:
            raise RuntimeError("S3ObjectStore.start() was not awaited")
        return self._held

    @property
    def bucket(self) -> str:
        return self.options.bucket

    async def start(self) -> None:
        o = self.options

        def config(*, sign_payloads: bool) -> AioConfig:
            return AioConfig(
                signature_version="s3v4",
                # Unsigned (UNSIGNED-PAYLOAD) or signed bodies; the headers, Content-Length
                # included, are signed either way. See `held_client` for which is which.
                s3={
                    "addressing_style": o.addressing_style,
                    "payload_signing_enabled": sign_payloads,
                },
                connect_timeout=o.connect_timeout,
                read_timeout=o.read_timeout,
                retries={"total_max_attempts": 3, "mode": "standard"},
                max_pool_connections=o.max_pool_connections,
                # botocore >= 1.36 stores a whole-object CRC32 with each PutObject and
                # checks it on every read, which breaks ranged reads on servers that echo
                # it (rclone). We verify size and sha256 ourselves, so only send checksums
                # where S3 demands them.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )

        session = aioboto3.Session()

        async def client(*, sign_payloads: bool) -> S3Client:
            opened: S3Client = await self._stack.enter_async_context(
                session.client(
                    "s3",
                    config=config(sign_payloads=sign_payloads),
                    region_name=o.region,
                    endpoint_url=o.endpoint_url,
                    aws_access_key_id=o.access_key_id,
                    aws_secret_access_key=o.secret_access_key,
                )
            )
            opened.meta.events.register("before-send.s3", _without_expect)
            return opened

        self._client = await client(sign_payloads=False)
        self._held = (
            self._client if transport_protects(o.endpoint_url) else await client(sign_payloads=True)
        )

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = self._held = None

    async def ensure_bucket(self) -> bool:
        """Create the bucket when missing; True if it was created."""
        try:
            await self.client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            if _error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                raise StorageUnavailable() from None
        params: dict[str, Any] = {"Bucket": self.bucket}
        if self.options.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.options.region}
        await _call("create_bucket", self.client.create_bucket(**params))
        return True

    async def open_write(self, key: str, *, content_type: str, size: int | None = None) -> S3Writer:
        return S3Writer(
            self.client,
            self.bucket,
            key,
            content_type,
            self.options.part_size,
            concurrency=self.options.upload_concurrency,
            size=size,
            held_client=self.held_client,
        )

    async def open_read(self, key: str, byte_range: ByteRange | None = None) -> ObjectStream:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if byte_range is not None:
            params["Range"] = f"bytes={byte_range.start}-{byte_range.end}"
        response = await _call(key, self.client.get_object(**params))
        body = response["Body"]
        # Some S3 implementations answer a ranged GET with 200 (rclone does, with a correct
        # Content-Range); one that sends no Content-Range sent the whole object, so we cut
        # the range out of the full body ourselves.
        skip, limit = 0, None
        if byte_range is not None:
            limit = byte_range.length
            if not response.get("ContentRange"):
                skip = byte_range.start

        async def chunks() -> AsyncIterator[bytes]:
            to_skip, remaining = skip, limit
            try:
                while remaining is None or remaining > 0:
                    data = await body.read(READ_CHUNK)
                    if not data:
                        return
                    if to_skip:
                        if len(data) <= to_skip:
                            to_skip -= len(data)
                            continue
                        data, to_skip = data[to_skip:], 0
                    if remaining is not None:
                        data = data[:remaining]
                        remaining -= len(data)
                    yield data
            except _TRANSPORT_ERRORS as exc:
                log.warning("s3 read of an object failed mid-stream: %s", type(exc).__name__)
                raise StorageUnavailable() from None

        async def close() -> None:
            body.close()

        return ObjectStream(chunks(), close)

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            response = await _call(key, self.client.head_object(Bucket=self.bucket, Key=key))
        except ObjectMissing:
            return None
        return ObjectInfo(
            key=key, size=response["ContentLength"], last_modified=response["LastModified"]
        )

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                params["ContinuationToken"] = token
            page = await _call("list_objects_v2", self.client.list_objects_v2(**params))
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"], size=item["Size"], last_modified=item["LastModified"]
                )
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    async def delete_keys(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            response = await _call(
                "delete_objects",
                self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                ),
            )
            if response.get("Errors"):
                log.warning("s3 delete_objects left %d keys", len(response["Errors"]))
                raise StorageUnavailable()

    async def delete_prefix(self, prefix: str) -> int:
        keys = [info.key async for info in self.list_objects(prefix)]
        await self.delete_keys(keys)
        return len(keys)

    async def list_uploads(self, prefix: str) -> AsyncIterator[UploadInfo]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            try:
                page = await _call(
                    "list_multipart_uploads", self.client.list_multipart_uploads(**params)
                )
            except ObjectMissing:
                return  # rclone answers NoSuchUpload for a bucket that never had one
            for item in page.get("Uploads", []):
                yield UploadInfo(
                    key=item["Key"], upload_id=item["UploadId"], initiated=item["Initiated"]
                )
            if not page.get("IsTruncated"):
                return
            params["KeyMarker"] = page.get("NextKeyMarker", "")
            params["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    async def abort_upload(self, upload: UploadInfo) -> None:
        # Already completed or aborted (by us, another gc, or the store) is fine.
        with contextlib.suppress(ObjectMissing):
            await _call(
                "abort_multipart_upload",
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id
                ),
            )

    async def signed_url(
        self, key: str, *, ttl: int, content_disposition: str | None = None
    ) -> SignedUrl | None:
        """Signing costs ~0.3 ms of CPU, the most expensive step of a cached redirect, so a
        URL is reused during the first quarter of its life: every answer still has at
        least three quarters of the TTL left, and repeat requests get the same URL, which
        browsers and CDNs can cache."""
        cached = self._signed.get((key, ttl, content_disposition))
        if cached is not None:
            return SignedUrl(cached[0], valid_for=ttl - (time.monotonic() - cached[1]))
        params = {"Bucket": self.bucket, "Key": key}
        if content_disposition is not None:
            params["ResponseContentDisposition"] = content_disposition
        url: str = await _call(
            "presign",
            self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl),
        )
        now = time.monotonic()
        self._signed.put(
            (key, ttl, content_disposition), (url, now), since=now, expires=now + ttl / 4
        )
        return SignedUrl(url, valid_for=ttl)

    async def signed_put(
        self, key: str, *, content_length: int, content_type: str, ttl: int
    ) -> SignedRequest | None:
        """SigV4 query signing puts `content-length;content-type;host` in the signed
        headers, so AWS, MinIO and rclone refuse a PUT of another size or type. moto
        accepts anything: whoever uses the URL, `complete` checks what arrived."""
        url: str = await _call(
            "presign",
            self.client.generate_presigned_url(
                "put_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": key,
                    "ContentLength": content_length,
                    "ContentType": content_type,
                },
                ExpiresIn=ttl,
            ),
        )
        headers = {"Content-Type": content_type, "Content-Length": str(content_length)}
        return SignedRequest(url, headers)

    async def copy(self, source: str, destination: str, *, content_type: str) -> None:
        # One CopyObject (objects up to 5 GiB): the bytes never leave the store.
        await _call(
            source,
            self.client.copy_object(
                Bucket=self.bucket,
                Key=destination,
                CopySource={"Bucket": self.bucket, "Key": source},
                MetadataDirective="REPLACE",
                ContentType=content_type,
            ),
        )

    async def ping(self) -> None:
        await _call("head_bucket", self.client.head_bucket(Bucket=self.bucket))

    # --- resumable uploads (the multipart primitives, across requests) ----------------------

    async def put_object(self, key: str, body: bytes, *, content_type: str) -> None:
        await _call(
            "put_object",
            self.held_client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
            ),
        )

    async def create_multipart(self, key: str, *, content_type: str) -> str:
        created = await _call(
            "create_multipart_upload",
            self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=content_type
            ),
        )
        return created["UploadId"]

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        response = await _call(
            "upload_part",
            self.held_client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            ),
        )
        return response["ETag"]

    async def open_part(self, key: str, upload_id: str, number: int, size: int) -> S3PartWriter:
        return S3PartWriter(self.client, self.bucket, key, upload_id, number, size)

    async def complete_multipart(
        self, key: str, upload_id: str, etags: Sequence[str]
    ) -> int | None:
        parts: list[CompletedPartTypeDef] = [
            {"PartNumber": number, "ETag": etag} for number, etag in enumerate(etags, 1)
        ]
        return await complete_upload(self.client, self.bucket, key, upload_id, parts)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self.abort_upload(UploadInfo(key=key, upload_id=upload_id, initiated=_EPOCH))
