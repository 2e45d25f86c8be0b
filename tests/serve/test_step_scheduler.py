"""The replica's batcher in-process: under step batching a short request that arrives while a long one
runs is answered first, with the images it gets alone, and under whole-request batching it waits for
the long one; requests beyond the image budget wait for room; a request cancelled while waiting
never runs."""

import asyncio
import threading
import time

import numpy as np
import pytest

from leap_ray.api.sdxl import SDXLRequest
from leap_ray.config import BatchingConfig
from leap_ray.engines.contract import generate
from leap_ray.engines.results import SDXLResult
from leap_ray.engines.sdxl import SDXLEngine
from leap_ray.serve.step_scheduler import StepScheduler

SMALL = {"height": 64, "width": 64}


@pytest.fixture(scope="module")
def engine(tiny_models) -> SDXLEngine:
    return SDXLEngine(str(tiny_models["sdxl"]))


def never() -> bool:
    return False


@pytest.mark.parametrize(("batching", "first"), [("step", "short"), ("request", "long")])
def test_a_short_request_behind_a_long_one_is_answered_first_only_under_step_batching(
    engine, batching, first
):
    long = SDXLRequest(prompt="long", seed=1, num_inference_steps=40, **SMALL)
    short = SDXLRequest(prompt="short", seed=2, num_inference_steps=3, **SMALL)
    (alone,) = generate(engine, [short])
    finished: list[str] = []

    async def main() -> dict[str, SDXLResult]:
        settings = BatchingConfig(max_batch_size=8, batching=batching, batch_wait_timeout_s=0)
        scheduler = StepScheduler(engine.running_batch(8), settings)

        async def one(name: str, request: SDXLRequest, delay: float) -> SDXLResult:
            await asyncio.sleep(delay)
            outcome = await scheduler.generate(request, never, None)
            finished.append(name)
            return outcome

        long_run, short_run = await asyncio.gather(one("long", long, 0), one("short", short, 0.2))
        return {"long": long_run, "short": short_run}

    outcomes = asyncio.run(main())
    assert finished[0] == first
    assert np.abs(np.stack(outcomes["short"].images) - np.stack(alone.images)).max() < 1e-3
    # Step batching: it shared UNet calls with the long one; whole requests: it ran after it, alone.
    assert outcomes["short"].batch_size == (2 if batching == "step" else 1)


def test_requests_beyond_the_image_budget_wait_and_a_cancelled_one_never_runs(engine):
    cancelled = threading.Event()
    first = SDXLRequest(prompt="a", seed=1, num_inference_steps=20, num_images_per_prompt=2, **SMALL)
    second = SDXLRequest(prompt="b", seed=2, num_inference_steps=2, num_images_per_prompt=2, **SMALL)
    dropped = SDXLRequest(prompt="c", seed=3, num_inference_steps=2, **SMALL)

    async def main() -> list:
        scheduler = StepScheduler(engine.running_batch(2), BatchingConfig(max_batch_size=2))
        started = time.perf_counter()
        tasks = [asyncio.create_task(scheduler.generate(first, never, None))]
        await asyncio.sleep(0.1)
        tasks.append(asyncio.create_task(scheduler.generate(second, never, None)))
        tasks.append(asyncio.create_task(scheduler.generate(dropped, cancelled.is_set, None)))
        cancelled.set()
        outcomes = await asyncio.gather(*tasks)
        assert time.perf_counter() - started < 60
        return outcomes

    first_outcome, second_outcome, dropped_outcome = asyncio.run(main())
    assert first_outcome.batch_size == second_outcome.batch_size == 2  # never more than 2 images
    assert dropped_outcome is None


def test_a_replica_takes_new_batching_settings_on_its_one_running_batch(tiny_models):
    from leap_ray.config import ModelSettings
    from leap_ray.serve.deployments import MusicGenDeployment

    replica = MusicGenDeployment.func_or_class(ModelSettings(model=str(tiny_models["musicgen"])))
    replica.reconfigure({"max_batch_size": 2, "batching": "step"})
    batch = replica.shim.scheduler.batch
    replica.reconfigure({"max_batch_size": 4, "batching": "request"})  # both modes drive one batch
    assert replica.shim.scheduler.batch is batch and batch.max_load == 4
    assert replica.shim.scheduler.batching.batching == "request"


def test_a_replica_without_user_config_makes_its_step_scheduler_at_its_first_request(tiny_models):
    from leap_ray.api.musicgen import MusicGenOutput, MusicGenRequest
    from leap_ray.config import ModelSettings
    from leap_ray.serve.deployments import MusicGenDeployment

    # Serve calls reconfigure only when a user_config is set: the defaults (batching: step) apply.
    replica = MusicGenDeployment.func_or_class(ModelSettings(model=str(tiny_models["musicgen"])))
    assert replica.shim.scheduler is None
    output = asyncio.run(replica.generate(MusicGenRequest(prompt="a", duration=1, seed=3)))
    assert isinstance(output, MusicGenOutput) and output.duration == 1.0
    assert replica.shim.scheduler is not None and replica.shim.scheduler.batch.max_load == 8
