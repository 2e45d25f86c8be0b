"""How many jobs of each service may run at once over the cluster: the model deployment's running
replicas times what one replica runs at once (its batch, `max_batch_size`). A job claimed beyond that
would only wait in the model's queue, where it no longer takes turns with other API keys' jobs (and a
queued job counts towards the model's autoscaling from the store just as it would from there); a job
claimed as soon as a place frees keeps the batches full.

Readings run in a task of their own, each part with a deadline, on a thread of their own: the runner
takes the last reading and never waits for one, so a stuck controller or a busy replica cannot hold
up its heartbeats. A reading is due every `refresh_s` while jobs wait or run, every IDLE_REFRESH_S
otherwise (it asks the controller for the whole Serve state). Until a first reading, and for a model
with no replica running, a service runs one job at a time: that one call is also what wakes a model
scaled to zero."""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from leap_ray.serve.gateway import ModelGateway

logger = logging.getLogger("ray.serve")
RUNNING = "RUNNING"  # a replica state in serve.status()
IDLE_REFRESH_S = 30.0
READ_TIMEOUT_S = 10.0  # serve.status(), and a replica's batch size (asked of a replica that may be busy)
ASK_EVERY_S = 60.0  # a replica's batch size again: `user_config` changes it without a restart


class ModelCapacity:
    def __init__(self, gateway: ModelGateway, application: str, refresh_s: float) -> None:
        self.gateway = gateway
        self.application = application
        self.refresh_s = refresh_s
        self._replicas: dict[str, int] = {}  # running replicas per service, as last read
        self._per_replica: dict[str, int] = {}  # a replica's batch per service, as last asked
        self._asked_at: dict[str, float] = {}
        self._read_at = -float("inf")
        self._reading: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="model-capacity")  # a stuck call holds one

    async def limits(self, busy: bool = True) -> dict[str, int]:
        """The most jobs of each service to run at once, as last read (a reading started when due:
        `busy`, jobs wait or run, makes it due sooner); at least one per service."""
        due = time.monotonic() - self._read_at >= (self.refresh_s if busy else IDLE_REFRESH_S)
        if due and (self._reading is None or self._reading.done()):
            self._read_at = time.monotonic()
            self._reading = asyncio.get_running_loop().create_task(self._read())
        return {
            service: max(1, self._replicas.get(service, 0) * self._per_replica.get(service, 0))
            for service in self.gateway.deployment_names()
        }

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            replicas = await asyncio.wait_for(
                loop.run_in_executor(self._thread, self._running_replicas), READ_TIMEOUT_S
            )
        except Exception as error:  # the controller busy or away: the last reading stands
            logger.warning("could not read the models' replicas (%s: %s)", type(error).__name__, error)
            return
        for service, deployment in self.gateway.deployment_names().items():
            self._replicas[service] = replicas.get(deployment, 0)
            asked_at = self._asked_at.get(service)
            if self._replicas[service] and (asked_at is None or time.monotonic() - asked_at >= ASK_EVERY_S):
                await self._ask_batch(service)

    async def _ask_batch(self, service: str) -> None:
        self._asked_at[service] = time.monotonic()
        try:
            self._per_replica[service] = await asyncio.wait_for(
                self.gateway.batch_capacity(service), READ_TIMEOUT_S
            )
        except Exception as error:  # a replica busy: the last answer stands (one job at a time until one)
            logger.warning("could not ask %s's batch size (%s: %s)", service, type(error).__name__, error)

    def _running_replicas(self) -> dict[str, int]:
        """Running replicas per deployment of this application (blocking: a call to the controller)."""
        deployments = serve.status().applications[self.application].deployments
        return {name: status.replica_states.get(RUNNING, 0) for name, status in deployments.items()}
