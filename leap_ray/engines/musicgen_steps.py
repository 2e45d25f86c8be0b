"""Token-level (continuous) batching for MusicGen: tracks join and leave a running batch at every
token, so a short track never waits for a long one.

Design: the engine's `StaticDecoder` holds the cache, sized for `max_load` tracks; running track i
owns cache rows 2i (its conditional row) and 2i + 1 (its unconditional row, for classifier-free
guidance). Every row has its own position, so tracks at different tokens, of different windows, and
of melody prefixes of different lengths share one decoder step. A track joins by prefilling its rows
(conditioning, then its window's codes but the last); each `step` feeds every running track's last
codes, samples each track's next codes from its own guidance, sampling settings and generator, and
moves each on. A track whose window is done moves to its next window (its last 12 s of codes
prefilled as the prompt, the melody sliding along, as audiocraft does) without holding anyone back;
a track whose last window is done is decoded and handed back at once, and the last running track's
rows move into its place, so the rows in use stay the first ones (the shapes CUDA graphs replay).

Each track follows exactly the steps it would follow alone (the same prefill, the same step per
token, the same sampling), so a seeded request gives its solo audio whatever joins or leaves.
"""

import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from leap_ray.api.musicgen import MusicGenModelSpec, MusicGenRequest
from leap_ray.engines.contract import Outcome, ProgressHook, StopCheck
from leap_ray.engines.failures import model_error, request_error
from leap_ray.engines.musicgen_decoder import StaticDecoder
from leap_ray.engines.musicgen_tracks import Track, delay_pattern, sample_tokens
from leap_ray.engines.results import MusicGenResult
from leap_ray.errors import LeapRayError


