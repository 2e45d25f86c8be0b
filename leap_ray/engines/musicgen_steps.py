"""Token-level (continuous) batching for MusicGen: tracks join and leave a running batch at every
token, so a short track never waits for a long one.

Design: the engine's `StaticDecoder` holds the cache and its `TrackRows` the running tracks' codes,
positions and sampling settings on the device, sized for `max_load` tracks; running track i owns row
i there and cache rows 2i (its conditional row) and 2i + 1 (its unconditional row, for
classifier-free guidance). Every row has its own position, so tracks at different tokens, of
different windows, and of melody prefixes of different lengths share one decoder step. A track joins
by prefilling its rows (conditioning, then its window's codes but the last); each `step` is one
device step over every running track (its last codes in, its next codes drawn with its own
guidance, sampling settings and random stream: leap_ray.engines.musicgen_sampling) that the host
never waits for. The host counts positions itself: a track whose window is done has its codes read
back and moves to its next window (its last 12 s of codes prefilled as the prompt, the melody
sliding along, as audiocraft does) without holding anyone back; a track whose last window is done is
decoded and handed back at once, and the last running track's rows move into its place, so the rows
in use stay the first ones (the shapes CUDA graphs replay).

Each track follows exactly the steps it would follow alone (the same prefill, the same step per
token, the same noise), so a seeded request gives its solo audio whatever joins or leaves (on a GPU
to float rounding: kernels chosen by the batch's shape may round its logits differently).

A prefill runs between two steps, all at once: a joining track's (its conditioning and nothing else
for a first window) or a next window's (12 s of carried codes). `benchmarks/musicgen_steps.py`
measures what it costs in ordinary steps (README: Performance).
"""

import time
from dataclasses import dataclass
from typing import Protocol

import torch

from leap_ray.api.musicgen import MusicGenModelSpec, MusicGenRequest
from leap_ray.engines.contract import Outcome, ProgressHook, StopCheck
from leap_ray.engines.failures import model_error, request_error
from leap_ray.engines.musicgen_decoder import StaticDecoder
from leap_ray.engines.musicgen_rows import CopyOut, TrackRows
from leap_ray.engines.musicgen_sampling import noise_key
from leap_ray.engines.musicgen_tracks import Track, delay_pattern
from leap_ray.engines.results import MusicGenResult
from leap_ray.errors import LeapRayError


