"""The client for asyncio code: the same calls as `Client`, awaited.

The Kubernetes and S3 calls block, so each runs in a worker thread; `watch` hands the
states over through a queue, so a pipeline can follow many jobs without blocking its loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpufleet.api.models import GenerationJob
from gpufleet.client.jobs import Client

if TYPE_CHECKING:
    from gpufleet.client.artifacts import S3Settings


class AsyncClient:
    def __init__(self, client: Client | None = None, **client_args: Any) -> None:
        self.sync = client or Client(**client_args)

    async def submit(self, job: GenerationJob | dict[str, Any]) -> GenerationJob:
        return await asyncio.to_thread(self.sync.submit, job)

    async def get(self, name: str) -> GenerationJob:
        return await asyncio.to_thread(self.sync.get, name)

    async def jobs(self, all_namespaces: bool = False) -> list[GenerationJob]:
        return await asyncio.to_thread(self.sync.jobs, all_namespaces)

    async def cancel(self, name: str) -> GenerationJob:
        return await asyncio.to_thread(self.sync.cancel, name)

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self.sync.delete, name)

    async def wait(self, name: str, timeout: float | None = None) -> GenerationJob:
        return await asyncio.to_thread(self.sync.wait, name, timeout)

    async def watch(self, names: Iterable[str], timeout: float | None = None) -> AsyncIterator[GenerationJob]:
        """Each state of the named jobs until all finished, as `Client.watch`."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationJob | BaseException | None] = asyncio.Queue()
        names = list(names)
        stop = threading.Event()  # set when the caller stops iterating early

        def pump() -> None:
            try:
                for job in self.sync.watch(names, timeout):
                    if stop.is_set():
                        return
                    loop.call_soon_threadsafe(queue.put_nowait, job)
            except BaseException as exc:  # handed to the awaiting side, raised there
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            else:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        producer = loop.run_in_executor(None, pump)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
            await producer
        finally:
            stop.set()  # an early exit leaves the thread to end at the watch's next event

    async def download(self, name: str, directory: Path, settings: S3Settings) -> list[Path]:
        return await asyncio.to_thread(self.sync.download, name, directory, settings)
