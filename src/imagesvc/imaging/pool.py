"""A bounded pool of render threads: rendering never blocks the event loop, and never
queues without limit. Pillow releases the GIL while decoding, resampling and encoding, so
threads use every core (measured: 2.0x on 2 threads, bench/render_libs.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from imagesvc.errors import ProblemError
from imagesvc.imaging.memory import keep_render_buffers

P = ParamSpec("P")
T = TypeVar("T")


class RendersBusy(ProblemError):
    status, code, title = 429, "too_many_renders", "Too many requests"

    def __init__(self) -> None:
        super().__init__("all render workers are busy; retry shortly", headers={"Retry-After": "1"})


class RenderPool:
    def __init__(self, workers: int, queue: int) -> None:
        keep_render_buffers()  # see imaging/memory.py: once per process
        self.workers = workers
        self.capacity = workers + queue
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="imagesvc-render")
        self.admitted = 0

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run func in a render thread, or raise 429 when workers and queue are full."""
        if self.admitted >= self.capacity:
            raise RendersBusy()
        return await self.run_always(func, *args, **kwargs)

    async def run_always(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like run, without the 429: for small work an upload must not fail over
        (placeholders); it still waits its turn behind the same workers."""
        self.admitted += 1
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, lambda: func(*args, **kwargs))
        # The slot is freed when the thread is done, not when the caller stops waiting: a
        # cancelled request's render keeps its thread busy until it finishes.
        future.add_done_callback(self._release)
        return await future

    def _release(self, _: object) -> None:
        self.admitted -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