class TrackModel(Protocol):
    """What the running batch needs of its engine (`MusicGenEngine`)."""

    device: torch.device
    has_melody: bool
    codebooks: int
    stride_frames: int  # a long track's windows move on this many frames (audiocraft's extend_stride)
    start_token: int
    pad_token: int
    decoder: StaticDecoder | None  # the cache the running tracks share; made by `decoder_for`
    rows: TrackRows | None  # the running tracks' codes and settings, made with the decoder

    def spec(self) -> MusicGenModelSpec: ...

    def decoder_for(self, rows: int) -> StaticDecoder:
        """The decoder, (re)made when it holds fewer rows (only while the batch is empty)."""

    def start_track(
        self, request: MusicGenRequest, should_stop: StopCheck | None, progress: ProgressHook | None
    ) -> Track:
        """The request ready for its first window (prompt encoded, melody's chroma made); raises its error."""

    def conditioning(self, tracks: list[Track], window: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder's conditioning of [conditional rows; unconditional rows], and its mask."""

    def report_progress(self, track: Track, window: int, position: int, copy_out: CopyOut) -> None:
        """After position `position` of window `window` is drawn; `copy_out()` starts copying the
        window's codes up to it to the host and gives the call that waits for them (only where the
        report needs them)."""

    def finish(self, track: Track) -> MusicGenResult | LeapRayError:
        """The track's audio (its codes decoded), or its error."""


@dataclass(eq=False)  # found by identity: comparing requests would compare their melodies
class _Running:
    """A track in the running batch, in its current window."""

    track: Track
    window: int
    length: int  # positions of the window's delay pattern: codebooks + frames
    position: int  # the position in the window whose codes are sampled next (the device's, counted)
    offset: int  # the decoder position of the window's first code (after a melody prefix)
    admitted_at: float
    decoder_calls: int = 0
    largest_batch: int = 0  # the most tracks in one decoder step this track was part of
    done: bool = False

    @property
    def finished(self) -> bool:
        return self.done or self.track.left


class DecodeBatch:
    """The running batch of one replica, driven by one thread: `admit` tracks between steps, call
    `step` until `running` is empty, take each finished request's outcome from `step`'s return."""

    def __init__(self, engine: TrackModel, max_load: int = 8) -> None:
        self.engine = engine
        self.max_load = max_load  # tracks: the decoder's cache is sized for them
        self.running: list[_Running] = []
        self.decoder_calls = 0

    @property
    def load(self) -> int:
        """What the batch holds against max_batch_size: its tracks."""
        return len(self.running)

    @staticmethod
    def cost(request: MusicGenRequest) -> int:
        return 1

    def clear(self) -> None:
        self.running.clear()

    def close(self) -> None:
        """Nothing to let go of: the batch has no threads of its own."""

    def can_join(self, request: MusicGenRequest) -> bool:
        """Whether the decoder's cache has rows for the request beside the running tracks (a bigger
        cache is made only while the batch is empty)."""
        decoder = self.engine.decoder
        return not self.running or (decoder is not None and decoder.rows >= self._rows(len(self.running) + 1))

    def _rows(self, tracks: int) -> int:
        return 2 * max(tracks, self.max_load)

    @torch.inference_mode()
    def admit(
        self,
        request: MusicGenRequest,
        should_stop: StopCheck | None = None,
        progress: ProgressHook | None = None,
    ) -> LeapRayError | None:
        """Adds the request to the running batch (its prompt encoded, its first window prefilled), or
        returns the error that it alone met."""
        try:
            request.check_against(self.engine.spec())
            if not self.running:
                self.engine.decoder_for(self._rows(1))
            track = self.engine.start_track(request, should_stop, progress)
            self.running.append(self._begin_window(track, 0, len(self.running), time.perf_counter()))
        except Exception as error:
            return request_error(error)
        return None

    def _begin_window(self, track: Track, window: int, index: int, admitted_at: float) -> _Running:
        """The track's window `window` prefilled into the rows of running track `index`."""
        engine, decoder = self.engine, self.engine.decoder
        frames = track.windows[window][1]
        pattern = delay_pattern(track.prompt, frames, engine.codebooks, engine.start_token, engine.pad_token)
        states, mask = engine.conditioning([track], window)
        prompt_frames = track.prompt_frames
        codes = pattern[None, :, :prompt_frames].repeat(2, 1, 1)  # all the first codes but the last
        embeds = decoder.embed(codes.to(engine.device))
        if engine.has_melody:
            embeds = torch.cat([states.to(embeds.dtype), embeds], dim=1)
        else:
            decoder.set_cross(states, mask, first_row=2 * index)
        decoder.prefill(embeds, first_row=2 * index)
        offset = states.shape[1] if engine.has_melody else 0
        key = noise_key(track.seed, window)
        engine.rows.start(index, pattern, 1 + prompt_frames, offset, track.request, key)
        return _Running(track, window, pattern.shape[1], 1 + prompt_frames, offset, admitted_at)

    @torch.inference_mode()
    def step(self) -> list[Outcome]:
        """One token of every running track (one device step over all of them), then the outcome of
        each request that finished: its audio, or its own error."""
        if self.running:
            self._decode(0, len(self.running))
        outcomes = []
        for index in reversed(range(len(self.running))):
            running = self.running[index]
            if running.finished:
                outcomes.append((running.track.request, self._outcome(running)))
                self._release(index)
        return outcomes[::-1]

    def _decode(self, first: int, count: int) -> None:
        """One step for running tracks first..first + count, then each one's bookkeeping. If the
        shared step fails, each track is stepped alone: only one that fails alone gets the error."""
        group = self.running[first : first + count]
        span = self.engine.decoder.span(max(running.offset + running.position - 1 for running in group))
        try:
            # Only a step over every running track may pad (padding writes to the rows past them).
            self.engine.rows.step(first, count, span, whole=count == len(self.running))
        except Exception as error:
            if count == 1:
                group[0].track.error = model_error(error)
            else:
                for index in range(first, first + count):
                    self._decode(index, 1)
            return
        self.decoder_calls += 1
        for index, running in enumerate(group, start=first):
            running.decoder_calls += 1
            running.largest_batch = max(running.largest_batch, count)
            try:
                self._advance(index, running)
            except Exception as error:
                running.track.error = request_error(error)

    def _advance(self, index: int, running: _Running) -> None:
        """Counts the track's drawn position, reports, and moves it on to its next window or its end."""
        track, position, rows = running.track, running.position, self.engine.rows
        running.position += 1
        self.engine.report_progress(
            track, running.window, position, lambda: rows.copy_out(index, position + 1)
        )
        if track.check_stop() or running.position < running.length:
            return
        track.keep_window(rows.read(index, running.length), running.window, self.engine.stride_frames)
        if running.window + 1 < len(track.windows):
            following = self._begin_window(track, running.window + 1, index, running.admitted_at)
            following.decoder_calls, following.largest_batch = running.decoder_calls, running.largest_batch
            self.running[index] = following
        else:
            running.done = True

    def _outcome(self, running: _Running) -> MusicGenResult | LeapRayError:
        track = running.track
        track.batch_size = running.largest_batch
        track.timings["generate_s"] = time.perf_counter() - running.admitted_at
        return self.engine.finish(track)

    def _release(self, index: int) -> None:
        """Drops running track `index`; the last running track's rows move into its rows."""
        last = len(self.running) - 1
        if index != last:
            self.engine.decoder.move_rows(2 * last, 2 * index, 2)
            self.engine.rows.move(last, index)
            self.running[index] = self.running[last]
        self.running.pop()
