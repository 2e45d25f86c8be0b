"""How many jobs of each service may run at once: running replicas times a replica's batch, read in a
task of its own so that a stuck controller or replica never holds up the runner."""

import asyncio
import threading

from leap_ray.serve.jobs import capacity
from leap_ray.serve.jobs.capacity import ModelCapacity


class Models:
    """A gateway's view of the models: deployment names, and each replica's batch when asked."""

    def __init__(self, batch: dict[str, int]) -> None:
        self.batch = batch
        self.asked = 0

    def deployment_names(self) -> dict[str, str]:
        return {"sdxl": "SDXL", "musicgen": "MusicGen"}

    async def batch_capacity(self, service: str) -> int:
        self.asked += 1
        return self.batch[service]


def capacity_of(models: Models, replicas) -> ModelCapacity:
    reader = ModelCapacity(models, "leap_ray", refresh_s=0.0)
    reader._running_replicas = replicas
    return reader


async def read(reader: ModelCapacity) -> dict[str, int]:
    await reader.limits()
    while not reader._reading.done():  # the reading, in its own task
        await asyncio.sleep(0.01)
    return await reader.limits()


def test_the_limit_is_running_replicas_times_their_batch_and_one_before_any_reading():
    reader = capacity_of(Models({"sdxl": 8, "musicgen": 61}), lambda: {"SDXL": 3, "MusicGen": 1})

    async def main() -> tuple[dict, dict]:
        return await reader.limits(), await read(reader)

    first, read_once = asyncio.run(main())
    assert first == {"sdxl": 1, "musicgen": 1}
    assert read_once == {"sdxl": 24, "musicgen": 61}


def test_a_model_with_no_replica_running_still_gets_one_job_to_wake_it():
    reader = capacity_of(Models({"sdxl": 8, "musicgen": 61}), lambda: {"SDXL": 0, "MusicGen": 2})
    assert asyncio.run(read(reader)) == {"sdxl": 1, "musicgen": 122}


def test_a_stuck_controller_never_holds_up_the_caller_and_the_last_reading_stands(monkeypatch):
    monkeypatch.setattr(capacity, "READ_TIMEOUT_S", 0.1)
    stuck = threading.Event()
    answers = iter([{"SDXL": 2, "MusicGen": 1}])

    def replicas() -> dict[str, int]:
        answer = next(answers, None)
        if answer is None:
            stuck.wait(5)  # the controller stops answering
            return {}
        return answer

    reader = capacity_of(Models({"sdxl": 8, "musicgen": 4}), replicas)

    async def main() -> list[float]:
        await read(reader)
        took = []
        for _ in range(3):
            started = asyncio.get_running_loop().time()
            assert await reader.limits() == {"sdxl": 16, "musicgen": 4}
            took.append(asyncio.get_running_loop().time() - started)
            await asyncio.sleep(0.15)
        return took

    try:
        assert max(asyncio.run(main())) < 0.05
    finally:
        stuck.set()


def test_a_replicas_batch_is_asked_again_after_a_while(monkeypatch):
    models = Models({"sdxl": 8, "musicgen": 4})
    reader = capacity_of(models, lambda: {"SDXL": 1, "MusicGen": 1})

    async def main() -> dict[str, int]:
        await read(reader)
        models.batch["sdxl"] = 2  # user_config changed it
        monkeypatch.setattr(capacity, "ASK_EVERY_S", 0.0)
        return await read(reader)

    assert asyncio.run(main()) == {"sdxl": 2, "musicgen": 4}
