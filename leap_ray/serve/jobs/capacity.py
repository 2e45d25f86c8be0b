"""How many jobs of each service may run at once over the cluster: the model deployment's running
replicas times what one replica runs at once (its batch, `max_batch_size`). A job claimed beyond that
would only wait in the model's queue, where it no longer takes turns with other API keys' jobs (and a
queued job counts towards the model's autoscaling from the store just as it would from there); a job
claimed as soon as a place frees keeps the batches full. Read from Serve every `refresh_s` while jobs
wait or run, every IDLE_REFRESH_S otherwise (a reading asks the controller for the whole Serve state)."""

import asyncio
import logging
import time

from ray import serve

from leap_ray.serve.gateway import ModelGateway

logger = logging.getLogger("ray.serve")
ASK_TIMEOUT_S = 10.0  # a replica's batch size: asked once, of a replica that may be busy
RUNNING = "RUNNING"  # a replica state in serve.status()
IDLE_REFRESH_S = 30.0


class ModelCapacity:
    def __init__(self, gateway: ModelGateway, application: str, refresh_s: float) -> None:
        self.gateway = gateway
        self.application = application
        self.refresh_s = refresh_s
        self._per_replica: dict[str, int] = {}  # asked once per service: a call waits in the model's queue
        self._limits: dict[str, int] | None = None  # None until read: no bound
        self._read_at = -float("inf")

    async def limits(self, busy: bool = True) -> dict[str, int] | None:
        """The most jobs of each service to run at once, as last read (read again when due: `busy`,
        jobs wait or run, makes it due sooner)."""
        if time.monotonic() - self._read_at >= (self.refresh_s if busy else IDLE_REFRESH_S):
            self._read_at = time.monotonic()
            try:
                self._limits = await self._read()
            except Exception as error:  # the controller or a replica busy: the last reading stands
                logger.warning("could not read the models' capacity (%s: %s)", type(error).__name__, error)
        return self._limits

    async def _read(self) -> dict[str, int]:
        replicas = await asyncio.to_thread(self._running_replicas)
        limits = {}
        for service, deployment in self.gateway.deployment_names().items():
            running = replicas.get(deployment, 0)
            if running and service not in self._per_replica:
                ask = self.gateway.batch_capacity(service)
                self._per_replica[service] = await asyncio.wait_for(ask, ASK_TIMEOUT_S)
            limits[service] = running * self._per_replica.get(service, 0)
        return limits

    def _running_replicas(self) -> dict[str, int]:
        """Running replicas per deployment of this application (blocking: a call to the controller)."""
        deployments = serve.status().applications[self.application].deployments
        return {name: status.replica_states.get(RUNNING, 0) for name, status in deployments.items()}
