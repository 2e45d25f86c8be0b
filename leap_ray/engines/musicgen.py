"""The MusicGen engine: plain Python, no Ray, on transformers' MusicGen classes (text-only or melody).

It runs its own decoding loop rather than `generate()`, because the service needs what `generate()`
cannot give: per-request random streams (a seeded request gives the same audio whatever shares its
batch), per-request guidance and sampling settings, audiocraft's windowed continuation past 30 s on
codes, and a stop check at every step. What it reproduces from audiocraft, the reference:
- sampling: classifier-free guidance uncond + (cond - uncond) * scale, then temperature, then top-p
  (when > 0) or top-k, from the softmax; temperature 0 is greedy;
- the delay pattern over the codebooks (transformers' `build_delay_pattern_mask`);
- tracks longer than the 30 s window: keep the last 12 s of codes as the prompt of the next window,
  move on 18 s (`extend_stride`), and slide the melody along; decode once at the end;
- melody: the chroma of 30 s of the melody from the window's start (looped when shorter).

Batching here (`generate`, whole requests): all requests in a batch run their windows together;
rows that end earlier get padding past their end exactly as a solo call would, so lengths may
differ. The melody model prepends the text to the decoder's input, and a window's rows start
together, so there requests also group by their prompt's token count. Token-level batching, where
tracks join and leave at every token, is `musicgen_steps.DecodeBatch` over the same decoder.

Failures stay with their request (the `Engine` contract, leap_ray.engines.contract): a melody the
model cannot use fails its request naming `melody` before any window runs; a fault encoding one
prompt or decoding one track fails that request; a fault of a shared window reruns that window one
track at a time from where each stood (random stream, carried prompt, codes), and a track that
faults alone fails (ModelError) and leaves the later windows.
"""

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    MusicgenForConditionalGeneration,
    MusicgenMelodyForConditionalGeneration,
)

from leap_ray.api.audio import DecodedAudio
from leap_ray.api.common import draw_seed
from leap_ray.api.musicgen import MusicGenModelSpec, MusicGenRequest
from leap_ray.api.progress import AudioProgress
from leap_ray.engines.chroma import ChromaExtractor, resample
from leap_ray.engines.device import placement
from leap_ray.engines.failures import blame, collect_results, internal_error, request_error, run_shared
from leap_ray.engines.musicgen_decoder import LENGTH_STEP, StaticDecoder
from leap_ray.errors import LeapRayError

WINDOW_S = 30.0  # audiocraft's max_duration
# Prompt tokens the decoder's cache holds at least: a longer prompt waits for an empty batch to make a
# bigger cache. (For the melody model 256 costs nothing: its positions round up to 2,048 either way.)
TEXT_TOKENS = 256
EXTEND_STRIDE_S = 18.0  # audiocraft's extend_stride


@dataclass
class MusicGenResult:
    waveform: np.ndarray  # (samples,) float32, mono
    sample_rate: int
    seed: int
    timings: dict[str, float]
    batch_size: int
    stopped: bool = False


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


