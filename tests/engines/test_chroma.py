import numpy as np
import pytest
import torch

from leap_ray.engines.chroma import ChromaExtractor, resample

SAMPLE_RATE = 32_000


def tone(frequency: float, seconds: float = 3.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return torch.sin(2 * torch.pi * frequency * t)


@pytest.mark.parametrize(
    ("frequency", "pitch_class"),
    [(261.63, 0), (293.66, 2), (329.63, 4), (392.00, 7), (440.00, 9), (493.88, 11)],
    ids=["C4", "D4", "E4", "G4", "A4", "B4"],
)
def test_a_pure_tone_lands_in_its_pitch_class(frequency, pitch_class):
    chroma = ChromaExtractor()(tone(frequency))
    assert chroma.shape == (3 * SAMPLE_RATE // 4096 + 1, 12)
    assert torch.equal(chroma.sum(dim=1), torch.ones(chroma.shape[0]))  # one-hot per frame
    assert (chroma.argmax(dim=1) == pitch_class).all()


def test_thirty_seconds_give_the_checkpoints_chroma_length():
    assert ChromaExtractor().frames_for(30 * SAMPLE_RATE) == 235


def test_a_melody_that_changes_note_changes_class():
    chroma = ChromaExtractor()(torch.cat([tone(261.63, 2.0), tone(440.0, 2.0)]))
    classes = chroma.argmax(dim=1).tolist()
    assert classes[:5] == [0] * 5 and classes[-5:] == [9] * 5


def test_resampling_keeps_duration_and_pitch():
    signal = np.sin(2 * np.pi * 440 * np.arange(44_100) / 44_100).astype(np.float32)
    resampled = resample(signal, 44_100, SAMPLE_RATE)
    assert len(resampled) == SAMPLE_RATE
    assert (ChromaExtractor()(torch.from_numpy(resampled)).argmax(dim=1) == 9).all()