class TrackModel(Protocol):
    """What the running batch needs of its engine (`MusicGenEngine`)."""

    device: torch.device
    tokenizer: Any
    has_melody: bool
    codebooks: int
    window_frames: int
    start_token: int
    pad_token: int
    decoder: StaticDecoder | None  # the cache the running tracks share; made by `decoder_for`

    def spec(self) -> MusicGenModelSpec: ...

    def decoder_for(self, rows: int, length: int, cross_tokens: int) -> StaticDecoder:
        """The decoder, (re)made when it holds fewer rows, positions or text tokens (only while idle)."""

    def prefix_tokens(self, text_tokens: int) -> int:
        """Decoder positions taken before the codes (the melody model's chroma and text)."""

    def start_track(
        self, request: MusicGenRequest, should_stop: StopCheck | None, progress: ProgressHook | None
    ) -> Track:
        """The request ready for its first window (prompt encoded, melody's chroma made); raises its error."""

    def conditioning(self, tracks: list[Track], window: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder's conditioning of [conditional rows; unconditional rows], and its mask."""

    def report_progress(self, track: Track, window: int, position: int) -> None: ...

    def keep_codes(self, track: Track, sequence: torch.Tensor, window: int) -> None:
        """Keeps a finished window's new codes, and its last codes as the next window's prompt."""

    def finish(self, track: Track) -> MusicGenResult | LeapRayError:
        """The track's audio (its codes decoded), or its error."""


@dataclass(eq=False)  # found by identity: comparing requests would compare their melodies
class _Running:
    """A track in the running batch, in its current window."""

    track: Track
    window: int
    codes: torch.Tensor  # (codebooks, frames + codebooks): the window's delay pattern, filled in
    position: int  # the position in the window whose codes are sampled next
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

    def can_join(self, request: MusicGenRequest) -> bool:
        """Whether the decoder's cache holds the request beside the running tracks (a bigger cache is
        made only while the batch is empty)."""
        decoder = self.engine.decoder
        if not self.running:
            return True
        rows, length, text_tokens = self._needs(request, len(self.running) + 1)
        return (
            decoder is not None
            and decoder.rows >= rows
            and decoder.capacity >= length
            and (self.engine.has_melody or decoder.cross_capacity >= text_tokens)
        )

    def _needs(self, request: MusicGenRequest, tracks: int) -> tuple[int, int, int]:
        """Cache rows, positions and text tokens for `tracks` tracks, this request among them."""
        engine = self.engine
        text_tokens = len(engine.tokenizer(request.prompt).input_ids)
        length = engine.prefix_tokens(text_tokens) + engine.window_frames + engine.codebooks + 1
        return 2 * max(tracks, self.max_load), length, text_tokens

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
                self.engine.decoder_for(*self._needs(request, 1))
            track = self.engine.start_track(request, should_stop, progress)
            self.running.append(self._begin_window(track, 0, len(self.running), time.perf_counter()))
        except Exception as error:
            return request_error(error)
        return None

    def _begin_window(self, track: Track, window: int, index: int, admitted_at: float) -> _Running:
        """The track's window `window` prefilled into the rows of running track `index`."""
        engine, decoder = self.engine, self.engine.decoder
        frames = track.windows[window][1]
        # The pattern and codes stay on the CPU, where each track samples: a step moves one column of
        # every track to the device together, not each track's on its own.
        pattern = delay_pattern(track.prompt, frames, engine.codebooks, engine.start_token, engine.pad_token)
        prompt_frames = 0 if track.prompt is None else track.prompt.shape[1]
        states, mask = engine.conditioning([track], window)
        codes = pattern[None, :, :prompt_frames].repeat(2, 1, 1)  # all the first codes but the last
        embeds = decoder.embed(codes.to(engine.device))
        if engine.has_melody:
            embeds = torch.cat([states.to(embeds.dtype), embeds], dim=1)
        else:
            decoder.set_cross(states, mask, first_row=2 * index)
        decoder.prefill(embeds, first_row=2 * index)
        return _Running(
            track=track,
            window=window,
            codes=pattern,
            position=1 + prompt_frames,
            offset=states.shape[1] if engine.has_melody else 0,
            admitted_at=admitted_at,
        )

    @torch.inference_mode()
    def step(self) -> list[Outcome]:
        """One token of every running track (one decoder step over all of them), then the outcome of
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
        """One decoder step for running tracks first..first + count, then each one's sampling. If the
        shared step fails, each track is stepped alone: only one that fails alone gets the error."""
        group = self.running[first : first + count]
        last = torch.stack([running.codes[:, running.position - 1] for running in group])
        positions = torch.tensor([running.offset + running.position - 1 for running in group])
        last = last.repeat_interleave(2, dim=0).to(self.engine.device)
        at = positions.repeat_interleave(2).to(self.engine.device)
        try:
            # Only a step over every running track may pad (padding writes to the rows past them).
            whole = count == len(self.running)
            logits = self.engine.decoder.step(last, at, first_row=2 * first, may_pad=whole).float().cpu()
        except Exception as error:
            if count == 1:
                group[0].track.error = model_error(error)
            else:
                for index in range(first, first + count):
                    self._decode(index, 1)
            return
        self.decoder_calls += 1
        # Guidance for all the tracks at once (element by element, as each alone would compute it).
        guidance = torch.tensor([running.track.request.guidance_scale for running in group]).view(-1, 1, 1)
        conditional, unconditional = logits[0::2], logits[1::2]
        guided = unconditional + (conditional - unconditional) * guidance
        for index, running in enumerate(group):
            running.decoder_calls += 1
            running.largest_batch = max(running.largest_batch, count)
            try:
                self._advance(running, guided[index])
            except Exception as error:
                running.track.error = request_error(error)

    def _advance(self, running: _Running, guided: torch.Tensor) -> None:
        """Samples the track's next codes from its guided logits, reports, and moves it on."""
        track, position = running.track, running.position
        tokens = sample_tokens(guided, track.request, track.generator)
        column = running.codes[:, position]  # a view: filled in place where the pattern says -1
        to_sample = column == -1
        column[to_sample] = tokens[to_sample]
        running.position += 1
        self.engine.report_progress(track, running.window, position)
        if track.check_stop() or running.position < running.codes.shape[1]:
            return
        self.engine.keep_codes(track, running.codes, running.window)
        if running.window + 1 < len(track.windows):
            index = next(i for i, entry in enumerate(self.running) if entry is running)
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
            self.running[index] = self.running[last]
        self.running.pop()
