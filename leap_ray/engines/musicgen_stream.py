"""MusicGen audio that streams while the track is generated: one track's codes, decoded in bounded,
overlapping segments into pieces whose concatenation is the whole-track decode.

Why segments and margins (read from transformers' `modeling_encodec`, and audiocraft's SEANet config
for MusicGen's 32 kHz EnCodec: `causal=False`, `pad_mode="reflect"`, kernel 7, residual kernel 3,
one residual layer, dilation base 2, `lstm=2`, ratios 8, 5, 4, 4). The decoder is, in order: a
kernel-7 conv at the frame rate (50 Hz); a 2-layer unidirectional LSTM added to its input; four
upsampling stages (ELU, a transposed conv of kernel 2r and stride r trimmed symmetrically, a residual
block of a kernel-3 conv and a kernel-1 conv); ELU and a final kernel-7 conv at 32 kHz. So:
- The convs are non-causal and reflect-pad both ends of their input; the weights cannot widen their
  reach, which is 3 frames (first conv) + 0.5 frame (the first transposed conv: 4 of its 8 trimmed
  samples) + ~0.25 frame (all the layers after it, at higher rates) = ~3.75 frames each way. So
  frame f's samples depend on codes up to frame f + 4, and a piece is cut LOOKAHEAD_FRAMES = 4 short
  of the codes known: the samples it emits no longer change. Measured: the last 4 frames of a
  prefix's decode differ from the whole track's decode (by over 1e-5 of its peak), the ones before
  do not; a stream held back 3 frames is measurably off (below), one held back 4 is not.
- The LSTM is causal but remembers without bound: a segment that starts CONTEXT_FRAMES before the
  first frame it emits starts the LSTM from zeros there, not from the track's state, and the error
  decays with the context. Measured with random weights on the frames a segment emits (SNR as
  `snr_db`), the tiny model / EnCodec at the real size (hidden 128, 64 filters, 2 LSTM layers of
  1024): 29 / 25 dB at no context, 61 / 61 dB at 4 frames, 116 / 111 dB (float rounding) from 20
  frames on. Trained weights may remember longer, and none can be downloaded here to measure: the
  default context is 50 frames (1 s), 2.5 times what random weights need, which costs 50 extra
  frames per decode (not per frame of audio).
No crossfade: each emitted sample comes from a decode that covers its whole conv reach and 1 s of
LSTM warm-up, so the pieces join without a seam to hide; a crossfade would only mix two estimates of
the same samples.

Tolerance: the pieces joined are exactly as long as `decode(all codes)` and within SNR_TOLERANCE_DB
(30 dB, the margin left for trained weights' longer memory) of it. Measured on the tiny model:
122 dB (float rounding) for pushes every 1, 5, 7 or 25 frames, exact for one push of the whole
track; without the context, 25 dB when pushed every frame; held back 3 frames instead of 4, 41 dB
every frame and 48 dB every 5 (so the tests hold the defaults to 100 dB, which random weights allow).

Cost: a push decodes `context_frames` + the frames new since the last piece + `lookahead_frames`,
so a segment's length does not grow with the track; how often to push (each decoding step, or
every N) is the caller's trade between latency and decode work.
"""

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import torch

CONTEXT_FRAMES = 50
"""Frames decoded before the first frame a piece emits, so EnCodec's LSTM warms up (1 s at 50 Hz)."""
LOOKAHEAD_FRAMES = 4
"""Frames held back at the end of the known codes: the decoder's convs reach ~3.75 frames ahead."""
SNR_TOLERANCE_DB = 30.0
"""The stream joined vs the whole-track decode: at least this signal-to-noise ratio."""

Decode = Callable[[torch.Tensor], np.ndarray]
"""(codebooks, frames) long codes -> float32 mono waveform of frames * samples_per_frame samples."""


