"""Melody chroma as musicgen-melody was trained on it (audiocraft's ChromaExtractor, which
transformers' MusicgenMelodyFeatureExtractor reproduces with torchaudio): a power spectrogram with a
2^14-point FFT and a 4096-sample hop at 32 kHz, folded into 12 pitch classes, then reduced to a
one-hot of the strongest class per frame. Computed with torch.stft, so torchaudio is not needed."""

import numpy as np
import torch
from scipy.signal import resample_poly
from transformers.audio_utils import chroma_filter_bank


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
