"""The README's promises, executed: `make run` starts the embedded default from the
checkout, and the quickstart curl block uploads and fetches an image through it."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Process, free_port, http_answers

ROOT = Path(__file__).resolve().parents[2]


def quickstart_script(name: str = "quickstart") -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        rf"<!-- {name}:begin -->\s*```bash\n(.*?)```\s*<!-- {name}:end -->", readme, re.S
    )
    assert block, f"README.md lost its {name} block"
    return block.group(1)


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Process]]:
    state = tmp_path_factory.mktemp("make-run")
    port = free_port()
    process = Process(
        "make-run",
        ["make", "-C", str(ROOT), "run", f"PORT={port}"],
        state,
        ready=http_answers(f"http://127.0.0.1:{port}/healthz"),
        # Only where the state lives changes, so the test does not touch ./var.
        # Laid out like a checkout: ./var holds the database and the dev key.
        env={
            "IMAGESVC_DATABASE_URL": f"sqlite+aiosqlite:///{state / 'var' / 'imagesvc.db'}",
            "IMAGESVC_STORAGE_LOCAL_ROOT": str(state / "var" / "objects"),
        },
        timeout=120,
    )
    process.start()
    yield state, f"http://127.0.0.1:{port}", process
    process.stop()


def test_make_run_prints_a_development_key(make_run: tuple[Path, str, Process]) -> None:
    state, _, process = make_run
    key = (state / "var" / "dev-api-key").read_text().strip()
    assert key.startswith("isk_")
    printed = process.log_path.read_text()
    assert f'curl -H "Authorization: Bearer {key}"' in printed
    assert (state / "var" / "dev-api-key").stat().st_mode & 0o077 == 0


def test_readme_quickstart_round_trip(make_run: tuple[Path, str, Process]) -> None:
    state, url, _ = make_run
    script = quickstart_script().replace("http://127.0.0.1:8000", url)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=state,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "round trip OK" in result.stdout
    assert (state / "photo.gif").read_bytes() == (state / "copy.gif").read_bytes()


def test_readme_direct_upload_steps(make_run: tuple[Path, str, Process], tmp_path: Path) -> None:
    """The "Direct uploads" curl steps, after the quickstart's first lines (the key, the
    image), in a directory of their own laid out like a checkout."""
    state, url, _ = make_run
    work = tmp_path / "checkout"
    (work / "var").mkdir(parents=True)
    (work / "var" / "dev-api-key").write_text((state / "var" / "dev-api-key").read_text())
    quickstart = quickstart_script()
    prepare = quickstart[: quickstart.index("# Upload (multipart)")]
    script = (prepare + quickstart_script("direct")).replace("http://127.0.0.1:8000", url)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "direct upload OK" in result.stdout
    assert '"status":"ready"' in result.stdout.replace(" ", "")