class AudioStream:
    """One track's audio as pieces that are final: push the track's codes so far as they grow, then
    finish; the pieces, joined, are the whole-track decode to within SNR_TOLERANCE_DB."""

    def __init__(
        self,
        decode: Decode,
        samples_per_frame: int,
        *,
        context_frames: int = CONTEXT_FRAMES,
        lookahead_frames: int = LOOKAHEAD_FRAMES,
    ) -> None:
        if samples_per_frame <= 0 or context_frames < 0 or lookahead_frames < 0:
            raise ValueError("samples_per_frame must be positive, context and lookahead not negative")
        self.decode = decode
        self.samples_per_frame = samples_per_frame
        self.context_frames = context_frames
        self.lookahead_frames = lookahead_frames
        self.emitted_frames = 0
        """Frames whose samples the pieces so far hold: the next piece starts at this frame."""
        self._known_frames = 0

    @property
    def emitted_samples(self) -> int:
        """Samples sent so far: where the next piece starts in the track."""
        return self.emitted_frames * self.samples_per_frame

    def push(self, codes: torch.Tensor) -> np.ndarray:
        """The samples that `codes` (all the track's complete codes so far, (codebooks, frames))
        makes final and that no piece has held yet; empty when there are none."""
        return self._emit(codes, codes.shape[-1] - self.lookahead_frames)

    def finish(self, codes: torch.Tensor) -> np.ndarray:
        """The rest of the track, given all its codes: after it the pieces hold every frame."""
        return self._emit(codes, codes.shape[-1])

    def _emit(self, codes: torch.Tensor, end: int) -> np.ndarray:
        """Samples of frames [emitted_frames, end), decoded from a segment that starts
        `context_frames` earlier and runs to the last known frame."""
        known = codes.shape[-1]
        if known < self._known_frames:
            raise ValueError(f"codes went from {self._known_frames} frames to {known}: pass all of them")
        self._known_frames = known
        if end <= self.emitted_frames:
            return np.zeros(0, dtype=np.float32)
        start = max(0, self.emitted_frames - self.context_frames)
        audio = self._decode_segment(codes[:, start:known])
        first = (self.emitted_frames - start) * self.samples_per_frame
        piece = audio[first : (end - start) * self.samples_per_frame]
        self.emitted_frames = end
        return piece

    def _decode_segment(self, codes: torch.Tensor) -> np.ndarray:
        audio = np.asarray(self.decode(codes), dtype=np.float32).reshape(-1)
        expected = codes.shape[-1] * self.samples_per_frame
        if audio.shape[0] != expected:  # the cut positions assume it; a mismatch would shift them all
            raise ValueError(
                f"decode gave {audio.shape[0]} samples for {codes.shape[-1]} frames, not {expected}"
            )
        return audio


class OffThread:
    """Runs jobs in order on a thread of their own, in inference mode and, on a GPU, on a CUDA stream of
    their own: decoding a streamed piece of audio never holds up the running batch's steps (their CUDA
    graphs and this stream's decodes overlap on the device). One thread keeps each track's pieces in
    order; the jobs handle their own failures."""

    def __init__(self, device: torch.device) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="musicgen-audio")
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def submit(self, job: Callable[[], None]) -> Future:
        return self.executor.submit(self._run, job)

    def _run(self, job: Callable[[], None]) -> None:
        with torch.inference_mode(), torch.cuda.stream(self.stream) if self.stream else nullcontext():
            job()


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Signal-to-noise ratio of `estimate` against `reference` in dB (inf when they are equal), the
    signal taken about the reference's mean: a random-weight decoder's constant offset (the tiny
    model's is 8 times its variation) would otherwise add ~18 dB that says nothing of the stream;
    music has none, so for real tracks this is the plain SNR."""
    reference = reference.astype(np.float64)
    noise = float(np.sum((reference - estimate) ** 2))
    signal = float(np.sum((reference - reference.mean()) ** 2))
    return float("inf") if noise == 0.0 else 10.0 * np.log10(signal / noise)
