"""The MusicGen engine: plain Python, no Ray, on transformers' MusicGen classes (text-only or melody).
It loads the model and makes the replica's running batch (`musicgen_steps.DecodeBatch`), where tracks
join and leave at every token over one static KV cache (`musicgen_decoder.StaticDecoder`).

It runs its own decoding rather than transformers' `generate()`, because the service needs what `generate()`
cannot give: per-request random streams (a seeded request gives the same audio whatever shares its
batch), per-request guidance and sampling settings, audiocraft's windowed continuation past 30 s on
codes (leap_ray.engines.musicgen_tracks), and a stop check at every step. The melody model's
conditioning is the chroma of 30 s of the melody from the window's start (looped when shorter).

Failures stay with their request (the `RunningBatch` contract, leap_ray.engines.contract): a melody
the model cannot use fails its request naming `melody` before any window runs; a fault encoding one
prompt or decoding one track fails that request.
"""

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    MusicgenForConditionalGeneration,
    MusicgenMelodyForConditionalGeneration,
)

from leap_ray.api.common import draw_seed
from leap_ray.api.musicgen import MusicGenModelSpec, MusicGenRequest
from leap_ray.api.progress import AudioProgress
from leap_ray.engines.chroma import MelodyChromas
from leap_ray.engines.device import placement
from leap_ray.engines.failures import blame, request_error
from leap_ray.engines.musicgen_decoder import LENGTH_STEP, StaticDecoder
from leap_ray.engines.musicgen_memory import CacheShape
from leap_ray.engines.musicgen_rows import CopyOut, TrackRows
from leap_ray.engines.musicgen_steps import DecodeBatch
from leap_ray.engines.musicgen_stream import AudioStream, OffThread
from leap_ray.engines.musicgen_tracks import Track, window_schedule
from leap_ray.engines.results import MusicGenResult
from leap_ray.errors import InvalidRequest, LeapRayError

WINDOW_S = 30.0  # audiocraft's max_duration
# Prompt tokens the decoder's cache holds at least (the memory plan's shape; a longer prompt is refused,
# naming `prompt`). For the melody model 256 costs nothing: its positions round up to 2,048 either way.
TEXT_TOKENS = 256
EXTEND_STRIDE_S = 18.0  # audiocraft's extend_stride
STREAM_EVERY_S = 0.5  # a streamed track's audio goes out every half second of it


