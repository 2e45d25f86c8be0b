"""The job store seen from the ingress's event loop. The stores are blocking (SQLite locks, Redis
round trips); every call runs on threads of the store's own, so that a stuck store can neither stall
the loop that serves every client nor use up the threads that parse request bodies. A call that fails
or outlasts the deadline is a StoreUnavailable: 503 with Retry-After, never a 500 or a hang. The job
runner has a client (and threads) of its own, so that requests cannot starve its heartbeats."""

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import redis

from leap_ray.errors import StoreUnavailable
from leap_ray.serve.jobs.store import JobStore

logger = logging.getLogger("ray.serve")
Result = TypeVar("Result")
STORE_ERRORS = (sqlite3.Error, redis.RedisError, OSError)


class StoreClient:
    def __init__(self, store: JobStore, timeout_s: float | None, threads: int = 8) -> None:
        """`timeout_s` None: no deadline of its own (the store's lock wait and socket timeouts still
        end a stuck call), for a caller that must not go on while its call is still running."""
        self.store = store
        self.timeout_s = timeout_s
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="job-store")

    async def call(self, method: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
        """Runs `method` (one of the store's, or a function making several store calls) off the loop."""
        work = asyncio.get_running_loop().run_in_executor(self._threads, partial(method, *args, **kwargs))
        try:
            return await (work if self.timeout_s is None else asyncio.wait_for(work, self.timeout_s))
        except TimeoutError:
            name = getattr(method, "__name__", repr(method))  # a partial has none
            logger.warning("the job store did not answer %s within %.1f s", name, self.timeout_s)
            raise StoreUnavailable("the job store is not answering; retry after a moment") from None
        except STORE_ERRORS as error:
            logger.warning("the job store failed (%s: %s)", type(error).__name__, error)
            raise StoreUnavailable("the job store is unavailable; retry after a moment") from None
