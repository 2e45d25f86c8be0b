"""Engines that take a GPU's time without a GPU, for planning capacity and testing the control plane
(many replicas, many "GPUs") on a laptop. Inject them with a model deployment's `engine` setting:
`leap_ray.testing.simulated:SimulatedSDXLEngine` and `:SimulatedMusicGenEngine`.

They keep the engine contract (`leap_ray.engines.contract`) with a running batch of their own:
requests are admitted, stepped, reported,
cancelled and answered as by the real engines, but a step sleeps for a latency model's time instead
of computing, and outputs are seeded and of the right shape (images of flat blocks, audio noise).
A MusicGen request with `stream` also gets its track's audio as it is made (an AudioDelta every half
second of audio: the final track's own samples, in 16-bit PCM).
Cues, as engine kwargs: a prompt equal to `fail_prompt` fails its request alone (ModelError), as a
model fault would; one equal to `die_prompt` kills the replica's process (SIGKILL) at its first
step, as a GPU fault or the OOM killer would.
Start-up, as an engine kwarg: `startup_s` (default 0) is slept in the constructor, as a real replica's
compile and warm-up take place there (Serve reports a replica healthy, and routes to it, only once its
engine's constructor returns). Real figures, on one H200: compiling SDXL's UNet on a cold inductor cache
took ~1.5 min a batch bucket, ~6 min for buckets 1, 2, 4, 8; with a carried compile cache the aim is
≤ 30 s (~20 s). Every result's timings carry `engine_up_s`, how long its engine had been up when it
answered, so a benchmark can tell the replicas that started during a burst from those already up.

Latency defaults come from our own measurements on one NVIDIA H200
(benchmarks/recorded/gpu_check_h200_2026-11-26.json, float16):
- SDXL 1024², compiled: 0.77 s for 20 steps and 1.72 s for 50 at batch 1, so 31.7 ms a step and
  0.136 s a request besides (prompt encoding, VAE decode). Eager steps cost 60 ms at batch 1 and 289
  ms at batch 8 (4.8×); applying that ratio to the compiled step gives 14.5 ms per step plus 17.2 ms
  per image at 1024² (scaled by pixels for other sizes).
- MusicGen-melody with CUDA graphs: 4.9 ms a token for 1 track and 16.4 ms for 16 (2.47 s and 8.25
  s for 504 tokens), so 4.1 ms plus 0.77 ms per track; 0.1 s a track besides (T5, EnCodec).
"""

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leap_ray.api.audio import audio_delta
from leap_ray.api.common import draw_seed
from leap_ray.api.musicgen import MusicGenModelSpec, MusicGenRequest
from leap_ray.api.progress import AudioDelta, AudioProgress, Progress, StepProgress
from leap_ray.api.sdxl import SDXLModelSpec, SDXLRequest, seeds_for
from leap_ray.engines.failures import internal_error
from leap_ray.engines.results import MusicGenResult, SDXLResult
from leap_ray.errors import LeapRayError, ModelError

REFERENCE_PIXELS = 1024 * 1024
SAMPLE_RATE, FRAME_RATE = 32_000, 50  # MusicGen's
PIECE_FRAMES = FRAME_RATE // 2  # with `stream`: a piece of the track every half second of it


@dataclass(eq=False)  # found by identity: comparing requests would compare their tensors
class _Job:
    """A request in a simulated batch: its steps, its hooks, its outcome."""

    request: Any
    seed: int
    steps: int
    should_stop: Callable[[], bool] | None
    progress: Callable[[Progress], None] | None
    admitted_at: float = field(default_factory=time.perf_counter)
    done: int = 0
    stopped: bool = False
    largest_batch: int = 0
    error: LeapRayError | None = None
    track: np.ndarray | None = None  # MusicGen: the request's waveform, made once
    streamed: int = 0  # MusicGen: samples of it sent as AudioDelta