def sample_tokens(logits: torch.Tensor, request: MusicGenRequest, generator: torch.Generator) -> torch.Tensor:
    """One token per row of (codebooks, vocabulary) logits, drawn from the request's own generator."""
    if request.temperature <= 0:
        return logits.argmax(dim=-1)
    # Shifted by the maximum and divided in float64, so that a vanishing temperature (which float32
    # rounds to 0) still gives a finite distribution rather than inf - inf = NaN.
    shifted = (logits - logits.max(dim=-1, keepdim=True).values).double()
    probs = torch.softmax(shifted / request.temperature, dim=-1)
    if request.top_p > 0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        beyond = sorted_probs.cumsum(dim=-1) - sorted_probs > request.top_p
        sorted_probs = sorted_probs.masked_fill(beyond, 0.0)
        sorted_probs /= sorted_probs.sum(dim=-1, keepdim=True)
        picked = torch.multinomial(sorted_probs, 1, generator=generator)
        return order.gather(-1, picked).squeeze(-1)
    if request.top_k > 0:
        k = min(request.top_k, probs.shape[-1])
        threshold = probs.topk(k, dim=-1).values[..., -1:]
        probs = probs * (probs >= threshold)
        probs /= probs.sum(dim=-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass(eq=False)
class _Track:
    """One request on its way through the windows."""

    request: MusicGenRequest
    seed: int
    windows: list[tuple[int, int]]
    should_stop: Callable[[], bool] | None
    progress: Callable[[AudioProgress], None] | None
    text: torch.Tensor  # (tokens, hidden): projected text conditioning
    chromas: list[torch.Tensor]  # melody model: each window's (chroma_length, 12) chroma; else empty
    generator: torch.Generator = field(init=False)
    prompt: torch.Tensor | None = None  # (codebooks, frames) carried into the next window
    new_codes: list[torch.Tensor] = field(default_factory=list)
    stopped: bool = False
    error: LeapRayError | None = None
    batch_size: int = 0
    timings: dict[str, float] = field(default_factory=lambda: {"encode_s": 0.0, "generate_s": 0.0})
    saved: tuple = field(default=(), repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

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

    def report(self, event: AudioProgress) -> None:
        if self.progress is not None and not self.left:
            try:
                self.progress(event)
            except Exception as error:
                self.error = internal_error(error)

    def checkpoint(self) -> None:
        """What a window changes: the random stream, the carried prompt, the codes, the bookkeeping."""
        self.saved = (
            self.generator.get_state(),
            self.prompt,
            len(self.new_codes),
            dict(self.timings),
            self.batch_size,
            self.stopped,
        )

    def rewind(self) -> None:
        state, self.prompt, codes, timings, self.batch_size, self.stopped = self.saved
        self.generator.set_state(state)
        del self.new_codes[codes:]
        self.timings = dict(timings)


class MusicGenEngine:
    """Loads a MusicGen or MusicGen-melody model (model id or local folder) and generates batches; an
    `Engine` (leap_ray.engines.contract)."""

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        window_s: float = WINDOW_S,
        extend_stride_s: float = EXTEND_STRIDE_S,
        cuda_graphs: bool = False,
        batch_buckets: Sequence[int] = (),
    ) -> None:
        """`cuda_graphs` (CUDA only): decoder steps are captured and replayed per bucket of tracks
        (`batch_buckets`; a batch runs padded up to the next), all of them before this returns."""
        self.device, self.dtype = placement(device, dtype, threads)
        config = AutoConfig.from_pretrained(model)
        self.has_melody = config.model_type == "musicgen_melody"
        model_class = (
            MusicgenMelodyForConditionalGeneration if self.has_melody else MusicgenForConditionalGeneration
        )
        self.model = model_class.from_pretrained(model, dtype=self.dtype).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.sample_rate = config.audio_encoder.sampling_rate
        self.frame_rate = config.audio_encoder.frame_rate
        self.codebooks = self.model.decoder.num_codebooks
        self.pad_token = self.model.generation_config.pad_token_id
        self.start_token = self.model.generation_config.decoder_start_token_id
        self.window_frames = round(window_s * self.frame_rate)
        self.stride_frames = round(extend_stride_s * self.frame_rate)
        self.window_samples = round(window_s * self.sample_rate)
        self.chroma = ChromaExtractor(self.sample_rate) if self.has_melody else None
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.batch_buckets = sorted(batch_buckets)
        self._decoder: StaticDecoder | None = None
        if self.cuda_graphs:
            self._warm_up()

    def spec(self) -> MusicGenModelSpec:
        return MusicGenModelSpec(
            sample_rate=self.sample_rate, frame_rate=self.frame_rate, supports_melody=self.has_melody
        )

    @torch.inference_mode()
    def generate(
        self,
        requests: Sequence[MusicGenRequest],
        should_stop: Sequence[Callable[[], bool] | None] | None = None,
        progress: Sequence[Callable[[AudioProgress], None] | None] | None = None,
    ) -> list[MusicGenResult | LeapRayError]:
        """Runs the batch under the `Engine` contract (leap_ray.engines.contract): each entry is the
        request's result, or the error that request alone met. `should_stop[i]`, checked at every
        step, lets request i leave the batch; `progress[i]` is told an AudioProgress after each
        generated second of request i."""
        return collect_results(
            len(requests), lambda results: self._generate(requests, should_stop, progress, results)
        )

    def _generate(
        self,
        requests: Sequence[MusicGenRequest],
        should_stop: Sequence[Callable[[], bool] | None] | None,
        progress: Sequence[Callable[[AudioProgress], None] | None] | None,
        results: list[MusicGenResult | LeapRayError | None],
    ) -> None:
        spec = self.spec()
        tracks: dict[int, _Track] = {}
        for index, request in enumerate(requests):
            try:
                request.check_against(spec)
                tracks[index] = self._start_track(
                    request,
                    should_stop[index] if should_stop else None,
                    progress[index] if progress else None,
                )
            except Exception as error:
                results[index] = request_error(error)
        round_index = 0
        while active := [t for t in tracks.values() if len(t.windows) > round_index and not t.check_stop()]:
            groups: dict[int | None, list[_Track]] = defaultdict(list)
            for track in active:
                groups[track.text.shape[0] if self.has_melody else None].append(track)
            for group in groups.values():
                run_shared(group, partial(self._run_window, round_index=round_index))
            round_index += 1
        for index, track in tracks.items():
            results[index] = self._finish(track)

    def _start_track(
        self,
        request: MusicGenRequest,
        should_stop: Callable[[], bool] | None,
        progress: Callable[[AudioProgress], None] | None,
    ) -> _Track:
        """The request ready for its first window; raises its error. The melody's chroma is computed
        here for every window, so that a melody the model cannot use fails before any window runs."""
        started = time.perf_counter()
        windows = window_schedule(request.frames(self.frame_rate), self.window_frames, self.stride_frames)
        chromas: list[torch.Tensor] = []
        if request.melody is not None:
            with blame("melody"):
                chromas = self._melody_chromas(request.melody, windows)
        elif self.has_melody:
            chromas = [self._null_chroma()] * len(windows)
        track = _Track(
            request=request,
            seed=request.seed if request.seed is not None else draw_seed(),
            windows=windows,
            should_stop=should_stop,
            progress=progress,
            text=self._encode_text(request.prompt),  # validated text: a failure is the model's
            chromas=chromas,
        )
        track.timings["encode_s"] = time.perf_counter() - started
        return track

    def _encode_text(self, prompt: str) -> torch.Tensor:
        """The prompt's T5 states projected to the decoder's width, encoded alone (no padding)."""
        tokens = self.tokenizer([prompt], return_tensors="pt").to(self.device)
        states = self.model.text_encoder(**tokens).last_hidden_state
        if hasattr(self.model, "enc_to_dec_proj"):
            states = self.model.enc_to_dec_proj(states)
        return states[0]

    def _melody_chromas(self, melody: DecodedAudio, windows: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Each window's (chroma_length, 12) chroma of 30 s of the melody from the window's start,
        looping the melody."""
        waveform = resample(melody.waveform, melody.sample_rate, self.sample_rate)
        chromas = []
        for start_frame, _ in windows:
            start = start_frame * self.sample_rate // self.frame_rate
            positions = np.arange(start, start + self.window_samples) % len(waveform)
            chromas.append(self._fit_chroma(self.chroma(torch.from_numpy(waveform[positions]))))
        return chromas

    def _null_chroma(self) -> torch.Tensor:
        """The model's null melody: every frame in the first pitch class."""
        null = torch.zeros(1, 12)
        null[0, 0] = 1
        return self._fit_chroma(null)

    def _fit_chroma(self, chroma: torch.Tensor) -> torch.Tensor:
        """Repeated or cut to the chroma_length frames the model takes."""
        length = self.model.config.chroma_length
        return chroma.repeat(-(-length // chroma.shape[0]), 1)[:length]

    def _conditioning(
        self, tracks: list[_Track], round_index: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder's conditioning for [conditional rows; unconditional rows], as transformers builds
        it: the melody model's prefix (chroma, then text), or the text model's cross-attention states
        with their padding mask."""
        if self.has_melody:
            prefixes = [torch.cat([self._project_chroma(t.chromas[round_index]), t.text]) for t in tracks]
            null_chroma = self._project_chroma(self._null_chroma())
            unconditional = [torch.cat([null_chroma, torch.zeros_like(t.text)]) for t in tracks]
            return torch.stack(prefixes + unconditional), None
        states = torch.nn.utils.rnn.pad_sequence([t.text for t in tracks], batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence(
            [torch.ones(t.text.shape[0], device=self.device, dtype=torch.long) for t in tracks],
            batch_first=True,
        )
        return torch.cat([states, torch.zeros_like(states)]), torch.cat([mask, torch.zeros_like(mask)])

    def _decoder_for(self, rows: int, length: int, cross_tokens: int) -> StaticDecoder:
        """The engine's static decoder, (re)made when a window needs more rows, positions or text
        tokens than it holds; sized for at least a whole window of the largest bucket."""
        decoder = self._decoder
        holds = (decoder.rows, decoder.capacity, decoder.cross_capacity) if decoder else (0, 0, 0)
        if decoder and all(
            have >= need for have, need in zip(holds, (rows, length, cross_tokens), strict=True)
        ):
            return decoder
        old_rows = decoder.rows if decoder else 0
        self._decoder = decoder = None  # the old cache (and its graphs) freed before the new one is made
        self._decoder = StaticDecoder(
            self.model,
            rows=max(rows, 2 * max(self.batch_buckets, default=1), old_rows),
            capacity=max(length, self._prefix_tokens(TEXT_TOKENS) + self.window_frames + self.codebooks + 1),
            cross_capacity=0 if self.has_melody else max(cross_tokens, TEXT_TOKENS),
            cuda_graphs=self.cuda_graphs,
            row_buckets=tuple(2 * tracks for tracks in self.batch_buckets),
        )
        return self._decoder

    def _prefix_tokens(self, text_tokens: int) -> int:
        """Decoder positions taken before the codes: the melody model's chroma and text prefix."""
        return self.model.config.chroma_length + text_tokens if self.has_melody else 0

    @torch.inference_mode()
    def _warm_up(self) -> None:
        """Captures every (bucket, span) step graph of a whole window, so that no request waits for it."""
        decoder = self._decoder_for(2 * max(self.batch_buckets, default=1), 0, 0)
        for tracks in self.batch_buckets or [1]:
            rows = 2 * tracks
            tokens = torch.zeros(rows, self.codebooks, dtype=torch.long, device=self.device)
            for span_end in range(0, decoder.capacity, LENGTH_STEP):
                decoder.step(tokens, torch.full((rows,), span_end, device=self.device))

    def _project_chroma(self, chroma: torch.Tensor) -> torch.Tensor:
        chroma = chroma.to(self.device, self.dtype)
        if hasattr(self.model, "audio_enc_to_dec_proj"):
            return self.model.audio_enc_to_dec_proj(chroma)
        return chroma

    def _delay_pattern(self, track: _Track, frames: int, width: int) -> torch.Tensor:
        """The track's pattern, padded to the window's widest track (padding past its end, as when solo)."""
        pattern = delay_pattern(track.prompt, frames, self.codebooks, self.start_token, self.pad_token)
        padded = torch.nn.functional.pad(pattern, (0, width - pattern.shape[1]), value=self.pad_token)
        return padded.to(self.device)

    def _run_window(self, tracks: list[_Track], round_index: int) -> None:
        started = time.perf_counter()
        codebooks, rows = self.codebooks, len(tracks) * self.codebooks
        lengths = [track.windows[round_index][1] for track in tracks]
        width = max(lengths) + codebooks
        pattern = torch.cat([self._delay_pattern(t, n, width) for t, n in zip(tracks, lengths, strict=True)])
        prompt_frames = 0 if tracks[0].prompt is None else tracks[0].prompt.shape[1]
        sequence = pattern[:, : 1 + prompt_frames]
        decoder, offset = self._prefill(tracks, round_index, sequence)
        guidance = torch.tensor([t.request.guidance_scale for t in tracks]).repeat_interleave(codebooks)[
            :, None
        ]
        for position in range(1 + prompt_frames, width):
            # The last position's codes in (their position's key and value), the next one's logits out.
            last = sequence[:, -1].view(len(tracks), codebooks).repeat(2, 1)
            at = torch.full((2 * len(tracks),), offset + position - 1, device=self.device)
            logits = decoder.step(last, at)
            conditional, unconditional = logits.reshape(-1, logits.shape[-1]).float().cpu().split(rows)
            guided = unconditional + (conditional - unconditional) * guidance
            tokens = torch.cat(
                [
                    sample_tokens(guided[i * codebooks : (i + 1) * codebooks], track.request, track.generator)
                    for i, track in enumerate(tracks)
                ]
            ).to(self.device)
            column = torch.where(pattern[:, position] == -1, tokens, pattern[:, position])
            sequence = torch.cat([sequence, column[:, None]], dim=1)
            self._report_progress(tracks, round_index, position)
            if all(track.check_stop() for track in tracks):  # stopped or failed: their rows are ignored
                break
        elapsed = time.perf_counter() - started
        per_track = sequence.view(len(tracks), codebooks, -1)
        for index, track in enumerate(tracks):
            track.timings["generate_s"] += elapsed
            track.batch_size = track.batch_size or len(tracks)
            if not track.left:
                self._keep_codes(track, per_track[index], round_index)

    def _keep_codes(self, track: _Track, sequence: torch.Tensor, window: int) -> None:
        """Keeps a finished window's new codes from its (codebooks, positions) sequence, and its last
        codes as the next window's prompt."""
        frames = track.windows[window][1]
        prompt_frames = 0 if track.prompt is None else track.prompt.shape[1]
        # Undo the delay: codebook k's frame f sits at position 1 + f + k.
        codes = torch.stack([sequence[k, 1 + k : 1 + k + frames] for k in range(self.codebooks)])
        track.new_codes.append(codes[:, prompt_frames:])
        track.prompt = codes[:, self.stride_frames :]

    def _prefill(
        self, tracks: list[_Track], round_index: int, sequence: torch.Tensor
    ) -> tuple[StaticDecoder, int]:
        """The window's decoder with its conditioning and its first codes but the last run; the
        decoder position of the window's first code."""
        states, mask = self._conditioning(tracks, round_index)
        codes = sequence.view(len(tracks), self.codebooks, -1).repeat(2, 1, 1)[:, :, :-1]
        offset = states.shape[1] if self.has_melody else 0
        length = offset + self.window_frames + self.codebooks + 1
        decoder = self._decoder_for(codes.shape[0], length, 0 if mask is None else mask.shape[1])
        embeds = decoder.embed(codes)
        if self.has_melody:
            embeds = torch.cat([states.to(embeds.dtype), embeds], dim=1)
        else:
            decoder.set_cross(states, mask)
        decoder.prefill(embeds)
        return decoder, offset

    def _report_progress(self, tracks: list[_Track], round_index: int, position: int) -> None:
        """After each whole second of new audio (codebook 0 holds frame f at position 1 + f)."""
        for track in tracks:
            start, frames = track.windows[round_index]
            done = start + position
            if position <= frames and done % self.frame_rate == 0:
                track.report(AudioProgress(done / self.frame_rate, track.request.duration))

    def _finish(self, track: _Track) -> MusicGenResult | LeapRayError:
        if track.error is not None:
            return track.error
        waveform = np.zeros(0, dtype=np.float32)
        if not track.stopped:
            try:
                waveform = self._decode(track)
            except Exception as error:
                return request_error(error)
        return MusicGenResult(
            waveform=waveform,
            sample_rate=self.sample_rate,
            seed=track.seed,
            timings=track.timings,
            batch_size=track.batch_size,
            stopped=track.stopped,
        )

    def _decode(self, track: _Track) -> np.ndarray:
        """The track's codes to audio, alone: one track's failure cannot touch another's."""
        started = time.perf_counter()
        codes = torch.cat(track.new_codes, dim=1).to(self.device)
        audio = self.model.audio_encoder.decode(codes[None, None], audio_scales=[None]).audio_values
        track.timings["decode_s"] = time.perf_counter() - started
        return audio[0, 0].float().cpu().numpy()
