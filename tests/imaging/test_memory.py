"""glibc malloc tuning for renders (imaging/memory.py), in fresh interpreters: the pool
sets it once per process, and an operator's own MALLOC_* thresholds win."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

PROBE = (
    "from imagesvc.imaging import memory\n"
    "from imagesvc.imaging.pool import RenderPool\n"
    "RenderPool(1, 0).close()\n"
    "print(memory._applied, memory.keep_render_buffers())\n"
)


def run(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_render_pool_fixes_the_thresholds_once_per_process() -> None:
    assert run() == "True True"


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_an_operators_own_threshold_is_left_alone(name: str) -> None:
    assert run(**{name: str(1024 * 1024)}) == "False False"