class MusicGenEngine:
    """Loads a MusicGen or MusicGen-melody model (model id or local folder) and makes its running
    batch; an `Engine` (leap_ray.engines.contract) and the `TrackModel` that batch runs."""

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
        self.stream_frames = round(STREAM_EVERY_S * self.frame_rate)
        self.pieces = OffThread(self.device)  # streamed audio is decoded there
        window_samples = round(window_s * self.sample_rate)
        chroma_length = getattr(config, "chroma_length", 0)
        self.chromas = MelodyChromas(self.sample_rate, self.frame_rate, window_samples, chroma_length)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.batch_buckets = sorted(batch_buckets)
        # The decoder's cache has this one shape (the memory plan's); only its rows grow.
        self.cache_shape = CacheShape.from_config(
            config, window_s=window_s, text_tokens=TEXT_TOKENS, dtype=self.dtype
        )
        self.decoder: StaticDecoder | None = None
        self.rows: TrackRows | None = None
        if self.cuda_graphs:
            self._warm_up()

    def spec(self) -> MusicGenModelSpec:
        return MusicGenModelSpec(
            sample_rate=self.sample_rate, frame_rate=self.frame_rate, supports_melody=self.has_melody
        )

    def running_batch(self, max_load: int = 8) -> DecodeBatch:
        """The replica's running batch; the decoder's cache is sized for `max_load` tracks."""
        return DecodeBatch(self, max_load)

    def start_track(
        self,
        request: MusicGenRequest,
        should_stop: Callable[[], bool] | None,
        progress: Callable[[AudioProgress], None] | None,
    ) -> Track:
        """The request ready for its first window; raises its error. The melody's chroma is computed
        here for every window, so that a melody the model cannot use fails before any window runs."""
        started = time.perf_counter()
        windows = window_schedule(request.frames(self.frame_rate), self.window_frames, self.stride_frames)
        chromas: list[torch.Tensor] = []
        if request.melody is not None:
            with blame("melody"):
                chromas = self.chromas.of_windows(request.melody, windows)
        elif self.has_melody:
            chromas = [self.chromas.null()] * len(windows)
        track = Track(
            stream=AudioStream(self.decode_codes, self.sample_rate // self.frame_rate)
            if request.stream
            else None,
            request=request,
            seed=request.seed if request.seed is not None else draw_seed(),
            windows=windows,
            should_stop=should_stop,
            progress=progress,
            text=self.encode_text(request.prompt),  # validated text: a failure is the model's
            chromas=chromas,
        )
        track.timings["encode_s"] = time.perf_counter() - started
        return track

    def encode_text(self, prompt: str) -> torch.Tensor:
        """The prompt's T5 states projected to the decoder's width, encoded alone (no padding). A
        prompt longer than the cache holds is refused: a bigger cache would not fit a planned GPU."""
        tokens, held = self.tokenizer([prompt], return_tensors="pt"), self.cache_shape.prompt_tokens_held
        if (count := tokens.input_ids.shape[1]) > held:
            raise InvalidRequest(
                f"the prompt is {count} tokens; this model takes at most {held}", param="prompt"
            )
        tokens = tokens.to(self.device)
        states = self.model.text_encoder(**tokens).last_hidden_state
        if hasattr(self.model, "enc_to_dec_proj"):
            states = self.model.enc_to_dec_proj(states)
        return states[0]

    def conditioning(self, tracks: list[Track], round_index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder's conditioning for [conditional rows; unconditional rows], as transformers builds
        it: the melody model's prefix (chroma, then text), or the text model's cross-attention states
        with their padding mask."""
        if self.has_melody:
            prefixes = [torch.cat([self._project_chroma(t.chromas[round_index]), t.text]) for t in tracks]
            null_chroma = self._project_chroma(self.chromas.null())
            unconditional = [torch.cat([null_chroma, torch.zeros_like(t.text)]) for t in tracks]
            return torch.stack(prefixes + unconditional), None
        states = torch.nn.utils.rnn.pad_sequence([t.text for t in tracks], batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence(
            [torch.ones(t.text.shape[0], device=self.device, dtype=torch.long) for t in tracks],
            batch_first=True,
        )
        return torch.cat([states, torch.zeros_like(states)]), torch.cat([mask, torch.zeros_like(mask)])

    def decoder_for(self, rows: int) -> StaticDecoder:
        """The engine's static decoder, (re)made when the batch needs more rows than it holds (only
        while the batch is empty); made for at least the largest bucket. Its positions are fixed: a
        whole window with a prompt of up to `prompt_tokens_held` tokens, the memory plan's shape."""
        if self.decoder and self.decoder.rows >= rows:
            return self.decoder
        old_rows = self.decoder.rows if self.decoder else 0
        # The old cache, rows and graphs freed before the new ones are made.
        self.decoder = self.rows = None
        self.decoder = StaticDecoder(
            self.model,
            rows=max(rows, 2 * max(self.batch_buckets, default=1), old_rows),
            capacity=self.cache_shape.capacity,
            cross_capacity=self.cache_shape.cross_capacity,
        )
        window_length = self.window_frames + self.codebooks  # the longest window's delay pattern
        buckets = self.batch_buckets if self.cuda_graphs else []
        self.rows = TrackRows(self.decoder, self.pad_token, window_length, buckets)
        return self.decoder

    def prefix_tokens(self, text_tokens: int) -> int:
        """Decoder positions taken before the codes: the melody model's chroma and text prefix."""
        return self.model.config.chroma_length + text_tokens if self.has_melody else 0

    @torch.inference_mode()
    def _warm_up(self) -> None:
        """Captures every (bucket, span) step graph of a whole window, so that no request waits for it.
        (The rows it steps hold no track: what it draws there is overwritten when one joins.)"""
        decoder = self.decoder_for(2 * max(self.batch_buckets, default=1))
        for tracks in self.batch_buckets or [1]:
            for span in range(LENGTH_STEP, decoder.capacity + 1, LENGTH_STEP):
                self.rows.step(0, tracks, span, whole=True)

    def _project_chroma(self, chroma: torch.Tensor) -> torch.Tensor:
        chroma = chroma.to(self.device, self.dtype)
        if hasattr(self.model, "audio_enc_to_dec_proj"):
            return self.model.audio_enc_to_dec_proj(chroma)
        return chroma

    def report_progress(self, track: Track, window: int, position: int, copy_out: CopyOut) -> None:
        """After each whole second of new audio (codebook 0 holds frame f at position 1 + f), and for a
        streamed track each `stream_frames` complete frames (its last codebook holds frame f at
        position f + codebooks): counts the host keeps. A piece of streamed audio is decoded off the
        step thread (`self.pieces`) from codes copied out without waiting for the device."""
        start, frames = track.windows[window]
        if position <= frames and (start + position) % self.frame_rate == 0:
            track.report(AudioProgress((start + position) / self.frame_rate, track.request.duration))
        complete = position - self.codebooks + 1  # at most `frames`: the window's last position
        if (
            track.stream
            and not track.left
            and complete > track.prompt_frames
            and (start + complete) % self.stream_frames == 0
        ):
            track.hand_off_piece(copy_out(), complete, self.pieces, self.sample_rate)

    def finish(self, track: Track) -> MusicGenResult | LeapRayError:
        if track.error is not None:
            return track.error
        waveform = np.zeros(0, dtype=np.float32)
        if not track.stopped:
            try:
                if track.stream:
                    track.send_last_piece(self.sample_rate)
                waveform = self._decode(track)
            except Exception as error:
                return request_error(error)
            if track.error is not None:  # its progress hook failed on the last piece
                return track.error
        return MusicGenResult(
            waveform=waveform,
            sample_rate=self.sample_rate,
            seed=track.seed,
            timings=track.timings,
            batch_size=track.batch_size,
            stopped=track.stopped,
        )

    def _decode(self, track: Track) -> np.ndarray:
        """The track's codes to audio, alone: one track's failure cannot touch another's."""
        started = time.perf_counter()
        waveform = self.decode_codes(track.codes_so_far())
        track.timings["decode_s"] = time.perf_counter() - started
        return waveform

    def decode_codes(self, codes: torch.Tensor) -> np.ndarray:
        """(codebooks, frames) codes to their waveform with EnCodec."""
        codes = codes.to(self.device)
        audio = self.model.audio_encoder.decode(codes[None, None], audio_scales=[None]).audio_values
        return audio[0, 0].float().cpu().numpy()
