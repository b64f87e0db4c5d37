"""Configuration: validated at start, one line naming the variable, never its value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from imagesvc.config import ConfigurationError, load_settings


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGESVC_STORAGE_BACKEND": "s3"}, "IMAGESVC_S3_BUCKET is required"),
        ({"IMAGESVC_DATABASE_URL": "not a url"}, "IMAGESVC_DATABASE_URL"),
        ({"IMAGESVC_DATABASE_URL": "mysql://u:secretpw@h/db"}, "not supported"),
        ({"IMAGESVC_STORAGE_BACKEND": "ftp"}, "IMAGESVC_STORAGE_BACKEND"),
        ({"IMAGESVC_S3_PART_SIZE": "1024"}, "IMAGESVC_S3_PART_SIZE"),
        ({"IMAGESVC_MAX_UPLOAD_BYTES": "lots"}, "IMAGESVC_MAX_UPLOAD_BYTES"),
        ({"IMAGESVC_S3_ENDPOINT_URL": "localhost:9000"}, "IMAGESVC_S3_ENDPOINT_URL"),
        ({"IMAGESVC_CORS_ORIGINS": "https://app.example.com/path"}, "IMAGESVC_CORS_ORIGINS"),
        ({"IMAGESVC_CORS_ORIGINS": "*,https://a.example"}, "cannot be combined"),
        ({"IMAGESVC_CORS_MAX_AGE": "-1"}, "IMAGESVC_CORS_MAX_AGE"),
        ({"IMAGESVC_URL_SIGNING_KEYS": "secretpw"}, "IMAGESVC_URL_SIGNING_KEYS: key 1"),
        ({"IMAGESVC_URL_SIGNING_KEYS": "x" * 40 + ",secretpw"}, "key 2 must be at least"),
        ({"IMAGESVC_LINK_WINDOW": "0"}, "IMAGESVC_LINK_WINDOW"),
        ({"IMAGESVC_LINK_MAX_TTL": "soon"}, "IMAGESVC_LINK_MAX_TTL"),
        ({"IMAGESVC_CONSOLE": "maybe"}, "IMAGESVC_CONSOLE"),
    ],
)
def test_invalid_configuration_exits_2_with_one_line(env: dict[str, str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imagesvc", "serve"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "secretpw" not in result.stderr


def test_key_prefix_gets_its_slash() -> None:
    assert load_settings(s3_key_prefix="tenant-a").s3_key_prefix == "tenant-a/"
    assert load_settings(s3_key_prefix="").s3_key_prefix == ""


def test_access_key_without_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="IMAGESVC_S3_SECRET_ACCESS_KEY"):
        load_settings(s3_access_key_id="AKIA")


def test_browser_settings_are_normalised() -> None:
    settings = load_settings(cors_origins=" https://App.Example.com , http://localhost:3000 ")
    assert settings.cors_origin_list == ("https://app.example.com", "http://localhost:3000")
    assert load_settings(cors_origins="*").cors_origin_list == ("*",)
    assert load_settings().cors_origin_list == ()
    keys = load_settings(url_signing_keys="n" * 32 + ", " + "o" * 32)
    assert keys.signing_keys == (b"n" * 32, b"o" * 32)
    assert "nnnn" not in repr(keys)  # a secret: never in a repr or a log line
    assert load_settings().signing_keys == ()
