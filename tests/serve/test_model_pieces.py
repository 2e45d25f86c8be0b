"""A model deployment's pieces in-process, without Ray: the model shim (engine, batcher, counters,
encoding), requests run as parts, and the stream bridge from the engine's thread to a stream."""

import asyncio
import threading

import pytest

from leap_ray.api.progress import StepProgress
from leap_ray.api.sdxl import SDXLOutput, SDXLRequest
from leap_ray.config import BatchingConfig, ModelSettings
from leap_ray.errors import InvalidRequest, ModelError
from leap_ray.serve.model_shim import ModelShim
from leap_ray.serve.outputs import encode_images
from leap_ray.serve.parts import run_in_parts
from leap_ray.serve.streams import events_then_output

SIMULATED = ModelSettings(
    model="simulated",
    engine="leap_ray.testing.simulated:SimulatedSDXLEngine",
    engine_kwargs={"step_s": 0.001, "image_step_s": 0.0, "overhead_s": 0.0, "fail_prompt": "fail"},
)
SMALL = {"height": 64, "width": 64, "num_inference_steps": 4}


def simulated_shim(encode=encode_images) -> ModelShim:
    return ModelShim(SIMULATED, "unused:Engine", encode)


def test_the_shim_runs_a_request_to_its_encoded_output_and_counts_it():
    shim = simulated_shim()
    output = asyncio.run(shim.run(SDXLRequest(prompt="a", seed=3, **SMALL), None))
    assert isinstance(output, SDXLOutput) and output.seeds == [3] and output.images[0][:4] == b"\x89PNG"
    assert shim.stats() == {"requests": 1, "cancelled": 0, "ongoing": 0, "steps": 4}
    assert shim.batching == BatchingConfig()  # no user_config: the defaults, made at the first request


def test_the_shim_returns_a_requests_own_error_and_an_encoding_fault_as_a_model_error():
    shim = simulated_shim()
    error = asyncio.run(shim.run(SDXLRequest(prompt="fail", seed=1, **SMALL), None))
    assert isinstance(error, ModelError) and error.code == "model_error"

    def broken(request, result):
        raise ValueError("no encoder for this")

    error = asyncio.run(simulated_shim(broken).run(SDXLRequest(prompt="a", seed=1, **SMALL), None))
    assert isinstance(error, ModelError) and "could not be encoded" in error.message


def test_a_caller_that_goes_away_is_counted_and_its_request_leaves_the_batch():
    shim = ModelShim(
        SIMULATED.model_copy(update={"engine_kwargs": {"step_s": 0.05}}), "unused:Engine", encode_images
    )
    shim.configure(BatchingConfig(max_batch_size=4))

    async def main() -> None:
        task = asyncio.create_task(shim.run(SDXLRequest(prompt="a", seed=1, num_inference_steps=100), None))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):  # it leaves at its next step
            if not shim.scheduler.batch.load:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert shim.stats()["cancelled"] == 1 and shim.scheduler.batch.load == 0


def test_parts_are_joined_in_order_and_the_first_failure_cancels_the_others():
    finished = []

    async def run(part: int, progress) -> int:
        await asyncio.sleep(0.01 * (3 - part))
        finished.append(part)
        return part * 10

    assert asyncio.run(run_in_parts([0, 1, 2], run, list, None)) == [0, 10, 20]
    assert finished == [2, 1, 0]

    async def failing(part: int, progress) -> int:
        if part == 0:
            raise InvalidRequest("bad part", param="prompt")
        await asyncio.sleep(10)
        return part

    with pytest.raises(InvalidRequest, match="bad part"):
        asyncio.run(asyncio.wait_for(run_in_parts([0, 1], failing, list, None), 5))


def test_the_stream_bridge_yields_events_told_from_another_thread_then_the_output():
    async def run(progress) -> str:
        told = threading.Thread(target=lambda: [progress(StepProgress(step, 3, 1.0)) for step in (1, 2, 3)])
        told.start()
        await asyncio.to_thread(told.join)
        return "output"

    async def collect() -> list:
        return [item async for item in events_then_output(run)]

    items = asyncio.run(collect())
    assert [item.step for item in items[:-1]] == [1, 2, 3] and items[-1] == "output"


def test_closing_the_stream_cancels_the_run():
    cancelled = asyncio.Event()

    async def run(progress) -> str:
        progress(StepProgress(1, 2, 1.0))
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async def main() -> None:
        stream = events_then_output(run)
        assert (await anext(stream)).step == 1
        await stream.aclose()
        await asyncio.wait_for(cancelled.wait(), 2)

    asyncio.run(main())


class FaultingBatch:
    """A simulated running batch whose first `admit` or `step` raises (a fault of the batch itself, or
    an engine breaking the contract)."""

    def __init__(self, batch, method: str) -> None:
        self.batch, self.method, self.faulted = batch, method, False

    def __getattr__(self, name: str):
        return getattr(self.batch, name)

    def fault_once(self, method: str) -> None:
        if method == self.method and not self.faulted:
            self.faulted = True
            raise RuntimeError("CUDA error: unspecified launch failure")

    def admit(self, *args):
        self.fault_once("admit")
        return self.batch.admit(*args)

    def step(self):
        self.fault_once("step")
        return self.batch.step()


@pytest.mark.parametrize(("method", "code"), [("admit", "model_error"), ("step", "internal_error")])
def test_a_fault_of_the_batch_fails_its_requests_and_the_batcher_serves_on(method, code):
    shim = simulated_shim()
    shim.start()
    shim.scheduler.batch = FaultingBatch(shim.scheduler.batch, method)

    async def main() -> tuple:
        first = await shim.run(SDXLRequest(prompt="a", seed=1, **SMALL), None)
        second = await shim.run(SDXLRequest(prompt="b", seed=2, **SMALL), None)
        return first, second

    first, second = asyncio.run(asyncio.wait_for(main(), 10))  # a dead batcher would never answer
    assert first.code == code and isinstance(second, SDXLOutput)
    shim.check_health()  # the thread still runs


def test_whole_request_batching_sends_a_lone_request_at_once():
    shim = simulated_shim()
    shim.configure(BatchingConfig(batching="request", batch_wait_timeout_s=30))

    async def main() -> float:
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(shim.run(SDXLRequest(prompt="a", seed=1, **SMALL), None), 10)
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(main()) < 5  # not the 30 s a batch would wait for company
