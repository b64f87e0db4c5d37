"""The OpenAPI document as a contract: generated SDKs (Python, TypeScript) work against a real
server, and schemathesis finds no server error and no response outside the document."""

from __future__ import annotations

import importlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagesvc.app import create_app
from imagesvc.config import Settings
from tests.samples import encode, jpeg
from tests.services import Process, create_key, start_imagesvc

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    openapi: dict[str, Any] = create_app(Settings()).openapi()
    return openapi


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Process]]:
    """A real `imagesvc serve` on the embedded default, and an API key for it."""
    state = tmp_path_factory.mktemp("contract")
    env = {
        "IMAGESVC_DATABASE_URL": f"sqlite+aiosqlite:///{state / 'imagesvc.db'}",
        "IMAGESVC_STORAGE_LOCAL_ROOT": str(state / "objects"),
        "IMAGESVC_LOG_FORMAT": "console",
    }
    subprocess.run(
        [str(BIN / "imagesvc"), "migrate"],
        env={**_environ(), **env},
        check=True,
        capture_output=True,
    )
    key = create_key(env, "sdk")
    process, url = start_imagesvc(state, env)
    yield url, key, process
    process.stop()


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_every_operation_is_documented_for_generators(document: dict[str, Any]) -> None:
    seen = set()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            assert operation.get("operationId"), where
            assert operation["operationId"] not in seen, where
            seen.add(operation["operationId"])
            assert operation.get("tags"), where
            assert operation.get("summary"), where
            assert operation.get("description"), where
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/problem+json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Problem"}, (where, status)
            if path.startswith("/v1/"):
                assert {"401", "422", "429", "503"} <= set(operation["responses"]), where
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # we never send FastAPI's own 422 shape
    upload = document["paths"]["/v1/images"]["post"]["requestBody"]["content"]
    assert upload["multipart/form-data"]["schema"]["properties"]["file"] == {
        "type": "string",
        "format": "binary",
    }
    assert upload["application/octet-stream"]["schema"]["format"] == "binary"
    assert schemas["ImageOut"]["examples"]
    assert document["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


def test_generated_python_client_round_trip(live: tuple[str, str, Process], tmp_path: Path) -> None:
    url, key, process = live
    spec = tmp_path / "openapi.json"
    spec.write_text(httpx.get(f"{url}/openapi.json").text)
    subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(spec),
            "--meta",
            "none",
            "--output-path",
            str(tmp_path / "imagesvc_client"),
        ],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module("imagesvc_client")
        api = "imagesvc_client.api.images."
        create_image = importlib.import_module(api + "create_image")
        get_image = importlib.import_module(api + "get_image")
        list_images = importlib.import_module(api + "list_images")
        get_content = importlib.import_module(api + "get_image_content")
        get_variant = importlib.import_module(api + "get_image_variant")
        delete_image = importlib.import_module(api + "delete_image")
        create_direct = importlib.import_module(api + "create_direct_upload")
        complete_direct = importlib.import_module(api + "complete_direct_upload")
        models = importlib.import_module("imagesvc_client.models")
        types = importlib.import_module("imagesvc_client.types")

        data = jpeg((300, 200))
        with client_module.AuthenticatedClient(base_url=url, token=key) as client:
            body = models.CreateImageFilesBody(
                file=types.File(
                    payload=io.BytesIO(data), file_name="sdk.jpg", mime_type="image/jpeg"
                )
            )
            created = create_image.sync_detailed(client=client, body=body)
            assert created.status_code == 201, created.content
            image = created.parsed
            assert isinstance(image, models.ImageOut)
            assert (image.width, image.height, image.filename) == (300, 200, "sdk.jpg")

            raw = create_image.sync(
                client=client,
                body=types.File(payload=io.BytesIO(encode("PNG", (10, 10)))),
                x_filename="raw.png",
            )
            assert isinstance(raw, models.ImageOut)
            assert raw.content_type == "image/png"

            fetched = get_image.sync(image.id, client=client)
            assert isinstance(fetched, models.ImageOut)
            assert fetched.sha256 == image.sha256
            page = list_images.sync(client=client, limit=10)
            assert isinstance(page, models.ImageList)
            assert {i.id for i in page.items} >= {image.id, raw.id}

            content = get_content.sync_detailed(image.id, client=client)
            assert content.status_code == 200
            assert content.content == data
            thumb = get_variant.sync_detailed(image.id, "64x64", client=client)
            assert thumb.status_code == 200

            assert delete_image.sync_detailed(image.id, client=client).status_code == 204
            gone = get_image.sync(image.id, client=client)
            assert isinstance(gone, models.Problem)
            assert gone.code == "not_found"

            # A direct upload: the bytes go to the URL answered (the service's own, on the
            # embedded default), over real HTTP, with exactly the headers answered.
            started = create_direct.sync(
                client=client,
                body=models.DirectUploadIn(byte_size=len(data), filename="direct.jpg"),
            )
            assert isinstance(started, models.DirectUploadOut)
            early = complete_direct.sync(started.id, client=client)
            assert isinstance(early, models.Problem)
            assert early.code == "upload_incomplete"
            headers = started.upload.headers.additional_properties
            target = httpx.URL(url).join(started.upload.url)  # relative on the local backend
            put = httpx.put(target, content=data, headers=headers)
            assert put.status_code == 200, put.text
            done = complete_direct.sync(started.id, client=client)
            assert isinstance(done, models.ImageOut)
            assert (done.id, done.filename, done.byte_size) == (started.id, "direct.jpg", len(data))
            assert get_content.sync_detailed(done.id, client=client).content == data
            secret = started.upload.url.rsplit(".", 1)[1]
            assert secret not in process.log_path.read_text()
    finally:
        sys.path.remove(str(tmp_path))
        for name in list(sys.modules):
            if name.startswith("imagesvc_client"):
                del sys.modules[name]


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_typescript_types_and_client_type_check(document: dict[str, Any], tmp_path: Path) -> None:
    work = tmp_path / "typescript"
    shutil.copytree(
        ROOT / "clients" / "typescript", work, ignore=shutil.ignore_patterns("node_modules")
    )
    (work / "openapi.json").write_text(json.dumps(document))

    def npm(*args: str) -> None:
        result = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr

    npm("npm", "ci", "--no-audit", "--no-fund")
    npm("npm", "run", "generate")
    npm("npm", "run", "check")


