"""The stream bridge: a request's progress, told from the engine's thread, as an async stream of
events for a Serve streaming response, ending with the request's output."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from leap_ray.api.progress import Progress
from leap_ray.engines.contract import ProgressHook


async def events_then_output(run: Callable[[ProgressHook], Awaitable[Any]]) -> AsyncIterator[Any]:
    """Each progress event `run` reports (from any thread) while it runs, then its output. Closing the
    stream cancels the run."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Progress] = asyncio.Queue()
    task = loop.create_task(run(lambda event: loop.call_soon_threadsafe(events.put_nowait, event)))
    try:
        while not task.done() or not events.empty():
            next_event = loop.create_task(events.get())
            await asyncio.wait({next_event, task}, return_when=asyncio.FIRST_COMPLETED)
            if next_event.done():
                yield next_event.result()
            else:
                next_event.cancel()
        yield task.result()
    finally:
        if not task.done():
            task.cancel()