class _SimulatedEngine:
    """What both simulated engines share: a running batch that sleeps a latency model's time per step."""

    def __init__(
        self,
        *,
        overhead_s: float,
        fail_prompt: str | None = None,
        die_prompt: str | None = None,
        startup_s: float = 0.0,
    ) -> None:
        self.fail_prompt, self.die_prompt = fail_prompt, die_prompt
        self.overhead_s = overhead_s
        time.sleep(startup_s)  # a real engine's compile and warm-up (see the module's docstring)
        self.up_since = time.perf_counter()

    def timings(self, job: _Job) -> dict[str, float]:
        """The job's generate_s, and engine_up_s: how long this engine has been up."""
        now = time.perf_counter()
        return {"generate_s": now - job.admitted_at, "engine_up_s": now - self.up_since}

    def running_batch(self, max_load: int = 8) -> "SimulatedBatch":
        """The replica's running batch (in place of StepBatch/DecodeBatch)."""
        return SimulatedBatch(self, max_load)

    def spec(self) -> SDXLModelSpec | MusicGenModelSpec:
        raise NotImplementedError

    # What each model defines:
    def steps(self, request: Any) -> int:
        raise NotImplementedError

    def step_s(self, jobs: list[_Job]) -> float:
        raise NotImplementedError

    def events(self, job: _Job) -> list[Progress]:
        """What the job reports after its step (in order)."""
        raise NotImplementedError

    def result(self, job: _Job) -> Any:
        raise NotImplementedError

    def fails(self, request: Any) -> bool:
        return self.fail_prompt is not None and request.prompt == self.fail_prompt

    def dies(self, request: Any) -> bool:
        return self.die_prompt is not None and request.prompt == self.die_prompt


class SimulatedBatch:
    """The simulated running batch (the `RunningBatch` the step scheduler drives)."""

    def __init__(self, engine: _SimulatedEngine, max_load: int) -> None:
        self.engine = engine
        self.running: list[_Job] = []
        self.max_load = max_load  # the simulation has no cache to size by it

    @property
    def load(self) -> int:
        return sum(self.cost(job.request) for job in self.running)

    @staticmethod
    def cost(request: Any) -> int:
        return getattr(request, "image_count", 1)

    @staticmethod
    def can_join(request: Any) -> bool:
        return True

    def clear(self) -> None:
        self.running.clear()

    def close(self) -> None:
        """Nothing to let go of."""

    def admit(
        self,
        request: Any,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> LeapRayError | None:
        try:
            request.check_against(self.engine.spec())
        except LeapRayError as error:
            return error
        seed = request.seed if request.seed is not None else draw_seed()
        self.running.append(_Job(request, seed, self.engine.steps(request), should_stop, progress))
        return None

    def step(self) -> list[tuple[Any, Any]]:
        """One step of every running request, slept; then the outcome of each that finished."""
        if any(self.engine.dies(job.request) for job in self.running):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.engine.step_s(self.running))
        for job in self.running:
            job.done += 1
            job.largest_batch = max(job.largest_batch, len(self.running))
            if self.engine.fails(job.request):
                job.error = ModelError("the simulated model failed on this request", code="model_error")
            else:
                self.end_step(job)
        finished = [job for job in self.running if job.error or job.stopped or job.done >= job.steps]
        self.running = [job for job in self.running if job not in finished]
        if any(not job.error and not job.stopped for job in finished):
            time.sleep(self.engine.overhead_s)
        return [(job.request, job.error or self.engine.result(job)) for job in finished]

    def end_step(self, job: _Job) -> None:
        """The job's stop check, then its progress; a hook that raises fails its own request."""
        try:
            if job.should_stop is not None and job.should_stop():
                job.stopped = True
            elif job.progress is not None:
                for event in self.engine.events(job):
                    job.progress(event)
        except Exception as error:
            job.error = internal_error(error)