def test_schemathesis_finds_nothing(live: tuple[str, str, Process], tmp_path: Path) -> None:
    url, key, _ = live
    # Something to find for the stateful phase and for GETs by id.
    httpx.post(
        f"{url}/v1/images",
        content=jpeg(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "image/jpeg"},
    ).raise_for_status()
    # And a tus upload for the operations on /v1/uploads/{upload_id}: nothing in a response
    # body names it (its URL comes in `Location`), so the config supplies its id.
    created = httpx.post(
        f"{url}/v1/uploads",
        headers={
            "Authorization": f"Bearer {key}",
            "Tus-Resumable": "1.0.0",
            "Upload-Length": "900",
        },
    )
    created.raise_for_status()
    upload_id = created.headers["location"].rsplit("/", 1)[1]
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[[operations]]\n"
        'include-path-regex = "^/v1/uploads/"\n'
        f'parameters = {{ "path.upload_id" = "{upload_id}" }}\n\n'
        # A random Upload-Offset is almost never the upload's offset, and 409 is then the
        # right answer; schemathesis would report the operation as rejecting its data.
        "[[operations]]\n"
        'include-name = "PATCH /v1/uploads/{upload_id}"\n'
        "warnings = false\n\n"
        # The first DELETE removes the upload: every later one is rightly a 404.
        "[[operations]]\n"
        'include-name = "DELETE /v1/uploads/{upload_id}"\n'
        "warnings = false\n"
    )
    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "--config-file",
            str(config),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,"
            "content_type_conformance",
            "--max-examples",
            "30",
            "--header",
            f"Authorization: Bearer {key}",
            "--seed",
            "20261127",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        # How to send tus chunks (application/offset+octet-stream).
        env={
            **_environ(),
            "SCHEMATHESIS_HOOKS": "tests.system.schemathesis_hooks",
            "PYTHONPATH": str(ROOT),
        },
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-6000:]
