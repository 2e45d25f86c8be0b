"""Melody chroma as musicgen-melody was trained on it (audiocraft's ChromaExtractor, which
transformers' MusicgenMelodyFeatureExtractor reproduces with torchaudio): a power spectrogram with a
2^14-point FFT and a 4096-sample hop at 32 kHz, folded into 12 pitch classes, then reduced to a
one-hot of the strongest class per frame. Computed with torch.stft, so torchaudio is not needed."""

import numpy as np
import torch
from scipy.signal import resample_poly
from transformers.audio_utils import chroma_filter_bank

from leap_ray.api.audio import DecodedAudio


class ChromaExtractor:
    def __init__(
        self, sample_rate: int = 32_000, n_fft: int = 2**14, hop_length: int = 4096, n_chroma: int = 12
    ):
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.filters = torch.from_numpy(
            chroma_filter_bank(
                num_frequency_bins=n_fft, num_chroma=n_chroma, sampling_rate=sample_rate, tuning=0
            )
        ).float()
        self.window = torch.hann_window(n_fft)

    def frames_for(self, samples: int) -> int:
        return samples // self.hop_length + 1

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        """(samples,) mono at `sample_rate` -> (frames, n_chroma) one-hot, frames = samples // hop + 1."""
        waveform = waveform.float().cpu()
        if waveform.shape[-1] < self.n_fft:  # as the reference: centre-pad short audio to one FFT
            missing = self.n_fft - waveform.shape[-1]
            waveform = torch.nn.functional.pad(waveform, (missing // 2, missing - missing // 2))
        spectrum = torch.stft(
            waveform,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spectrum.abs().pow(2) / self.window.pow(2).sum()  # torchaudio's normalized=True, power=2
        chroma = self.filters @ power  # (n_chroma, frames)
        strongest = chroma.argmax(dim=0)
        return torch.nn.functional.one_hot(strongest, num_classes=self.filters.shape[0]).float()


def resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy), light enough for a melody guide."""
    if source_rate == target_rate:
        return waveform.astype(np.float32, copy=False)
    divisor = np.gcd(source_rate, target_rate)
    return resample_poly(waveform, target_rate // divisor, source_rate // divisor).astype(np.float32)


class MelodyChromas:
    """The melody model's conditioning chromas: for each window of a track, the chroma of 30 s of the
    melody from the window's start (looped when shorter), as audiocraft slides it along; or the null
    melody. Each is `chroma_length` frames, the length the model takes."""

    def __init__(self, sample_rate: int, frame_rate: int, window_samples: int, chroma_length: int) -> None:
        self.sample_rate, self.frame_rate = sample_rate, frame_rate
        self.window_samples, self.length = window_samples, chroma_length
        self.extract = ChromaExtractor(sample_rate)

    def of_windows(self, melody: DecodedAudio, windows: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Each window's (chroma_length, 12) chroma; windows are (start frame, frames)."""
        waveform = resample(melody.waveform, melody.sample_rate, self.sample_rate)
        chromas = []
        for start_frame, _ in windows:
            start = start_frame * self.sample_rate // self.frame_rate
            positions = np.arange(start, start + self.window_samples) % len(waveform)
            chromas.append(self._fit(self.extract(torch.from_numpy(waveform[positions]))))
        return chromas

    def null(self) -> torch.Tensor:
        """The model's null melody: every frame in the first pitch class."""
        null = torch.zeros(1, 12)
        null[0, 0] = 1
        return self._fit(null)

    def _fit(self, chroma: torch.Tensor) -> torch.Tensor:
        """Repeated or cut to the chroma_length frames the model takes."""
        return chroma.repeat(-(-self.length // chroma.shape[0]), 1)[: self.length]