class SimulatedSDXLEngine(_SimulatedEngine):
    """SDXL's time per denoising step: `step_s + image_step_s × images × pixels / 1024²`."""

    def __init__(
        self,
        model: str = "simulated",
        *,
        step_s: float = 0.0145,
        image_step_s: float = 0.0172,
        overhead_s: float = 0.136,
        **shared: Any,
    ) -> None:
        """`shared`: fail_prompt, die_prompt and startup_s, as every simulated engine takes them."""
        super().__init__(overhead_s=overhead_s, **shared)
        self.base_step_s, self.image_step_s = step_s, image_step_s

    def spec(self) -> SDXLModelSpec:
        return SDXLModelSpec(
            latent_channels=4,
            vae_scale_factor=8,
            text_embed_width=2048,
            pooled_embed_width=1280,
            text_tokens=77,
            native_size=1024,  # it simulates the real model's timings
        )

    def steps(self, request: SDXLRequest) -> int:
        return request.num_inference_steps

    def step_s(self, jobs: list[_Job]) -> float:
        pixels = sum(job.request.image_count * job.request.height * job.request.width for job in jobs)
        return self.base_step_s + self.image_step_s * pixels / REFERENCE_PIXELS

    def events(self, job: _Job) -> list[Progress]:
        return [StepProgress(job.done, job.steps, float(1000 - 1000 * job.done // job.steps), None)]

    def result(self, job: _Job) -> SDXLResult:
        request, seeds = job.request, seeds_for(job.request, job.seed)
        images = [blocks(seed, request.height, request.width) for seed in seeds]
        stopped_at = job.done - 1 if job.stopped else None
        return SDXLResult(images, seeds, self.timings(job), job.largest_batch, stopped_at)


def blocks(seed: int, height: int, width: int, block: int = 64) -> np.ndarray:
    """A seeded image of flat 64-pixel blocks: the right shape, and cheap to encode as a generated
    image is (PNG compresses it), where noise would make encoding cost more than the model
    simulated on a CPU shared by many replicas."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((-(-height // block), -(-width // block), 3), dtype=np.float32)
    return np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)[:height, :width]


class SimulatedMusicGenEngine(_SimulatedEngine):
    """MusicGen's time per token: `token_s + track_token_s × tracks`, 50 tokens a second of audio."""

    def __init__(
        self,
        model: str = "simulated",
        *,
        token_s: float = 0.0041,
        track_token_s: float = 0.00077,
        overhead_s: float = 0.1,
        **shared: Any,
    ) -> None:
        """`shared`: fail_prompt, die_prompt and startup_s, as every simulated engine takes them."""
        super().__init__(overhead_s=overhead_s, **shared)
        self.token_s, self.track_token_s = token_s, track_token_s

    def spec(self) -> MusicGenModelSpec:
        return MusicGenModelSpec(sample_rate=SAMPLE_RATE, frame_rate=FRAME_RATE, supports_melody=True)

    def steps(self, request: MusicGenRequest) -> int:
        return request.frames(FRAME_RATE)

    def step_s(self, jobs: list[_Job]) -> float:
        return self.token_s + self.track_token_s * len(jobs)

    def events(self, job: _Job) -> list[Progress]:
        """The audio made since the last piece (with `stream`, every PIECE_FRAMES and at the end), and
        AudioProgress at each whole second."""
        events: list[Progress] = []
        if job.request.stream and (delta := self.next_piece(job)) is not None:
            events.append(delta)
        if job.done % FRAME_RATE == 0:
            events.append(AudioProgress(job.done / FRAME_RATE, job.request.duration))
        return events

    def next_piece(self, job: _Job) -> AudioDelta | None:
        """The track's samples after the last piece, when a piece is due (marked as sent)."""
        last = job.done >= job.steps
        if job.done % PIECE_FRAMES and not last:
            return None
        waveform = self.track(job)
        end = len(waveform) if last else min(job.done * SAMPLE_RATE // FRAME_RATE, len(waveform))
        if end <= job.streamed:
            return None
        start, job.streamed = job.streamed, end
        return audio_delta(waveform[start:end], SAMPLE_RATE, start)

    @staticmethod
    def track(job: _Job) -> np.ndarray:
        if job.track is None:
            job.track = simulated_track(job.seed, job.request.duration)
        return job.track

    def result(self, job: _Job) -> MusicGenResult:
        waveform = np.zeros(0, np.float32) if job.stopped else self.track(job)  # a stopped track: none
        return MusicGenResult(
            waveform, SAMPLE_RATE, job.seed, self.timings(job), job.largest_batch, job.stopped
        )


def simulated_track(seed: int, duration: float) -> np.ndarray:
    """A simulated track: seeded noise, as many samples as `duration` holds."""
    samples = round(duration * SAMPLE_RATE)
    return (np.random.default_rng(seed).standard_normal(samples) * 0.1).astype(np.float32)
