"""A MusicGen track's way through the running batch, and what it reproduces of audiocraft, the
reference (the sampling is leap_ray.engines.musicgen_sampling's):
- the delay pattern over the codebooks (transformers' `build_delay_pattern_mask`);
- tracks longer than the 30 s window: keep the last 12 s of codes as the prompt of the next window,
  move on 18 s (`extend_stride`), and slide the melody along; the track is decoded whole at the end
  (a streamed track's pieces come from leap_ray.engines.musicgen_stream meanwhile)."""

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from leap_ray.api.audio import audio_delta
from leap_ray.api.musicgen import MusicGenRequest
from leap_ray.api.progress import AudioDelta, AudioProgress
from leap_ray.engines.failures import internal_error, request_error
from leap_ray.engines.musicgen_stream import AudioStream, OffThread
from leap_ray.errors import LeapRayError


def window_schedule(total_frames: int, window_frames: int, stride_frames: int) -> list[tuple[int, int]]:
    """(start frame, frames including the carried-over prompt) of each window, audiocraft's rule."""
    windows: list[tuple[int, int]] = []
    offset, prompt = 0, 0
    while offset + prompt < total_frames:
        length = min(total_frames - offset, window_frames)
        windows.append((offset, length))
        prompt = length - stride_frames
        offset += stride_frames
    return windows


def delay_pattern(
    prompt: torch.Tensor | None, frames: int, codebooks: int, start_token: int, pad_token: int
) -> torch.Tensor:
    """MusicGen's delay pattern for one track, (codebooks, frames + codebooks): codebook k's frame f
    sits at position 1 + f + k; positions up to k hold the start token, those past its last frame
    the padding token, prompt frames their codes, and -1 marks what is to be sampled. (transformers'
    build_delay_pattern_mask skips the pattern for short lengths, hence our own.)"""
    pattern = torch.full((codebooks, frames + codebooks), -1, dtype=torch.long)
    prompt_frames = 0 if prompt is None else prompt.shape[1]
    for k in range(codebooks):
        pattern[k, : k + 1] = start_token
        if prompt is not None:
            pattern[k, k + 1 : k + 1 + prompt_frames] = prompt[k].cpu()
        pattern[k, frames + k + 1 :] = pad_token
    return pattern


def undelay(sequence: torch.Tensor, frames: int) -> torch.Tensor:
    """The first `frames` frames (codebooks, frames) of a (codebooks, positions) delay-pattern sequence:
    codebook k's frame f sits at position 1 + f + k."""
    return torch.stack([sequence[k, 1 + k : 1 + k + frames] for k in range(sequence.shape[0])])


@dataclass(eq=False)
class Track:
    """One request on its way through the windows."""

    request: MusicGenRequest
    seed: int
    windows: list[tuple[int, int]]
    should_stop: Callable[[], bool] | None
    progress: Callable[[AudioProgress | AudioDelta], None] | None
    text: torch.Tensor  # (tokens, hidden): projected text conditioning
    chromas: list[torch.Tensor]  # melody model: each window's (chroma_length, 12) chroma; else empty
    prompt: torch.Tensor | None = None  # (codebooks, frames) carried into the next window
    new_codes: list[torch.Tensor] = field(default_factory=list)
    stopped: bool = False
    error: LeapRayError | None = None
    batch_size: int = 0
    timings: dict[str, float] = field(default_factory=lambda: {"encode_s": 0.0, "generate_s": 0.0})
    stream: AudioStream | None = None  # with `stream: true`: the audio sent so far
    sending: Future | None = None  # the last piece of audio handed to be sent off the step thread

    def codes_so_far(self) -> torch.Tensor:
        """The track's new codes (codebooks, frames) of its finished windows."""
        return torch.cat(self.new_codes, dim=1)

    def keep_window(self, sequence: torch.Tensor, window: int, stride_frames: int) -> None:
        """Keeps a finished window's new codes from its (codebooks, positions) sequence, and its codes
        from `stride_frames` on as the next window's prompt."""
        codes = undelay(sequence, self.windows[window][1])
        self.new_codes.append(codes[:, self.prompt_frames :])
        self.prompt = codes[:, stride_frames:]

    def send_audio(self, codes: torch.Tensor, sample_rate: int, last: bool = False) -> None:
        """Sends the audio that the track's codes so far make final (all of it when `last`). Off the
        step thread, a failure fails the track (its outcome, at its next step or its end)."""
        try:
            start = self.stream.emitted_samples
            piece = self.stream.finish(codes) if last else self.stream.push(codes)
            if len(piece):
                self.report(audio_delta(piece, sample_rate, start))
        except Exception as error:
            if self.error is None:
                self.error = request_error(error)

    def hand_off_piece(
        self, copied: Callable[[], torch.Tensor], complete: int, pieces: OffThread, sample_rate: int
    ) -> None:
        """Hands `pieces` the audio that the current window's first `complete` frames make final;
        `copied()` gives the window's codes (from the device). What the track holds now is taken now:
        its windows move on meanwhile."""
        earlier, prompt_frames = list(self.new_codes), self.prompt_frames

        def send() -> None:
            window_codes = undelay(copied(), complete)[:, prompt_frames:]
            self.send_audio(torch.cat([*earlier, window_codes], dim=1), sample_rate)

        self.sending = pieces.submit(send)

    def send_last_piece(self, sample_rate: int) -> None:
        """Once the pieces handed off are sent, the rest of the track's audio."""
        if self.sending is not None:
            self.sending.result()
        self.send_audio(self.codes_so_far(), sample_rate, last=True)

    @property
    def prompt_frames(self) -> int:
        """Frames the current window carries over from the previous one."""
        return 0 if self.prompt is None else self.prompt.shape[1]

    @property
    def left(self) -> bool:
        """Out of the batch: stopped by its caller, or failed."""
        return self.stopped or self.error is not None

    def check_stop(self) -> bool:
        if not self.left and self.should_stop is not None:
            try:
                self.stopped = bool(self.should_stop())
            except Exception as error:
                self.error = internal_error(error)
        return self.left

    def report(self, event: AudioProgress | AudioDelta) -> None:
        if self.progress is not None and not self.left:
            try:
                self.progress(event)
            except Exception as error:
                self.error = internal_error(error)
