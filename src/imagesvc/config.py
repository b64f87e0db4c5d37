"""Configuration: the `IMAGESVC_*` environment variables of SPEC §8, validated at start.

The names are part of the product contract, so the settings class stays flat (one field per
variable) and groups are expressed by order and comments rather than nested models, which
would change the variable names.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MIB = 1024 * 1024
# S3 refuses parts under 5 MiB (all but the last), and allows at most 10,000 parts.
S3_MIN_PART_SIZE = 5 * MIB

SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "mysql+asyncmy")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGESVC_", extra="ignore", frozen=True)

    # --- database -------------------------------------------------------------------------
    database_url: str = "sqlite+aiosqlite:///./var/imagesvc.db"
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_connect_timeout: float = Field(default=5.0, gt=0)
    # Upper bound on one database transaction; beyond it the request gets a 503.
    db_timeout: float = Field(default=10.0, gt=0)

    # --- object storage -------------------------------------------------------------------
    storage_backend: Literal["local", "s3"] = "local"
    storage_local_root: str = "./var/objects"
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_key_prefix: str = ""
    s3_create_bucket: bool = False
    # Beyond the spec: the multipart part size bounds memory per upload (one part buffered,
    # one in flight), and the timeouts bound how long a request can wait on a sick store.
    s3_part_size: int = Field(default=8 * MIB, ge=S3_MIN_PART_SIZE, le=512 * MIB)
    # Parts of one multipart upload sent at once (memory per upload ~ (this + 1) parts).
    # On loopback 2 measured no faster than 1 and cost a part more of memory; on a real
    # network to a distant region, more parts in flight hide the round trips.
    s3_upload_concurrency: int = Field(default=1, ge=1, le=16)
    s3_connect_timeout: float = Field(default=5.0, gt=0)
    s3_read_timeout: float = Field(default=30.0, gt=0)

    # --- limits ---------------------------------------------------------------------------
    max_upload_bytes: int = Field(default=25 * MIB, ge=1)
    max_pixels: int = Field(default=50_000_000, ge=1)

    # --- serving --------------------------------------------------------------------------
    serve_mode: Literal["redirect", "proxy"] = "redirect"
    signed_url_ttl: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    public_base_url: str | None = None
    # This API's own public URL (https://images.example.com), for the one absolute URL the
    # service hands out about itself: the local backend's direct-upload URL. Unset: that URL
    # is relative (`/v1/direct-uploads/...`). Never taken from request headers (Host).
    public_api_url: str | None = None

    # --- lifecycle --------------------------------------------------------------------------
    gc_grace_seconds: int = Field(default=3600, ge=0)
    # 0: no reconciler inside the service (run `imagesvc gc` from cron instead).
    gc_interval_seconds: int = Field(default=0, ge=0)
    gc_batch_limit: int = Field(default=1000, ge=1)
    # A pending upload refreshes its row every third of this; gc leaves it alone until the
    # lease runs out, so a live upload is never reclaimed, whatever `--grace` says.
    upload_lease_seconds: float = Field(default=60.0, ge=1.0)
    # Direct uploads (SPEC §11): how long the presigned PUT (or the local backend's upload
    # URL) is valid and `complete` is accepted; gc removes the upload after it. S3 signs
    # URLs for at most 7 days.
    direct_upload_ttl: int = Field(default=900, ge=1, le=7 * 24 * 3600)

    # --- resumable uploads (tus, SPEC §10) ----------------------------------------------------
    # An unfinished tus upload expires this long after its last PATCH (410, then gc).
    resumable_expiry_seconds: int = Field(default=86400, ge=1)

    # Serving reads an image's row at most once per this many seconds per process (the
    # bound on how long another process's PATCH or DELETE takes to show); 0 turns it off.
    read_cache_seconds: float = Field(default=1.0, ge=0, le=60)

    # --- access -----------------------------------------------------------------------------
    # How long a process trusts what it read about a key: the bound on revocation delay.
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # Requests per minute per API key, per process; 0 turns the limit off.
    rate_limit_per_minute: int = Field(default=0, ge=0)
    # SPEC §12: with a Redis URL the per-key budget is one for every process and replica.
    redis_url: str | None = None

    # --- variants -------------------------------------------------------------------------
    variant_max_dimension: int = Field(default=2048, ge=1, le=16384)
    variant_sizes: str | None = None  # e.g. "64x64,256x256"; parsed by `allowed_sizes`
    # Renders run in a thread pool of this many workers; this many more may wait; beyond
    # that a render request gets 429.
    render_workers: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1, le=64)
    render_queue: int = Field(default=8, ge=0, le=1000)

    # --- operations -----------------------------------------------------------------------
    log_format: Literal["json", "console"] = "json"
    # `imagesvc serve` worker processes (the --workers flag overrides it).
    workers: int = Field(default=1, ge=1, le=64)
    # On SIGTERM: how long in-flight requests (uploads) may take to finish before they are
    # cancelled and cleaned up (aborted multipart uploads, removed pending rows).
    shutdown_grace_seconds: float = Field(default=30.0, ge=0, le=3600)

    # --- browsers (SPEC §9) ------------------------------------------------------------------
    # Comma-separated origins (`https://app.example.com`) or `*`; unset: no CORS headers.
    cors_origins: str | None = None
    cors_max_age: int = Field(default=7200, ge=0, le=86400)
    # Signing keys of links (`POST /v1/images/{id}/links`): the first signs, every one
    # verifies. Unset: one key generated once and kept in the database.
    url_signing_keys: SecretStr | None = None
    link_window: int = Field(default=300, ge=1, le=86400)
    link_max_ttl: int = Field(default=7 * 24 * 3600, ge=1, le=366 * 24 * 3600)
    console: bool = True

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a valid SQLAlchemy URL") from None
        if url.drivername not in SUPPORTED_DRIVERS:
            raise ValueError(
                f"driver {url.drivername!r} is not supported; use one of "
                + ", ".join(f"{d}://" for d in SUPPORTED_DRIVERS)
            )
        return value

    @field_validator("s3_key_prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        # Every key the service writes lives under the prefix; gc relies on it ending in
        # "/" so that "imgs" never matches "imgs-other/...". Appending it is friendlier than
        # refusing to start over a missing slash.
        value = value.lstrip("/")
        if value and not value.endswith("/"):
            value += "/"
        return value

    @field_validator("s3_endpoint_url", "public_base_url", "public_api_url")
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")) or value[-3:] == "://":
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("variant_sizes")
    @classmethod
    def _check_sizes(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for item in value.split(","):
            width, sep, height = item.strip().partition("x")
            if not (sep and width.isdigit() and height.isdigit() and int(width) and int(height)):
                raise ValueError(f"{item.strip()!r} is not WIDTHxHEIGHT (e.g. 256x256)")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        origins = parse_origins(value)  # raises ValueError with the reason
        return ",".join(origins)

    @field_validator("url_signing_keys")
    @classmethod
    def _check_signing_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        keys = [key.strip() for key in value.get_secret_value().split(",")]
        # Never the key in the message: only its position.
        for position, key in enumerate(keys, start=1):
            if len(key) < MIN_SIGNING_KEY or any(ch.isspace() for ch in key):
                raise ValueError(
                    f"key {position} must be at least {MIN_SIGNING_KEY} characters without "
                    "spaces (e.g. `openssl rand -base64 32`)"
                )
        return SecretStr(",".join(keys))

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        """The allowed origins (`("*",)` for any); empty when CORS is off."""
        return tuple(self.cors_origins.split(",")) if self.cors_origins else ()

    @property
    def signing_keys(self) -> tuple[bytes, ...]:
        """The configured link-signing keys, first one signing; empty: the database's."""
        if self.url_signing_keys is None:
            return ()
        return tuple(key.encode() for key in self.url_signing_keys.get_secret_value().split(","))

    @property
    def allowed_sizes(self) -> frozenset[tuple[int, int]] | None:
        if self.variant_sizes is None:
            return None
        pairs = (item.strip().split("x") for item in self.variant_sizes.split(","))
        return frozenset((int(w), int(h)) for w, h in pairs)

    @model_validator(mode="after")
    def _check_backend(self) -> Settings:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("IMAGESVC_S3_BUCKET is required when IMAGESVC_STORAGE_BACKEND=s3")
        if bool(self.s3_access_key_id) != bool(self.s3_secret_access_key):
            raise ValueError(
                "set both IMAGESVC_S3_ACCESS_KEY_ID and IMAGESVC_S3_SECRET_ACCESS_KEY, or neither"
            )
        return self

    @property
    def sqlalchemy_url(self) -> URL:
        return make_url(self.database_url)

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.get_backend_name() == "sqlite"


MIN_SIGNING_KEY = 32
_ORIGIN = re.compile(r"(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?", re.ASCII)


def parse_origins(value: str) -> tuple[str, ...]:
    """`*` alone, or origins as browsers send them in `Origin`: scheme, host, optional
    port, nothing else (a path or a trailing slash would never match)."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if items == ["*"]:
        return ("*",)
    origins = []
    for position, item in enumerate(items, start=1):
        origin = item.lower()
        if origin == "*":
            raise ValueError("`*` allows every origin and cannot be combined with others")
        if not _ORIGIN.fullmatch(origin):
            raise ValueError(
                f"entry {position} is not an origin like https://app.example.com or "
                "http://localhost:3000 (scheme, host, optional port; no path)"
            )
        origins.append(origin)
    return tuple(origins)


class ConfigurationError(Exception):
    """Raised with a one-line, credential-free message when the environment is invalid."""


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise ConfigurationError with one readable line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigurationError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(part) for part in first["loc"] if part]
    message = str(first["msg"]).removeprefix("Value error, ")
    if not loc:
        return f"invalid configuration: {message}"
    name = "IMAGESVC_" + loc[0].upper()
    return f"invalid configuration: {name}: {message}"
